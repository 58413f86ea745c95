"""Tests for the image converters (convert_images.py) and prepare_data.py's command line, on small
replicas of each public release's real layout.

The replicas copy what the releases ship (their readmes, the authors' loaders, the public WebEmo download
script): .jpg images, EmoSet's 4-item split entries, Emotion6's ground_truth.txt, WebEmo's URL lists and
category.txt beside a downloaded tree. Each replica image's expected label is written out by hand below.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import convert_images
import data

REPO = Path(__file__).resolve().parents[1]
MIN_PIXELS, MAX_PIXELS = 3136, 3136 * 16  # the processor's floor; small so loading stays fast
MIKELS = ["amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness"]
EKMAN = ["anger", "disgust", "fear", "joy", "sadness", "surprise"]


def save_jpg(path, seed=0):
    """A tiny solid-colour JPEG, as the releases ship (the converters never decode images; PromptDataset does)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256)).save(path, "JPEG")
    return path


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def rows_of(path):
    """(image, answer) of each written row, in order."""
    return [(row["images"][0], row["answer"]) for row in read_jsonl(path)]


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


# --- EmoSet-118K: image/<e>/<e>_NNNNN.jpg, annotation/<e>/<e>_NNNNN.json, {train,val,test}.json ----------
# Split entries are [emotion, image_id, image_path, annotation_path] (the release's readme), in an order
# that mixes the classes. val's one image has no annotation file, so its label comes from the entry.
EMOSET_SPLITS = {
    "train": [("excitement", 3), ("amusement", 0), ("sadness", 7), ("awe", 12), ("anger", 5), ("fear", 1),
              ("contentment", 9), ("disgust", 2), ("amusement", 4)],
    "test": [("awe", 20), ("disgust", 21)],
    "val": [("fear", 30)],
}
EMOSET_TRAIN_ROWS = [  # by hand: (image written in train.jsonl, label)
    ("image/excitement/excitement_00003.jpg", "excitement"), ("image/amusement/amusement_00000.jpg", "amusement"),
    ("image/sadness/sadness_00007.jpg", "sadness"), ("image/awe/awe_00012.jpg", "awe"),
    ("image/anger/anger_00005.jpg", "anger"), ("image/fear/fear_00001.jpg", "fear"),
    ("image/contentment/contentment_00009.jpg", "contentment"), ("image/disgust/disgust_00002.jpg", "disgust"),
    ("image/amusement/amusement_00004.jpg", "amusement"),
]


