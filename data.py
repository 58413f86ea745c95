"""Datasets for EMO-R3: read rows, open and resize images once, resolve labels, render prompts, batch.

The data layout is EasyR1's (and so EMO-R3's, e.g. fuyyy74/EmoSet2k): one row per image with
- `images`:  a file path (relative to the data file or `--image-dir`), raw bytes, a `{"bytes", "path"}`
             dict (the Hugging Face parquet image feature), or a list of those;
- `problem`: the question; `<image>` marks where the image goes (prepended when absent);
- `answer`:  the emotion label, one of the label set.
Supported files: `.jsonl`, `.json` (a list of rows), `.parquet`, a folder of such files (`DIR@split`
keeps the files whose name contains `split`, like `data/train-00000.parquet`), and a folder with one
sub-folder of images per class (FI style; the sub-folder name is the label).

The label set comes from `labels=` (a name in prompts/labels/ or a file, one label per line), else a
`labels.txt` beside the data, else the sorted distinct answers. Nothing here assumes EmoSet's labels.

Each prompt's images are opened and resized once, straight to the size the model sees in the released
pipeline (`reference_size`), and kept on the `Prompt`: trainer and vLLM get the same pixels. Rows whose
prompt (image tokens included) is over max_prompt_length are dropped at load (image sizes read from the
headers, nothing decoded) and listed in `dropped_long`. A bad row (unreadable image, label outside the
set, empty problem) raises `DataError` naming file and row, or with `skip_bad=True` is counted in `skipped`.

Not here, on purpose: the embedded demo dataset (tiny.py, with the tiny model: `python tiny.py demo`)
and the converters of the public releases EmoSet, Emotion6, WebEmo and FI (prepare_data.py:
`python prepare_data.py emoset SRC --out OUT`). Both import this module; this module imports neither.

    python data.py check train.jsonl --model MODEL --labels emoset   # validate a dataset, print statistics
    python tiny.py && python tiny.py demo     # the tiny model and the demo data, then check the demo data:
    python data.py check .cache/demo/train.jsonl --model .cache/tiny-qwen2.5-vl
"""

import argparse
import io
import json
import math
import random
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

import rewards

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DEFAULT_QUESTION = "<image>What emotion does this image evoke? Choose one of: {labels}."
SKIP_HINT = "(pass skip_bad / --skip-bad-rows to skip such rows)"
QWEN_PIXELS = (56 * 56, 28 * 28 * 16384)  # the Qwen2/2.5-VL processors' own pixel range (preprocessor_config.json)


def default_question(labels):
    """DEFAULT_QUESTION for a label set: the problem of rows that bring none (class folders, converters, demo)."""
    return DEFAULT_QUESTION.replace("{labels}", ", ".join(labels))


class DataError(ValueError):
    """A problem with the user's data; the message names the file and row."""


@dataclass
class Row:
    """One dataset row as read from disk (images not opened yet)."""
    problem: str
    answer: str
    images: list  # image sources: paths, bytes, {"bytes", "path"} dicts or PIL images
    where: str  # "file:row" for error messages
    base_dir: Path  # relative image paths are resolved against this
    response: str = None  # optional target response (the `response` column), for sft.py


@dataclass
class Prompt:
    """A row made ready for the model: chat text, unexpanded token ids and the resized images."""
    index: int  # position in the dataset (stable: used as the prompt id in logs and predictions)
    problem: str
    answer: str
    text: str  # the chat-template text; each image is one unexpanded <|image_pad|>
    prompt_ids: list  # token ids of `text` (what vLLM takes, with `images`)
    images: list  # resized RGB PIL images, in order of appearance
    num_tokens: int = 0  # prompt length once the processor expands the image placeholders
    where: str = ""
    response: str = None  # the row's target response, if it has one (sft.py)


# --- reading and writing rows -------------------------------------------------------------------

def read_table(path):
    """Rows of one .jsonl / .json / .parquet file, as dicts with their 1-based row numbers."""
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq
            rows = pq.read_table(path).to_pylist()
        except Exception as e:
            raise DataError(f"{path}: cannot read parquet file: {e}") from e
        return list(enumerate(rows, 1))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        if path.read_bytes()[:4] == b"PAR1":  # parquet's magic number
            raise DataError(f"{path}: is a parquet file; rename it to {path.stem}.parquet") from e
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start}); re-save the file as UTF-8") from e
    if path.suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e}); use .jsonl for one row per line") from e
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of rows")
        return list(enumerate(rows, 1))
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON: {e}") from e
    return rows


