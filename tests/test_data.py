"""Tests for data.py: real files written to tmp_path, the tiny model's real processor, no mocks."""

import io
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import data
import rewards

MIN_PIXELS = 28 * 28 * 4  # = 3136, the Qwen2.5-VL processor's own floor (shortest_edge)
MAX_PIXELS = 28 * 28 * 64  # small, so every test image is resized and the suite stays fast
PROCESSOR_PIXELS = (56 * 56, 28 * 28 * 16384)  # the Qwen2.5-VL processor's own range, the tiny model's too

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
VISION = "<|vision_start|><|image_pad|><|vision_end|>"
ASSISTANT = "<|im_end|>\n<|im_start|>assistant\n"
# prompts/set.txt with "Which emotion?" as {content}, copied by hand (not read from the file)
SET_BODY = (
    "Which emotion?\n\nYou First think the emotional meaning step by step, and then provide the final answer.\n\n"
    "The reasoning process MUST follow the structure below:\n"
    "<step1>Identify what in the scene could trigger emotion (action, face, environment).</step1>\n"
    "<step2>Describe how a human would feel about it.</step2>\n"
    "<step3>Conclude if the emotion is positive or negative, and if it's high or low arousal.</step3>\n\n"
    "The final answer MUST BE put in \\boxed{}."
)
# prompts/think.txt with "Which emotion?" as {content}
THINK_BODY = (
    "Which emotion? You FIRST think about the reasoning process as an internal monologue and then provide the "
    "final answer. The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST BE "
    "put in \\boxed{}."
)
REPO = Path(__file__).resolve().parents[1]
EMOSET = ["amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness"]


# --- helpers: small real images and data files ------------------------------------------------------

def make_image(size, mode="RGB", seed=0):
    """A noisy image (noise so PNGs do not compress to a few bytes; truncation then cuts pixel data)."""
    width, height = size
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode == "RGBA":
        image.putalpha(128)
    elif mode == "P":
        image = image.quantize(16)
    elif mode != "RGB":
        image = image.convert(mode)
    return image


def png_bytes(size=(40, 30), mode="RGB", seed=0):
    buffer = io.BytesIO()
    make_image(size, mode, seed).save(buffer, format="PNG")
    return buffer.getvalue()


