"""Datasets for EMO-R3: read rows, open and resize images (sample video frames, through video.py) once, resolve
labels, render prompts, batch.

The data layout is EasyR1's (and so EMO-R3's, e.g. fuyyy74/EmoSet2k): one row per image with
- `images`:  a file path (relative to the data file or `--image-dir`), raw bytes, a `{"bytes", "path"}`
             dict (the Hugging Face parquet image feature), or a list of those;
- `problem`: the question; `<image>` marks where the image goes (prepended when absent);
- `answer`:  the emotion label, one of the label set.
Video rows have `videos` instead of `images` (EasyR1's key): each entry is one video, a video file path or a
list of frame images; `<video>` marks where a video goes (prepended when absent). video.py reads and samples
them (the forms an entry takes, EasyR1's frame sampling) and decodes image sources for both (`open_image`).
A dataset is all-image or all-video, because Qwen2.5-VL runs its vision tower once per modality in a forward
and under FSDP every rank must run it the same number of times.
R1-Omni's own layout loads too: a .json list of `{"video": PATH, "conversations": [{"from": "human", "value":
"<video>\n<audio>\nQUESTION"}, {"from": "gpt", "value": "LABEL"}]}` (the label may be in `<answer>` tags);
R1-Omni's instruction at the end of QUESTION is taken off, as `--template r1-omni` puts it back.
Audio: Qwen2.5-VL has no ears. An `<audio>` tag (with the whitespace after it) is removed from every problem,
one warning per dataset says how many (`audio_dropped`); audio needs an omni model (Qwen2.5-Omni, HumanOmni).
Supported files: `.jsonl`, `.json` (a list of rows), `.parquet`, a folder of such files (`DIR@split`
keeps the files whose name contains `split`, like `data/train-00000.parquet`), and a folder with one
sub-folder of images per class (FI style; the sub-folder name is the label).

The label set comes from `labels=` (a name in prompts/labels/ or a file, one label per line), else a
`labels.txt` beside the data, else the sorted distinct answers. Nothing here assumes EmoSet's labels.

Each prompt's images are opened and resized once, straight to the size the model sees in the released
pipeline (`reference_size`), and kept on the `Prompt`: trainer and vLLM get the same pixels. Videos likewise:
sampled once into a `video.Video` (frames at their final size + the rate of those frames), given as it is to the
trainer and to vLLM (`processor_inputs` is the one processor call for both). Rows whose prompt (image and
video tokens included) is over max_prompt_length are dropped at load (image sizes read from the headers,
video frame counts and sizes from the container, nothing decoded) and listed in `dropped_long`. A bad row
(unreadable image or video, label outside the set, empty problem) raises `DataError` naming file and row, or
with `skip_bad=True` is counted in `skipped`.

Not here, on purpose: the embedded demo dataset (tiny.py, with the tiny model: `python tiny.py demo`)
and the converters of the public releases EmoSet, Emotion6, WebEmo and FI (prepare_data.py:
`python prepare_data.py emoset SRC --out OUT`). Both import this module; this module imports neither.

    python data.py check train.jsonl --model MODEL --labels emoset   # validate a dataset, print statistics
    python tiny.py && python tiny.py demo     # the tiny model and the demo data, then check the demo data:
    python data.py check .cache/demo/train.jsonl --model .cache/tiny-qwen2.5-vl
"""

import argparse
import json
import math
import random
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch.distributed as dist

import rewards
from rows import IMAGE_SUFFIXES, DataError, check_one_modality, read_rows, resolve_labels
from video import (FRAME_FACTOR, QWEN_VIDEO_PIXELS, VIDEO_FPS, VIDEO_MAX_FRAMES, VIDEO_MAX_PIXELS, VIDEO_MIN_PIXELS,
                   load_video, open_image, to_rgb, video_shape, video_token_count)

DEFAULT_QUESTION = "<image>What emotion does this image evoke? Choose one of: {labels}."
SKIP_HINT = "(pass --skip-bad-rows to skip such rows)"  # every script that reads data has the flag
QWEN_PIXELS = (56 * 56, 28 * 28 * 16384)  # the Qwen2/2.5-VL processors' own pixel range (preprocessor_config.json)


def default_question(labels):
    """DEFAULT_QUESTION for a label set: the problem of rows that bring none (class folders, converters, demo)."""
    return DEFAULT_QUESTION.replace("{labels}", ", ".join(labels))


