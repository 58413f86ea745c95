"""Datasets for EMO-R3: load rows, load and resize images once, render prompts, batch, make demo data.

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

Each prompt's images are opened and resized exactly once (qwen-vl-utils' smart_resize into
[min_pixels, max_pixels], multiples of 28), and the resized PIL images are kept on the `Prompt`, so
the trainer's processor and vLLM see the same pixels. A bad row (unreadable image, label outside the
set, empty problem, prompt too long) raises `DataError` naming the file and row, or, with
`skip_bad=True`, is left out and counted in `skipped`.

    python data.py demo --out .cache/demo         # write the embedded demo dataset
    python data.py check train.jsonl --labels emoset   # validate a dataset, print its statistics
    python data.py prepare emoset ~/EmoSet-118K --out data/emoset   # convert a public release (prepare_*)
"""

import argparse
import io
import json
import os
import random
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

import rewards

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DEFAULT_QUESTION = "<image>What emotion does this image evoke? Choose one of: {labels}."
DEMO_DIR = Path(__file__).resolve().parent / ".cache" / "demo"
SKIP_HINT = "(pass skip_bad / --skip-bad-rows to skip such rows)"


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


# --- reading rows -------------------------------------------------------------------------------

def _read_table(path):
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
        for n, raw in _read_table(file):
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


# --- images -------------------------------------------------------------------------------------

def open_image(source, base_dir):
    """Decode one image source to an RGB PIL image (fully loaded, so truncation shows up here)."""
    if isinstance(source, Image.Image):
        image = source
    else:
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


def resize_image(image, min_pixels, max_pixels):
    """qwen-vl-utils' resize: both sides multiples of 28, pixel count within [min_pixels, max_pixels].

    Tiny images (1x1, 3x500) are scaled up to whole 28-pixel patches. Thin ones are refused here,
    naming their size: qwen-vl-utils refuses an aspect ratio over 200 itself, but shrinking a thin image
    can floor its short side to 0 px, and rounding the sides to multiples of 28 can push the ratio past
    200 (11900x60 -> 11900x56), which the processor would refuse later, in the trainer, naming no row.
    """
    from qwen_vl_utils import fetch_image
    from qwen_vl_utils.vision_process import MAX_RATIO, smart_resize
    width, height = image.size
    too_thin = f"too thin for Qwen2.5-VL (sides >= 28 px, aspect ratio <= {MAX_RATIO}): crop or pad it"
    if min(width, height) == 0 or max(width, height) / min(width, height) > MAX_RATIO:
        raise ValueError(f"image is {width}x{height} pixels, {too_thin}")
    new_height, new_width = smart_resize(height, width, 28, min_pixels, max_pixels)
    if min(new_width, new_height) < 28 or max(new_width, new_height) / min(new_width, new_height) > MAX_RATIO:
        raise ValueError(f"image is {width}x{height} pixels, {new_width}x{new_height} once resized into "
                         f"[min_pixels, max_pixels], {too_thin}")
    return fetch_image({"image": image, "min_pixels": min_pixels, "max_pixels": max_pixels})


# --- prompts ------------------------------------------------------------------------------------

