"""The image converters behind `python prepare_data.py`: EmoSet-118K, Emotion6, WebEmo (2/7/25) and FI, each
from its release as the authors ship it to `OUT/<split>.jsonl` (`images`, `problem`, `answer`) and `OUT/labels.txt`.

Each converter's docstring says which layout it assumes and where that comes from; prepare_data.py's docstring
(`python prepare_data.py --help`) lists them with their flags. Also here, shared with convert_video.py:
`write_split` (one split's rows plus labels.txt, paths relative inside OUT) and `subfolders`.
Not here: the command line (prepare_data.py), the video converters DFEW and MAFW (convert_video.py), and reading,
checking and batching datasets (rows.py, data.py).
"""

import ast
import json
import os
import random
import re
from pathlib import Path

import rewards
from data import default_question, write_jsonl
from rows import IMAGE_SUFFIXES, DataError, read_table


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


def write_split(out, split, labels, items, question=None, key="images"):
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


def subfolders(folder):
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
    roots = [src] + subfolders(src)
    root = next((r for r in roots if any(p.name.lower() in known for p in subfolders(r))), None)
    if root is None:
        raise DataError(f"{src}: no {dataset} class folders ({', '.join(labels)}) in it or one level down")
    items = []
    for folder in subfolders(root):
        if folder.name.lower() not in known:  # never drop a class silently
            raise DataError(f"{folder}: {folder.name!r} is not one of the {dataset} labels ({', '.join(labels)}); "
                            f"rename it to its class (a misspelt 'digust' is disgust) or move it out of {root}")
        label = known[folder.name.lower()]
        nested = subfolders(folder)
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
    return write_split(out, split, labels, items)


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
    return write_split(out, split, labels, items)


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
    return write_split(out, split, sorted({row[column] for row in table}), items)
