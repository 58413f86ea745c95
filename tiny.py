"""Everything the offline demo and the tests need, built from nothing: the tiny Qwen2.5-VL and the demo data.

The tiny model. The tests and the CPU demo cannot download weights, so this script writes a complete
Hugging Face model folder from nothing: a Qwen2_5_VLConfig scaled down to about 0.6M parameters with
random weights, a byte-level BPE tokenizer trained on the spot (with the Qwen2.5-VL special tokens and
chat template), and a processor with the image and video processors. The folder loads with
`from_pretrained` in transformers and with vLLM, exactly like Qwen/Qwen2.5-VL-3B-Instruct does, so
every code path (chat template, image placeholders, mrope positions, weight names) is the real one.

Constraints measured on the CPU stack (see METHOD.md):
- text head_dim must be one vLLM's CPU attention supports (32, 64, ...; 16 fails);
- `mrope_section` must sum to head_dim / 2;
- `vocab_size` must equal len(tokenizer) exactly (vLLM and the processor disagree otherwise);
- the processor must include the video processor (vLLM's Qwen2.5-VL processor requires it).

The demo dataset (make_demo_dataset): small images whose emotion is their dominant colour, so a tiny
model trained from scratch can learn it in minutes, written as a user would bring a dataset
(train.jsonl, test.jsonl, images/, labels.txt) with a SET `response` per row for the cold start.

The video demo dataset (make_video_demo_dataset): 8-frame 56x56 clips whose emotion is the ORDER of two
colours (VIDEO_DEMO_CLASSES: red then blue is anger, blue then red is sadness, ...). The first half of
the frames shows the first colour, the second half the second, so the colour of a frame taken without
its time (or the clip's average colour) leaves two labels; only the order decides. Rows list each clip
as frame files (frames/<clip>/<k>.png), with an R1-Omni `response` (<think>..</think><answer>..</answer>).

Not here: reading, checking and batching datasets (data.py, which this module imports; data.py never
imports this one) and the converters of the public datasets (prepare_data.py).

    python tiny.py                      # -> .cache/tiny-qwen2.5-vl (the default the demo uses)
    python tiny.py --out .cache/tiny-seed1 --seed 1
    python tiny.py demo                 # -> .cache/demo: the demo dataset (what `--demo` trains on)
    python tiny.py demo --out .cache/demo-small --num-train 64 --num-test 16 --seed 1
    python tiny.py video-demo           # -> .cache/video-demo: the video demo dataset (clips as frame lists)
    python tiny.py video-demo --out .cache/video-demo-small --num-train 64 --num-test 16 --seed 1
"""

import argparse
import json
import os
import random
from pathlib import Path

from PIL import Image, ImageDraw

import data

REPO = Path(__file__).resolve().parent
DEFAULT_DIR = REPO / ".cache" / "tiny-qwen2.5-vl"
DEMO_DIR = REPO / ".cache" / "demo"
VIDEO_DEMO_DIR = REPO / ".cache" / "video-demo"

# --- the tiny model -----------------------------------------------------------------------------

# The Qwen2.5-VL special tokens, in the order Qwen assigns them (ids 151643.. in the real model;
# here they are simply the first ids). `<|image_pad|>` is the placeholder the processor expands
# into one token per merged 28x28 image patch.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# Qwen2.5-VL-Instruct's chat template (default system prompt, images and videos as placeholders).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Architecture. Text: hidden 64 with 2 heads -> head_dim 32 (vLLM CPU attention supports it);
# mrope_section [4, 6, 6] sums to 16 = head_dim / 2 (temporal, height, width rotary pairs).
# Vision: Qwen2.5-VL's window-attention tower with 2 blocks, the second one full attention.
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=4096, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]})
VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14,
              spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1])
VIDEO_PIXELS = {"shortest_edge": 56 * 56, "longest_edge": 768 * 28 * 28}  # per-frame pixel range of the video processor


CORPUS_PROMPTS = ("labels/emoset.txt", "labels/emotion6.txt", "reflect_image.txt", "reflect_text.txt", "set.txt",
                  "think.txt")  # in the order the sorted rglob of prompts/ gave before r1-omni.txt existed