def build_messages(problem, template="set"):
    """One user turn: the problem inside the template, an image item wherever `<image>` stands.

    Matches EasyR1's RLHFDataset._build_messages: split on "<image>", keep non-empty text pieces.
    """
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
    """How many <|image_pad|> tokens the processor expands one resized image into."""
    patch = processor.image_processor.patch_size
    merge = processor.image_processor.merge_size
    return (image.height // patch) * (image.width // patch) // (merge * merge)


class PromptDataset:
    """Rows + label set + prompt settings; `dataset[i]` is a ready `Prompt` (images resized once)."""

    def __init__(self, path, processor, template="set", labels=None, min_pixels=512 * 512,
                 max_pixels=2048 * 2048, max_prompt_length=2048, image_dir=None, skip_bad=False,
                 prompt_key="problem", answer_key="answer", image_key="images"):
        if template not in ("set", "think", "none"):
            raise ValueError(f"template must be 'set', 'think' or 'none', got {template!r}")
        if min_pixels > max_pixels:
            raise ValueError(f"min_pixels ({min_pixels}) is larger than max_pixels ({max_pixels})")
        # The processor resizes again into its own range; inside that range a 28-multiple image is
        # left as it is, so ours must lie inside it for "resized once, same pixels everywhere" to hold.
        floor, ceiling = processor.image_processor.size["shortest_edge"], processor.image_processor.size["longest_edge"]
        if min_pixels < floor or max_pixels > ceiling:
            raise ValueError(f"min_pixels/max_pixels ({min_pixels}, {max_pixels}) must lie within the model "
                             f"processor's range [{floor}, {ceiling}], or the processor would resize images again")
        self.path, self.processor, self.template = str(path), processor, template
        self.min_pixels, self.max_pixels, self.max_prompt_length = min_pixels, max_pixels, max_prompt_length
        self.skip_bad = skip_bad
        self.skipped = []  # (where, reason) of every row left out, once per row, for the run's log
        self._failed = set()  # rows whose images failed: skipped without a retry on later epochs
        rows = read_rows(path, image_dir, prompt_key, answer_key, image_key)
        self.labels = resolve_labels(rows, labels, path)
        known = {label.lower() for label in self.labels}
        self.rows = []
        for row in rows:  # checks that need no image decoding happen once, up front
            if row.problem is None and Path(row.where).suffix.lower() in IMAGE_SUFFIXES:
                row.problem = DEFAULT_QUESTION.replace("{labels}", ", ".join(self.labels))
            if not isinstance(row.problem, str) or not row.problem.strip():
                self._bad(row, f"empty or missing {prompt_key!r}")
            elif not row.answer.strip():
                self._bad(row, f"empty or missing {answer_key!r}")
            elif row.answer.lower() not in known:
                self._bad(row, f"label {row.answer!r} is not in the label set {self.labels}")
            elif not row.images:
                self._bad(row, f"no image in {image_key!r}")
            else:
                self.rows.append(row)
        if not self.rows:
            raise DataError(f"{path}: no usable rows" + (f" ({len(self.skipped)} skipped)" if self.skipped else ""))

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
                images.append(resize_image(open_image(source, row.base_dir), self.min_pixels, self.max_pixels))
            except Exception as e:  # PIL raises many types; all mean "this image is unusable"
                raise DataError(f"{row.where}: cannot use image {name}: {type(e).__name__}: {e}") from e
        problem = row.problem if "<image>" in row.problem else "<image>" * len(images) + row.problem
        if problem.count("<image>") != len(images):
            raise DataError(f"{row.where}: the problem has {problem.count('<image>')} <image> tags "
                            f"but the row has {len(images)} images")
        text = render_prompt(self.processor, problem, self.template)
        prompt_ids = self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]
        num_tokens = len(prompt_ids) + sum(image_token_count(im, self.processor) - 1 for im in images)
        if num_tokens > self.max_prompt_length:
            raise DataError(f"{row.where}: prompt is {num_tokens} tokens, more than max_prompt_length="
                            f"{self.max_prompt_length} (lower max_pixels or raise the limit)")
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
    """Row indices of training step `step` (0-based): consecutive slices of the epoch orders.

    A pure function of its arguments, so a resumed run picks up at the exact same prompt. The tail
    of an epoch that does not fill a batch is dropped (like EasyR1's drop_last=True).
    """
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


# --- the embedded demo dataset -------------------------------------------------------------------

# Each emotion has a dominant colour, so the label is visually recoverable by a tiny vision tower
# trained from scratch; random distractor shapes in other colours make it more than a lookup table.
DEMO_COLOURS = {
    "amusement": (250, 210, 40), "anger": (210, 30, 30), "awe": (120, 200, 250), "contentment": (60, 170, 70),
    "disgust": (120, 120, 20), "excitement": (250, 120, 10), "fear": (80, 30, 110), "sadness": (30, 50, 160),
}