def write_jsonl(path, rows):
    """Write dicts as a .jsonl file, through a .tmp file renamed at the end: a half-written file never
    looks like a dataset. Used by the writers of datasets (tiny.py's demo, convert_images.py, convert_video.py)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    tmp.rename(path)
    return path


@dataclass
class Prompt:
    """A row made ready for the model: chat text, unexpanded token ids and the resized images."""
    index: int  # position in the dataset (stable: used as the prompt id in logs and predictions)
    problem: str
    answer: str
    text: str  # the chat-template text; each image (video) is one unexpanded <|image_pad|> (<|video_pad|>)
    prompt_ids: list  # token ids of `text` (what vLLM takes, with `images` / `videos`)
    images: list  # resized RGB PIL images, in order of appearance
    num_tokens: int = 0  # prompt length once the processor expands the image and video placeholders
    where: str = ""
    response: str = None  # the row's target response, if it has one (sft.py)
    videos: list = field(default_factory=list)  # sampled `Video`s, in order of appearance


# --- images -------------------------------------------------------------------------------------

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
    """One user turn: the problem inside the template, an image (video) item wherever `<image>` (`<video>`)
    stands, in order (as EasyR1's RLHFDataset._build_messages: split on the tag, keep non-empty text pieces)."""
    text = problem if template == "none" else rewards.render_template(template, problem)
    content = []
    for piece in re.split(r"(<image>|<video>)", text):
        if piece in ("<image>", "<video>"):
            content.append({"type": piece[1:-1]})
        elif piece:
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


def processor_inputs(processor, texts, images=None, videos=None):
    """The one processor call, for the dataset's `encode` and for the trainer: input_ids with the image and video
    pads expanded, pixel_values / image_grid_thw, pixel_values_videos / video_grid_thw / second_per_grid_ts.
    `texts`: one text or a list; `images`: resized PIL images; `videos`: `Video`s, in order over all texts.

    Videos go in as their uint8 frames with their `Video.metadata()` and do_sample_frames=False, so the
    processor takes every frame and reads the rate from the metadata (second_per_grid_ts = 2 / fps). Without
    metadata, transformers 5.19 assumes 24 fps. The metadata's do_sample_frames key is vLLM's, not a field of
    transformers' VideoMetadata (which would refuse it), so it is left out here."""
    kwargs = {}
    if videos:
        kwargs = dict(videos=[video.array() for video in videos], do_sample_frames=False,
                      video_metadata=[{k: v for k, v in video.metadata().items() if k != "do_sample_frames"}
                                      for video in videos])
    return processor(text=texts, images=images or None, padding=True, return_tensors="pt", **kwargs)


class PromptDataset:
    """Rows + label set + prompt settings; `dataset[i]` is a ready `Prompt` (images resized, videos sampled once).
    For the run's log: `dropped_long`, (where, prompt tokens) of each row over max_prompt_length, dropped at load;
    `audio_dropped`, how many rows had an <audio> tag taken out (module docstring). `has_videos`: a video dataset
    (then every row is a video row)."""

    def __init__(self, path, processor, template="set", labels=None, min_pixels=512 * 512,
                 max_pixels=2048 * 2048, max_prompt_length=2048, image_dir=None, skip_bad=False,
                 prompt_key="problem", answer_key="answer", image_key="images", video_key="videos",
                 video_fps=VIDEO_FPS, video_min_pixels=VIDEO_MIN_PIXELS, video_max_pixels=VIDEO_MAX_PIXELS,
                 video_max_frames=VIDEO_MAX_FRAMES, response_key="response"):
        if template not in rewards.PROMPT_TEMPLATES:
            raise ValueError(f"template must be one of {', '.join(rewards.PROMPT_TEMPLATES)}, got {template!r}")
        if min_pixels > max_pixels:
            raise ValueError(f"min_pixels ({min_pixels}) is larger than max_pixels ({max_pixels})")
        if video_min_pixels > video_max_pixels:
            raise ValueError(f"video_min_pixels ({video_min_pixels}) is larger than video_max_pixels "
                             f"({video_max_pixels})")
        if not video_fps > 0 or video_max_frames < FRAME_FACTOR:
            raise ValueError(f"video_fps must be > 0 and video_max_frames >= {FRAME_FACTOR}, got {video_fps} and "
                             f"{video_max_frames}")
        self.processor_pixels = tuple(processor.image_processor.size[k] for k in ("shortest_edge", "longest_edge"))
        self.path, self.processor, self.template = str(path), processor, template
        self.min_pixels, self.max_pixels, self.max_prompt_length = min_pixels, max_pixels, max_prompt_length
        self.video_fps, self.video_min_pixels, self.video_max_pixels = video_fps, video_min_pixels, video_max_pixels
        self.video_max_frames = video_max_frames
        self.skip_bad = skip_bad
        self.skipped = []  # (where, reason) of every row left out, once per row, for the run's log
        self._failed = set()  # rows whose images failed: skipped without a retry on later epochs
        rows = read_rows(path, image_dir, prompt_key, answer_key, image_key, video_key, response_key)
        check_one_modality(rows, image_key, video_key)
        self.has_videos = is_video = any(row.videos for row in rows)  # (a dataset is all images or all videos)
        self.video_processor_pixels = QWEN_VIDEO_PIXELS
        if is_video:
            if getattr(processor, "video_processor", None) is None:
                raise DataError(f"{path}: has video rows, but the processor has no video processor")
            size = processor.video_processor.size
            self.video_processor_pixels = (size["shortest_edge"], size["longest_edge"])
        self.audio_dropped = 0
        for row in rows:  # Qwen2.5-VL takes no audio: the tag goes, and the whitespace after it
            if isinstance(row.problem, str) and "<audio>" in row.problem:
                row.problem, self.audio_dropped = re.sub(r"<audio>\s*", "", row.problem), self.audio_dropped + 1
        if self.audio_dropped:
            warnings.warn(f"{path}: removed the <audio> tag from {self.audio_dropped} row(s): Qwen2.5-VL sees the "
                          f"video frames only; audio needs an omni model (Qwen2.5-Omni / HumanOmni)", stacklevel=2)
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
            elif not row.images and not row.videos:
                self._bad(row, f"no video in {video_key!r}" if is_video else f"no image in {image_key!r}")
            elif (tags := self._tagged(row).count("<image>")) != len(row.images):
                self._bad(row, f"the problem has {tags} <image> tags but the row has {len(row.images)} images")
            elif (tags := self._tagged(row).count("<video>")) != len(row.videos):
                self._bad(row, f"the problem has {tags} <video> tags but the row has {len(row.videos)} videos")
            elif (length := self._header_length(row, text_tokens)) is not None and length > max_prompt_length:
                self.dropped_long.append((row.where, length))
            else:
                self.rows.append(row)
        if not self.rows:
            raise DataError(f"{path}: no usable rows ({len(self.skipped)} skipped, {len(self.dropped_long)} over "
                            f"max_prompt_length={max_prompt_length})")

    def _tagged(self, row):  # the problem with its tags: one per image (video) in front when it has none
        problem = row.problem if "<image>" in row.problem else "<image>" * len(row.images) + row.problem
        return problem if "<video>" in problem else "<video>" * len(row.videos) + problem

    def _video_kwargs(self):
        return dict(fps=self.video_fps, min_pixels=self.video_min_pixels, max_pixels=self.video_max_pixels,
                    max_frames=self.video_max_frames, processor_pixels=self.video_processor_pixels)

    def _render(self, problem):
        text = render_prompt(self.processor, problem, self.template)
        return text, self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _header_length(self, row, text_tokens):
        """The prompt length from the images' header sizes; None if one is unusable (the row fails when used)."""
        try:
            sizes = [reference_size(*open_image(source, row.base_dir, True), self.min_pixels, self.max_pixels,
                                    self.processor_pixels) for source in row.images]
            shapes = [video_shape(source, row.base_dir, **self._video_kwargs()) for source in row.videos]
        except Exception:  # PIL and PyAV raise many types
            return None
        problem = self._tagged(row)
        if problem not in text_tokens:  # most datasets ask one question: render and tokenise it once
            text_tokens[problem] = len(self._render(problem)[1])
        return (text_tokens[problem] + sum(image_token_count(size, self.processor) - 1 for size in sizes)
                + sum(video_token_count(shape, self.processor) - 1 for shape in shapes))

    def _bad(self, row, reason):
        if not self.skip_bad:
            raise DataError(f"{row.where}: {reason} {SKIP_HINT}")
        self.skipped.append((row.where, reason))

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        """Open and resize (sample) the images (videos) of one row, render it. Raises DataError naming the row on
        any problem."""
        row = self.rows[index]
        images = []
        for source in row.images:
            name = source if isinstance(source, str) and source else f"<{type(source).__name__} image>"
            try:
                images.append(resize_image(open_image(source, row.base_dir), self.min_pixels, self.max_pixels,
                                           self.processor_pixels))
            except Exception as e:  # PIL raises many types; all mean "this image is unusable"
                raise DataError(f"{row.where}: cannot use image {name}: {type(e).__name__}: {e}") from e
        videos = []
        for source in row.videos:
            name = (source if isinstance(source, str) and source else f"<list of {len(source)} frames>"
                    if isinstance(source, list) else f"<{type(source).__name__} video>")
            try:
                videos.append(load_video(source, row.base_dir, **self._video_kwargs()))
            except Exception as e:  # PyAV and PIL raise many types; all mean "this video is unusable"
                raise DataError(f"{row.where}: cannot use video {name}: {type(e).__name__}: {e}") from e
        text, prompt_ids = self._render(self._tagged(row))
        num_tokens = (len(prompt_ids) + sum(image_token_count(im, self.processor) - 1 for im in images)
                      + sum(video_token_count(video, self.processor) - 1 for video in videos))
        return Prompt(index, row.problem, row.answer, text, prompt_ids, images, num_tokens, row.where, row.response,
                      videos)

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
    """Processor tensors for prompts (input_ids with expanded image and video pads, pixel values, grid_thw,
    second_per_grid_ts for videos), through `processor_inputs`."""
    images = [image for p in prompts for image in p.images]
    videos = [video for p in prompts for video in p.videos]
    return processor_inputs(processor, [p.text for p in prompts], images, videos)


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

def skipped_on_any_rank(dataset):
    """How many distinct rows `dataset` has left out (--skip-bad-rows) on any rank. Rows refused at load
    are listed by every rank, a row whose image fails is seen only by the rank that fetched it: a sum
    over ranks counts the first kind world-size times, one rank's list misses the second."""
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, [where for where, _ in dataset.skipped])
    return len({where for part in gathered for where in part})