def _class_folder_rows(root):
    """FI-style layout: root/<label>/<image>. The problem is the default question."""
    rows = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for image in sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            rows.append(Row(None, class_dir.name, [str(image)], str(image), root))
    return rows


def read_rows(path, image_dir=None, prompt_key="problem", answer_key="answer", image_key="images"):
    """All rows of a data file or folder (see the module docstring for the layouts)."""
    path, _, split = str(path).partition("@")
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in {".jsonl", ".json", ".parquet"}
                       and split in p.name and p.name != "labels.json")
        if not files:
            rows = _class_folder_rows(path)
            if not rows:
                raise DataError(f"{path}: no .jsonl/.json/.parquet files{' matching @' + split if split else ''} "
                                f"and no class sub-folders with images")
            return rows
    else:
        files = [path]
    rows = []
    for file in files:
        base_dir = Path(image_dir) if image_dir else file.parent
        for n, raw in read_table(file):
            where = f"{file}:{n}"
            if not isinstance(raw, dict):
                raise DataError(f"{where}: expected an object with {prompt_key!r}, {answer_key!r}, {image_key!r}")
            images = raw.get(image_key) or []
            images = images if isinstance(images, list) else [images]
            answer = raw.get(answer_key)
            rows.append(Row(raw.get(prompt_key), "" if answer is None else str(answer), images, where, base_dir,
                            raw.get("response")))
    if not rows:  # said here, or an empty file would surface later as "no labels" or "no usable rows"
        raise DataError(f"{path}: no rows" + ("" if files == [path] else f" in its {len(files)} data file(s)"))
    return rows


def resolve_labels(rows, labels=None, data_path=None):
    """The label set: given by name/file, else labels.txt beside the data, else the distinct answers."""
    if labels:
        return rewards.load_labels(labels)
    if data_path is not None:
        root = Path(str(data_path).partition("@")[0])
        beside = (root if root.is_dir() else root.parent) / "labels.txt"
        if beside.exists():
            return rewards.load_labels(str(beside))
    found = sorted({row.answer for row in rows if row.answer})
    if not found:
        raise DataError(f"{data_path}: no labels: every row's answer is empty")
    return found


