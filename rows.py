"""Rows: data files and folders read into `Row`s, the label set that goes with them, and `DataError`.

Read here: `.jsonl`, `.json` (a list of rows), `.parquet` in the EasyR1 layout, R1-Omni's `.json` list of
conversations, a folder of such files (`DIR@split`) and a folder with one sub-folder of images per class; data.py's
docstring (`python data.py --help`) and docs/data.md describe these layouts. A `Row` holds its image and video
sources as the file gives them: nothing is opened or decoded here. `DataError` is the error for a problem in the
user's data, its message naming the file and row.

Not here: images, videos, prompts and batching (data.py, whose `PromptDataset` reads its rows through `read_rows`
and `resolve_labels`), writing a dataset (`data.write_jsonl`) and the converters of the public releases
(convert_images.py, convert_video.py). Of our modules this one imports rewards only (label files).
"""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import rewards

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
R1_OMNI_INSTRUCTION = ("Output the thinking process in <think> </think> and final emotion in <answer> </answer> "
                       "tags.")  # how R1-Omni's questions end; prompts/r1-omni.txt adds the same sentence


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
    videos: list = field(default_factory=list)  # video sources: file paths, or lists of frame image sources


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
        raise DataError(f"{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start}); "
                        f"re-save the file as UTF-8") from e
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


def _r1_omni_row(raw):
    """(problem, answer) of a row in R1-Omni's layout: the human turn, without R1-Omni's closing instruction
    (`--template r1-omni` adds it), and the gpt turn, out of its `<answer>` tags if it has them."""
    turns = raw["conversations"] if isinstance(raw["conversations"], list) else []
    def turn(*speakers):
        return next((t.get("value") for t in turns if isinstance(t, dict) and t.get("from") in speakers), None)
    problem, answer = turn("human", "user"), turn("gpt", "assistant")
    if isinstance(problem, str) and problem.rstrip().endswith(R1_OMNI_INSTRUCTION):
        problem = problem.rstrip()[:-len(R1_OMNI_INSTRUCTION)].rstrip()
    if isinstance(answer, str):
        tagged = re.search(r"<answer>(.*?)</answer>", answer, re.DOTALL)
        answer = (tagged.group(1) if tagged else answer).strip()
    return problem, answer


def read_rows(path, image_dir=None, prompt_key="problem", answer_key="answer", image_key="images",
              video_key="videos", response_key="response"):
    """All rows of a data file or folder (see the module docstring for the layouts). `response_key`: the
    column holding a row's target response (sft.py), "" for none."""
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
        table = read_table(file)
        check_columns(file, table, prompt_key, answer_key, image_key, video_key)
        for n, raw in table:
            where = f"{file}:{n}"
            if not isinstance(raw, dict):
                raise DataError(f"{where}: expected an object with {prompt_key!r}, {answer_key!r}, {image_key!r}")
            images = raw.get(image_key) or []
            images = images if isinstance(images, list) else [images]
            videos = raw.get(video_key) or []
            videos = videos if isinstance(videos, list) else [videos]  # one entry per video (a list is one video)
            problem, answer = raw.get(prompt_key), raw.get(answer_key)
            if "conversations" in raw and "video" in raw:  # R1-Omni's layout
                (problem, answer), videos = _r1_omni_row(raw), [raw["video"]]
            rows.append(Row(problem, "" if answer is None else str(answer), images, where, base_dir,
                            raw.get(response_key) if response_key else None, videos))
    if not rows:  # said here, or an empty file would surface later as "no labels" or "no usable rows"
        raise DataError(f"{path}: no rows" + ("" if files == [path] else f" in its {len(files)} data file(s)"))
    return rows


def check_columns(file, table, prompt_key, answer_key, image_key, video_key):
    """Refuse, once, a file of another layout (a column no row has: `question` for `problem`, `label` for
    `answer`, `image` for `images`), naming its columns, instead of refusing (or skipping) every row."""
    columns = list(dict.fromkeys(key for _, raw in table if isinstance(raw, dict) for key in raw))
    if not columns or {"conversations", "video"} <= set(columns):  # no rows (said later), R1-Omni's layout
        return
    missing = [repr(key) for key in (prompt_key, answer_key) if key not in columns]
    if image_key not in columns and video_key not in columns:
        missing.append(f"{image_key!r} (or {video_key!r})")
    if missing:
        raise DataError(f"{file}: no {' or '.join(missing)} column. Its columns are {', '.join(map(repr, columns))}; "
                        f"data.py reads {prompt_key!r} (the question), {answer_key!r} (the label) and {image_key!r} "
                        f"(or {video_key!r}): rename the file's columns to these (the layout: docs/data.md)")


def check_one_modality(rows, image_key, video_key):
    """Refuse image rows beside video rows: Qwen2.5-VL runs its vision tower once per modality in a forward,
    and under FSDP every rank must run it the same number of times, so a batch may not mix them."""
    why = ("Qwen2.5-VL runs its vision tower once per modality in a forward, and under FSDP every rank must "
           "run it the same number of times, so a dataset is all images or all videos: split it in two")
    both = next((row for row in rows if row.images and row.videos), None)
    if both is not None:
        raise DataError(f"{both.where}: the row has both {image_key!r} and {video_key!r}; {why}")
    image_row = next((row for row in rows if row.images), None)
    video_row = next((row for row in rows if row.videos), None)
    if image_row is not None and video_row is not None:
        raise DataError(f"image rows ({image_row.where}) and video rows ({video_row.where}) in one dataset; {why}")


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
