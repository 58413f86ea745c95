"""Tests for prepare_data.py's converters: small replicas of each public release's layout in tmp_path, real files."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import data
import prepare_data

REPO = Path(__file__).resolve().parents[1]
MIN_PIXELS, MAX_PIXELS = 3136, 3136 * 16  # the processor's floor; small so loading stays fast
MIKELS = ["amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness"]
EKMAN = ["anger", "disgust", "fear", "joy", "sadness", "surprise"]
# WebEmo's 25 classes by release label id, and their 7- and 2-level parents, copied by hand from public
# WebEmo loaders (not read from prepare_data.WEBEMO_HIERARCHY)
WEBEMO_25 = ["affection", "cheerfulness", "confusion", "contentment", "disappointment", "disgust", "enthrallment",
             "envy", "exasperation", "gratitude", "horror", "irritability", "lust", "neglect", "nervousness",
             "optimism", "pride", "rage", "relief", "sadness", "shame", "suffering", "surprise", "sympathy", "zest"]
WEBEMO_7 = ["love", "joy", "confusion", "joy", "sadness", "anger", "joy", "anger", "anger", "love", "fear", "anger",
            "love", "sadness", "fear", "joy", "joy", "anger", "joy", "sadness", "sadness", "sadness", "surprise",
            "sadness", "joy"]
POSITIVE_IDS = {0, 1, 3, 6, 9, 12, 15, 16, 18, 22, 24}


def save_png(path, seed=0):
    """A tiny solid-colour PNG (the converters never decode images; PromptDataset does)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256)).save(path)
    return path


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def question(labels):
    return "<image>What emotion does this image evoke? Choose one of: " + ", ".join(labels) + "."