def write_jsonl(path, rows):
    """Write dicts as a .jsonl file, through a .tmp file renamed at the end: a half-written file never
    looks like a dataset. Used by the writers of datasets (tiny.py's demo, prepare_data.py)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    tmp.rename(path)
    return path

# --- images -------------------------------------------------------------------------------------

def open_image(source, base_dir, size_only=False):
    """Decode one image source to an RGB PIL image (fully loaded, so truncation shows up here), or with
    size_only, return its (width, height) read from the header alone, no pixel decoded."""
    if isinstance(source, Image.Image):
        return source.size if size_only else to_rgb(source)
    if isinstance(source, dict):  # Hugging Face datasets' Image feature in parquet
        source = source.get("bytes") or source.get("path")
    if not source:  # "", None, b"", or a dict with neither bytes nor path
        raise OSError(f"empty image field {source!r}: no path and no bytes")
    if isinstance(source, (bytes, bytearray)):
        file = io.BytesIO(source)
    elif isinstance(source, str):
        file = Path(source) if Path(source).is_absolute() else Path(base_dir) / source
        if not file.is_file():  # a folder, or a named pipe that would block open() forever
            raise OSError(f"not a file: {file}" if file.exists() else f"no such file: {file}")
        if file.stat().st_size == 0:  # PIL would only say "cannot identify image file"
            raise OSError(f"empty file (0 bytes): {file}")
    else:
        raise OSError(f"unsupported image field {type(source).__name__}: {str(source)[:80]!r}")
    with warnings.catch_warnings():
        # Image.open reads only the header and refuses more than 2 * MAX_IMAGE_PIXELS; between 1x and
        # 2x it only warns, and load() would then decode it: make that an error too, before decoding
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(file)
    if size_only:
        image.close()
        return image.size
    image.load()
    return to_rgb(image)


def to_rgb(image):
    """RGB pixels as a viewer shows them: transparency composed on white, 16-bit grey scaled to 8 bits.

    qwen-vl-utils' to_rgb composes only RGBA on white and converts the rest with PIL, which drops the
    alpha of LA and of palette images with transparency (showing the hidden colour), and clips 16-bit
    grey (I;16, and I as Pillow opens 16-bit files) at 255, so a 16-bit photo comes out all white.
    """
    if image.mode == "I" or image.mode.startswith("I;16"):
        grey = np.asarray(image).astype(np.float64) / 257  # 0..65535 -> 0..255
        image = Image.fromarray(np.clip(np.round(grey), 0, 255).astype(np.uint8), "L")
    if image.has_transparency_data:  # RGBA, LA, PA, or a palette / grey / RGB image with a transparent colour
        rgba = image.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white
    return image.convert("RGB")  # also CMYK, P without transparency, L, 1, YCbCr


def reference_size(width, height, min_pixels, max_pixels, processor_pixels=QWEN_PIXELS):
    """(width, height) at which the model sees a width x height image in the released pipeline: EasyR1's
    process_image, then the processor's smart_resize (500x375 -> 591x443 -> 588x448). Images that the
    processor would refuse or resize again are refused naming their size, not later naming no row."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize
    w, h = width, height
    if w * h > max_pixels:  # EasyR1: both sides times sqrt(limit / (w*h)), each truncated with int()
        scale = math.sqrt(max_pixels / (w * h))
        w, h = int(w * scale), int(h * scale)
    if 0 < w * h < min_pixels:
        scale = math.sqrt(min_pixels / (w * h))
        w, h = int(w * scale), int(h * scale)
    try:  # the processor (trainer and vLLM): sides rounded to multiples of 28 within its own pixel range
        final = smart_resize(h, w, 28, *processor_pixels)
        if smart_resize(*final, 28, *processor_pixels) != final:  # it would resize its own output again
            raise ValueError
    except (ValueError, ZeroDivisionError):  # an aspect ratio over 200 (200x1 -> 791x3), a side of 0 px
        raise ValueError(f"image is {width}x{height} pixels, too thin for Qwen2.5-VL (sides >= 28 px, aspect ratio "
                         f"<= 200 before and after rounding to multiples of 28): crop or pad it") from None
    return final[1], final[0]


def resize_image(image, min_pixels, max_pixels, processor_pixels=QWEN_PIXELS):
    """The image in RGB (`to_rgb`), resized once (bicubic) to `reference_size`, which a processor with that
    pixel range leaves as it is. The released code resizes twice (its own step, then the processor's)."""
    size = reference_size(*image.size, min_pixels, max_pixels, processor_pixels)
    image = to_rgb(image)
    return image if image.size == size else image.resize(size)


# --- prompts ------------------------------------------------------------------------------------

def build_messages(problem, template="set"):
    """One user turn: the problem inside the template, an image item wherever `<image>` stands (as EasyR1's
    RLHFDataset._build_messages: split on "<image>", keep non-empty text pieces)."""
    text = problem if template == "none" else rewards.render_template(template, problem)
    content = []
    for i, piece in enumerate(text.split("<image>")):
        if i:
            content.append({"type": "image"})
        if piece:
            content.append({"type": "text", "text": piece})
    return [{"role": "user", "content": content}]


def render_prompt(processor, problem, template="set"):
    """Chat-template text of the problem with the generation prompt (image pads not expanded)."""
    return processor.apply_chat_template(build_messages(problem, template), add_generation_prompt=True,
                                         tokenize=False)