def save_image(path, size=(40, 30), mode="RGB", seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    make_image(size, mode, seed).save(path)
    return path


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def load(path, processor, **kwargs):
    settings = dict(template="set", labels="emoset", min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    settings.update(kwargs)
    return data.PromptDataset(path, processor, **settings)


def check_prompt_matches_processor(processor, prompt):
    """The checks of the acceptance test, for one prompt: resize once, token counts agree everywhere."""
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for image in prompt.images:
        assert isinstance(image, Image.Image) and image.mode == "RGB"
        assert image.width % 28 == 0 and image.height % 28 == 0, image.size
        # the processor's own range (the reference's rounding can step a little outside [MIN_PIXELS, MAX_PIXELS])
        assert PROCESSOR_PIXELS[0] <= image.width * image.height <= PROCESSOR_PIXELS[1], image.size
    encoded = data.encode(processor, [prompt])
    input_ids = encoded["input_ids"][0].tolist()
    expected_pads = sum((im.height // 14) * (im.width // 14) // 4 for im in prompt.images)
    assert input_ids.count(pad) == expected_pads
    assert int(encoded["image_grid_thw"].prod(-1).sum()) // 4 == expected_pads
    # the processor kept our resized size: no second resize between trainer and vLLM
    assert encoded["image_grid_thw"].tolist() == [[1, im.height // 14, im.width // 14] for im in prompt.images]
    assert prompt.num_tokens == encoded["input_ids"].shape[1]
    assert prompt.prompt_ids == processor.tokenizer(prompt.text, add_special_tokens=False)["input_ids"]
    assert prompt.prompt_ids.count(pad) == len(prompt.images)  # unexpanded: one pad per image


def mixed_jsonl(tmp_path):
    """JSONL rows with a path string, a list of one path, and two images in a list; assorted modes."""
    save_image(tmp_path / "a.png", (30, 20), "RGBA", seed=1)  # 600 px: must be upscaled to >= MIN_PIXELS
    save_image(tmp_path / "sub" / "b.jpg", (500, 400), "L", seed=2)  # grey JPEG, must be downscaled
    save_image(tmp_path / "c.png", (100, 60), "P", seed=3)  # palette
    save_image(tmp_path / "d.png", (301, 97), "RGB", seed=4)
    path = write_jsonl(tmp_path / "train.jsonl", [
        {"images": "a.png", "problem": "<image>Which emotion?", "answer": "fear"},
        {"images": ["sub/b.jpg"], "problem": "<image>Which emotion?", "answer": "awe"},
        {"images": ["c.png", "d.png"], "problem": "<image> and <image>: which emotion?", "answer": "anger"},
    ])
    return path, [1, 1, 2], ["fear", "awe", "anger"], [f"{path}:1", f"{path}:2", f"{path}:3"]


def mixed_parquet(tmp_path):
    """Parquet files (one image layout per file, as pyarrow columns have one type): HF image dicts
    (bytes, and path-only beside the file), raw bytes, and a list of dicts."""
    folder = tmp_path / "pq"
    save_image(folder / "side.png", (64, 64), seed=5)
    a = write_parquet(folder / "a.parquet", [
        {"images": {"bytes": png_bytes((50, 40), seed=6), "path": None}, "problem": "<image>Which emotion?",
         "answer": "joy"},
        {"images": {"bytes": None, "path": "side.png"}, "problem": "<image>Which emotion?", "answer": "sad"},
    ])
    b = write_parquet(folder / "b.parquet", [
        {"images": png_bytes((90, 70), "RGBA", seed=7), "problem": "<image>Which emotion?", "answer": "joy"},
    ])
    c = write_parquet(folder / "c.parquet", [
        {"images": [{"bytes": png_bytes((40, 40), seed=8), "path": None},
                    {"bytes": png_bytes((300, 250), "L", seed=9), "path": None}],
         "problem": "<image><image>Which emotion?", "answer": "sad"},
    ])
    (folder / "labels.txt").write_text("joy\nsad\n")
    return folder, [1, 1, 1, 2], ["joy", "sad", "joy", "sad"], [f"{a}:1", f"{a}:2", f"{b}:1", f"{c}:1"]


# --- loading and the processor ------------------------------------------------------------------

@pytest.mark.parametrize("make", [mixed_jsonl, mixed_parquet], ids=["jsonl", "parquet"])
def test_image_layouts_load_and_token_counts_match_processor(tmp_path, processor, make):
    """Trainer and vLLM would see different images or prompt lengths if any image layout loaded wrong
    or the processor resized our already-resized images again."""
    path, image_counts, answers, wheres = make(tmp_path)
    labels = None if make is mixed_parquet else "emoset"  # parquet folder: labels.txt beside the files
    dataset = load(path, processor, labels=labels)
    assert len(dataset) == len(answers)
    prompts = dataset.get_batch(range(len(dataset)))
    assert [len(p.images) for p in prompts] == image_counts
    assert [p.answer for p in prompts] == answers
    assert [p.where for p in prompts] == wheres
    assert [p.index for p in prompts] == list(range(len(answers)))
    for prompt in prompts:
        check_prompt_matches_processor(processor, prompt)
    # a padded batch of all prompts still carries exactly the images' tokens
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    encoded = data.encode(processor, prompts)
    assert int((encoded["input_ids"] == pad).sum()) == sum(
        (im.height // 14) * (im.width // 14) // 4 for p in prompts for im in p.images)
    assert encoded["input_ids"].shape[1] == max(p.num_tokens for p in prompts)


def test_resize_follows_reference_bounds(tmp_path, processor):
    """min_pixels / max_pixels would be ignored if small images were not upscaled and big ones not shrunk
    as the released pipeline does (EasyR1's int(side * sqrt(limit / (w*h))), then the processor rounding
    each side to a multiple of 28 in its own range [3136, 12845056]), worked out by hand."""
    path, *_ = mixed_jsonl(tmp_path)
    dataset = load(path, processor)
    # 30x20 = 600 < 3136: sqrt(3136/600) = 2.2862 -> int(68.59) = 68, int(45.72) = 45; processor:
    # round(68/28 = 2.43) = 2 -> 56, round(45/28 = 1.61) = 2 -> 56; 56*56 = 3136 is in range -> 56x56
    # (qwen-vl-utils' smart_resize gives 84x56)
    assert dataset[0].images[0].size == (56, 56)
    # 500x400 = 200000 > 50176: sqrt(50176/200000) = 0.50088 -> int(250.44) = 250, int(200.35) = 200;
    # processor: round(250/28 = 8.93) = 9 -> 252, round(200/28 = 7.14) = 7 -> 196 -> 252x196 (qwen-vl-utils: 224x196)
    assert dataset[1].images[0].size == (252, 196)


def test_image_dir_resolves_relative_paths(tmp_path, processor):
    """Datasets whose images live elsewhere (EasyR1's image_dir) would not load if relative paths ignored it."""
    save_image(tmp_path / "pictures" / "x.png", (60, 60))
    path = write_jsonl(tmp_path / "meta" / "train.jsonl",
                       [{"images": ["x.png"], "problem": "<image>Which emotion?", "answer": "awe"}])
    with pytest.raises(data.DataError, match="x.png"):
        load(path, processor)[0]
    prompt = load(path, processor, image_dir=tmp_path / "pictures")[0]
    assert prompt.images[0].size == (56, 56)


# --- prompt text --------------------------------------------------------------------------------

@pytest.mark.parametrize("template, body", [
    ("set", SET_BODY),
    ("think", THINK_BODY),
    ("none", "Which emotion?"),
], ids=["set", "think", "none"])
def test_rendered_prompt_text(tmp_path, processor, template, body):
    """The policy would be trained on a different prompt than EMO-R3's if the chat text differed."""
    save_image(tmp_path / "a.png")
    path = write_jsonl(tmp_path / "train.jsonl", [
        {"images": ["a.png"], "problem": "<image>Which emotion?", "answer": "fear"},
        {"images": ["a.png"], "problem": "Which emotion?", "answer": "fear"},  # no tag: image goes first
    ])
    dataset = load(path, processor, template=template)
    expected = SYSTEM + VISION + body + ASSISTANT
    assert dataset[0].text == expected
    assert dataset[1].text == expected


def test_image_tags_prepended_or_checked(tmp_path, processor):
    """Images would be dropped or misplaced if untagged problems did not get them in front, or if a
    tag/image count mismatch reached the processor instead of naming the row (at load: no decoding needed)."""
    save_image(tmp_path / "a.png")
    save_image(tmp_path / "b.png", seed=1)
    path = write_jsonl(tmp_path / "train.jsonl", [
        {"images": ["a.png", "b.png"], "problem": "Which emotion?", "answer": "fear"},
        {"images": ["a.png"], "problem": "<image> or <image>?", "answer": "fear"},
    ])
    with pytest.raises(data.DataError) as error:
        load(path, processor, template="none")
    assert str(error.value).startswith(f"{path}:2: the problem has 2 <image> tags but the row has 1 images")
    dataset = load(path, processor, template="none", skip_bad=True)
    assert dataset.skipped == [(f"{path}:2", "the problem has 2 <image> tags but the row has 1 images")]
    assert dataset[0].text == SYSTEM + VISION + VISION + "Which emotion?" + ASSISTANT
    check_prompt_matches_processor(processor, dataset[0])


# --- bad images ---------------------------------------------------------------------------------

def bad_image_rows(tmp_path):
    """A JSONL whose rows 2-6 each have one unusable image; rows 1 and 7 are good."""
    save_image(tmp_path / "good.png")
    (tmp_path / "random.png").write_bytes(random.Random(0).randbytes(300))
    whole = png_bytes((64, 64), seed=3)
    (tmp_path / "truncated.png").write_bytes(whole[:len(whole) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    save_image(tmp_path / "banner.png", (1000, 4))  # aspect ratio 250 > qwen-vl-utils' limit of 200
    names = ["good.png", "random.png", "truncated.png", "missing.png", "empty.png", "banner.png", "good.png"]
    rows = [{"images": [name], "problem": "<image>Which emotion?", "answer": "fear"} for name in names]
    return write_jsonl(tmp_path / "train.jsonl", rows), names


def test_bad_image_names_file_row_and_image(tmp_path, processor):
    """Users could not find a broken image in a large dataset if the error did not name file, row and
    image, or if it surfaced as some exception deep inside PIL or the processor."""
    path, names = bad_image_rows(tmp_path)
    dataset = load(path, processor)
    assert len(dataset) == 7  # images are only opened when a row is used
    for index in range(1, 6):
        with pytest.raises(data.DataError) as error:
            dataset[index]
        message = str(error.value)
        assert message.startswith(f"{path}:{index + 1}: cannot use image {names[index]}"), message
    assert len(dataset[6].images) == 1


def test_skip_bad_images_counts_each_row(tmp_path, processor):
    """Bad images would stop training or vanish silently if skip_bad did not drop and record each bad row."""
    path, names = bad_image_rows(tmp_path)
    dataset = load(path, processor, skip_bad=True)
    prompts = dataset.get_batch(range(len(dataset)))
    assert [p.index for p in prompts] == [0, 6]
    assert [where for where, _ in dataset.skipped] == [f"{path}:{n}" for n in range(2, 7)]
    for (_, reason), name in zip(dataset.skipped, names[1:6]):
        assert name in reason
    with pytest.raises(data.DataError, match=f"{path}:2"):
        load(path, processor).get_batch([0, 1])  # without skip_bad the batch fails on the bad row


def test_bad_parquet_image_names_file_and_row(tmp_path, processor):
    """Parquet datasets with a corrupt embedded image would fail without naming the row."""
    path = write_parquet(tmp_path / "train.parquet", [
        {"images": {"bytes": png_bytes(), "path": None}, "problem": "<image>Which emotion?", "answer": "awe"},
        {"images": {"bytes": b"not an image", "path": None}, "problem": "<image>Which emotion?", "answer": "awe"},
    ])
    dataset = load(path, processor)
    assert len(dataset[0].images) == 1
    with pytest.raises(data.DataError, match=f"{path}:2: cannot use image <dict image>"):
        dataset[1]


# --- labels and problems ------------------------------------------------------------------------

def test_label_outside_set(tmp_path, processor):
    """A typo in a label would train on an answer the reward can never give if it were not caught."""
    save_image(tmp_path / "a.png")
    path = write_jsonl(tmp_path / "train.jsonl", [
        {"images": ["a.png"], "problem": "<image>Which emotion?", "answer": "fear"},
        {"images": ["a.png"], "problem": "<image>Which emotion?", "answer": "boredom"},
        {"images": ["a.png"], "problem": "<image>Which emotion?", "answer": "Fear"},  # case-insensitive
    ])
    with pytest.raises(data.DataError) as error:
        load(path, processor)
    assert str(error.value).startswith(f"{path}:2: label 'boredom' is not in the label set")
    dataset = load(path, processor, skip_bad=True)
    assert [row.answer for row in dataset.rows] == ["fear", "Fear"]
    assert len(dataset.skipped) == 1
    assert dataset.skipped[0][0] == f"{path}:2" and "'boredom'" in dataset.skipped[0][1]


def test_labels_from_labels_txt_else_distinct_answers(tmp_path, processor):
    """A researcher's own label set would be ignored or reordered if labels.txt beside the data or the
    sorted distinct answers were not used when no labels are given."""
    save_image(tmp_path / "own" / "a.png")
    rows = [{"images": ["a.png"], "problem": "<image>Which emotion?", "answer": answer}
            for answer in ["joy", "anger", "joy"]]
    path = write_jsonl(tmp_path / "own" / "train.jsonl", rows)
    assert load(path, processor, labels=None).labels == ["anger", "joy"]
    (tmp_path / "own" / "labels.txt").write_text("joy\nanger\ncalm\n")
    assert load(path, processor, labels=None).labels == ["joy", "anger", "calm"]
    assert load(path, processor, labels="emotion6").labels == rewards.load_labels("emotion6")  # explicit wins
    (tmp_path / "mine.txt").write_text("joy\n\nanger\n")  # blank lines ignored
    assert load(path, processor, labels=str(tmp_path / "mine.txt")).labels == ["joy", "anger"]


def test_empty_or_missing_problem_or_images(tmp_path, processor):
    """Rows with no question or no image would reach the model as broken prompts if not caught."""
    save_image(tmp_path / "a.png")
    path = write_jsonl(tmp_path / "train.jsonl", [
        {"images": ["a.png"], "problem": "<image>Which emotion?", "answer": "fear"},
        {"images": ["a.png"], "problem": "", "answer": "fear"},
        {"images": ["a.png"], "problem": "   ", "answer": "fear"},
        {"images": ["a.png"], "answer": "fear"},
        {"images": [], "problem": "<image>Which emotion?", "answer": "fear"},
    ])
    with pytest.raises(data.DataError, match=f"{path}:2: empty or missing 'problem'"):
        load(path, processor)
    dataset = load(path, processor, skip_bad=True)
    assert len(dataset) == 1
    assert dataset.skipped == [
        (f"{path}:2", "empty or missing 'problem'"),
        (f"{path}:3", "empty or missing 'problem'"),
        (f"{path}:4", "empty or missing 'problem'"),
        (f"{path}:5", "no image in 'images'"),
    ]


def test_no_usable_rows(tmp_path, processor):
    """A dataset where every row was skipped would start a run with nothing to train on."""
    save_image(tmp_path / "a.png")
    path = write_jsonl(tmp_path / "train.jsonl", [
        {"images": ["a.png"], "problem": "<image>Which emotion?", "answer": "boredom"},
        {"images": ["a.png"], "problem": "<image>Which emotion?", "answer": "calm"},
    ])
    with pytest.raises(data.DataError, match=r"no usable rows \(2 skipped, 0 over max_prompt_length=2048\)"):
        load(path, processor, skip_bad=True)


def test_prompt_longer_than_max_prompt_length(tmp_path, processor):
    """Over-long prompts would be truncated or overflow the rollout budget if the limit were off by one,
    or, unlike the reference's filter_overlong_prompts, not dropped at load and listed."""
    save_image(tmp_path / "a.png", (200, 200))
    path = write_jsonl(tmp_path / "train.jsonl",
                       [{"images": ["a.png"], "problem": "<image>Which emotion?", "answer": "fear"}] * 2)
    length = load(path, processor)[0].num_tokens
    at_limit = load(path, processor, max_prompt_length=length)
    assert len(at_limit) == 2 and at_limit.dropped_long == [] and at_limit[1].num_tokens == length
    with pytest.raises(data.DataError) as error:
        load(path, processor, max_prompt_length=length - 1)
    assert str(error.value) == f"{path}: no usable rows (0 skipped, 2 over max_prompt_length={length - 1})"


def test_bad_settings(tmp_path, processor):
    """A misspelt template or swapped pixel limits would fail later and less clearly if not refused."""
    save_image(tmp_path / "a.png")
    path = write_jsonl(tmp_path / "train.jsonl",
                       [{"images": ["a.png"], "problem": "<image>Which emotion?", "answer": "fear"}])
    with pytest.raises(ValueError, match="template must be"):
        load(path, processor, template="SET")
    with pytest.raises(ValueError, match="min_pixels"):
        load(path, processor, min_pixels=MAX_PIXELS + 1)


def test_min_pixels_below_processor_floor_is_consistent(tmp_path, processor):
    """Prompt.num_tokens and the images vLLM gets would disagree with what the trainer's processor
    encodes if min_pixels below the processor's own floor (3136) were accepted and then resized again."""
    save_image(tmp_path / "a.png", (20, 20))
    path = write_jsonl(tmp_path / "train.jsonl",
                       [{"images": ["a.png"], "problem": "<image>Which emotion?", "answer": "fear"}])
    try:
        dataset = load(path, processor, min_pixels=28 * 28, max_pixels=28 * 28 * 4)
    except ValueError as error:  # refusing the setting up front is a fine fix too
        assert "min_pixels" in str(error)
        return
    prompt = dataset[0]
    encoded = data.encode(processor, [prompt])
    image = prompt.images[0]
    assert encoded["image_grid_thw"].tolist() == [[1, image.height // 14, image.width // 14]]
    assert prompt.num_tokens == encoded["input_ids"].shape[1]


# --- other layouts ------------------------------------------------------------------------------

def test_class_folder_layout(tmp_path, processor):
    """FI-style datasets (one folder per emotion) would not load or get wrong labels/questions."""
    root = tmp_path / "fi"
    save_image(root / "anger" / "1.png", seed=1)
    save_image(root / "anger" / "2.jpg", seed=2)
    save_image(root / "joy" / "3.PNG", seed=3)
    (root / "joy" / "notes.txt").write_text("not an image")
    dataset = load(root, processor, labels=None, template="none")
    assert dataset.labels == ["anger", "joy"]
    assert [row.answer for row in dataset.rows] == ["anger", "anger", "joy"]
    question = "<image>What emotion does this image evoke? Choose one of: anger, joy."
    assert [row.problem for row in dataset.rows] == [question] * 3
    prompts = dataset.get_batch(range(3))
    assert [p.where for p in prompts] == [str(root / "anger" / "1.png"), str(root / "anger" / "2.jpg"),
                                          str(root / "joy" / "3.PNG")]
    assert prompts[2].text == (SYSTEM + VISION + "What emotion does this image evoke? Choose one of: anger, joy."
                               + ASSISTANT)
    check_prompt_matches_processor(processor, prompts[0])


def test_parquet_folder_split(tmp_path, processor):
    """Hugging Face style folders (data/train-00000.parquet) would mix splits if @split were ignored."""
    root = tmp_path / "hf"

    def rows(answers):
        return [{"images": {"bytes": png_bytes(seed=i), "path": None}, "problem": "<image>Which emotion?",
                 "answer": answer} for i, answer in enumerate(answers)]

    train = write_parquet(root / "data" / "train-00000.parquet", rows(["fear", "awe", "anger"]))
    write_parquet(root / "data" / "test-00000.parquet", rows(["sadness", "sadness"]))
    dataset = load(f"{root}@train", processor)
    assert [row.answer for row in dataset.rows] == ["fear", "awe", "anger"]
    assert [row.where for row in dataset.rows] == [f"{train}:{n}" for n in (1, 2, 3)]
    assert [row.answer for row in load(f"{root}@test", processor).rows] == ["sadness", "sadness"]
    assert len(load(root, processor)) == 5
    with pytest.raises(data.DataError, match="@validation"):
        load(f"{root}@validation", processor)


def test_bad_data_files(tmp_path, processor):
    """Users would get a bare traceback instead of the file (and line) at fault for unreadable data files."""
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(data.DataError, match=f"{missing}: no such file"):
        load(missing, processor)
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"images": "a.png", "problem": "<image>x", "answer": "fear"}\n{"images": oops}\n')
    with pytest.raises(data.DataError, match=f"{bad_json}:2: not valid JSON"):
        load(bad_json, processor)
    not_object = tmp_path / "list.jsonl"
    not_object.write_text("\n[1, 2]\n")  # blank line 1: the row number is the line number
    with pytest.raises(data.DataError, match=f"{not_object}:2: expected an object"):
        load(not_object, processor)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(random.Random(0).randbytes(500))
    with pytest.raises(data.DataError, match=f"{garbage}: cannot read parquet file"):
        load(garbage, processor)
    not_list = tmp_path / "rows.json"
    not_list.write_text('{"images": "a.png"}')
    with pytest.raises(data.DataError, match=f"{not_list}: expected a JSON list"):
        load(not_list, processor)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(data.DataError, match=f"{empty_dir}: no .jsonl"):
        load(empty_dir, processor)


def test_json_list_file(tmp_path, processor):
    """EasyR1-style .json files (a list of rows) would not load, or rows would be misnumbered."""
    save_image(tmp_path / "a.png")
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{"images": ["a.png"], "problem": "<image>Which emotion?", "answer": "awe"},
                                {"images": ["a.png"], "problem": "", "answer": "awe"}]))
    dataset = load(path, processor, skip_bad=True)
    assert [row.where for row in dataset.rows] == [f"{path}:1"]
    assert dataset.skipped == [(f"{path}:2", "empty or missing 'problem'")]


def test_non_utf8_jsonl_names_the_file(tmp_path, processor):
    """A Latin-1 JSONL (common for hand-made datasets) would fail with a bare UnicodeDecodeError that
    names no file if decoding errors were not turned into a DataError."""
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"images": "a.png", "problem": "<image>caf\xe9?", "answer": "fear"}\n'.encode("latin-1"))
    with pytest.raises(data.DataError, match=str(path)):
        load(path, processor)


# --- batching -----------------------------------------------------------------------------------

STEP_CASES = [(10, 3, step, seed, shuffle) for step in (0, 4, 7) for seed in (0, 7) for shuffle in (True, False)]


def test_step_indices():
    """Resumed runs would see different prompts, or an epoch would repeat/skip rows, if step_indices
    were not a pure, epoch-covering function of (seed, step): the same in a fresh process (a resumed
    run, another rank) as here, whatever its hash seed (str hashes) or global RNG state."""
    here = [data.step_indices(*case) for case in STEP_CASES]
    code = f"import json, data; print(json.dumps([data.step_indices(*c) for c in {STEP_CASES!r}]))"
    seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"  # never this process's hash seed
    fresh = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONHASHSEED": seed},
                           capture_output=True, text=True, timeout=120)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert json.loads(fresh.stdout) == here
    num_rows, batch_size = 10, 3  # 3 steps per epoch, one row dropped per epoch
    epoch1 = [data.step_indices(num_rows, batch_size, step, seed=7) for step in range(3)]
    epoch2 = [data.step_indices(num_rows, batch_size, step, seed=7) for step in range(3, 6)]
    for epoch in (epoch1, epoch2):
        assert all(len(batch) == batch_size for batch in epoch)
        flat = [i for batch in epoch for i in batch]
        assert len(set(flat)) == len(flat) == 9  # disjoint steps; each row at most once per epoch
        assert set(flat) <= set(range(num_rows))
    assert epoch1 != epoch2
    assert epoch1 != [data.step_indices(num_rows, batch_size, step, seed=8) for step in range(3)]
    unshuffled = [data.step_indices(num_rows, batch_size, step, seed=7, shuffle=False) for step in range(4)]
    assert unshuffled == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [0, 1, 2]]
    with pytest.raises(data.DataError, match="fewer than one batch of 4"):
        data.step_indices(3, 4, 0, seed=0)


def test_rank_slice():
    """GRPO groups would be split across ranks, or prompts dropped, if rank_slice were uneven."""
    items = list(range(8))
    assert [data.rank_slice(items, rank, 4) for rank in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert data.rank_slice(items, 0, 1) == items
    with pytest.raises(ValueError, match="8 prompts do not split evenly over 3 ranks"):
        data.rank_slice(items, 0, 3)


# --- the demo dataset (tiny.py writes it; test_tiny.py checks the generator) --------------------

def test_demo_dataset_layout_and_loading(demo_dir, processor):
    """The CPU demo would not run, or could not be learnt, if its files, balance or labels were wrong."""
    demo_labels = ["amusement", "anger", "contentment", "sadness"]  # four Mikels emotions
    assert (demo_dir / "labels.txt").read_text() == "\n".join(demo_labels) + "\n"
    train = [json.loads(line) for line in (demo_dir / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (demo_dir / "test.jsonl").read_text().splitlines()]
    assert Counter(row["answer"] for row in train) == {label: 16 for label in demo_labels}
    assert Counter(row["answer"] for row in test) == {label: 4 for label in demo_labels}
    # every row carries the SET answer a cold start imitates, naming its own label last
    assert all(row["response"].endswith("\\boxed{" + row["answer"] + "}") for row in train)
    dataset = load(demo_dir / "train.jsonl", processor, labels=None, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    assert dataset.labels == demo_labels
    assert dataset[0].response == train[0]["response"]
    assert len(dataset) == 64
    check_prompt_matches_processor(processor, dataset[0])
    assert len(load(demo_dir / "test.jsonl", processor, labels=None)) == 16