def check_loads(path, processor, labels):
    """Every written row loads through PromptDataset with its image and the written label set."""
    dataset = data.PromptDataset(path, processor, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    assert dataset.labels == labels
    prompts = dataset.get_batch(range(len(dataset)))
    assert [p.answer for p in prompts] == [row["answer"] for row in read_jsonl(path)]
    assert [len(p.images) for p in prompts] == [1] * len(prompts)
    assert dataset.skipped == []


# --- replicas of the releases ---------------------------------------------------------------------

def make_emoset(root):
    """EmoSet-118K: image/<e>/<e>_NNNNN.jpg, annotation/<e>/<e>_NNNNN.json, {train,val,test}.json.

    train.json: 2 per class, 4-item entries [emotion, image_id, image, annotation] (the authors' loader);
    test.json: 1 per class, 3-item entries [emotion, image, annotation]; val.json: one entry whose
    annotation file is absent."""
    number = 0
    for split, per_class in (("train", 2), ("test", 1)):
        entries = []
        for emotion in MIKELS:
            for _ in range(per_class):
                image_id = f"{emotion}_{number:05d}"
                image, annotation = f"image/{emotion}/{image_id}.png", f"annotation/{emotion}/{image_id}.json"
                save_png(root / image, number)
                (root / annotation).parent.mkdir(parents=True, exist_ok=True)
                (root / annotation).write_text(json.dumps({
                    "image_id": image_id, "emotion": emotion, "brightness": 0.4, "colorfulness": 0.6,
                    "scene": "beach", "object": ["dog"], "facial_expression": "happy", "human_action": "run"}))
                entries.append([emotion, image_id, image, annotation] if split == "train"
                               else [emotion, image, annotation])
                number += 1
        (root / f"{split}.json").write_text(json.dumps(entries))
    save_png(root / "image/awe/awe_09999.png", 99)
    (root / "val.json").write_text(json.dumps([["awe", "awe_09999", "image/awe/awe_09999.png",
                                                "annotation/awe/awe_09999.json"]]))
    return root


def make_class_folders(root, labels, per_class):
    """Folder per class: root/<label>/<n>.png, per_class images each."""
    for c, label in enumerate(labels):
        for n in range(per_class):
            save_png(root / label / f"{n + 1}.png", c * 10 + n)
    return root


def make_emotion6(root, per_class=4):
    """Emotion6: images/<emotion>/<n>.jpg plus ground_truth.txt (not read by the converter)."""
    make_class_folders(root / "images", EKMAN, per_class)
    (root / "ground_truth.txt").write_text(
        "[image_filename]\t[valence]\t[arousal]\t[prob. anger]\t[prob. disgust]\t[prob. fear]\t[prob. joy]\t"
        "[prob. sadness]\t[prob. surprise]\t[prob. neutral]\nanger/1.jpg\t3.1\t5.2\t0.5\t0.1\t0.1\t0\t0.1\t0\t0.2\n")
    return root


def make_webemo(root):
    """WebEmo with downloaded images: images/<id>.png; train25.txt lists one image per class id (0-24),
    test25.txt three images, one labelled by the release's folder spelling instead of an id."""
    lines = []
    for i in range(25):
        save_png(root / "images" / f"{i}.png", i)
        lines.append(f"images/{i}.png {i}")
    (root / "train25.txt").write_text("\n".join(lines) + "\n")
    (root / "test25.txt").write_text("images/22.png 22\n\nimages/1.png cheerfullness\nimages/11.png irritabilty\n")
    return root


# --- EmoSet -----------------------------------------------------------------------------------------

def test_emoset_rows_relative_paths_and_labels(tmp_path, processor):
    """EmoSet would train on wrong labels or unloadable paths if the split entries were misread."""
    root = make_emoset(tmp_path / "EmoSet-118K")
    path, count = prepare_data.prepare_emoset(root, root, "train")
    assert (path, count) == (root / "train.jsonl", 16)
    rows = read_jsonl(path)
    assert [row["answer"] for row in rows] == [e for e in MIKELS for _ in range(2)]
    assert rows[0] == {"images": ["image/amusement/amusement_00000.png"], "problem": question(MIKELS),
                       "answer": "amusement"}
    assert all((root / row["images"][0]).is_file() for row in rows)
    assert (root / "labels.txt").read_text() == "\n".join(MIKELS) + "\n"
    check_loads(path, processor, MIKELS)


def test_emoset_outside_out_gets_absolute_paths(tmp_path, processor):
    """Rows written outside the release would point nowhere if their paths were left relative."""
    root = make_emoset(tmp_path / "EmoSet-118K")
    out = tmp_path / "prepared"
    assert prepare_data.prepare_emoset(root, out, "test") == (out / "test.jsonl", 8)  # 3-item entries
    assert prepare_data.prepare_emoset(root, out, "val") == (out / "val.jsonl", 1)  # label from the entry
    rows = read_jsonl(out / "test.jsonl")
    assert [row["images"] for row in rows] == [[str(root / f"image/{e}/{e}_{16 + i:05d}.png")]
                                               for i, e in enumerate(MIKELS)]
    assert read_jsonl(out / "val.jsonl")[0]["images"] == [str(root / "image/awe/awe_09999.png")]
    check_loads(out / "test.jsonl", processor, MIKELS)


def test_emoset_errors_name_the_entry(tmp_path):
    """A broken download would be converted silently (or fail with a bare traceback) without these errors."""
    root = make_emoset(tmp_path / "EmoSet-118K")
    split_file = root / "train.json"
    entries = json.loads(split_file.read_text())

    def expect(changed, message):
        split_file.write_text(json.dumps(changed))
        with pytest.raises(data.DataError, match=re.escape(f"{split_file}: entry 2: ") + message):
            prepare_data.prepare_emoset(root, tmp_path / "out", "train")

    (root / entries[1][2]).unlink()
    expect(entries, re.escape(f"image {root / entries[1][2]} does not exist"))
    expect([entries[0], ["joy", "x", entries[0][2], "annotation/none.json"]], "label 'joy' is not one of the EmoSet")
    expect([entries[0], ["anger"] + entries[0][1:]], "the split file says 'anger' but .* says 'amusement'")
    expect([entries[0], ["amusement", entries[0][2]]], "expected \\[emotion, image_id, image_path")
    with pytest.raises(data.DataError, match=re.escape(f"{root / 'validation.json'}: no such split file")):
        prepare_data.prepare_emoset(root, tmp_path / "out", "validation")


# --- Emotion6 and FI ----------------------------------------------------------------------------------

def test_emotion6_default_is_all_test(tmp_path, processor):
    """Emotion6 (a benchmark) would lose images to an unasked-for train split, or get Ekman labels wrong."""
    root = make_emotion6(tmp_path / "Emotion6")
    assert prepare_data.prepare_emotion6(root, root) == (root / "test.jsonl", 24)
    rows = read_jsonl(root / "test.jsonl")
    assert [row["images"][0] for row in rows] == [f"images/{e}/{n}.png" for e in EKMAN for n in range(1, 5)]
    assert [row["answer"] for row in rows] == [e for e in EKMAN for _ in range(4)]
    assert {row["problem"] for row in rows} == {question(EKMAN)}
    assert (root / "labels.txt").read_text() == "\n".join(EKMAN) + "\n"
    assert not (root / "train.jsonl").exists()
    check_loads(root / "test.jsonl", processor, EKMAN)


def split_of(prepare, root, out, fraction, seed):
    """{split: [(image, answer), ...]} for both parts of a seeded split."""
    parts = {}
    for split in ("train", "test"):
        path, count = prepare(root, out, split, fraction, seed)
        parts[split] = [(row["images"][0], row["answer"]) for row in read_jsonl(path)]
        assert count == len(parts[split])
    return parts


@pytest.mark.parametrize("dataset", ["emotion6", "fi"])
def test_stratified_split_is_seeded_and_keeps_every_class(tmp_path, processor, dataset):
    """Train/test would overlap, lose a class on one side, or change between runs if the split were wrong."""
    labels, prepare = (EKMAN, prepare_data.prepare_emotion6) if dataset == "emotion6" else \
        (MIKELS, prepare_data.prepare_fi)
    root = make_class_folders(tmp_path / dataset, labels, per_class=5) if dataset == "fi" else \
        make_emotion6(tmp_path / dataset, per_class=5)
    parts = split_of(prepare, root, tmp_path / "a", 0.4, seed=1)
    assert [a for _, a in parts["train"]] == [label for label in labels for _ in range(3)]
    assert [a for _, a in parts["test"]] == [label for label in labels for _ in range(2)]
    assert len(set(parts["train"]) | set(parts["test"])) == 5 * len(labels)  # disjoint, nothing lost
    assert split_of(prepare, root, tmp_path / "b", 0.4, seed=1) == parts  # same seed, same split
    assert split_of(prepare, root, tmp_path / "c", 0.4, seed=2)["test"] != parts["test"]
    # fractions that round to 0 or to the whole class still leave one image of each class on each side
    assert [a for _, a in split_of(prepare, root, tmp_path / "d", 0.05, seed=1)["test"]] == labels
    assert [a for _, a in split_of(prepare, root, tmp_path / "e", 0.95, seed=1)["train"]] == labels
    check_loads(tmp_path / "a" / "test.jsonl", processor, labels)


def test_fi_default_split_and_folder_names(tmp_path):
    """FI's documented 80/20 default or its capitalised class folders would be handled wrong."""
    root = make_class_folders(tmp_path / "FI", [e.capitalize() for e in MIKELS], per_class=5)
    (root / "Fear" / "notes.txt").write_text("not an image")
    assert prepare_data.prepare_fi(root, tmp_path / "out") == (tmp_path / "out" / "train.jsonl", 32)
    assert prepare_data.prepare_fi(root, tmp_path / "out", "test") == (tmp_path / "out" / "test.jsonl", 8)
    assert [row["answer"] for row in read_jsonl(tmp_path / "out" / "test.jsonl")] == MIKELS
    assert (tmp_path / "out" / "labels.txt").read_text() == "\n".join(MIKELS) + "\n"


def test_class_folder_errors(tmp_path):
    """A stray class folder would be dropped silently, or a 1-image class missing from one split."""
    root = make_class_folders(tmp_path / "FI", MIKELS, per_class=2)
    save_png(root / "joy" / "1.png")
    with pytest.raises(data.DataError, match=re.escape(f"{root / 'joy'}: 'joy' is not one of the FI labels")):
        prepare_data.prepare_fi(root, tmp_path / "out")
    (root / "joy" / "1.png").rename(root / "awe" / "3.png")
    (root / "joy").rmdir()
    (root / "fear" / "2.png").unlink()
    with pytest.raises(data.DataError, match=re.escape(f"{root}: class 'fear' has 1 image")):
        prepare_data.prepare_fi(root, tmp_path / "out")
    assert prepare_data.prepare_fi(root, tmp_path / "out", "train", 0.0)[1] == 16  # no split: every image
    (tmp_path / "empty" / "misc").mkdir(parents=True)
    with pytest.raises(data.DataError, match=re.escape(f"{tmp_path / 'empty'}: no Emotion6 class folders")):
        prepare_data.prepare_emotion6(tmp_path / "empty", tmp_path / "out6")


# --- WebEmo -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("level, labels, answers", [
    (25, WEBEMO_25, WEBEMO_25),
    (7, ["anger", "confusion", "fear", "joy", "love", "sadness", "surprise"], WEBEMO_7),
    (2, ["negative", "positive"], ["positive" if i in POSITIVE_IDS else "negative" for i in range(25)]),
], ids=["25", "7", "2"])
def test_webemo_levels(tmp_path, processor, level, labels, answers):
    """WebEmo at a level would have the wrong label set or map a class to the wrong parent."""
    root = make_webemo(tmp_path / "WebEmo")
    out = root / f"level{level}"
    assert prepare_data.prepare_webemo(root, out, level, "train") == (out / "train.jsonl", 25)
    rows = read_jsonl(out / "train.jsonl")
    assert [row["answer"] for row in rows] == answers
    assert rows[0]["images"] == [str(root / "images" / "0.png")]
    assert (out / "labels.txt").read_text() == "\n".join(labels) + "\n"
    assert prepare_data.prepare_webemo(root, out, level, "test") == (out / "test.jsonl", 3)
    assert [row["answer"] for row in read_jsonl(out / "test.jsonl")] == [answers[22], answers[1], answers[11]]
    check_loads(out / "train.jsonl", processor, labels)