def image_token_count(image, processor):
    """How many <|image_pad|> tokens the processor expands one resized image (or (width, height)) into."""
    patch = processor.image_processor.patch_size
    merge = processor.image_processor.merge_size
    width, height = image if isinstance(image, tuple) else image.size
    return (height // patch) * (width // patch) // (merge * merge)


class PromptDataset:
    """Rows + label set + prompt settings; `dataset[i]` is a ready `Prompt` (images resized once). For the
    run's log: `dropped_long`, (where, prompt tokens) of each row over max_prompt_length, dropped at load."""

    def __init__(self, path, processor, template="set", labels=None, min_pixels=512 * 512,
                 max_pixels=2048 * 2048, max_prompt_length=2048, image_dir=None, skip_bad=False,
                 prompt_key="problem", answer_key="answer", image_key="images"):
        if template not in rewards.PROMPT_TEMPLATES:
            raise ValueError(f"template must be one of {', '.join(rewards.PROMPT_TEMPLATES)}, got {template!r}")
        if min_pixels > max_pixels:
            raise ValueError(f"min_pixels ({min_pixels}) is larger than max_pixels ({max_pixels})")
        self.processor_pixels = tuple(processor.image_processor.size[k] for k in ("shortest_edge", "longest_edge"))
        self.path, self.processor, self.template = str(path), processor, template
        self.min_pixels, self.max_pixels, self.max_prompt_length = min_pixels, max_pixels, max_prompt_length
        self.skip_bad = skip_bad
        self.skipped = []  # (where, reason) of every row left out, once per row, for the run's log
        self._failed = set()  # rows whose images failed: skipped without a retry on later epochs
        rows = read_rows(path, image_dir, prompt_key, answer_key, image_key)
        self.labels = resolve_labels(rows, labels, path)
        known = {label.lower() for label in self.labels}
        self.rows, self.dropped_long, text_tokens = [], [], {}
        for row in rows:  # checks that need no image decoding happen once, up front
            if row.problem is None and Path(row.where).suffix.lower() in IMAGE_SUFFIXES:
                row.problem = default_question(self.labels)
            if not isinstance(row.problem, str) or not row.problem.strip():
                self._bad(row, f"empty or missing {prompt_key!r}")
            elif not row.answer.strip():
                self._bad(row, f"empty or missing {answer_key!r}")
            elif row.answer.lower() not in known:
                self._bad(row, f"label {row.answer!r} is not in the label set {self.labels}")
            elif not row.images:
                self._bad(row, f"no image in {image_key!r}")
            elif (tags := self._tagged(row).count("<image>")) != len(row.images):
                self._bad(row, f"the problem has {tags} <image> tags but the row has {len(row.images)} images")
            elif (length := self._header_length(row, text_tokens)) is not None and length > max_prompt_length:
                self.dropped_long.append((row.where, length))
            else:
                self.rows.append(row)
        if not self.rows:
            raise DataError(f"{path}: no usable rows ({len(self.skipped)} skipped, {len(self.dropped_long)} over "
                            f"max_prompt_length={max_prompt_length})")

    def _tagged(self, row):  # the problem with its <image> tags: one per image in front when it has none
        return row.problem if "<image>" in row.problem else "<image>" * len(row.images) + row.problem

    def _render(self, problem):
        text = render_prompt(self.processor, problem, self.template)
        return text, self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _header_length(self, row, text_tokens):
        """The prompt length from the images' header sizes; None if one is unusable (the row fails when used)."""
        try:
            sizes = [reference_size(*open_image(source, row.base_dir, True), self.min_pixels, self.max_pixels,
                                    self.processor_pixels) for source in row.images]
        except Exception:  # PIL raises many types
            return None
        problem = self._tagged(row)
        if problem not in text_tokens:  # most datasets ask one question: render and tokenise it once
            text_tokens[problem] = len(self._render(problem)[1])
        return text_tokens[problem] + sum(image_token_count(size, self.processor) - 1 for size in sizes)

    def _bad(self, row, reason):
        if not self.skip_bad:
            raise DataError(f"{row.where}: {reason} {SKIP_HINT}")
        self.skipped.append((row.where, reason))

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        """Open, resize and render one row. Raises DataError naming the row on any problem."""
        row = self.rows[index]
        images = []
        for source in row.images:
            name = source if isinstance(source, str) and source else f"<{type(source).__name__} image>"
            try:
                images.append(resize_image(open_image(source, row.base_dir), self.min_pixels, self.max_pixels,
                                           self.processor_pixels))
            except Exception as e:  # PIL raises many types; all mean "this image is unusable"
                raise DataError(f"{row.where}: cannot use image {name}: {type(e).__name__}: {e}") from e
        text, prompt_ids = self._render(self._tagged(row))
        num_tokens = len(prompt_ids) + sum(image_token_count(im, self.processor) - 1 for im in images)
        return Prompt(index, row.problem, row.answer, text, prompt_ids, images, num_tokens, row.where, row.response)

    def get_batch(self, indices):
        """Prompts for `indices`; with skip_bad, bad rows are left out and recorded in `skipped`."""
        batch = []
        for index in indices:
            if index in self._failed:
                continue
            try:
                batch.append(self[index])
            except DataError as e:
                if not self.skip_bad:
                    raise DataError(f"{e} {SKIP_HINT}") from e
                self._failed.add(index)
                where = self.rows[index].where
                self.skipped.append((where, str(e).removeprefix(f"{where}: ")))  # (where, reason) as for _bad
        return batch


def encode(processor, prompts):
    """Processor tensors for prompts (input_ids with expanded image pads, pixel_values, grid_thw)."""
    images = [image for p in prompts for image in p.images]
    return processor(text=[p.text for p in prompts], images=images or None, padding=True, return_tensors="pt")


# --- batching -----------------------------------------------------------------------------------

def epoch_order(num_rows, epoch, seed, shuffle=True):
    """The row order of one epoch: a permutation that depends only on (seed, epoch)."""
    order = list(range(num_rows))
    if shuffle:
        random.Random(seed * 100003 + epoch).shuffle(order)
    return order


def step_indices(num_rows, batch_size, step, seed, shuffle=True):
    """Row indices of training step `step` (0-based): consecutive slices of the epoch orders. A pure function
    of its arguments, so a resumed run picks up at the exact same prompt. The tail of an epoch that does not
    fill a batch is dropped (like EasyR1's drop_last=True)."""
    if num_rows < batch_size:
        raise DataError(f"the dataset has {num_rows} usable rows, fewer than one batch of {batch_size} prompts")
    steps_per_epoch = num_rows // batch_size
    epoch, offset = divmod(step, steps_per_epoch)
    return epoch_order(num_rows, epoch, seed, shuffle)[offset * batch_size:(offset + 1) * batch_size]


def rank_slice(items, rank, world_size):
    """This rank's contiguous share of a batch (a GRPO group never spans ranks)."""
    if len(items) % world_size:
        raise ValueError(f"{len(items)} prompts do not split evenly over {world_size} ranks")
    share = len(items) // world_size
    return items[rank * share:(rank + 1) * share]


# --- command line -------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="load every row and image of a dataset and print statistics",
                           description="Load every row and image of a dataset exactly as training does (PromptDataset "
                                       "with the model's processor) and print its statistics as JSON; a bad row "
                                       "stops it with the file and row, or is counted with --skip-bad-rows.")
    check.add_argument("path", help="data file or folder (DIR@split keeps the files whose name contains split)")
    check.add_argument("--model", default=None,
                       help="required: model folder or hub name whose processor renders the prompts; for the "
                            "offline tiny model run `python tiny.py` first and pass .cache/tiny-qwen2.5-vl")
    check.add_argument("--labels", default=None, help="label set: emoset, emotion6 or a file")
    check.add_argument("--template", default="set", choices=rewards.PROMPT_TEMPLATES)
    check.add_argument("--min-pixels", type=int, default=512 * 512)
    check.add_argument("--max-pixels", type=int, default=2048 * 2048)
    check.add_argument("--max-prompt-length", type=int, default=2048)
    check.add_argument("--image-dir", default=None)
    check.add_argument("--skip-bad-rows", action="store_true", help="count bad rows instead of stopping")
    args = parser.parse_args()
    if args.model is None:  # no default: this module never builds the tiny model (tiny.py imports data.py)
        check.error("--model is required: the model whose processor renders the prompts (for the offline "
                    "tiny model, run `python tiny.py` first and pass --model .cache/tiny-qwen2.5-vl)")
    from tqdm import tqdm
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(args.model)
    try:
        dataset = PromptDataset(args.path, processor, args.template, args.labels, args.min_pixels, args.max_pixels,
                                args.max_prompt_length, args.image_dir, args.skip_bad_rows)
        lengths = [p.num_tokens for p in dataset.get_batch(tqdm(range(len(dataset)), desc="checking rows"))]
    except DataError as e:  # a message for the person, not a traceback
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({"rows": len(dataset.rows), "usable": len(lengths), "skipped": len(dataset.skipped),
                      "dropped_long": len(dataset.dropped_long),
                      "labels": dataset.labels, "label_counts": Counter(r.answer for r in dataset.rows),
                      "prompt_tokens": {"min": min(lengths, default=0), "max": max(lengths, default=0)}}, indent=1))
    for where, reason in dataset.skipped[:20]:
        print(f"skipped {where}: {reason}")
    for where, tokens in dataset.dropped_long[:20]:
        print(f"dropped {where}: prompt of {tokens} tokens, over --max-prompt-length {args.max_prompt_length}")


if __name__ == "__main__":
    main()