def make_emoset(root):
    info = {"emotion": {"label2idx": {e: i for i, e in enumerate(MIKELS)}}}
    (root / "info.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "info.json").write_text(json.dumps(info))
    for split, entries in EMOSET_SPLITS.items():
        listed = []
        for emotion, number in entries:
            image_id = f"{emotion}_{number:05d}"
            image, annotation = f"image/{emotion}/{image_id}.jpg", f"annotation/{emotion}/{image_id}.json"
            save_jpg(root / image, number)
            if split != "val":
                (root / annotation).parent.mkdir(parents=True, exist_ok=True)
                (root / annotation).write_text(json.dumps({
                    "image_id": image_id, "emotion": emotion, "brightness": 0.4, "colorfulness": 0.6,
                    "scene": "beach", "object": ["dog"], "facial_expression": "happy", "human_action": "run"}))
            listed.append([emotion, image_id, image, annotation])
        (root / f"{split}.json").write_text(json.dumps(listed, indent=4))
    return root


def test_emoset_rows_relative_paths_and_labels(tmp_path, processor):
    """EmoSet would train on wrong labels or unloadable paths if the split entries were misread."""
    root = make_emoset(tmp_path / "EmoSet-118K")
    assert convert_images.prepare_emoset(root, root, "train") == (root / "train.jsonl", 9)
    assert rows_of(root / "train.jsonl") == EMOSET_TRAIN_ROWS
    assert read_jsonl(root / "train.jsonl")[0]["problem"] == question(MIKELS)
    assert (root / "labels.txt").read_text() == "\n".join(MIKELS) + "\n"
    check_loads(root / "train.jsonl", processor, MIKELS)


def test_emoset_outside_out_gets_absolute_paths_and_3_item_entries(tmp_path, processor):
    """Rows written outside the release would point nowhere if left relative; older 3-item lists would fail."""
    root = make_emoset(tmp_path / "EmoSet-118K")
    out = tmp_path / "prepared"
    assert convert_images.prepare_emoset(root, out, "test") == (out / "test.jsonl", 2)
    assert rows_of(out / "test.jsonl") == [(str(root / "image/awe/awe_00020.jpg"), "awe"),
                                           (str(root / "image/disgust/disgust_00021.jpg"), "disgust")]
    assert convert_images.prepare_emoset(root, out, "val") == (out / "val.jsonl", 1)  # label from the entry
    assert rows_of(out / "val.jsonl") == [(str(root / "image/fear/fear_00030.jpg"), "fear")]
    # [emotion, image_path, annotation_path], as one public loader reads EmoSet
    entries = json.loads((root / "test.json").read_text())
    (root / "test.json").write_text(json.dumps([[e[0], e[2], e[3]] for e in entries]))
    convert_images.prepare_emoset(root, tmp_path / "three", "test")
    assert rows_of(tmp_path / "three" / "test.jsonl") == rows_of(out / "test.jsonl")
    check_loads(out / "test.jsonl", processor, MIKELS)


def test_emoset_errors_name_the_entry(tmp_path):
    """A broken download would be converted silently (or fail with a bare traceback) without these errors."""
    root = make_emoset(tmp_path / "EmoSet-118K")
    split_file = root / "train.json"
    entries = json.loads(split_file.read_text())

    def expect(changed, message):
        split_file.write_text(json.dumps(changed))
        with pytest.raises(data.DataError, match=re.escape(f"{split_file}: entry 2: ") + message):
            convert_images.prepare_emoset(root, tmp_path / "out", "train")

    (root / entries[1][2]).unlink()
    expect(entries, re.escape(f"image {root / entries[1][2]} does not exist"))
    expect([entries[0], ["joy", "x", entries[0][2], "annotation/none.json"]], "label 'joy' is not one of the EmoSet")
    expect([entries[0], ["anger"] + entries[0][1:]], "the split file says 'anger' but .* says 'excitement'")
    expect([entries[0], ["amusement", entries[0][2]]], "expected \\[emotion, image_id, image_path")
    with pytest.raises(data.DataError, match=re.escape(f"{root / 'validation.json'}: no such split file")):
        convert_images.prepare_emoset(root, tmp_path / "out", "validation")


# --- Emotion6: images/<emotion>/<n>.jpg and ground_truth.txt ---------------------------------------------
# ground_truth.txt: one tab-separated row per image with valence, arousal and the annotators' share of each
# emotion and neutral (public loaders read it this way). Rows are not in folder order.
EMOTION6_GROUND_TRUTH = [
    # image           valence arousal anger disgust fear joy sadness surprise neutral
    ("joy/2.jpg",       "6.1", "5.0", "0", "0", "0", "0.3", "0", "0.4", "0.3"),
    ("anger/1.jpg",     "3.1", "5.2", "0.4", "0.1", "0.1", "0", "0.1", "0", "0.3"),
    ("anger/2.jpg",     "3.0", "4.1", "0.1", "0.1", "0.1", "0", "0.5", "0", "0.2"),
    ("disgust/1.jpg",   "2.5", "3.8", "0.133333", "0.7", "0", "0.0666667", "0.1", "0", "0"),  # the readme's example
    ("disgust/2.jpg",   "3.3", "5.0", "0.3", "0.3", "0", "0", "0.2", "0", "0.2"),
    ("fear/1.jpg",      "2.5", "6.8", "0", "0", "0.7", "0", "0.1", "0.1", "0.1"),
    ("fear/2.jpg",      "4.4", "3.9", "0.1", "0", "0.1", "0", "0.1", "0.1", "0.6"),
    ("joy/1.jpg",       "7.5", "5.1", "0", "0", "0", "0.8", "0", "0.1", "0.1"),
    ("sadness/1.jpg",   "2.2", "3.3", "0", "0", "0.1", "0", "0.6", "0", "0.3"),
    ("sadness/2.jpg",   "3.6", "4.4", "0.2", "0", "0.2", "0", "0.1", "0", "0.5"),
    ("surprise/1.jpg",  "6.0", "6.2", "0", "0", "0.1", "0.2", "0", "0.6", "0.1"),
    ("surprise/2.jpg",  "4.2", "5.9", "0", "0", "0.4", "0", "0", "0.2", "0.4"),
]
EMOTION6_BY_FOLDER = [(f"images/{e}/{n}.jpg", e) for e in EKMAN for n in (1, 2)]
EMOTION6_BY_ANNOTATORS = [  # by hand: the largest of the six shares; a tie goes to the folder if tied, else first
    ("images/anger/1.jpg", "anger"), ("images/anger/2.jpg", "sadness"),
    ("images/disgust/1.jpg", "disgust"), ("images/disgust/2.jpg", "disgust"),  # anger 0.3 = disgust 0.3: folder
    ("images/fear/1.jpg", "fear"), ("images/fear/2.jpg", "fear"),  # neutral 0.6 ignored; a 4-way tie has fear
    ("images/joy/1.jpg", "joy"), ("images/joy/2.jpg", "surprise"),
    ("images/sadness/1.jpg", "sadness"), ("images/sadness/2.jpg", "anger"),  # anger 0.2 = fear 0.2: first
    ("images/surprise/1.jpg", "surprise"), ("images/surprise/2.jpg", "fear"),  # fear 0.4 = neutral 0.4: fear
]


def make_emotion6(root):
    """Emotion6 as released: images/<emotion>/1.jpg and 2.jpg, ground_truth.txt beside images/."""
    for c, (name, *_) in enumerate(EMOTION6_GROUND_TRUTH):
        save_jpg(root / "images" / name, c)
    header = ["[image_filename]", "[valence]", "[arousal]"] + [f"[prob. {e}]" for e in EKMAN + ["neutral"]]
    (root / "ground_truth.txt").write_text("\n".join("\t".join(row) for row in [header] + EMOTION6_GROUND_TRUTH) + "\n")
    return root


def make_class_folders(root, labels, per_class):
    """Folder per class: root/<label>/<n>.jpg, per_class images each."""
    for c, label in enumerate(labels):
        for n in range(per_class):
            save_jpg(root / label / f"{n + 1}.jpg", c * 10 + n)
    return root


def test_emotion6_default_is_all_test_labelled_by_folder(tmp_path, processor):
    """Emotion6 (a benchmark) would lose images to an unasked-for train split, or get Ekman labels wrong."""
    root = make_emotion6(tmp_path / "Emotion6")
    assert convert_images.prepare_emotion6(root, root) == (root / "test.jsonl", 12)
    assert rows_of(root / "test.jsonl") == EMOTION6_BY_FOLDER
    assert (root / "labels.txt").read_text() == "\n".join(EKMAN) + "\n"
    assert not (root / "train.jsonl").exists()
    check_loads(root / "test.jsonl", processor, EKMAN)


def test_emotion6_ground_truth_argmax(tmp_path, capsys):
    """--label-from ground_truth would not exist, or pick the wrong emotion on ties and neutral-heavy rows."""
    root = make_emotion6(tmp_path / "Emotion6")
    assert convert_images.prepare_emotion6(root, root, label_from="ground_truth") == (root / "test.jsonl", 12)
    assert rows_of(root / "test.jsonl") == EMOTION6_BY_ANNOTATORS
    assert "Emotion6: 4 of 12 images take a label from ground_truth.txt other than their folder's" in \
        capsys.readouterr().out
    convert_images.prepare_emotion6(root / "images", tmp_path / "inner", label_from="ground_truth")  # SRC = images/
    assert [a for _, a in rows_of(tmp_path / "inner" / "test.jsonl")] == [a for _, a in EMOTION6_BY_ANNOTATORS]
    # a partial download or a foreign ground_truth.txt is named, not half-used
    truth = (root / "ground_truth.txt").read_text()
    (root / "ground_truth.txt").write_text(truth.replace("anger/1.jpg\t", "angry/1.jpg\t"))
    with pytest.raises(data.DataError, match=re.escape(
            f"{root / 'ground_truth.txt'}: no row for 1 image(s) in {root / 'images'}, e.g. anger/1.jpg; rows for 1 "
            f"image(s) not in {root / 'images'}, e.g. angry/1.jpg. Is the download complete")):
        convert_images.prepare_emotion6(root, tmp_path / "out", label_from="ground_truth")
    (root / "ground_truth.txt").write_text(truth)
    (root / "images" / "joy" / "2.jpg").unlink()
    with pytest.raises(data.DataError, match=re.escape(f"{root / 'ground_truth.txt'}: rows for 1 image(s) not in "
                                                       f"{root / 'images'}, e.g. joy/2.jpg. Is the download complete")):
        convert_images.prepare_emotion6(root, tmp_path / "out", label_from="ground_truth")
    (root / "ground_truth.txt").unlink()
    with pytest.raises(data.DataError, match=re.escape(f"{root}: no ground_truth.txt in it or beside")):
        convert_images.prepare_emotion6(root, tmp_path / "out", label_from="ground_truth")


def split_of(prepare, root, out, fraction, seed):
    """{split: [(image, answer), ...]} for both parts of a seeded split."""
    parts = {}
    for split in ("train", "test"):
        path, count = prepare(root, out, split, fraction, seed)
        parts[split] = rows_of(path)
        assert count == len(parts[split])
    return parts


@pytest.mark.parametrize("dataset", ["emotion6", "fi"])
def test_stratified_split_is_seeded_and_keeps_every_class(tmp_path, processor, dataset):
    """Train/test would overlap, lose a class on one side, or change between runs if the split were wrong."""
    labels, prepare = (EKMAN, convert_images.prepare_emotion6) if dataset == "emotion6" else \
        (MIKELS, convert_images.prepare_fi)
    root = tmp_path / dataset
    make_class_folders(root / "images" if dataset == "emotion6" else root, labels, per_class=5)
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
    assert convert_images.prepare_fi(root, tmp_path / "out") == (tmp_path / "out" / "train.jsonl", 32)
    assert convert_images.prepare_fi(root, tmp_path / "out", "test") == (tmp_path / "out" / "test.jsonl", 8)
    assert [row["answer"] for row in read_jsonl(tmp_path / "out" / "test.jsonl")] == MIKELS
    assert (tmp_path / "out" / "labels.txt").read_text() == "\n".join(MIKELS) + "\n"


def test_nested_folder_in_a_class_folder_is_refused(tmp_path):
    """A misplaced folder's images would be labelled with the parent class, and its own class would vanish."""
    root = make_emotion6(tmp_path / "Emotion6")
    (root / "images" / "disgust").rename(root / "images" / "fear" / "digust")  # a misspelt copy, one level down
    with pytest.raises(data.DataError, match=re.escape(
            f"{root / 'images' / 'fear' / 'digust'}: a folder inside the class folder {root / 'images' / 'fear'}; "
            f"its images would be labelled 'fear'. Move them")):
        convert_images.prepare_emotion6(root, tmp_path / "out")
    fi = make_class_folders(tmp_path / "FI", MIKELS, per_class=2)
    save_jpg(fi / "awe" / "more" / "3.jpg")
    with pytest.raises(data.DataError, match=re.escape(f"{fi / 'awe' / 'more'}: a folder inside the class folder")):
        convert_images.prepare_fi(fi, tmp_path / "out")
    (fi / "awe" / "more" / "3.jpg").unlink()
    (fi / "awe" / "more").rename(fi / "awe" / ".ipynb_checkpoints")  # hidden tool folders are not data
    assert convert_images.prepare_fi(fi, tmp_path / "fi", "train", 0.0)[1] == 16
    assert not (tmp_path / "out" / "test.jsonl").exists()


def test_missing_or_empty_class_is_refused(tmp_path):
    """labels.txt would list a class no row has, and a partial download would be evaluated as complete."""
    root = make_emotion6(tmp_path / "Emotion6")
    for image in (root / "images" / "surprise").iterdir():
        image.unlink()
    (root / "images" / "surprise").rmdir()
    message = (f"{root / 'images'}: no images of surprise; Emotion6 has a folder of images for each of "
               f"anger, disgust, fear, joy, sadness, surprise")
    with pytest.raises(data.DataError, match=re.escape(message)):
        convert_images.prepare_emotion6(root, tmp_path / "out")
    (root / "images" / "surprise").mkdir()  # present but empty
    with pytest.raises(data.DataError, match=re.escape(message)):
        convert_images.prepare_emotion6(root, tmp_path / "out")
    fi = make_class_folders(tmp_path / "FI", [e for e in MIKELS if e not in ("awe", "fear")], per_class=2)
    with pytest.raises(data.DataError, match=re.escape(f"{fi}: no images of awe, fear; FI has")):
        convert_images.prepare_fi(fi, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_class_folder_errors(tmp_path):
    """A stray class folder would be dropped silently, or a 1-image class missing from one split."""
    root = make_class_folders(tmp_path / "FI", MIKELS, per_class=2)
    save_jpg(root / "joy" / "1.jpg")
    with pytest.raises(data.DataError, match=re.escape(f"{root / 'joy'}: 'joy' is not one of the FI labels")):
        convert_images.prepare_fi(root, tmp_path / "out")
    (root / "joy" / "1.jpg").rename(root / "awe" / "3.jpg")
    (root / "joy").rmdir()
    (root / "fear" / "2.jpg").unlink()
    with pytest.raises(data.DataError, match=re.escape(f"{root}: class 'fear' has 1 image")):
        convert_images.prepare_fi(root, tmp_path / "out")
    assert convert_images.prepare_fi(root, tmp_path / "out", "train", 0.0)[1] == 16  # no split: every image
    (tmp_path / "empty" / "misc").mkdir(parents=True)
    with pytest.raises(data.DataError, match=re.escape(f"{tmp_path / 'empty'}: no Emotion6 class folders")):
        convert_images.prepare_emotion6(tmp_path / "empty", tmp_path / "out6")


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
        path, _ = convert_images.prepare_fi(root, tmp_path / "api", split, 0.25, 3)
        assert (tmp_path / "cli" / f"{split}.jsonl").read_text() == path.read_text()

    emotion6 = make_emotion6(tmp_path / "Emotion6")
    result = run_cli("emotion6", emotion6, "--out", tmp_path / "e6", "--label-from", "ground_truth")
    assert result.returncode == 0, result.stderr
    assert rows_of(tmp_path / "e6" / "test.jsonl") == [(str(emotion6 / image), label)
                                                        for image, label in EMOTION6_BY_ANNOTATORS]
    for flags in (["--skip-missing"], ["--image-root", tmp_path], ["--label-from", "folder"]):
        result = run_cli("fi", root, "--out", tmp_path / "x", *flags)
        assert result.returncode == 2 and f"{flags[0]} is for" in result.stderr


def test_cli_help_names_every_dataset_and_flag():
    """`python prepare_data.py --help` would not tell a person which releases and flags there are."""
    result = subprocess.run([sys.executable, "prepare_data.py", "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    for word in ("emoset", "emotion6", "webemo", "fi", "--out", "--split", "--level", "--hierarchy", "--image-root",
                 "--skip-missing", "--label-from", "--test-fraction", "--seed"):
        assert word in result.stdout, word


def test_emoset_one_folder_too_high_names_the_folder_below(tmp_path):
    """Broken: the hint for the commonest mistake with a download, SRC given as the folder that holds the
    release (its split files one level down): the error said only "no such split file"."""
    root = make_emoset(tmp_path / "downloads" / "EmoSet-118K")
    with pytest.raises(data.DataError, match=re.escape(f"{root} has one: pass that folder as SRC")):
        convert_images.prepare_emoset(tmp_path / "downloads", tmp_path / "out", "train")
    with pytest.raises(data.DataError) as nothing_below:  # no split file anywhere: no hint
        convert_images.prepare_emoset(tmp_path / "out", tmp_path / "out2", "train")
    assert "pass that folder" not in str(nothing_below.value)
