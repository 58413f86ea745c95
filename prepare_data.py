"""Convert the public emotion datasets to the data.py layout: EmoSet, Emotion6, WebEmo (2/7/25) and FI.

Each converter reads one release the way its authors distribute it and writes `OUT/<split>.jsonl`
(one row per image: `images`, `problem`, `answer`) plus `OUT/labels.txt`, so
`data.PromptDataset(OUT / "train.jsonl", ...)`, train_grpo.py and evaluate.py find the label set by
themselves. Images stay where they are (never copied): paths inside OUT are written relative, others
absolute. None of this could be run on the real downloads; the layouts come from the papers, the
authors' loaders and public code that reads each release, and each converter's docstring says what
was assumed:

  emoset    EmoSet-118K: SRC/{train,val,test}.json and the image/ and annotation/ folders; Mikels 8.
            Writes every split the release has (or --split).
  emotion6  Emotion6: SRC/images/<emotion>/ (or SRC/<emotion>/); Ekman 6. No official split: all
            images go to test.jsonl, or a seeded class-stratified split with --test-fraction.
  webemo    WebEmo: SRC/train25.txt and SRC/test25.txt (or one list file with --split), one
            `<local image path> <label id 0-24>` per line (download the listed URLs first);
            --level 25, 7 or 2 (required: which level the EMO-R3 paper evaluated is unknown),
            mapped through WEBEMO_HIERARCHY or --hierarchy FILE.TSV.
  fi        FI (Flickr and Instagram): SRC/<emotion>/ for the Mikels 8; a seeded class-stratified
            80/20 train/test split (--test-fraction, --seed).

Not here: reading, checking and batching datasets (data.py, which this script imports; validate a
result with `python data.py check OUT/train.jsonl --model MODEL`), and the demo dataset (tiny.py).
Write each dataset, and each WebEmo level, to its own OUT: one labels.txt serves every split there.

    python prepare_data.py emoset downloads/EmoSet-118K --out data/emoset
    python prepare_data.py emotion6 downloads/Emotion6 --out data/emotion6
    python prepare_data.py webemo downloads/WebEmo --level 7 --out data/webemo7
    python prepare_data.py fi downloads/FI --out data/fi --test-fraction 0.2 --seed 0
"""

import argparse
import json
import os
import random
from pathlib import Path

import rewards
from data import IMAGE_SUFFIXES, DataError, default_question, read_table, write_jsonl


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
    question = default_question(labels)
    rows = []
    for image, label in items:
        image = Path(os.path.abspath(image))  # abspath, not resolve: a symlinked images/ inside out stays relative
        # relative inside out, so the folder can be moved; absolute outside it, so it loads from anywhere
        name = image.relative_to(out).as_posix() if image.is_relative_to(out) else str(image)
        rows.append({"images": [name], "problem": question, "answer": label})
    labels_file.write_text("\n".join(labels) + "\n")
    return write_jsonl(out / f"{split}.jsonl", rows), len(rows)


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


def _run(parser, args):
    """The command line's work: run one converter over the splits the flags ask for, print what it wrote."""
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["emoset", "emotion6", "webemo", "fi"], help="which release SRC holds")
    parser.add_argument("src", help="the release's root folder (webemo: the folder of the lists, or one list)")
    parser.add_argument("--out", required=True, help="output folder (one per dataset and WebEmo level)")
    parser.add_argument("--split", default=None, help="the split to write (default: every split the release "
                                                      "has; emotion6/fi: train and test with --test-fraction)")
    parser.add_argument("--level", type=int, choices=[2, 7, 25], default=None, help="webemo label level")
    parser.add_argument("--hierarchy", default=None, help="webemo: TSV fine<TAB>mid<TAB>coarse, row i = id i")
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