def _tokenizer_corpus():
    """Text the BPE is trained on: the prompts, label names and SET tags, so they get short ids."""
    # these prompt files by name, not every file in prompts/: a template added later (r1-omni.txt) would
    # change the tokenizer, so the tiny model's weights, and every demo number measured before it
    texts = [(REPO / "prompts" / name).read_text() for name in CORPUS_PROMPTS]
    words = " ".join(p.read_text().replace("\n", " ") for p in sorted((REPO / "prompts" / "labels").glob("*.txt")))
    texts += [words] * 20
    tags = "<step1> </step1> <step2> </step2> <step3> </step3> <think> </think> \\boxed{} yes no None"
    texts += [tags] * 20
    texts += [demo_response(label) for label in DEMO_COLOURS] * 20  # the demo's targets: short rollouts
    texts.append("The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'\"()[]{}<>/\\|-_+=*&^%$#@~`")
    return texts


def build_tokenizer(vocab_size=1024):
    """A byte-level BPE (like Qwen's) with the Qwen2.5-VL special tokens, as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=SPECIAL_TOKENS[1:], model_max_length=32768)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_model(out_dir=DEFAULT_DIR, seed=0, init_std=0.2, overwrite=False):
    """Write the tiny model folder (config, safetensors, tokenizer, processor) and return its path.

    `init_std` is larger than the usual 0.02 on purpose: at 0.02 a 2-layer model's greedy output is
    one token repeated whatever the image, which makes "two engines agree" a weak check and gives
    sampling nothing to explore; at 0.2 the output depends on the image and the prompt.
    Returns at once if the folder is already complete, so tests and the demo can call it freely.
    Written to a temporary folder and renamed at the end, so a crash never leaves a half-built model.
    """
    import torch
    from transformers import (GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    out_dir = Path(out_dir)
    # the recipe (architecture, seed, tokenizer corpus) is recorded; a folder built from another
    # recipe (an older version of this file) is rebuilt rather than silently reused
    import hashlib
    recipe = hashlib.sha256(
        json.dumps([TEXT, VISION, seed, init_std, _tokenizer_corpus(), VIDEO_PIXELS]).encode()).hexdigest()[:16]
    done = out_dir / "tiny.json"
    if done.exists() and json.loads(done.read_text()).get("recipe") == recipe and not overwrite:
        return out_dir
    tmp_dir = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    tmp_dir.mkdir(parents=True, exist_ok=True)

    tok = build_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    # Qwen's defaults for the pixel range; data.py resizes images into the run's own range
    # (multiples of 28) before they reach the processor, which then leaves them as they are.
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 16384, patch_size=14,
                                            temporal_patch_size=2, merge_size=2)
    # Qwen's video range starts at 128*28*28 pixels per frame: a 56x56 demo clip would be upscaled to
    # 336x336, 576 tokens instead of 16. The tiny model's processor accepts frames from 56x56 up
    video_processor = Qwen2VLVideoProcessor(patch_size=14, temporal_patch_size=2, merge_size=2,
                                            size=VIDEO_PIXELS)
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tok,
                                    video_processor=video_processor, chat_template=CHAT_TEMPLATE)

    config = Qwen2_5_VLConfig(
        text_config=dict(TEXT, vocab_size=len(tok), initializer_range=init_std, bos_token_id=ids["<|endoftext|>"],
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(VISION, out_hidden_size=TEXT["hidden_size"], initializer_range=init_std),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True, initializer_range=init_std)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).float()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"], do_sample=False)
    model.save_pretrained(tmp_dir)
    processor.save_pretrained(tmp_dir)
    (tmp_dir / "tiny.json").write_text(json.dumps({"seed": seed, "init_std": init_std, "recipe": recipe,
                                                   "built_by": "tiny.py",
                                                   "parameters": sum(p.numel() for p in model.parameters())}))
    if out_dir.exists():  # overwrite: swap the finished folder in
        import shutil
        shutil.rmtree(out_dir)
    tmp_dir.rename(out_dir)
    return out_dir


# --- the demo dataset ---------------------------------------------------------------------------

# Each emotion has a dominant colour, so the label is visually recoverable by a tiny vision tower
# trained from scratch; random distractor shapes in other colours make it more than a lookup table.
DEMO_COLOURS = {
    "amusement": (250, 210, 40), "anger": (210, 30, 30), "awe": (120, 200, 250), "contentment": (60, 170, 70),
    "disgust": (120, 120, 20), "excitement": (250, 120, 10), "fear": (80, 30, 110), "sadness": (30, 50, 160),
}


DEMO_COLOUR_NAMES = {"amusement": "yellow", "anger": "red", "awe": "light blue", "contentment": "green",
                     "disgust": "olive", "excitement": "orange", "fear": "purple", "sadness": "dark blue"}
POSITIVE = {"amusement", "awe", "contentment", "excitement"}  # Mikels valence (METHOD.md)


def demo_response(label, feel=None):
    """A short SET answer for a demo image: the reasoning a cold start can imitate (sft.py). `feel`: another
    emotion for step 2 to name (default `label`), for a text whose reasoning contradicts itself."""
    return (f"<step1>The image is mostly {DEMO_COLOUR_NAMES[label]}.</step1>\n"
            f"<step2>A viewer would feel {feel or label}.</step2>\n"
            f"<step3>The emotion is {'positive' if label in POSITIVE else 'negative'}.</step3>\n\\boxed{{{label}}}")


def make_demo_image(label, rng, colours=DEMO_COLOURS):
    """A 56-112 px image whose background is the label's colour (jittered), with 1-3 small shapes."""
    width, height = rng.randint(56, 112), rng.randint(56, 112)
    base = colours[label]
    background = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in base)
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 3)):
        w, h = rng.randint(8, width // 3), rng.randint(8, height // 3)
        x, y = rng.randint(0, width - w), rng.randint(0, height - h)
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x, y, x + w, y + h], fill=colour)
    return image