def test_webemo_list_errors_name_the_line(tmp_path):
    """URL lists (the raw release), unknown labels or missing images would not say which line to fix."""
    root = make_webemo(tmp_path / "WebEmo")
    listing = root / "test25.txt"
    for text, message in [
        ("images/0.png 0\nhttps://farm1.staticflickr.com/1/2.jpg 3\n",
         re.escape("'https://farm1.staticflickr.com/1/2.jpg' is a URL")),
        ("images/0.png 0\nimages/1.png 25\n", "expected '<image path> <label id 0-24 or name>'"),
        ("images/0.png 0\nimages/1.png\n", "expected '<image path>"),
        ("images/0.png 0\nimages/99.png 3\n", re.escape(f"image {root / 'images' / '99.png'} does not exist")),
    ]:
        listing.write_text(text)
        with pytest.raises(data.DataError, match=re.escape(f"{listing}:2: ") + message):
            prepare_data.prepare_webemo(listing, tmp_path / "out", 25, "test")
    with pytest.raises(ValueError, match="level must be 2, 7 or 25"):
        prepare_data.prepare_webemo(root, tmp_path / "out", 6)


def test_webemo_hierarchy_file_overrides_table(tmp_path):
    """--hierarchy would be ignored, or a malformed one accepted, if the TSV were not read row by row."""
    root = make_webemo(tmp_path / "WebEmo")
    tsv = tmp_path / "hierarchy.tsv"
    tsv.write_text("# fine\tmid\tcoarse\n" + "".join(f"c{i}\t{'even' if i % 2 == 0 else 'odd'}\tall\n"
                                                      for i in range(25)))
    prepare_data.prepare_webemo(root, tmp_path / "out", 7, "train", hierarchy=tsv)
    assert [row["answer"] for row in read_jsonl(tmp_path / "out" / "train.jsonl")] == \
        ["even" if i % 2 == 0 else "odd" for i in range(25)]
    assert (tmp_path / "out" / "labels.txt").read_text() == "even\nodd\n"
    tsv.write_text("a\tb\tc\nd\te\n")
    with pytest.raises(data.DataError, match=re.escape(f"{tsv}:2: expected fine<TAB>mid<TAB>coarse")):
        prepare_data.prepare_webemo(root, tmp_path / "out2", 7, "train", hierarchy=tsv)


