"""Convert the public emotion datasets to the data.py layout: EmoSet, Emotion6, WebEmo (2/7/25) and FI
(images), DFEW and MAFW (videos, R1-Omni's in-distribution benchmarks).

Each converter reads one release as its authors distribute it and writes `OUT/<split>.jsonl` (one
row per image: `images`, `problem`, `answer`; or per clip: `videos`, `problem`, `answer`, where the one
video is a file's path or a list of its frames' paths) plus `OUT/labels.txt`, so
`data.PromptDataset(OUT / "train.jsonl", ...)`, train_grpo.py and evaluate.py find the label set by
themselves. Images and clips stay where they are (never copied): paths inside OUT are written relative,
others absolute. None of this could be run on the real downloads; the layouts come from each release's
readme, its authors' loader or download script and public code that reads it, and each converter's
docstring says what was assumed:

  emoset    EmoSet-118K: SRC/{train,val,test}.json ([emotion, image_id, image_path, annotation_path]
            entries), SRC/image/ and SRC/annotation/; Mikels 8. Writes every split the release has.
  emotion6  Emotion6: SRC/images/<emotion>/<n>.jpg and SRC/ground_truth.txt; Ekman 6. The label is the
            folder, i.e. the Flickr search keyword; --label-from ground_truth takes the annotators'
            most chosen emotion instead. No official split: all images go to test.jsonl, or a seeded
            class-stratified split with --test-fraction.
  webemo    WebEmo: SRC/train25.txt and SRC/test25.txt (`<image URL> <label id 0-24>` lines) and
            SRC/category.txt (the 25 -> 7 -> 2 hierarchy). Download the images first: they are looked
            for at IMAGE_ROOT/<split>/<label id>/<file name of the URL>, the tree the public download
            script writes (--image-root, default SRC); --skip-missing converts without dead links and
            reports how many. --level 25, 7 or 2 (required: the EMO-R3 paper's level is unknown).
  fi        FI (Flickr and Instagram): SRC/<emotion>/<image> for the Mikels 8; a seeded
            class-stratified 80/20 train/test split (--test-fraction, --seed).
  dfew      DFEW: SRC/EmoLabel_DataSplit/{train,test}(single-labeled)/set_<fold>.csv (video_name,label;
            ids 1-7) and the clips: SRC/Clip/original/<n>.mp4 (default), Clip/clip_224x224/<n>/ frame
            folders (--clips clip_224x224) or any folder of them. --fold 1-5 (required); writes the fold's
            train.jsonl and test.jsonl. Labels as R1-Omni's data has them (happy, sad, ...).
  mafw      MAFW, single-label set: SRC/Train & Test Set/single/no_caption/set_<fold>/{train,test}.txt
            (`00025.mp4 anger`) and SRC/data/clips/<n>.mp4 (default) or data/frames/<n>/ (--clips
            frames). --fold 1-5 (required). Labels as R1-Omni's data has them (angry, happy,
            contemptuous, ...; --label-names release keeps MAFW's anger, happiness, contempt, ...).
            The compound set is out of scope.
            Video rows ask R1-Omni's question followed by a line listing the labels (--no-label-list:
            the question alone; see prepare_dfew for why). --skip-missing as for webemo.

Folder-per-class releases (Emotion6, FI) are refused, with the folder named, when a class folder
holds another folder (its images would take the parent's label) or a class has no images (labels.txt
would list a class that no row has). Not here: reading, checking and batching datasets (data.py,
which this script imports; validate a result with `python data.py check OUT/train.jsonl --model
MODEL`), and the demo dataset (tiny.py). Write each dataset, each WebEmo level and each DFEW/MAFW fold
to its own OUT: one labels.txt serves every split there, and a fold's train.jsonl replaces another's.

    python prepare_data.py emoset downloads/EmoSet-118K --out data/emoset
    python prepare_data.py emotion6 downloads/Emotion6 --out data/emotion6
    python prepare_data.py webemo downloads/WebEmo --level 7 --out data/webemo7 --skip-missing
    python prepare_data.py fi downloads/FI --out data/fi --test-fraction 0.2 --seed 0
    python prepare_data.py dfew downloads/DFEW --fold 1 --out data/dfew/fold1
    python prepare_data.py mafw downloads/MAFW --fold 1 --clips frames --out data/mafw/fold1
"""

import argparse
import ast
import csv
import json
import os
import random
import re
from functools import partial
from pathlib import Path

import rewards
from data import IMAGE_SUFFIXES, DataError, default_question, read_table, write_jsonl