DEMO_COLOUR_NAMES = {"amusement": "yellow", "anger": "red", "awe": "light blue", "contentment": "green",
                     "disgust": "olive", "excitement": "orange", "fear": "purple", "sadness": "dark blue"}
POSITIVE = {"amusement", "awe", "contentment", "excitement"}  # Mikels valence (EMO-R3.md)


def demo_response(label):
    """A short SET answer for a demo image: the reasoning a cold start can imitate (sft.py)."""
    return (f"<step1>The image is mostly {DEMO_COLOUR_NAMES[label]}.</step1>\n"
            f"<step2>A viewer would feel {label}.</step2>\n"
            f"<step3>The emotion is {'positive' if label in POSITIVE else 'negative'}.</step3>\n\\boxed{{{label}}}")


def make_demo_image(label, rng, colours=DEMO_COLOURS):
    """A 56-112 px image whose background is the label's colour (jittered), with 1-3 small shapes."""
    from PIL import ImageDraw
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
    question = DEFAULT_QUESTION.replace("{labels}", ", ".join(labels))
    for split, count in (("test", num_test), ("train", num_train)):  # demo.json, written last, marks "done"
        split_labels = [labels[i % len(labels)] for i in range(count)]
        rng.shuffle(split_labels)
        lines = []
        for i, label in enumerate(split_labels):
            name = f"images/{split}_{i:05d}.png"
            make_demo_image(label, rng).save(out_dir / name)
            lines.append(json.dumps({"images": [name], "problem": question, "answer": label,
                                     "response": demo_response(label)}))
        (out_dir / "labels.txt").write_text("\n".join(labels) + "\n")
        (out_dir / f"{split}.jsonl.tmp").write_text("\n".join(lines) + "\n")
        (out_dir / f"{split}.jsonl.tmp").rename(out_dir / f"{split}.jsonl")
    (out_dir / "demo.json").write_text(json.dumps(recipe))  # written last: marks the folder complete
    return out_dir


# --- converters from the public dataset releases ----------------------------------------------------
# Each converter reads one release the way its authors distribute it and writes `out/<split>.jsonl`
# plus `out/labels.txt`, so `PromptDataset(out / "train.jsonl", ...)` finds the label set by itself.
# Images stay where they are (never copied). None of this could be run on the real downloads; the
# layouts come from the papers, the authors' loaders and public code that reads each release, and
# each docstring says what was assumed.

# WebEmo's label hierarchy: (25-level, 7-level, 2-level); row i is label id i of train25.txt/test25.txt,
# whose ids follow the alphabetical order of the 25 names. Taken from public WebEmo loaders (the
# release ships ids, not names). Parrott's 6 primary emotions plus "confusion", which the release
# keeps as its own 7-level class (one public copy folds it into sadness, which would give 6 classes).
WEBEMO_HIERARCHY = [
    ("affection", "love", "positive"), ("cheerfulness", "joy", "positive"),
    ("confusion", "confusion", "negative"), ("contentment", "joy", "positive"),
    ("disappointment", "sadness", "negative"), ("disgust", "anger", "negative"),
    ("enthrallment", "joy", "positive"), ("envy", "anger", "negative"),
    ("exasperation", "anger", "negative"), ("gratitude", "love", "positive"),
    ("horror", "fear", "negative"), ("irritability", "anger", "negative"),
    ("lust", "love", "positive"), ("neglect", "sadness", "negative"),
    ("nervousness", "fear", "negative"), ("optimism", "joy", "positive"),
    ("pride", "joy", "positive"), ("rage", "anger", "negative"),
    ("relief", "joy", "positive"), ("sadness", "sadness", "negative"),
    ("shame", "sadness", "negative"), ("suffering", "sadness", "negative"),
    ("surprise", "surprise", "positive"), ("sympathy", "sadness", "negative"),
    ("zest", "joy", "positive"),
]
# the release's folder names misspell two classes; prompts get the English word, lists may use either
WEBEMO_SPELLINGS = {"cheerfullness": "cheerfulness", "irritabilty": "irritability"}


