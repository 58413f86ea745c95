"""The video converters behind `python prepare_data.py`: DFEW and MAFW (its single-label set), R1-Omni's
in-distribution benchmarks. Each writes one fold's train or test list to `OUT/<split>.jsonl` (`videos`, `problem`,
`answer`; a clip is a video file's path or the list of its frames' paths) and `OUT/labels.txt`, with R1-Omni's
question and its words for the labels.

Clips are found by their number under the release's clip folder, never copied. Each converter's docstring says
which layout it assumes and where that comes from. Not here: the command line (prepare_data.py), the image
converters and the writing of a split (convert_images.py, whose `write_split` this module uses), and reading video
rows back (rows.py, video.py).
"""

import csv
import os
import re
from pathlib import Path

from convert_images import subfolders, write_split
from rows import IMAGE_SUFFIXES, DataError


# R1-Omni's question (HumanMLLM/R1-Omni, src/r1-v/src/open_r1/grpo.py, load_video_dataset); --template
# r1-omni appends its output instruction.
R1_OMNI_QUESTION = ("As an emotional recognition expert; throughout the video, which emotion conveyed by the "
                    "characters is the most obvious to you?")
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv"}
# DFEW's label ids (the release's readme: 1 Happy ... 7 Fear), as R1-Omni writes them
DFEW_IDS = {1: "happy", 2: "sad", 3: "neutral", 4: "angry", 5: "surprise", 6: "disgust", 7: "fear"}
# MAFW's 11 single-label classes as its split lists spell them, and the word R1-Omni's data uses for each
MAFW_CLASSES = ["anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise", "contempt", "anxiety",
                "helplessness", "disappointment"]
MAFW_R1_OMNI = {"anger": "angry", "disgust": "disgust", "fear": "fear", "happiness": "happy", "neutral": "neutral",
                "sadness": "sad", "surprise": "surprise", "contempt": "contemptuous", "anxiety": "anxious",
                "helplessness": "helpless", "disappointment": "disappointed"}
# the label lists of R1-Omni's first grpo.py (commits 0020f5a, 851bd00), in its order: labels.txt order here
R1_OMNI_DFEW = ["happy", "surprise", "neutral", "angry", "disgust", "sad", "fear"]
R1_OMNI_MAFW = R1_OMNI_DFEW + ["contemptuous", "disappointed", "helpless", "anxious"]
DFEW_CLIPS = {"original": "Clip/original", "clip_224x224": "Clip/clip_224x224",
              "clip_224x224_16f": "Clip/clip_224x224_16f"}
MAFW_CLIPS = {"clips": "data/clips", "frames": "data/frames"}
MAFW_LISTS = "Train & Test Set"


def video_question(labels, label_list=True):
    """A video row's problem: <video>, R1-Omni's question and, with label_list, a line of the labels."""
    return "<video>" + R1_OMNI_QUESTION + ("\n" + ", ".join(labels) if label_list else "")


def _natural_key(name):
    """Sort key that orders the numbers inside names by value: 2.jpg before 10.jpg, x_9 before x_10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)], name


def _clip_key(name):
    """A clip's key from its file or folder name: the number (00025.mp4, 25 and 00025 are one clip), else the stem."""
    stem = Path(name).stem if Path(name).suffix.lower() in VIDEO_SUFFIXES else name
    return int(stem) if stem.isdigit() else stem


def _clip_index(root):
    """{clip key: video file or frame folder} under root.

    A folder named by a number is one clip's frames; other folders (a zip's part_1/, say) are searched on;
    a video file is a clip. Two entries with one key (00001.mp4 and 1.mp4, or a video and a frame folder)
    are refused with both named: which one is the clip cannot be told.
    """
    index, stack = {}, [Path(root)]
    while stack:
        folder = stack.pop(0)  # breadth first, in name order: the same index, and messages, anywhere
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.name.startswith((".", "__")):  # .DS_Store, __MACOSX from zips
                    continue
                path = Path(entry.path)
                if entry.is_dir():
                    if not entry.name.isdigit():
                        stack.append(path)
                        continue
                elif path.suffix.lower() not in VIDEO_SUFFIXES:
                    continue
                key = _clip_key(entry.name)
                if key in index:
                    raise DataError(f"{index[key]} and {path} are both clip {key}; keep one of them in {root}")
                index[key] = path
    return index