# Four emotions by default: with a tiny model trained from random weights, GRPO learns 4 colours in the
# demo's time budget (a few minutes of CPU); 8 classes need several times longer.
DEMO_LABELS = ["amusement", "anger", "contentment", "sadness"]


def make_demo_dataset(out_dir=DEMO_DIR, num_train=256, num_test=64, labels=None, seed=0):
    """Write the demo dataset as a user would bring it: train.jsonl, test.jsonl, images/, labels.txt.

    Classes are balanced. Returns the folder; rebuilt only when missing or made with other settings.
    """
    out_dir = Path(out_dir)
    labels = list(labels or DEMO_LABELS)
    recipe = {"labels": labels, "num_train": num_train, "num_test": num_test, "seed": seed, "version": 2}
    if (out_dir / "demo.json").exists() and json.loads((out_dir / "demo.json").read_text()) == recipe:
        return out_dir  # already built with these settings
    if out_dir.exists():  # built by other settings or an older version: rebuild from scratch
        for name in ("train.jsonl", "test.jsonl", "labels.txt", "demo.json"):
            (out_dir / name).unlink(missing_ok=True)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    question = data.default_question(labels)
    for split, count in (("test", num_test), ("train", num_train)):  # demo.json, written last, marks "done"
        split_labels = [labels[i % len(labels)] for i in range(count)]
        rng.shuffle(split_labels)
        rows = []
        for i, label in enumerate(split_labels):
            name = f"images/{split}_{i:05d}.png"
            make_demo_image(label, rng).save(out_dir / name)
            rows.append({"images": [name], "problem": question, "answer": label, "response": demo_response(label)})
        (out_dir / "labels.txt").write_text("\n".join(labels) + "\n")
        data.write_jsonl(out_dir / f"{split}.jsonl", rows)
    (out_dir / "demo.json").write_text(json.dumps(recipe))  # written last: marks the folder complete
    return out_dir


# --- the video demo dataset ---------------------------------------------------------------------

# The emotion of a clip is the order of two colours: each label starts in its image-demo colour
# (DEMO_COLOUR_NAMES) and turns into its partner's. A frame's colour alone leaves two labels (which
# pair it belongs to, not which order), and so does the clip's average colour; the order over time
# decides. Read by the tests and docs: change the mapping here only.
VIDEO_DEMO_COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (40, 180, 60), "yellow": (240, 210, 40)}
VIDEO_DEMO_CLASSES = {"amusement": ("yellow", "green"), "anger": ("red", "blue"),
                      "contentment": ("green", "yellow"), "sadness": ("blue", "red")}
VIDEO_DEMO_QUESTION = "<video>What emotion does this clip evoke? Choose one of: {labels}."
# distractor shapes keep at least this RGB distance from every class colour, so they never pass for one
VIDEO_DEMO_DISTRACTOR_GAP = 100


def video_demo_response(label, template="set"):
    """A short answer for a demo clip, the reasoning a cold start can imitate (sft.py): in the SET layout
    (the `response` column, as the image demo's demo_response) or R1-Omni's ("r1-omni": the
    `response_r1_omni` column, sft.py --response-key response_r1_omni). Both name the colours in order,
    then the emotion."""
    first, second = VIDEO_DEMO_CLASSES[label]
    if template == "r1-omni":
        return f"<think>The clip turns from {first} to {second}.</think>\n<answer>{label}</answer>"
    return (f"<step1>The clip turns from {first} to {second}.</step1>\n"
            f"<step2>A viewer would feel {label}.</step2>\n"
            f"<step3>The emotion is {'positive' if label in POSITIVE else 'negative'}.</step3>\n\\boxed{{{label}}}")