def _write_split(out, split, labels, items):
    """Write out/<split>.jsonl from (image path, label) pairs and out/labels.txt; return (path, count)."""
    out = Path(os.path.abspath(out))
    if not items:
        raise DataError(f"no images found for {out / (split + '.jsonl')}: nothing to write")
    out.mkdir(parents=True, exist_ok=True)
    labels_file = out / "labels.txt"
    # one labels.txt serves every split in the folder: two label sets there would mislabel one of them
    if labels_file.exists() and rewards.load_labels(str(labels_file)) != labels:
        raise DataError(f"{labels_file}: already holds a different label set than the {len(labels)} labels being "
                        f"written now; write each dataset (and each WebEmo level) to its own --out folder")
    question = DEFAULT_QUESTION.replace("{labels}", ", ".join(labels))
    lines = []
    for image, label in items:
        image = Path(os.path.abspath(image))  # abspath, not resolve: a symlinked images/ inside out stays relative
        # relative inside out, so the folder can be moved; absolute outside it, so it loads from anywhere
        name = image.relative_to(out).as_posix() if image.is_relative_to(out) else str(image)
        lines.append(json.dumps({"images": [name], "problem": question, "answer": label}))
    labels_file.write_text("\n".join(labels) + "\n")
    path = out / f"{split}.jsonl"
    path.with_name(path.name + ".tmp").write_text("\n".join(lines) + "\n")
    path.with_name(path.name + ".tmp").rename(path)  # a half-written file never looks like a dataset
    return path, len(lines)


def _existing_image(path, where):
    if not path.is_file():
        raise DataError(f"{where}: image {path} does not exist (is the download complete and SRC its root?)")
    return path


def _class_folder_items(src, labels, dataset):
    """(image, label) pairs of a folder-per-class release; the class folders sit in SRC or one level down."""
    src, known = Path(src), {label.lower(): label for label in labels}
    if not src.is_dir():
        raise DataError(f"{src}: no such folder")
    roots = [src] + sorted(p for p in src.iterdir() if p.is_dir())  # e.g. Emotion6/images/, FI's zip folder
    root = next((r for r in roots if any(p.is_dir() and p.name.lower() in known for p in r.iterdir())), None)
    if root is None:
        raise DataError(f"{src}: no {dataset} class folders ({', '.join(labels)}) in it or one level down")
    items = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))):
        if folder.name.lower() not in known:  # never drop a class silently
            raise DataError(f"{folder}: {folder.name!r} is not one of the {dataset} labels ({', '.join(labels)}); "
                            f"move the folder out of {root}")
        images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        items += [(image, known[folder.name.lower()]) for image in images]
    return items