def test_second_label_set_in_one_folder_is_refused(tmp_path):
    """A second level written to the same folder would silently relabel the first level's rows."""
    root = make_webemo(tmp_path / "WebEmo")
    prepare_data.prepare_webemo(root, tmp_path / "out", 25, "train")
    with pytest.raises(data.DataError, match=re.escape(f"{tmp_path / 'out' / 'labels.txt'}: already holds a "
                                                       "different label set")):
        prepare_data.prepare_webemo(root, tmp_path / "out", 2, "test")
    assert prepare_data.prepare_webemo(root, tmp_path / "out", 25, "test")[1] == 3  # same set: fine


# --- command line -------------------------------------------------------------------------------------

def run_cli(*args):
    return subprocess.run([sys.executable, "prepare_data.py", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_cli_matches_functions_and_reports_errors(tmp_path):
    """`python prepare_data.py` would write something other than the functions do, or hide errors."""
    root = make_class_folders(tmp_path / "FI", MIKELS, per_class=4)
    result = run_cli("fi", root, "--out", tmp_path / "cli", "--test-fraction", 0.25, "--seed", 3)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"wrote 24 rows to {tmp_path / 'cli' / 'train.jsonl'}",
                                          f"wrote 8 rows to {tmp_path / 'cli' / 'test.jsonl'}",
                                          f"labels: {tmp_path / 'cli' / 'labels.txt'}"]
    for split in ("train", "test"):
        path, _ = prepare_data.prepare_fi(root, tmp_path / "api", split, 0.25, 3)
        assert (tmp_path / "cli" / f"{split}.jsonl").read_text() == path.read_text()

    webemo = make_webemo(tmp_path / "WebEmo")
    result = run_cli("webemo", webemo, "--out", tmp_path / "w")
    assert result.returncode == 2 and "--level 2, 7 or 25 is required for webemo" in result.stderr
    result = run_cli("webemo", webemo, "--out", tmp_path / "w", "--level", 7)
    assert result.returncode == 0, result.stderr
    assert [line.split(" rows")[0] for line in result.stdout.splitlines()[:2]] == ["wrote 25", "wrote 3"]
    (webemo / "test25.txt").write_text("http://example.com/a.jpg 1\n")
    result = run_cli("webemo", webemo / "test25.txt", "--out", tmp_path / "w", "--level", 7, "--split", "test")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"error: {webemo / 'test25.txt'}:1: 'http://example.com/a.jpg' is a URL" in result.stderr


def test_cli_help_names_every_dataset_and_flag():
    """`python prepare_data.py --help` would not tell a person which releases and flags there are."""
    result = subprocess.run([sys.executable, "prepare_data.py", "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    for word in ("emoset", "emotion6", "webemo", "fi", "--out", "--split", "--level", "--hierarchy",
                 "--test-fraction", "--seed"):
        assert word in result.stdout, word