# WebEmo's label hierarchy (25-level, 7-level, 2-level); row i is label id i of train25.txt/test25.txt.
# Copied from the release's category.txt, which converters read instead when SRC has it: Parrott's 6
# primary emotions plus "confusion", a 7-level class of its own there (its readme says "six categories").
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
# category.txt misspells two classes; prompts get the English word, lists may use either
WEBEMO_SPELLINGS = {"cheerfullness": "cheerfulness", "irritabilty": "irritability"}
WEBEMO_VALENCE = {"+": "positive", "-": "negative"}  # category.txt's level-2 signs


def _write_split(out, split, labels, items, question=None, key="images"):
    """Write out/<split>.jsonl and out/labels.txt; return (path, count).

    items are (image path, label) pairs, or with key="videos" (clip, label) pairs where a clip is a video
    file's path or a list of frame paths (one video either way: the row's `videos` holds that one entry).
    question is the row's `problem` (default: data.default_question of the labels, for images).
    """
    out = Path(os.path.abspath(out))
    if not items:
        noun = "clips" if key == "videos" else "images"
        raise DataError(f"no {noun} found for {out / (split + '.jsonl')}: nothing to write")
    out.mkdir(parents=True, exist_ok=True)
    labels_file = out / "labels.txt"
    # one labels.txt serves every split in the folder: two label sets there would mislabel one of them
    if labels_file.exists() and rewards.load_labels(str(labels_file)) != labels:
        raise DataError(f"{labels_file}: already holds a different label set than the {len(labels)} labels being "
                        f"written now; write each dataset (and each WebEmo level) to its own --out folder")
    question = default_question(labels) if question is None else question

    def name(path):
        path = Path(os.path.abspath(path))  # abspath, not resolve: a symlinked images/ inside out stays relative
        # relative inside out, so the folder can be moved; absolute outside it, so it loads from anywhere
        return path.relative_to(out).as_posix() if path.is_relative_to(out) else str(path)

    rows = []
    for media, label in items:
        entry = [name(frame) for frame in media] if isinstance(media, (list, tuple)) else name(media)
        rows.append({key: [entry], "problem": question, "answer": label})
    labels_file.write_text("\n".join(labels) + "\n")
    return write_jsonl(out / f"{split}.jsonl", rows), len(rows)


def _existing_image(path, where):
    if not path.is_file():
        raise DataError(f"{where}: image {path} does not exist (is the download complete and SRC its root?)")
    return path