def _stratified_split(items, test_fraction, seed, src):
    """Seeded per-class train/test split; the same files, fraction and seed give the same split anywhere."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"--test-fraction must lie strictly between 0 and 1, got {test_fraction}")
    rng, train, test = random.Random(seed), [], []
    for label in sorted({label for _, label in items}):
        group = sorted(item for item in items if item[1] == label)  # sorted: independent of listing order
        if len(group) < 2:
            raise DataError(f"{src}: class {label!r} has 1 image; a train/test split needs 2 or more per class")
        rng.shuffle(group)
        n_test = min(max(round(len(group) * test_fraction), 1), len(group) - 1)  # every class on both sides
        test, train = test + group[:n_test], train + group[n_test:]
    return train, test


def _prepare_class_folders(src, out, split, test_fraction, seed, labels, dataset):
    items = _class_folder_items(src, labels, dataset)
    if test_fraction:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test' with a test fraction, got {split!r}")
        items = dict(zip(("train", "test"), _stratified_split(items, test_fraction, seed, src)))[split]
    return _write_split(out, split, labels, items)


def prepare_emoset(src, out, split="train"):
    """EmoSet-118K (Yang et al., ICCV 2023) -> out/<split>.jsonl; labels: Mikels 8.

    Assumed layout (the authors' EmoSet loader): SRC/{train,val,test}.json, each a JSON list of
    [emotion, image_id, image_path, annotation_path] with paths relative to SRC, e.g.
    image/amusement/amusement_00000.jpg and annotation/amusement/amusement_00000.json; 3-item entries
    [emotion, image_path, annotation_path] are accepted too. The label is the annotation's "emotion"
    when that file exists, else the entry's; a disagreement between the two, a label outside Mikels 8
    or a missing image is an error naming the entry. Other attributes (brightness, scene, ...) are unused.
    """
    from tqdm import tqdm
    src, labels = Path(src), rewards.load_labels("emoset")
    split_file = src / f"{split}.json"
    if not split_file.is_file():
        raise DataError(f"{split_file}: no such split file (EmoSet ships train.json, val.json and test.json)")
    items = []
    for n, entry in tqdm(_read_table(split_file), desc=f"EmoSet {split}"):
        where = f"{split_file}: entry {n}"
        if not (isinstance(entry, list) and len(entry) in (3, 4)
                and all(isinstance(entry[i], str) for i in (0, -2, -1))):
            raise DataError(f"{where}: expected [emotion, image_id, image_path, annotation_path], got {entry!r:.200}")
        label, image, annotation = entry[0].lower(), src / entry[-2], src / entry[-1]
        if annotation.is_file():
            try:
                annotated = str(json.loads(annotation.read_text(encoding="utf-8")).get("emotion", label)).lower()
            except (ValueError, AttributeError) as e:  # bad JSON or not an object
                raise DataError(f"{where}: cannot read the annotation {annotation}: {e}") from e
            if annotated != label:
                raise DataError(f"{where}: the split file says {label!r} but {annotation} says {annotated!r}")
        if label not in labels:
            raise DataError(f"{where}: label {label!r} is not one of the EmoSet labels ({', '.join(labels)})")
        items.append((_existing_image(image, where), label))
    return _write_split(out, split, labels, items)


def prepare_emotion6(src, out, split="test", test_fraction=0.0, seed=0):
    """Emotion6 (Peng et al., CVPR 2015) -> out/<split>.jsonl; labels: Ekman 6.

    Assumed layout: SRC/images/<emotion>/<n>.jpg for anger, disgust, fear, joy, sadness, surprise
    (SRC may also be the images/ folder itself). The folder is the label; ground_truth.txt (the
    annotators' emotion distribution, which includes "neutral") is not read. There is no official
    split: by default every image goes to <split>.jsonl (test: Emotion6 is an out-of-domain
    benchmark); with test_fraction > 0, `split` picks the train or test part of a seeded split that
    is stratified by class and keeps every class on both sides.
    """
    return _prepare_class_folders(src, out, split, test_fraction, seed, rewards.load_labels("emotion6"), "Emotion6")


def prepare_fi(src, out, split="train", test_fraction=0.2, seed=0):
    """FI, Flickr and Instagram (You et al., AAAI 2016) -> out/<split>.jsonl; labels: Mikels 8.

    Assumed layout: SRC/<emotion>/<image> for the Mikels 8 emotions (folder names in any case; SRC
    may be the folder holding them). There is no official split: a seeded split stratified by class,
    80/20 by default (the training share of the 80/5/15 split common in FI papers, with no separate
    validation part), keeps every class on both sides; `split` picks which part to write.
    """
    return _prepare_class_folders(src, out, split, test_fraction, seed, rewards.load_labels("emoset"), "FI")


def load_webemo_hierarchy(path=None):
    """WEBEMO_HIERARCHY, or a TSV file of `fine<TAB>mid<TAB>coarse` rows in label-id order (# comments)."""
    if path is None:
        return WEBEMO_HIERARCHY
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            fields = [field.strip().lower() for field in line.split("\t")]
            if len(fields) != 3 or not all(fields):
                raise DataError(f"{path}:{n}: expected fine<TAB>mid<TAB>coarse, got {line!r}")
            rows.append(tuple(fields))
    return rows


def prepare_webemo(src, out, level, split="train", hierarchy=None):
    """WebEmo (Panda et al., ECCV 2018) at level 25, 7 or 2 -> out/<split>.jsonl; labels: that level's.

    Assumed layout: list files SRC/train25.txt and SRC/test25.txt (or SRC is one list file), one
    `<image> <label id 0-24>` per line. The release lists image URLs; these cannot be downloaded here,
    so the images must be downloaded first and the list rewritten with local paths (relative to the
    list's folder or absolute); a URL is an error naming the line. A label may also be a 25-level name.
    Levels map through WEBEMO_HIERARCHY (or `hierarchy`, a TSV file, see load_webemo_hierarchy);
    which level the EMO-R3 paper evaluated is unknown. labels.txt lists the level's labels sorted.
    """
    if level not in (2, 7, 25):
        raise ValueError(f"WebEmo level must be 2, 7 or 25, got {level!r}")
    table = load_webemo_hierarchy(hierarchy)
    column = {25: 0, 7: 1, 2: 2}[level]
    by_name = {row[0]: row for row in table}
    by_name.update({alias: by_name[fine] for alias, fine in WEBEMO_SPELLINGS.items() if fine in by_name})
    src = Path(src)
    list_file = src / f"{split}25.txt" if src.is_dir() else src
    if not list_file.is_file():
        raise DataError(f"{list_file}: no such list file (WebEmo ships train25.txt and test25.txt)")
    from tqdm import tqdm
    items = []
    for n, line in enumerate(tqdm(list_file.read_text(encoding="utf-8").splitlines(), desc=f"WebEmo {split}"), 1):
        if not line.strip():
            continue
        where = f"{list_file}:{n}"
        parts = line.rsplit(None, 1)  # split at the last blank: a path may contain spaces
        image, label = parts if len(parts) == 2 else ("", "")
        if "://" in image:
            raise DataError(f"{where}: {image!r} is a URL; download the images and list their local paths "
                            f"(relative to {list_file.parent} or absolute) instead")
        row = table[int(label)] if label.isdigit() and int(label) < len(table) else by_name.get(label.lower())
        if not image or row is None:
            raise DataError(f"{where}: expected '<image path> <label id 0-{len(table) - 1} or name>', got {line!r}")
        items.append((_existing_image(list_file.parent / image, where), row[column]))
    return _write_split(out, split, sorted({row[column] for row in table}), items)


def _prepare_cli(parser, args):
    """`python data.py prepare ...`: run one converter over the splits the flags ask for."""
    src = Path(args.src)
    if (args.level is None) == (args.dataset == "webemo"):
        parser.error("--level 2, 7 or 25 is required for webemo (the paper's level is unknown) and only for webemo")
    if args.hierarchy and args.dataset != "webemo":
        parser.error("--hierarchy is for webemo only")
    if args.dataset == "emoset":
        found = [s for s in ("train", "val", "test") if (src / f"{s}.json").exists()]
        results = [prepare_emoset(src, args.out, s) for s in ([args.split] if args.split else found or ["train"])]
    elif args.dataset == "webemo":
        if src.is_file() and not args.split:
            parser.error(f"{src} is one list file: say which split it is with --split train or --split test")
        found = [s for s in ("train", "test") if (src / f"{s}25.txt").exists()]
        splits = [args.split] if args.split else found or ["train"]
        results = [prepare_webemo(src, args.out, args.level, s, args.hierarchy) for s in splits]
    else:
        prepare, whole = {"emotion6": (prepare_emotion6, "test"), "fi": (prepare_fi, "train")}[args.dataset]
        fraction = args.test_fraction if args.test_fraction is not None else (0.2 if args.dataset == "fi" else 0.0)
        splits = [args.split] if args.split else (["train", "test"] if fraction else [whole])
        results = [prepare(src, args.out, s, fraction, args.seed) for s in splits]
    for path, count in results:
        print(f"wrote {count} rows to {path}")
    print(f"labels: {Path(args.out) / 'labels.txt'}")


# --- command line -------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="write the embedded demo dataset")
    demo.add_argument("--out", default=str(DEMO_DIR))
    demo.add_argument("--num-train", type=int, default=256)
    demo.add_argument("--num-test", type=int, default=64)
    demo.add_argument("--seed", type=int, default=0)
    check = sub.add_parser("check", help="load every row and image of a dataset and print statistics")
    check.add_argument("path")
    check.add_argument("--model", default=None, help="model folder whose processor renders the prompts "
                                                     "(default: the tiny model, built if needed)")
    check.add_argument("--labels", default=None, help="label set: emoset, emotion6 or a file")
    check.add_argument("--template", default="set", choices=["set", "think", "none"])
    check.add_argument("--min-pixels", type=int, default=512 * 512)
    check.add_argument("--max-pixels", type=int, default=2048 * 2048)
    check.add_argument("--max-prompt-length", type=int, default=2048)
    check.add_argument("--image-dir", default=None)
    check.add_argument("--skip-bad-rows", action="store_true", help="count bad rows instead of stopping")
    prepare = sub.add_parser("prepare", help="convert a public dataset release to out/<split>.jsonl + labels.txt")
    prepare.add_argument("dataset", choices=["emoset", "emotion6", "webemo", "fi"])
    prepare.add_argument("src", help="the release's root folder (webemo: the folder of the lists, or one list)")
    prepare.add_argument("--out", required=True, help="output folder (one per dataset and WebEmo level)")
    prepare.add_argument("--split", default=None, help="the split to write (default: every split the release "
                                                        "has; emotion6/fi: train and test with --test-fraction)")
    prepare.add_argument("--level", type=int, choices=[2, 7, 25], default=None, help="webemo label level")
    prepare.add_argument("--hierarchy", default=None, help="webemo: TSV fine<TAB>mid<TAB>coarse, row i = id i")
    prepare.add_argument("--test-fraction", type=float, default=None,
                         help="emotion6/fi: seeded stratified test share (default: emotion6 0 = all test, fi 0.2)")
    prepare.add_argument("--seed", type=int, default=0, help="emotion6/fi: seed of the split")
    args = parser.parse_args()
    if args.command == "demo":
        path = make_demo_dataset(args.out, args.num_train, args.num_test, seed=args.seed)
        print(f"demo dataset at {path}")
        return
    if args.command == "prepare":
        try:
            _prepare_cli(parser, args)
        except DataError as e:  # a message for the person, not a traceback
            raise SystemExit(f"error: {e}") from None
        return
    from tqdm import tqdm
    from transformers import AutoProcessor
    import tiny
    processor = AutoProcessor.from_pretrained(args.model or tiny.build_tiny_model())
    try:
        dataset = PromptDataset(args.path, processor, args.template, args.labels, args.min_pixels, args.max_pixels,
                                args.max_prompt_length, args.image_dir, args.skip_bad_rows)
        lengths = [p.num_tokens for p in dataset.get_batch(tqdm(range(len(dataset)), desc="checking rows"))]
    except DataError as e:  # a message for the person, not a traceback
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({"rows": len(dataset.rows), "usable": len(lengths), "skipped": len(dataset.skipped),
                      "labels": dataset.labels, "label_counts": Counter(r.answer for r in dataset.rows),
                      "prompt_tokens": {"min": min(lengths, default=0), "max": max(lengths, default=0)}}, indent=1))
    for where, reason in dataset.skipped[:20]:
        print(f"skipped {where}: {reason}")


if __name__ == "__main__":
    main()
