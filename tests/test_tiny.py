"""What tiny.py builds: the tiny Qwen2.5-VL is a real model folder (transformers and vLLM load it and agree),
and the demo dataset is learnable from its pixels, reproducible, and written by `python tiny.py demo`."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import data
import tiny

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
    """Broken if vLLM and transformers see a different model, prompt or image (fp32 greedy must match)."""
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

    llm = LLM(str(tiny_model_dir), dtype="float32", max_model_len=1024, enforce_eager=True, seed=0,
              gpu_memory_utilization=0.2, limit_mm_per_prompt={"image": 1, "video": 0})
    requests = [{"prompt_token_ids": processor.tokenizer(t, add_special_tokens=False)["input_ids"],
                 "multi_modal_data": {"image": im}} for t, im in zip(texts, images)]
    results = llm.generate(requests, SamplingParams(temperature=0.0, max_tokens=max_new, logprobs=0), use_tqdm=False)

    distinct = set()
    for (hf_tokens, hf_logps), result in zip(hf_outputs, results):
        completion = result.outputs[0]
        assert list(completion.token_ids) == hf_tokens
        vllm_logps = [next(iter(step.values())).logprob for step in completion.logprobs]
        assert torch.allclose(torch.tensor(vllm_logps), torch.tensor(hf_logps), atol=1e-4)
        distinct.add(tuple(hf_tokens))
    # the outputs depend on the input (a model that ignores its input would make this test weak)
    assert len(distinct) == len(texts)


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