def _clip_frames(folder):
    """The frame images of a clip folder, in frame order (numbers by value); other files (n_frames) are not frames."""
    return [folder / name for name in sorted((p.name for p in folder.iterdir()
                                              if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)]


def _named_clip_root(src, clips, named, dataset):
    """The clip folder: one of the release's named forms (relative to SRC, any case), or a folder path."""
    if clips in named:
        root = Path(src)
        for part in named[clips].split("/"):
            match = next((p for p in root.iterdir() if p.is_dir() and p.name.lower() == part.lower()), None) \
                if root.is_dir() else None
            root = match or root / part
        if not root.is_dir():
            forms = ", ".join(f"{name} ({path})" for name, path in named.items())
            raise DataError(f"{root}: no such folder; {dataset} clips come as {forms}: pass --clips with the form you "
                            f"downloaded, or the folder that holds the clips")
        return root
    root = Path(clips)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (--clips takes {', '.join(named)} or the folder holding the clips)")
    return root


def _video_items(listed, root, skip_missing, dataset, split, list_file):
    """(clip, label) pairs for the (where, key, label) entries of a list: a video file's path or a frame list.

    Clips not in root (or frame folders without images) stop the conversion with their count and the first
    one; skip_missing writes the rest and prints the count instead.
    """
    index, items, missing = _clip_index(root), [], []
    for where, key, label in listed:
        clip = index.get(key)
        frames = _clip_frames(clip) if clip is not None and clip.is_dir() else None
        if clip is None or frames == []:
            missing.append(f"{where} (clip {key}{': a frame folder without images' if clip else ''})")
        else:
            items.append((frames if frames else clip, label))
    if missing and not (skip_missing and items):
        advice = ("Pass --skip-missing to convert the clips there are" if items else
                  "None is there: is --clips the folder holding this release's clips?")
        raise DataError(f"{len(missing)} of the {len(listed)} clips listed in {list_file} are missing from {root} "
                        f"(first: {missing[0]}); a clip is a video file or a folder of frames named by its number. "
                        f"{advice}")
    if missing:
        print(f"{dataset} {split}: skipped {len(missing)} of {len(listed)} listed clips, missing from {root} "
              f"(first: {missing[0]})")
    return items


def _check_fold(fold, split):
    if fold not in (1, 2, 3, 4, 5):
        raise ValueError(f"fold must be 1, 2, 3, 4 or 5 (the release's 5-fold cross-validation), got {fold!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test' (each fold has a training and a test list), got {split!r}")


def _release_root(src, marker, dataset):
    """The folder holding `marker`: SRC, or one level down (a zip's top folder)."""
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"{src}: no such folder")
    root = next((r for r in [src] + subfolders(src) if (r / marker).is_dir()), None)
    if root is None:
        raise DataError(f"{src}: no {marker}/ in it or one level down; is SRC the {dataset} release's folder?")
    return root