def _subfolders(folder):
    # hidden and tool folders (.ipynb_checkpoints, __MACOSX from zips) are neither classes nor images
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def _class_folder_items(src, labels, dataset):
    """(image, label) pairs of a folder-per-class release, and the folder that holds the class folders.

    The class folders sit in SRC or one level down (Emotion6's images/, a zip's top folder). Refused,
    with the folder named: a folder that is not a class; a folder inside a class folder, whose images
    would take the parent's label while its own class (e.g. a misspelt digust/) vanished; a class with
    no folder or no images, which labels.txt would still list.
    """
    src, known = Path(src), {label.lower(): label for label in labels}
    if not src.is_dir():
        raise DataError(f"{src}: no such folder")
    roots = [src] + _subfolders(src)
    root = next((r for r in roots if any(p.name.lower() in known for p in _subfolders(r))), None)
    if root is None:
        raise DataError(f"{src}: no {dataset} class folders ({', '.join(labels)}) in it or one level down")
    items = []
    for folder in _subfolders(root):
        if folder.name.lower() not in known:  # never drop a class silently
            raise DataError(f"{folder}: {folder.name!r} is not one of the {dataset} labels ({', '.join(labels)}); "
                            f"rename it to its class (a misspelt 'digust' is disgust) or move it out of {root}")
        label = known[folder.name.lower()]
        nested = _subfolders(folder)
        if nested:
            raise DataError(f"{nested[0]}: a folder inside the class folder {folder}; its images would be labelled "
                            f"{label!r}. Move them into the class folder they belong to ({', '.join(labels)}; a "
                            f"misspelt name such as 'digust' means disgust) and remove the folder")
        items += [(p, label) for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    absent = [label for label in labels if label not in {label for _, label in items}]
    if absent:
        raise DataError(f"{root}: no images of {', '.join(absent)}; {dataset} has a folder of images for each of "
                        f"{', '.join(labels)}, and labels.txt would list a class that no row has. Is the download "
                        f"complete, and are the folders named after the classes?")
    return items, root


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


def _write_class_items(items, src, out, split, test_fraction, seed, labels):
    """Write all items to out/<split>.jsonl, or with a test fraction the train or test part of a split."""
    if test_fraction:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test' with a test fraction, got {split!r}")
        items = dict(zip(("train", "test"), _stratified_split(items, test_fraction, seed, src)))[split]
    return _write_split(out, split, labels, items)


def prepare_emoset(src, out, split="train"):
    """EmoSet-118K (Yang et al., ICCV 2023) -> out/<split>.jsonl; labels: Mikels 8.

    Layout (the release's readme and the authors' EmoSet.py loader): SRC/{train,val,test}.json, each a
    JSON list of [emotion, image_id, image_path, annotation_path] with paths relative to SRC, e.g.
    image/amusement/amusement_12865.jpg and annotation/amusement/amusement_12865.json; 3-item entries
    [emotion, image_path, annotation_path], which one public loader reads, are accepted too. The label
    is the annotation's "emotion" when that file has one, else the entry's; a disagreement between the
    two, a label outside Mikels 8 or a missing image is an error naming the entry. The other
    attributes (brightness, scene, ...) and info.json are unused.
    """
    from tqdm import tqdm
    src, labels = Path(src), rewards.load_labels("emoset")
    split_file = src / f"{split}.json"
    if not split_file.is_file():
        below = sorted(p.parent for p in src.glob(f"*/{split}.json"))  # SRC given one folder too high
        hint = f"; {below[0]} has one: pass that folder as SRC" if below else ""
        raise DataError(f"{split_file}: no such split file (EmoSet ships train.json, val.json and test.json){hint}")
    items = []
    for n, entry in tqdm(read_table(split_file), desc=f"EmoSet {split}"):
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


def _emotion6_ground_truth(src, root, labels):
    """ground_truth.txt as {image path relative to images/: [annotators' share of each label]}, and its path.

    The file is tab-separated under a header `[image_filename] [valence] [arousal] [prob. anger] ...
    [prob. surprise] [prob. neutral]`, one row per image (`anger/1.jpg`); columns are found by name.
    """
    file = next((p for p in (Path(src) / "ground_truth.txt", root.parent / "ground_truth.txt") if p.is_file()), None)
    if file is None:
        raise DataError(f"{src}: no ground_truth.txt in it or beside {root} (Emotion6 ships it beside images/); "
                        f"--label-from ground_truth needs it")
    lines = file.read_text(encoding="utf-8").splitlines()
    header = [name.strip().strip("[]").lower() for name in lines[0].split("\t")] if lines else []
    if not all(f"prob. {label}" in header for label in labels):
        raise DataError(f"{file}:1: expected a header with a '[prob. <emotion>]' column for each of "
                        f"{', '.join(labels)}, got {lines[0] if lines else ''!r:.200}")
    columns = [header.index(f"prob. {label}") for label in labels]
    shares = {}
    for n, line in enumerate(lines[1:], 2):
        if line.strip():
            fields = line.split("\t")
            try:
                shares[fields[0].strip()] = [float(fields[c]) for c in columns]
            except (IndexError, ValueError) as e:
                raise DataError(f"{file}:{n}: expected a tab-separated row under the header, got {line!r:.200}") from e
    return shares, file


def prepare_emotion6(src, out, split="test", test_fraction=0.0, seed=0, label_from="folder"):
    """Emotion6 (Peng et al., CVPR 2015) -> out/<split>.jsonl; labels: Ekman 6.

    Layout (the release's readme.txt): SRC/images/<emotion>/<n>.jpg, 330 each for anger, disgust,
    fear, joy, sadness, surprise (SRC may also be the images/ folder itself), and SRC/ground_truth.txt.
    The folder is the keyword the image was found with on Flickr, not what its annotators chose:
    ground_truth.txt holds their distribution over the six emotions and neutral. label_from="folder"
    (the default, as public loaders label Emotion6) labels by folder; "ground_truth" by the emotion with the largest
    share (neutral ignored; a tie goes to the folder's emotion when it is among the tied, else to the
    first in the order above), printing how many labels differ from the folder.
    There is no official split: by default every image goes to <split>.jsonl (test: Emotion6 is an
    out-of-domain benchmark); with test_fraction > 0, `split` picks the train or test part of a seeded
    split that is stratified by class and keeps every class on both sides.
    """
    labels = rewards.load_labels("emotion6")
    if label_from not in ("folder", "ground_truth"):
        raise ValueError(f"label_from must be 'folder' or 'ground_truth', got {label_from!r}")
    items, root = _class_folder_items(src, labels, "Emotion6")
    if label_from == "ground_truth":
        shares, file = _emotion6_ground_truth(src, root, labels)
        names = {image: image.relative_to(root).as_posix() for image, _ in items}
        unlisted = [name for name in names.values() if name not in shares]
        absent = sorted(set(shares) - set(names.values()))
        problems = ([f"no row for {len(unlisted)} image(s) in {root}, e.g. {unlisted[0]}"] if unlisted else []) + \
            ([f"rows for {len(absent)} image(s) not in {root}, e.g. {absent[0]}"] if absent else [])
        if problems:  # a partial download or a foreign file: say so rather than label a subset
            raise DataError(f"{file}: {'; '.join(problems)}. Is the download complete, and is this file the one "
                            f"shipped with these images?")
        relabelled = []
        for image, folder_label in items:
            share = shares[names[image]]
            tied = [label for label, value in zip(labels, share) if value == max(share)]
            relabelled.append((image, folder_label if folder_label in tied else tied[0]))
        changed = sum(a[1] != b[1] for a, b in zip(items, relabelled))
        print(f"Emotion6: {changed} of {len(items)} images take a label from {file.name} other than their folder's")
        items = relabelled
    return _write_class_items(items, src, out, split, test_fraction, seed, labels)


def prepare_fi(src, out, split="train", test_fraction=0.2, seed=0):
    """FI, Flickr and Instagram (You et al., AAAI 2016) -> out/<split>.jsonl; labels: Mikels 8.

    Assumed layout, not confirmed by a readme of the release: SRC/<emotion>/<image> for the Mikels 8
    emotions (folder names in any case; SRC may be the folder holding them); the label is the folder.
    There is no official split: a seeded split stratified by class, 80/20 by default (the
    training share of the 80/5/15 split common in FI papers, with no separate validation part), keeps
    every class on both sides; `split` picks which part to write.
    """
    labels = rewards.load_labels("emoset")
    items, _ = _class_folder_items(src, labels, "FI")
    return _write_class_items(items, src, out, split, test_fraction, seed, labels)


def load_webemo_hierarchy(path=None):
    """WebEmo's (fine, mid, coarse) rows, row i = label id i: WEBEMO_HIERARCHY, or read from a file.

    The file is the release's category.txt, a Python literal `labels=[('affection', 'love', '+'), ...]`
    (its misspellings corrected, + and - written positive and negative), or a TSV of
    `fine<TAB>mid<TAB>coarse` rows (# comments).
    """
    if path is None:
        return WEBEMO_HIERARCHY
    text = Path(path).read_text(encoding="utf-8")
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")).strip()
    if re.match(r"(\w+\s*=\s*)?\[", body):  # category.txt: `labels=[...]`
        try:
            rows = ast.literal_eval(body[body.index("["):])  # a literal: nothing in the file is run
            if not (isinstance(rows, list) and all(isinstance(row, tuple) and len(row) == 3
                                                   and all(isinstance(f, str) for f in row) for row in rows)):
                raise ValueError("not a list of (fine, mid, coarse) string triples")
        except (SyntaxError, ValueError) as e:
            raise DataError(f"{path}: cannot read it as WebEmo's category.txt ({e}); expected "
                            f"labels=[('affection', 'love', '+'), ...]") from e
        rows = [tuple(field.strip().lower() for field in row) for row in rows]
        return [(WEBEMO_SPELLINGS.get(fine, fine), mid, WEBEMO_VALENCE.get(coarse, coarse))
                for fine, mid, coarse in rows]
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            fields = [field.strip().lower() for field in line.split("\t")]
            if len(fields) != 3 or not all(fields):
                raise DataError(f"{path}:{n}: expected fine<TAB>mid<TAB>coarse (or WebEmo's category.txt), "
                                f"got {line!r}")
            rows.append(tuple(fields))
    return rows


def prepare_webemo(src, out, level, split="train", hierarchy=None, image_root=None, skip_missing=False):
    """WebEmo (Panda et al., ECCV 2018) at level 25, 7 or 2 -> out/<split>.jsonl; labels: that level's.

    Layout (the release's readme and the public download script): SRC/train25.txt and SRC/test25.txt
    (or SRC is one list file), one `<image URL> <label id 0-24>` per line, and SRC/category.txt. The
    release has URLs only, so download the images first: an image is looked for at
    IMAGE_ROOT/<split>/<label id>/<file name of the URL>, where the download script saves it
    (image_root defaults to the list's folder, where that script writes). A line may also give a
    local path (relative to IMAGE_ROOT, or absolute) or a 25-level name instead of an id.
    Levels map through `hierarchy` (category.txt or a TSV, see load_webemo_hierarchy), else the
    category.txt beside the list, else WEBEMO_HIERARCHY; which level the EMO-R3 paper evaluated is
    unknown. labels.txt lists the level's labels sorted. Missing images (dead links) stop the
    conversion with their count; skip_missing=True writes the rest and prints the count instead.
    """
    if level not in (2, 7, 25):
        raise ValueError(f"WebEmo level must be 2, 7 or 25, got {level!r}")
    src = Path(src)
    list_file = src / f"{split}25.txt" if src.is_dir() else src
    if not list_file.is_file():
        raise DataError(f"{list_file}: no such list file (WebEmo ships train25.txt and test25.txt)")
    if hierarchy is None and (list_file.parent / "category.txt").is_file():
        hierarchy = list_file.parent / "category.txt"  # the release's own table
    table = load_webemo_hierarchy(hierarchy)
    column = {25: 0, 7: 1, 2: 2}[level]
    by_name = {row[0]: row for row in table}
    by_name.update({alias: by_name[fine] for alias, fine in WEBEMO_SPELLINGS.items() if fine in by_name})
    root = Path(image_root) if image_root else list_file.parent
    from tqdm import tqdm
    items, missing, listed = [], [], 0
    for n, line in enumerate(tqdm(list_file.read_text(encoding="utf-8").splitlines(), desc=f"WebEmo {split}"), 1):
        if not line.strip():
            continue
        parts = line.rsplit(None, 1)  # split at the last blank: a path may contain spaces
        image, label = parts if len(parts) == 2 else ("", "")
        row = table[int(label)] if label.isdigit() and int(label) < len(table) else by_name.get(label.lower())
        if not image or row is None:
            raise DataError(f"{list_file}:{n}: expected '<image URL or path> <label id 0-{len(table) - 1} or name>', "
                            f"got {line!r}")
        # the download script's tree: <split>/<label as listed>/<the URL's last part>
        path = root / split / label / image.rsplit("/", 1)[-1] if "://" in image else root / image
        listed += 1
        if path.is_file():
            items.append((path, row[column]))
        else:
            missing.append(f"{list_file.name}:{n} {path}")
    if missing and not (skip_missing and items):
        advice = ("Download them, or pass --skip-missing to convert the images there are" if items else
                  "None is there: is the download finished and --image-root the folder holding it?")
        raise DataError(f"{len(missing)} of the {listed} images listed in {list_file} are missing (first: "
                        f"{missing[0]}); a URL's image is looked for at {root}/{split}/<label id>/<file name of the "
                        f"URL> (--image-root). {advice}")
    if missing:
        print(f"WebEmo {split}: skipped {len(missing)} of {listed} listed images, missing from {root} "
              f"(first: {missing[0]})")
    return _write_split(out, split, sorted({row[column] for row in table}), items)


# --- video benchmarks: DFEW and MAFW, R1-Omni's in-distribution sets --------------------------------

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
    root = next((r for r in [src] + _subfolders(src) if (r / marker).is_dir()), None)
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
    return _write_split(out, split, R1_OMNI_DFEW, items, video_question(R1_OMNI_DFEW, label_list), key="videos")


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
    return _write_split(out, split, labels, items, video_question(labels, label_list), key="videos")


def _run(parser, args):
    """The command line's work: run one converter over the splits the flags ask for, print what it wrote."""
    src = Path(args.src)
    if (args.level is None) == (args.dataset == "webemo"):
        parser.error("--level 2, 7 or 25 is required for webemo (the paper's level is unknown) and only for webemo")
    video = args.dataset in ("dfew", "mafw")
    if (args.fold is None) == video:
        parser.error("--fold 1-5 is required for dfew and mafw (5-fold cross-validation; the fold R1-Omni trained on "
                     "is unknown) and only for them")
    for flag, owners, value in (("--hierarchy", ("webemo",), args.hierarchy),
                                ("--image-root", ("webemo",), args.image_root),
                                ("--skip-missing", ("webemo", "dfew", "mafw"), args.skip_missing),
                                ("--label-from", ("emotion6",), args.label_from),
                                ("--clips", ("dfew", "mafw"), args.clips),
                                ("--no-label-list", ("dfew", "mafw"), args.no_label_list),
                                ("--label-names", ("mafw",), args.label_names)):
        if value and args.dataset not in owners:
            names = f"{', '.join(owners[:-1])} and {owners[-1]}" if len(owners) > 1 else owners[0]
            parser.error(f"{flag} is for {names} only")
    if video and args.split not in (None, "train", "test"):
        parser.error(f"--split for {args.dataset} is train or test (each fold has these two lists), got {args.split!r}")
    if video:
        splits = ["train", "test"]
        options = dict(clips=args.clips or ("original" if args.dataset == "dfew" else "clips"),
                       skip_missing=args.skip_missing, label_list=not args.no_label_list)
        convert = partial(prepare_dfew, src, args.out, args.fold, **options) if args.dataset == "dfew" else \
            partial(prepare_mafw, src, args.out, args.fold, label_names=args.label_names or "r1-omni", **options)
    elif args.dataset == "emoset":
        splits = [s for s in ("train", "val", "test") if (src / f"{s}.json").exists()]
        convert = partial(prepare_emoset, src, args.out)
    elif args.dataset == "webemo":
        if src.is_file() and not args.split:
            parser.error(f"{src} is one list file: say which split it is with --split train or --split test")
        splits = [s for s in ("train", "test") if (src / f"{s}25.txt").exists()]
        convert = partial(prepare_webemo, src, args.out, args.level, hierarchy=args.hierarchy,
                          image_root=args.image_root, skip_missing=args.skip_missing)
    else:
        fraction = args.test_fraction if args.test_fraction is not None else (0.2 if args.dataset == "fi" else 0.0)
        splits = ["train", "test"] if fraction else ["train" if args.dataset == "fi" else "test"]
        convert = partial(prepare_fi, src, args.out, test_fraction=fraction, seed=args.seed) if args.dataset == "fi" \
            else partial(prepare_emotion6, src, args.out, test_fraction=fraction, seed=args.seed,
                         label_from=args.label_from or "folder")
    for split in [args.split] if args.split else splits or ["train"]:
        path, count = convert(split)  # one split at a time, so what a converter reports sits above its line
        print(f"wrote {count} rows to {path}")
    print(f"labels: {Path(args.out) / 'labels.txt'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["emoset", "emotion6", "webemo", "fi", "dfew", "mafw"],
                        help="which release SRC holds")
    parser.add_argument("src", help="the release's root folder (webemo: the folder of the lists, or one list)")
    parser.add_argument("--out", required=True, help="output folder (one per dataset and WebEmo level)")
    parser.add_argument("--split", default=None, help="the split to write (default: every split the release "
                                                      "has; emotion6/fi: train and test with --test-fraction)")
    parser.add_argument("--level", type=int, choices=[2, 7, 25], default=None, help="webemo label level")
    parser.add_argument("--hierarchy", default=None, help="webemo: the release's category.txt (read from SRC "
                                                          "when there) or a TSV fine<TAB>mid<TAB>coarse, row i = id i")
    parser.add_argument("--image-root", default=None, help="webemo: the downloaded tree, <split>/<label id>/<file "
                                                           "name of the URL> (default: SRC)")
    parser.add_argument("--skip-missing", action="store_true", help="webemo/dfew/mafw: convert without the images "
                                                                    "or clips that are missing and report their count")
    parser.add_argument("--fold", type=int, choices=[1, 2, 3, 4, 5], default=None,
                        help="dfew/mafw: which of the 5 cross-validation folds to write (required)")
    parser.add_argument("--clips", default=None, help="dfew: original (default), clip_224x224 or clip_224x224_16f; "
                                                      "mafw: clips (default) or frames; or the folder of the clips")
    parser.add_argument("--no-label-list", action="store_true", help="dfew/mafw: R1-Omni's question alone, without "
                                                                     "the line listing the labels")
    parser.add_argument("--label-names", choices=["r1-omni", "release"], default=None,
                        help="mafw: write labels as R1-Omni's data does (angry, happy, contemptuous, ...; default) "
                             "or as the release spells them (anger, happiness, contempt, ...)")
    parser.add_argument("--label-from", choices=["folder", "ground_truth"], default=None,
                        help="emotion6: label by folder (the search keyword; default) or by the annotators' "
                             "most chosen emotion in ground_truth.txt")
    parser.add_argument("--test-fraction", type=float, default=None,
                        help="emotion6/fi: seeded stratified test share (default: emotion6 0 = all test, fi 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="emotion6/fi: seed of the split")
    args = parser.parse_args()
    try:
        _run(parser, args)
    except DataError as e:  # a message for the person, not a traceback
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