def _distractor_colour(rng):
    """A random colour at least VIDEO_DEMO_DISTRACTOR_GAP away from every class colour."""
    while True:
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        if all(sum((a - b) ** 2 for a, b in zip(colour, rgb)) >= VIDEO_DEMO_DISTRACTOR_GAP ** 2
               for rgb in VIDEO_DEMO_COLOURS.values()):
            return colour


def make_video_demo_clip(label, rng, frames=8, size=56):
    """`frames` size x size RGB frames: the first frames // 2 on the label's first colour, the rest on its
    second (each jittered per clip, with a slight per-frame flicker), and 1-3 small shapes in
    non-class colours that drift across the clip."""
    first, second = (tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in VIDEO_DEMO_COLOURS[name])
                     for name in VIDEO_DEMO_CLASSES[label])
    shapes = []
    for _ in range(rng.randint(1, 3)):
        w, h = rng.randint(6, size // 4), rng.randint(6, size // 4)
        shapes.append((w, h, rng.randint(0, size - w), rng.randint(0, size - h), rng.randint(-4, 4),
                       rng.randint(-4, 4), _distractor_colour(rng), rng.random() < 0.5))
    clip = []
    for k in range(frames):
        flicker = rng.randint(-5, 5)
        background = tuple(min(255, max(0, c + flicker)) for c in (first if k < frames // 2 else second))
        image = Image.new("RGB", (size, size), background)
        draw = ImageDraw.Draw(image)
        for w, h, x, y, dx, dy, colour, round_ in shapes:
            x, y = (x + k * dx) % (size - w + 1), (y + k * dy) % (size - h + 1)  # drifts, wrapping round
            (draw.ellipse if round_ else draw.rectangle)([x, y, x + w - 1, y + h - 1], fill=colour)
        clip.append(image)
    return clip


def make_video_demo_dataset(out_dir=VIDEO_DEMO_DIR, num_train=256, num_test=64, seed=0, frames=8, size=56):
    """Write the video demo dataset: train.jsonl, test.jsonl, frames/<clip>/<k>.png, labels.txt.

    A row: {"videos": [["frames/train_00000/0.png", ..., "frames/train_00000/7.png"]], "problem":
    "<video>What emotion ...? Choose one of: amusement, anger, contentment, sadness.", "answer": label,
    "response": video_demo_response(label), "response_r1_omni": video_demo_response(label, "r1-omni")}; frame
    paths are relative to the data file. At the defaults a
    clip is 16 video tokens ((8 / 2) temporal patches x (56 / 28)^2) if the video processor is told to keep
    56x56 frames (min_pixels 56 * 56: its own default, 128 * 28 * 28 per frame, upscales them to 336x336,
    576 tokens), and the colour changes between two temporal patches, never inside one. Classes are
    balanced per split. Returns the folder; rebuilt only when missing or made with other settings
    (video-demo.json, written last, records them).
    """
    if frames < 2 or size < 28:
        raise ValueError(f"a video demo clip needs at least 2 frames of at least 28x28 pixels, not {frames} of {size}")
    out_dir = Path(out_dir)
    labels = list(VIDEO_DEMO_CLASSES)
    recipe = json.loads(json.dumps({"classes": VIDEO_DEMO_CLASSES, "colours": VIDEO_DEMO_COLOURS,
                                    "num_train": num_train, "num_test": num_test, "seed": seed, "frames": frames,
                                    "size": size, "version": 2}))
    done = out_dir / "video-demo.json"
    if done.exists():
        if json.loads(done.read_text()) == recipe:
            return out_dir  # already built with these settings
        import shutil
        shutil.rmtree(out_dir / "frames", ignore_errors=True)  # ours (the recipe says so): no stale frames left
    for name in ("train.jsonl", "test.jsonl", "labels.txt", "video-demo.json"):
        (out_dir / name).unlink(missing_ok=True)
    rng = random.Random(seed)
    question = VIDEO_DEMO_QUESTION.format(labels=", ".join(labels))
    for split, count in (("test", num_test), ("train", num_train)):  # video-demo.json, written last, marks "done"
        split_labels = [labels[i % len(labels)] for i in range(count)]
        rng.shuffle(split_labels)
        rows = []
        for i, label in enumerate(split_labels):
            clip = f"frames/{split}_{i:05d}"
            (out_dir / clip).mkdir(parents=True, exist_ok=True)
            paths = []
            for k, image in enumerate(make_video_demo_clip(label, rng, frames, size)):
                paths.append(f"{clip}/{k}.png")
                image.save(out_dir / paths[-1])
            rows.append({"videos": [paths], "problem": question, "answer": label,
                         "response": video_demo_response(label),
                         "response_r1_omni": video_demo_response(label, "r1-omni")})
        (out_dir / "labels.txt").write_text("\n".join(labels) + "\n")
        data.write_jsonl(out_dir / f"{split}.jsonl", rows)
    done.write_text(json.dumps(recipe))  # written last: marks the folder complete
    return out_dir


# --- command line -------------------------------------------------------------------------------

def demo_paths(model=None, files=()):
    """What --demo trains on, built once by rank 0 of the process group (every rank waits): only what the
    run uses, so --demo with your own --model or --train-files leaves the repository's .cache alone.
    Without arguments both are built. Returns (model_dir, data_dir)."""
    import torch.distributed as dist
    if dist.get_rank() == 0:
        if model is None or Path(model).resolve() == DEFAULT_DIR.resolve():
            build_tiny_model(DEFAULT_DIR)
        if model is None or any(f and Path(f).resolve().parent == DEMO_DIR.resolve() for f in files):
            make_demo_dataset(DEMO_DIR)
        if any(f and Path(f).resolve().parent == VIDEO_DEMO_DIR.resolve() for f in files):
            make_video_demo_dataset(VIDEO_DEMO_DIR)  # asked for by name (demo.sh --video)
    dist.barrier()
    return DEFAULT_DIR, DEMO_DIR


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(DEFAULT_DIR), help="folder to write (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    parser.add_argument("--init-std", type=float, default=0.2, help="std of the random weights (default: 0.2)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if the folder exists")
    sub = parser.add_subparsers(dest="command", title="command (optional)",
                                description="none: build the tiny model (the options above); demo: the demo "
                                            "dataset; video-demo: the video demo dataset")
    demo = sub.add_parser("demo", help="write the demo dataset (train.jsonl, test.jsonl, images/, labels.txt)",
                          description=make_demo_dataset.__doc__)
    demo.add_argument("--out", dest="demo_out", metavar="OUT", default=str(DEMO_DIR),
                      help="folder to write (default: %(default)s)")
    demo.add_argument("--num-train", type=int, default=256, help="training rows (default: %(default)s)")
    demo.add_argument("--num-test", type=int, default=64, help="test rows (default: %(default)s)")
    demo.add_argument("--seed", dest="demo_seed", metavar="SEED", type=int, default=0,
                      help="seed of the images (default: 0)")
    video = sub.add_parser("video-demo", help="write the video demo dataset (train.jsonl, test.jsonl, frames/, "
                           "labels.txt)", description=make_video_demo_dataset.__doc__)
    video.add_argument("--out", dest="video_out", metavar="OUT", default=str(VIDEO_DEMO_DIR),
                       help="folder to write (default: %(default)s)")
    video.add_argument("--num-train", type=int, default=256, help="training clips (default: %(default)s)")
    video.add_argument("--num-test", type=int, default=64, help="test clips (default: %(default)s)")
    video.add_argument("--seed", dest="demo_seed", metavar="SEED", type=int, default=0,
                       help="seed of the clips (default: 0)")
    video.add_argument("--frames", type=int, default=8, help="frames per clip (default: %(default)s)")
    video.add_argument("--size", type=int, default=56, help="frame width and height in pixels (default: %(default)s)")
    args = parser.parse_args()
    if args.command == "video-demo":
        path = make_video_demo_dataset(args.video_out, args.num_train, args.num_test, seed=args.demo_seed,
                                       frames=args.frames, size=args.size)
        print(f"video demo dataset at {path}")
        return
    if args.command == "demo":
        path = make_demo_dataset(args.demo_out, args.num_train, args.num_test, seed=args.demo_seed)
        print(f"demo dataset at {path}")
        return
    path = build_tiny_model(args.out, seed=args.seed, init_std=args.init_std, overwrite=args.overwrite)
    print(f"tiny Qwen2.5-VL at {path} ({json.loads((path / 'tiny.json').read_text())['parameters']:,} parameters)")


if __name__ == "__main__":
    main()