def prepare_dfew(src, out, fold, split="train", clips="original", skip_missing=False, label_list=True):
    """DFEW (Jiang et al., ACM MM 2020), one fold's train or test list -> out/<split>.jsonl; 7 labels.

    Layout (the release's README, the authors' DFEW_Dataset.py, and the preprocessing of MAE-DFER and
    DFER-CLIP): SRC/EmoLabel_DataSplit/train(single-labeled)/set_<fold>.csv and test(single-labeled)/...
    (the readme's zips say single_labeled; both spellings, and plain train/ and test/, are read), CSVs
    with a `video_name,label` header: the clip's number (00001 or 1) and its label id, 1 Happy, 2 Sad,
    3 Neutral, 4 Angry, 5 Surprise, 6 Disgust, 7 Fear. Clips (`clips`): "original", SRC/Clip/original/
    <number>.mp4, the full frames with sound (the form R1-Omni trained on: DFEW/videos/1.mp4 in its
    README); "clip_224x224", SRC/Clip/clip_224x224/<00001>/<00001_00001>.jpg, aligned face crops; the
    16-frame "clip_224x224_16f"; or any folder of video files or per-clip frame folders named by number
    (video files may sit in sub-folders such as a zip's part folder). A frame folder's row lists its
    frames in order. Labels are R1-Omni's words (happy, sad, neutral, angry, surprise, disgust, fear),
    listed in labels.txt in the order of R1-Omni's label line. Which fold R1-Omni trained on is unknown
    (its README's training example, DFEW clip 1, is in fold 1's test list), hence fold is required.

    The question is R1-Omni's, followed by a line listing the labels (label_list=True), as R1-Omni's first
    grpo.py did. Its final grpo.py dropped that line, but its policy had been fine-tuned on these labels
    first; a model that was not cannot know which words the exact-match reward accepts (happy, not
    happiness; contemptuous, not contempt). label_list=False writes R1-Omni's final question alone.
    """
    _check_fold(fold, split)
    root = _release_root(src, "EmoLabel_DataSplit", "DFEW")
    folders = [f"{split}(single-labeled)", f"{split}(single_labeled)", split]
    list_file = next((root / "EmoLabel_DataSplit" / f / f"set_{fold}.csv" for f in folders
                      if (root / "EmoLabel_DataSplit" / f / f"set_{fold}.csv").is_file()), None)
    if list_file is None:
        raise DataError(f"{root / 'EmoLabel_DataSplit'}: no {' or '.join(f + f'/set_{fold}.csv' for f in folders)} "
                        f"(DFEW ships {split}(single-labeled).zip there: unzip it)")
    listed = []
    with open(list_file, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = [name.strip().lower() for name in next(reader, [])]
        if "video_name" not in header or "label" not in header:
            raise DataError(f"{list_file}:1: expected a header with video_name and label columns, got "
                            f"{','.join(header)!r:.200}")
        name_col, label_col = header.index("video_name"), header.index("label")
        for fields in reader:
            where = f"{list_file}:{reader.line_num}"
            if not any(field.strip() for field in fields):
                continue
            name = fields[name_col].strip() if len(fields) > max(name_col, label_col) else ""
            label = fields[label_col].strip() if name else ""
            if not name.isdigit() or not re.fullmatch(r"-?\d+", label):
                raise DataError(f"{where}: expected '<clip number>,<label id 1-7>', got {','.join(fields)!r:.200}")
            if int(label) not in DFEW_IDS:
                raise DataError(f"{where}: label id {label} is not a DFEW single label (1 happy, 2 sad, 3 neutral, "
                                f"4 angry, 5 surprise, 6 disgust, 7 fear)")
            listed.append((where, int(name), DFEW_IDS[int(label)]))
    clip_root = _named_clip_root(root, clips, DFEW_CLIPS, "DFEW")
    items = _video_items(listed, clip_root, skip_missing, "DFEW", split, list_file)
    return write_split(out, split, R1_OMNI_DFEW, items, video_question(R1_OMNI_DFEW, label_list), key="videos")


def prepare_mafw(src, out, fold, split="train", clips="clips", skip_missing=False, label_list=True,
                 label_names="r1-omni"):
    """MAFW (Liu et al., ACM MM 2022), single-label set, one fold's list -> out/<split>.jsonl; 11 labels.

    Layout (the release's content preview, the loaders of HiCMAE and MAE-DFER): SRC/Train & Test Set/
    single/no_caption/set_<fold>/{train,test}.txt, lines `00025.mp4 anger` (clip file name, class word);
    clips: "clips", SRC/data/clips/<00025>.mp4; "frames", SRC/data/frames/<00025>/ folders of frame
    images; or any folder of such video files or frame folders. The classes are anger, disgust, fear,
    happiness, neutral, sadness, surprise, contempt, anxiety, helplessness, disappointment; labels are
    written as R1-Omni's data has them (label_names="r1-omni": angry, disgust, fear, happy, neutral, sad,
    surprise, contemptuous, anxious, helpless, disappointed) or as the release spells them ("release").
    Only the single-label set is read: the compound set (Train & Test Set/compound, labels such as
    anger_disgust) is out of scope, and a compound label in a list is an error. The question: see
    prepare_dfew.
    """
    _check_fold(fold, split)
    if label_names not in ("r1-omni", "release"):
        raise ValueError(f"label_names must be 'r1-omni' or 'release', got {label_names!r}")
    root = _release_root(src, MAFW_LISTS, "MAFW")
    list_file = root / MAFW_LISTS / "single" / "no_caption" / f"set_{fold}" / f"{split}.txt"
    if not list_file.is_file():
        raise DataError(f"{list_file}: no such list (MAFW ships {MAFW_LISTS}/single/no_caption/set_1 ... set_5, "
                        f"each with train.txt and test.txt)")
    rename = MAFW_R1_OMNI if label_names == "r1-omni" else {label: label for label in MAFW_CLASSES}
    labels = R1_OMNI_MAFW if label_names == "r1-omni" else MAFW_CLASSES
    listed = []
    for n, line in enumerate(list_file.read_text(encoding="utf-8-sig").splitlines(), 1):
        where, fields = f"{list_file}:{n}", line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DataError(f"{where}: expected '<clip file> <label>', got {line!r:.200}")
        name, label = fields[0], fields[1].lower()
        if label not in rename:
            parts = re.split(r"[_\-+,]", label)
            kind = ("a compound label; only MAFW's single-label set is converted (the compound set is out of scope)"
                    if len(parts) > 1 and all(part in rename for part in parts) else
                    f"not one of the MAFW single labels ({', '.join(MAFW_CLASSES)})")
            raise DataError(f"{where}: {fields[1]!r} is {kind}")
        listed.append((where, _clip_key(name), rename[label]))
    clip_root = _named_clip_root(root, clips, MAFW_CLIPS, "MAFW")
    items = _video_items(listed, clip_root, skip_missing, "MAFW", split, list_file)
    return write_split(out, split, labels, items, video_question(labels, label_list), key="videos")