def get_batch_on_every_rank(dataset, indices, empty_error=None):
    """dataset.get_batch, called by all ranks at the same point: if a row is bad (without
    --skip-bad-rows) on any rank, or, given `empty_error`, a rank's share came back empty, every rank
    stops with that message instead of one crashing and the others waiting in a collective."""
    try:
        prompts = dataset.get_batch(indices)
        error = empty_error if empty_error and not prompts else None
    except DataError as e:
        prompts, error = [], str(e)
    errors = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    failed = [e for e in errors if e]
    if failed:
        raise SystemExit(failed[0])
    return prompts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="load every row, image and video of a dataset and print statistics",
                           description="Load every row, image and video of a dataset exactly as training does "
                                       "(PromptDataset with the model's processor) and print its statistics as JSON; "
                                       "a bad row stops it with the file and row, or is counted with --skip-bad-rows.")
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
    check.add_argument("--video-fps", type=float, default=VIDEO_FPS, help="frames sampled per second of video")
    check.add_argument("--video-min-pixels", type=int, default=VIDEO_MIN_PIXELS)
    check.add_argument("--video-max-pixels", type=int, default=VIDEO_MAX_PIXELS)
    check.add_argument("--video-max-frames", type=int, default=VIDEO_MAX_FRAMES)
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
                                args.max_prompt_length, args.image_dir, args.skip_bad_rows, video_fps=args.video_fps,
                                video_min_pixels=args.video_min_pixels, video_max_pixels=args.video_max_pixels,
                                video_max_frames=args.video_max_frames)
        lengths = [p.num_tokens for p in dataset.get_batch(tqdm(range(len(dataset)), desc="checking rows"))]
    except DataError as e:  # a message for the person, not a traceback
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({"rows": len(dataset.rows), "usable": len(lengths), "skipped": len(dataset.skipped),
                      "dropped_long": len(dataset.dropped_long),
                      "video_rows": sum(1 for r in dataset.rows if r.videos), "audio_dropped": dataset.audio_dropped,
                      "labels": dataset.labels, "label_counts": Counter(r.answer for r in dataset.rows),
                      "prompt_tokens": {"min": min(lengths, default=0), "max": max(lengths, default=0)}}, indent=1))
    for where, reason in dataset.skipped[:20]:
        print(f"skipped {where}: {reason}")
    for where, tokens in dataset.dropped_long[:20]:
        print(f"dropped {where}: prompt of {tokens} tokens, over --max-prompt-length {args.max_prompt_length}")


if __name__ == "__main__":
    main()
