"""What tiny.py builds: the tiny Qwen2.5-VL is a real model folder (transformers and vLLM load it and agree),
the demo dataset is learnable from its pixels, reproducible, and written by `python tiny.py demo`, and the
video demo's label is the order of two colours over time (no single frame tells it), written by `python tiny.py video-demo`."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data
import engines
import tiny
import video

REPO = Path(__file__).resolve().parents[1]


def test_folder_is_complete_and_consistent(tiny_model_dir, processor):
    """Broken if the folder misses a file vLLM/transformers need, or vocab and tokenizer disagree."""
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "processor_config.json", "chat_template.jinja"):
        assert (tiny_model_dir / name).exists(), name
    config = json.loads((tiny_model_dir / "config.json").read_text())
    tok = processor.tokenizer
    assert config["text_config"]["vocab_size"] == len(tok)
    for key, token in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                       ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")):
        assert config[key] == tok.convert_tokens_to_ids(token)
    head_dim = config["text_config"]["hidden_size"] // config["text_config"]["num_attention_heads"]
    assert head_dim in (32, 64, 128)  # what vLLM's CPU attention supports
    assert sum(config["text_config"]["rope_parameters"]["mrope_section"]) == head_dim // 2
    assert processor.video_processor is not None  # vLLM's Qwen2.5-VL processor requires it
    # special tokens are single tokens and survive a round trip through the chat template
    text = data.render_prompt(processor, "<image>How does it feel?", template="none")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids("<|image_pad|>")) == 1
    assert tok.decode(ids) == text


def test_build_is_deterministic_and_cached(tmp_path):
    """Broken if the same seed gives different weights/tokenizers, or a finished folder is rebuilt."""
    a = tiny.build_tiny_model(tmp_path / "a", seed=3)
    b = tiny.build_tiny_model(tmp_path / "b", seed=3)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    mtime = (a / "model.safetensors").stat().st_mtime_ns
    assert tiny.build_tiny_model(a, seed=3) == a
    assert (a / "model.safetensors").stat().st_mtime_ns == mtime
    assert not list(tmp_path.glob("*.tmp*"))  # no half-built folder left behind


def test_transformers_and_vllm_greedy_agree(tiny_model_dir, processor):
    """Broken if vLLM and transformers see a different model, prompt, image or clip (fp32 greedy must match;
    the clip through engines.HFEngine, whose positions are packing.mrope_positions, and the trainer's
    (frames, metadata) for vLLM)."""
    from transformers import Qwen2_5_VLForConditionalGeneration
    from vllm import LLM, SamplingParams

    images = [data.resize_image(Image.new("RGB", size, colour), 56 * 56, 112 * 112)
              for size, colour in (((80, 60), (200, 30, 30)), ((60, 100), (30, 30, 200)), ((112, 112), (20, 160, 40)))]
    problems = ["<image>What emotion does this image evoke?", "<image>How would a person feel?", "Describe it.<image>"]
    texts = [data.render_prompt(processor, p, template="set") for p in problems]
    max_new = 24

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    hf_outputs = []
    for text, image in zip(texts, images):
        inputs = processor(text=[text], images=[image], return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=max_new, do_sample=False, output_scores=True,
                             return_dict_in_generate=True)
        tokens = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
        logps = [torch.log_softmax(score[0].float(), -1)[t].item() for score, t in zip(out.scores, tokens)]
        hf_outputs.append((tokens, logps))

    # a clip (8 random frames of 56 x 56) through the HF engine the trainer falls back to
    rng = np.random.default_rng(0)
    clip = video.Video([Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)) for _ in range(8)], 2.0)
    clip_text = data.render_prompt(processor, "<video>What emotion does this clip evoke?", template="set")
    clip_request = engines.Request(clip_text, processor.tokenizer(clip_text, add_special_tokens=False)["input_ids"],
                                   [], [clip])
    pads = processor.tokenizer.convert_tokens_to_ids(["<|image_pad|>", "<|video_pad|>"])
    engine = engines.HFEngine(str(tiny_model_dir), processor, torch.device("cpu"), pads[0], video_pad_id=pads[1])
    engine.wake_up(["weights", "kv_cache"])
    hf_outputs.append(engine.generate([clip_request], 1, 0.0, 1.0, max_new, seed=0)[0][0])
    del engine

    llm = LLM(str(tiny_model_dir), dtype="float32", max_model_len=1024, enforce_eager=True, seed=0,
              gpu_memory_utilization=0.2, limit_mm_per_prompt={"image": 1, "video": 1})
    requests = [{"prompt_token_ids": processor.tokenizer(t, add_special_tokens=False)["input_ids"],
                 "multi_modal_data": {"image": im}} for t, im in zip(texts, images)]
    requests.append({"prompt_token_ids": clip_request.prompt_ids,
                     "multi_modal_data": {"video": [engines.vllm_video(clip)]}})
    results = llm.generate(requests, SamplingParams(temperature=0.0, max_tokens=max_new, logprobs=0), use_tqdm=False)

    distinct = set()
    for (hf_tokens, hf_logps), result in zip(hf_outputs, results):
        completion = result.outputs[0]
        assert list(completion.token_ids) == hf_tokens
        vllm_logps = [next(iter(step.values())).logprob for step in completion.logprobs]
        assert torch.allclose(torch.tensor(vllm_logps), torch.tensor(hf_logps), atol=1e-4)
        distinct.add(tuple(hf_tokens))
    # the outputs depend on the input (a model that ignores its input would make this test weak)
    assert len(distinct) == len(texts) + 1


# --- the demo dataset ---------------------------------------------------------------------------

def test_demo_label_is_visually_recoverable(demo_dir):
    """A tiny model could not learn the demo task if the label were not recoverable from the pixels."""
    rows = [json.loads(line) for line in (demo_dir / "test.jsonl").read_text().splitlines()]
    colours = {label: np.array(rgb, dtype=float) for label, rgb in tiny.DEMO_COLOURS.items()}
    correct = 0
    for row in rows:
        mean = np.asarray(Image.open(demo_dir / row["images"][0]).convert("RGB"), dtype=float).reshape(-1, 3).mean(0)
        guess = min(colours, key=lambda label: float(((colours[label] - mean) ** 2).sum()))
        correct += guess == row["answer"]
    assert correct / len(rows) >= 0.9


def test_demo_dataset_is_deterministic(tmp_path):
    """Demo results would not reproduce if the same seed wrote different data."""
    a = tiny.make_demo_dataset(tmp_path / "a", num_train=16, num_test=8, seed=3)
    b = tiny.make_demo_dataset(tmp_path / "b", num_train=16, num_test=8, seed=3)
    c = tiny.make_demo_dataset(tmp_path / "c", num_train=16, num_test=8, seed=4)
    assert (a / "train.jsonl").read_bytes() == (b / "train.jsonl").read_bytes()
    assert (a / "test.jsonl").read_bytes() == (b / "test.jsonl").read_bytes()
    names = sorted(p.name for p in (a / "images").iterdir())
    assert len(names) == 24
    assert all((a / "images" / n).read_bytes() == (b / "images" / n).read_bytes() for n in names)
    assert any((a / "images" / n).read_bytes() != (c / "images" / n).read_bytes() for n in names)


def test_demo_command_writes_what_the_function_does(tmp_path):
    """`python tiny.py demo` would leave the demo without data, or write other data than make_demo_dataset."""
    args = [sys.executable, "tiny.py", "demo", "--out", str(tmp_path / "cli"), "--num-train", "8", "--num-test", "4",
            "--seed", "2"]
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"demo dataset at {tmp_path / 'cli'}\n"
    api = tiny.make_demo_dataset(tmp_path / "api", num_train=8, num_test=4, seed=2)
    for name in ("train.jsonl", "test.jsonl", "labels.txt", "demo.json"):
        assert (tmp_path / "cli" / name).read_bytes() == (api / name).read_bytes(), name


# --- the video demo dataset ---------------------------------------------------------------------

def _dominant_colours(image):
    """{colour name: pixels within RGB distance 60 of that class colour} for one frame."""
    pixels = np.asarray(image, dtype=int).reshape(-1, 3)
    return {name: int((((pixels - np.array(rgb)) ** 2).sum(1) < 60 ** 2).sum())
            for name, rgb in tiny.VIDEO_DEMO_COLOURS.items()}


@pytest.fixture(scope="module")
def video_demo_dir(tmp_path_factory):
    return tiny.make_video_demo_dataset(tmp_path_factory.mktemp("video") / "data", num_train=32, num_test=16, seed=0)


def test_video_demo_folder_is_complete_idempotent_and_deterministic(tmp_path):
    """A finished folder rebuilt on every call (or a half-built one taken as done) would waste or corrupt runs;
    the same seed must write the same clips."""
    a = tiny.make_video_demo_dataset(tmp_path / "a", num_train=8, num_test=4, seed=3)
    for name in ("train.jsonl", "test.jsonl", "labels.txt", "video-demo.json"):
        assert (a / name).exists(), name
    assert (a / "labels.txt").read_text().split() == list(tiny.VIDEO_DEMO_CLASSES)
    files = sorted(p for p in a.rglob("*") if p.is_file())
    assert len(files) == 4 + 12 * 8 and not list(a.rglob("*.tmp*"))
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    assert tiny.make_video_demo_dataset(a, num_train=8, num_test=4, seed=3) == a
    assert {p: p.stat().st_mtime_ns for p in sorted(p for p in a.rglob("*") if p.is_file())} == mtimes
    b = tiny.make_video_demo_dataset(tmp_path / "b", num_train=8, num_test=4, seed=3)
    c = tiny.make_video_demo_dataset(tmp_path / "c", num_train=8, num_test=4, seed=4)
    assert all(p.read_bytes() == (b / p.relative_to(a)).read_bytes() for p in files)
    assert any(p.read_bytes() != (c / p.relative_to(a)).read_bytes() for p in files if p.suffix == ".png")
    # other settings rebuild the folder, leaving no frames of the old recipe behind
    tiny.make_video_demo_dataset(a, num_train=4, num_test=4, seed=3, frames=4)
    assert len([p for p in a.rglob("*.png")]) == 8 * 4
    with pytest.raises(ValueError):
        tiny.make_video_demo_dataset(tmp_path / "d", frames=1)


def test_video_demo_label_is_the_order_of_two_colours(video_demo_dir):
    """Broken if a clip's frames are missing or misshapen, the classes unbalanced, or the first and second
    halves of a clip do not show its label's colours in its label's order."""
    import rewards
    labels = list(tiny.VIDEO_DEMO_CLASSES)
    assert len(set(tiny.VIDEO_DEMO_CLASSES.values())) == 4 and set(labels) <= set(tiny.DEMO_COLOURS)
    for split, count in (("train", 32), ("test", 16)):
        rows = [json.loads(line) for line in (video_demo_dir / f"{split}.jsonl").read_text().splitlines()]
        assert sorted(row["answer"] for row in rows) == sorted(labels * (count // 4))  # balanced
        for row in rows:
            assert set(row) == {"videos", "problem", "answer", "response", "response_r1_omni"}
            assert row["problem"] == "<video>What emotion does this clip evoke? Choose one of: " + ", ".join(labels) + "."
            r1 = row["response_r1_omni"]
            assert rewards.r1_omni_format(r1) and rewards.r1_omni_answer(r1) == row["answer"]
            set_score = rewards.emor3_reward(row["response"], row["answer"])
            assert set_score["format"] == set_score["accuracy"] == 1.0
            first, second = tiny.VIDEO_DEMO_CLASSES[row["answer"]]  # both name the colours in order
            assert f"turns from {first} to {second}." in r1 and rewards.consistency_prompt(row["response"]).endswith(
                f"<step1>The clip turns from {first} to {second}.</step1>")
            (video,) = row["videos"]
            assert len(video) == 8
            first, second = tiny.VIDEO_DEMO_CLASSES[row["answer"]]
            for k, path in enumerate(video):
                image = Image.open(video_demo_dir / path)
                assert image.size == (56, 56) and image.mode == "RGB"
                counts = _dominant_colours(image)
                expected = first if k < 4 else second
                assert max(counts, key=counts.get) == expected
                assert counts[expected] >= 0.5 * 56 * 56  # the background dominates the distractors
                assert sum(counts.values()) == counts[expected]  # no distractor passes for a class colour


def test_video_demo_one_frame_leaves_two_labels(video_demo_dir):
    """The task would not need time if one frame (or the clip's bag of frames) told the label: at every frame
    position the frame's colour fits exactly two labels, which share the same colours in the other order."""
    rows = [json.loads(line) for line in (video_demo_dir / "train.jsonl").read_text().splitlines()]
    bags = {}
    for row in rows:
        colours = []
        for path in row["videos"][0]:
            counts = _dominant_colours(Image.open(video_demo_dir / path))
            colours.append(max(counts, key=counts.get))
        for colour in colours:
            consistent = {label for label, pair in tiny.VIDEO_DEMO_CLASSES.items() if colour in pair}
            assert len(consistent) == 2 and row["answer"] in consistent
        bags.setdefault(tuple(sorted(colours)), set()).add(row["answer"])
        # the order decides: the (first, second) colours name exactly one label
        assert [label for label, pair in tiny.VIDEO_DEMO_CLASSES.items()
                if pair == (colours[0], colours[-1])] == [row["answer"]]
    assert sorted(len(v) for v in bags.values()) == [2, 2]  # order-blind, each clip fits two labels


def test_video_demo_command_writes_what_the_function_does(tmp_path):
    """`python tiny.py video-demo` would write other data than make_video_demo_dataset."""
    args = [sys.executable, "tiny.py", "video-demo", "--out", str(tmp_path / "cli"), "--num-train", "4",
            "--num-test", "4", "--seed", "2"]
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"video demo dataset at {tmp_path / 'cli'}\n"
    api = tiny.make_video_demo_dataset(tmp_path / "api", num_train=4, num_test=4, seed=2)
    for name in ("train.jsonl", "test.jsonl", "labels.txt", "video-demo.json", "frames/train_00003/7.png"):
        assert (tmp_path / "cli" / name).read_bytes() == (api / name).read_bytes(), name


def test_tokenizer_is_the_one_the_recorded_demo_numbers_came_from(tiny_model_dir):
    """A new file in prompts/ once changed the tiny tokenizer (it was trained on every prompt file), so the
    model's weights, and moved the image demo from 0.328 -> 1.000 to 0.219 -> 0.750. The vocabulary is
    pinned: a change here must re-measure every demo number in README.md and BENCHMARKS.md."""
    import hashlib
    from transformers import AutoTokenizer
    vocab = sorted(AutoTokenizer.from_pretrained(tiny_model_dir).get_vocab().items())
    assert hashlib.sha256(json.dumps(vocab).encode()).hexdigest() == \
        "560bf6d18013c4d7c2d37bfed0a2851f9a6d6241feceab2df01668267ec4e317"
