"""Tests for the video converters (convert_video.py: DFEW, MAFW) and their command line, on small
replicas of each release's layout.

The replicas copy what the releases ship, as their readmes and public loaders show it: DFEW's
EmoLabel_DataSplit/{train,test}(single-labeled)/set_<fold>.csv with a `video_name,label` header, its clips
as Clip/original/<00001>.mp4 or Clip/clip_224x224/<00001>/<00001>_<00001>.jpg frame folders; MAFW's
`Train & Test Set/single/no_caption/set_<fold>/{train,test}.txt` lines `00025.mp4 anger`, its clips as
data/clips/<00025>.mp4 or data/frames/<00025>/ folders. The converters only need the clips to exist, so
videos are a few bytes and frames are empty .jpg files. Each expected row is written out by hand below.
video.py's reading of videos is not used: the written JSONL rows and labels.txt are checked directly.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import convert_video
import data

REPO = Path(__file__).resolve().parents[1]
QUESTION = ("<video>As an emotional recognition expert; throughout the video, which emotion conveyed by the "
            "characters is the most obvious to you?")
DFEW_LABELS = ["happy", "surprise", "neutral", "angry", "disgust", "sad", "fear"]  # R1-Omni's list order
MAFW_R1_OMNI = ["happy", "surprise", "neutral", "angry", "disgust", "sad", "fear", "contemptuous", "disappointed",
                "helpless", "anxious"]
MAFW_RELEASE = ["anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise", "contempt", "anxiety",
                "helplessness", "disappointment"]


def touch(path, text="clip"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def rows_of(path):
    """(the one video of each row, answer), in order; a frame list comes back as a tuple."""
    rows = read_jsonl(path)
    assert all(len(row["videos"]) == 1 and set(row) == {"videos", "problem", "answer"} for row in rows)
    return [(tuple(v) if isinstance(v := row["videos"][0], list) else v, row["answer"]) for row in rows]


# --- DFEW ---------------------------------------------------------------------------------------------
# fold -> split -> [(video_name as the CSV writes it, label id)]; fold 1 unpadded (as pandas writes ints),
# fold 2 zero-padded; between them every id 1-7 and both splits.
DFEW_LISTS = {
    1: {"train": [("2", 1), ("3", 7), ("5", 4), ("6", 6)], "test": [("1", 2), ("4", 5), ("7", 3)]},
    2: {"train": [("00001", 2), ("00004", 5), ("00007", 3), ("00006", 6)], "test": [("00002", 1), ("00003", 7),
                                                                                    ("00005", 4)]},
}
DFEW_FOLD1_TRAIN = [("Clip/original/00002.mp4", "happy"), ("Clip/original/00003.mp4", "fear"),
                    ("Clip/original/00005.mp4", "angry"), ("Clip/original/00006.mp4", "disgust")]
DFEW_FOLD1_TEST = [("Clip/original/00001.mp4", "sad"), ("Clip/original/00004.mp4", "surprise"),
                   ("Clip/original/00007.mp4", "neutral")]
DFEW_FOLD2_TEST = [("Clip/original/00002.mp4", "happy"), ("Clip/original/00003.mp4", "fear"),
                   ("Clip/original/00005.mp4", "angry")]
DFEW_FRAMES = {2: 3, 3: 2, 5: 1, 6: 2, 1: 2, 4: 1, 7: 1}  # clip -> frames in clip_224x224


def dfew_frames(clip):
    return tuple(f"Clip/clip_224x224/{clip:05d}/{clip:05d}_{i:05d}.jpg" for i in range(1, DFEW_FRAMES[clip] + 1))


def write_dfew_list(root, fold, split, entries, header="video_name,label"):
    path = root / "EmoLabel_DataSplit" / f"{split}(single-labeled)" / f"set_{fold}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header] + [f"{name},{label}" for name, label in entries]) + "\n")
    return path


def make_dfew(root):
    for fold, splits in DFEW_LISTS.items():
        for split, entries in splits.items():
            write_dfew_list(root, fold, split, entries)
    for clip, frames in DFEW_FRAMES.items():
        touch(root / "Clip" / "original" / f"{clip:05d}.mp4")
        for i in range(1, frames + 1):
            touch(root / "Clip" / "clip_224x224" / f"{clip:05d}" / f"{clip:05d}_{i:05d}.jpg", "")
    touch(root / "Annotation" / "annotation.xlsx", "")  # shipped, not read
    return root


def test_dfew_videos_fold_lists_and_labels(tmp_path):
    """DFEW would train on wrong labels, wrong clips or the wrong fold if the split CSVs were misread."""
    root = make_dfew(tmp_path / "DFEW")
    assert convert_video.prepare_dfew(root, root, 1, "train") == (root / "train.jsonl", 4)
    assert convert_video.prepare_dfew(root, root, 1, "test") == (root / "test.jsonl", 3)
    assert rows_of(root / "train.jsonl") == DFEW_FOLD1_TRAIN
    assert rows_of(root / "test.jsonl") == DFEW_FOLD1_TEST
    assert {row["problem"] for row in read_jsonl(root / "train.jsonl")} == {
        QUESTION + "\nhappy, surprise, neutral, angry, disgust, sad, fear"}
    assert (root / "labels.txt").read_text() == "\n".join(DFEW_LABELS) + "\n"
    # fold 2 (zero-padded names) is another partition of the same clips
    convert_video.prepare_dfew(root, tmp_path / "fold2", 2, "test")
    assert rows_of(tmp_path / "fold2" / "test.jsonl") == [(str(root / clip), label) for clip, label in DFEW_FOLD2_TEST]


def test_dfew_frame_folders_and_absolute_paths(tmp_path):
    """Frame-folder clips would be unreadable (or out of order) if the frames were not listed in order as one video."""
    root = make_dfew(tmp_path / "DFEW")
    # frames written out of order on disk, and a frame numbered past 9 sorts after 9
    touch(root / "Clip" / "clip_224x224" / "00002" / "00002_00010.jpg", "")
    touch(root / "Clip" / "clip_224x224" / "00002" / "00002_00009.jpg", "")
    out = tmp_path / "out"
    convert_video.prepare_dfew(root, out, 1, "train", clips="clip_224x224")
    frames2 = tuple(str(root / f) for f in dfew_frames(2)) + tuple(
        str(root / f"Clip/clip_224x224/00002/00002_{i:05d}.jpg") for i in (9, 10))
    absolute = {clip: tuple(str(root / f) for f in dfew_frames(clip)) for clip in (3, 5, 6)}
    assert rows_of(out / "train.jsonl") == [(frames2, "happy"), (absolute[3], "fear"), (absolute[5], "angry"),
                                            (absolute[6], "disgust")]
    # inside OUT, the frames are relative to it
    convert_video.prepare_dfew(root, root, 1, "test", clips="clip_224x224")
    assert rows_of(root / "test.jsonl") == [(dfew_frames(1), "sad"), (dfew_frames(4), "surprise"),
                                            (dfew_frames(7), "neutral")]


def test_dfew_any_clip_folder_unpadded_names_and_no_label_list(tmp_path):
    """R1-Omni-style 1.mp4 clips in a folder of one's own (here in a zip's part folder) would not be found."""
    root = make_dfew(tmp_path / "DFEW")
    videos = tmp_path / "videos"
    for clip in DFEW_FRAMES:
        touch(videos / ("part_1" if clip < 4 else "part_2") / f"{clip}.avi")
    touch(videos / "part_1" / "notes.txt")  # not a clip
    convert_video.prepare_dfew(root, tmp_path / "out", 1, "test", clips=str(videos), label_list=False)
    assert rows_of(tmp_path / "out" / "test.jsonl") == [
        (str(videos / "part_1/1.avi"), "sad"), (str(videos / "part_2/4.avi"), "surprise"),
        (str(videos / "part_2/7.avi"), "neutral")]
    assert {row["problem"] for row in read_jsonl(tmp_path / "out" / "test.jsonl")} == {QUESTION}
    # two files for one clip: which is the clip cannot be told
    touch(videos / "part_2" / "00001.mp4")
    with pytest.raises(data.DataError, match=re.escape(f"{videos / 'part_1/1.avi'} and {videos / 'part_2/00001.mp4'} "
                                                       "are both clip 1")):
        convert_video.prepare_dfew(root, tmp_path / "out", 1, "test", clips=str(videos))


def test_dfew_errors_name_the_file_and_line(tmp_path):
    """A broken download or list would be converted silently, or fail with a bare traceback, without these."""
    root = make_dfew(tmp_path / "DFEW")
    csv_file = root / "EmoLabel_DataSplit" / "train(single-labeled)" / "set_1.csv"

    def expect(entries, message, header="video_name,label"):
        write_dfew_list(root, 1, "train", entries, header)
        with pytest.raises(data.DataError, match=message):
            convert_video.prepare_dfew(root, tmp_path / "out", 1, "train")

    expect([("2", 1), ("3", 0)], re.escape(f"{csv_file}:3: label id 0 is not a DFEW single label (1 happy"))
    expect([("2", 8)], re.escape(f"{csv_file}:2: label id 8 is not a DFEW single label"))
    expect([("2", 1), ("abc", 1)], re.escape(f"{csv_file}:3: expected '<clip number>,<label id 1-7>', got 'abc,1'"))
    expect([("2", 1), ("3", "")], re.escape(f"{csv_file}:3: expected '<clip number>,<label id 1-7>'"))
    expect([("2", 1)], re.escape(f"{csv_file}:1: expected a header with video_name and label columns"),
           header="name,emotion")
    write_dfew_list(root, 1, "train", DFEW_LISTS[1]["train"])
    with pytest.raises(data.DataError, match=re.escape("EmoLabel_DataSplit: no train(single-labeled)/set_3.csv")):
        convert_video.prepare_dfew(root, tmp_path / "out", 3, "train")
    with pytest.raises(data.DataError, match=re.escape(f"{root / 'Clip' / 'clip_224x224_16f'}: no such folder; DFEW "
                                                       "clips come as original (Clip/original)")):
        convert_video.prepare_dfew(root, tmp_path / "out", 1, "train", clips="clip_224x224_16f")
    with pytest.raises(data.DataError, match=re.escape(f"{root / 'Clip'}: no EmoLabel_DataSplit/ in it or one level")):
        convert_video.prepare_dfew(root / "Clip", tmp_path / "out", 1, "train")
    assert convert_video.prepare_dfew(tmp_path, tmp_path / "out", 1, "train")[1] == 4  # a zip's top folder: found
    for fold, split in ((0, "train"), (6, "train"), (1, "val")):
        with pytest.raises(ValueError):
            convert_video.prepare_dfew(root, tmp_path / "out", fold, split)


def test_dfew_missing_clips_are_counted_or_skipped(tmp_path, capsys):
    """A partial download would silently drop or mislabel clips without the count and the first one named."""
    root = make_dfew(tmp_path / "DFEW")
    csv_file = root / "EmoLabel_DataSplit" / "train(single-labeled)" / "set_1.csv"
    clips = root / "Clip" / "original"
    (clips / "00005.mp4").unlink()
    with pytest.raises(data.DataError, match=re.escape(f"1 of the 4 clips listed in {csv_file} are missing from "
                                                       f"{clips} (first: {csv_file}:4 (clip 5))")):
        convert_video.prepare_dfew(root, tmp_path / "out", 1, "train")
    assert convert_video.prepare_dfew(root, root, 1, "train", skip_missing=True)[1] == 3
    assert rows_of(root / "train.jsonl") == [row for row in DFEW_FOLD1_TRAIN if "00005" not in row[0]]
    assert capsys.readouterr().out.startswith(f"DFEW train: skipped 1 of 4 listed clips, missing from {clips}")
    # a frame folder without frames is missing too, said as such
    frames = root / "Clip" / "clip_224x224" / "00003"
    for frame in frames.iterdir():
        frame.unlink()
    with pytest.raises(data.DataError, match=re.escape("(first: " + f"{csv_file}:3 (clip 3: a frame folder without "
                                                       "images))")):
        convert_video.prepare_dfew(root, tmp_path / "out", 1, "train", clips="clip_224x224")
    for clip in clips.iterdir():
        clip.unlink()
    with pytest.raises(data.DataError, match="None is there: is --clips the folder"):
        convert_video.prepare_dfew(root, tmp_path / "out", 1, "train", skip_missing=True)


# --- MAFW ---------------------------------------------------------------------------------------------
MAFW_LISTS = {
    1: {"train": [("00025", "anger"), ("00026", "happiness"), ("00027", "contempt"), ("00028", "anxiety"),
                  ("00029", "helplessness"), ("00031", "disappointment")],
        "test": [("00032", "sadness"), ("00033", "neutral"), ("00034", "surprise"), ("00035", "disgust"),
                 ("00036", "fear")]},
    2: {"train": [("00032", "sadness"), ("00025", "anger")], "test": [("00026", "happiness")]},
}
MAFW_FOLD1_TRAIN = [("data/clips/00025.mp4", "angry"), ("data/clips/00026.mp4", "happy"),
                    ("data/clips/00027.mp4", "contemptuous"), ("data/clips/00028.mp4", "anxious"),
                    ("data/clips/00029.mp4", "helpless"), ("data/clips/00031.mp4", "disappointed")]
MAFW_FOLD1_TEST = [("data/clips/00032.mp4", "sad"), ("data/clips/00033.mp4", "neutral"),
                   ("data/clips/00034.mp4", "surprise"), ("data/clips/00035.mp4", "disgust"),
                   ("data/clips/00036.mp4", "fear")]


def mafw_list(root, fold, split, kind="single"):
    return root / "Train & Test Set" / kind / "no_caption" / f"set_{fold}" / f"{split}.txt"


def make_mafw(root):
    for fold, splits in MAFW_LISTS.items():
        for split, entries in splits.items():
            touch(mafw_list(root, fold, split), "".join(f"{name}.mp4 {label}\n" for name, label in entries))
    # the compound set and the captioned lists are shipped beside it, and never read
    touch(mafw_list(root, 1, "train", "compound"), "00030.mp4 anger_disgust\n00025.mp4 anger\n")
    touch(root / "Train & Test Set" / "single" / "with_caption" / "set_1" / "train.txt",
          "00025.mp4\tanger\t\u4e2d\u6587\tA woman shouts.\n")
    for name in ["00025", "00026", "00027", "00028", "00029", "00030", "00031", "00032", "00033", "00034", "00035",
                 "00036"]:
        touch(root / "data" / "clips" / f"{name}.mp4")
        for frame in ("1.jpg", "2.jpg", "10.jpg"):  # numbered without padding: 10 must come last
            touch(root / "data" / "frames" / name / frame, "")
        touch(root / "data" / "frames" / name / "n_frames", "3")  # a frame extractor's count file, not a frame
    touch(root / "Labels" / "single_set.xlsx", "")
    return root


def test_mafw_single_set_with_r1_omni_labels(tmp_path):
    """MAFW would be scored against words R1-Omni's reward never matches, or read the compound set, if this failed."""
    root = make_mafw(tmp_path / "MAFW")
    assert convert_video.prepare_mafw(root, root, 1, "train") == (root / "train.jsonl", 6)
    assert convert_video.prepare_mafw(root, root, 1, "test") == (root / "test.jsonl", 5)
    assert rows_of(root / "train.jsonl") == MAFW_FOLD1_TRAIN
    assert rows_of(root / "test.jsonl") == MAFW_FOLD1_TEST
    assert {row["problem"] for row in read_jsonl(root / "test.jsonl")} == {
        QUESTION + "\nhappy, surprise, neutral, angry, disgust, sad, fear, contemptuous, disappointed, helpless, "
                   "anxious"}
    assert (root / "labels.txt").read_text() == "\n".join(MAFW_R1_OMNI) + "\n"
    convert_video.prepare_mafw(root, tmp_path / "fold2", 2, "train")
    assert rows_of(tmp_path / "fold2" / "train.jsonl") == [(str(root / "data/clips/00032.mp4"), "sad"),
                                                          (str(root / "data/clips/00025.mp4"), "angry")]


def test_mafw_frames_release_names_and_no_label_list(tmp_path):
    """Frames would play out of order (10 before 2), or count files would be fed as frames, if this failed."""
    root = make_mafw(tmp_path / "MAFW")
    out = tmp_path / "out"
    convert_video.prepare_mafw(root, out, 1, "test", clips="frames", label_names="release", label_list=False)
    frames = {name: tuple(str(root / "data" / "frames" / name / f) for f in ("1.jpg", "2.jpg", "10.jpg"))
              for name in ("00032", "00033", "00034", "00035", "00036")}
    assert rows_of(out / "test.jsonl") == [(frames["00032"], "sadness"), (frames["00033"], "neutral"),
                                           (frames["00034"], "surprise"), (frames["00035"], "disgust"),
                                           (frames["00036"], "fear")]
    assert {row["problem"] for row in read_jsonl(out / "test.jsonl")} == {QUESTION}
    assert (out / "labels.txt").read_text() == "\n".join(MAFW_RELEASE) + "\n"
    # the same folder cannot then take R1-Omni's words: one labels.txt per folder
    with pytest.raises(data.DataError, match=re.escape(f"{out / 'labels.txt'}: already holds a different label set")):
        convert_video.prepare_mafw(root, out, 1, "train")


def test_mafw_errors_name_the_file_and_line(tmp_path, capsys):
    """Compound labels, typos and broken lines would be dropped or mislabelled silently without these errors."""
    root = make_mafw(tmp_path / "MAFW")
    list_file = mafw_list(root, 1, "train")

    def expect(text, message):
        list_file.write_text(text)
        with pytest.raises(data.DataError, match=message):
            convert_video.prepare_mafw(root, tmp_path / "out", 1, "train")

    expect("00025.mp4 anger\n00030.mp4 anger_disgust\n", re.escape(
        f"{list_file}:2: 'anger_disgust' is a compound label; only MAFW's single-label set is converted"))
    expect("00025.mp4 anger\n\n00026.mp4 joy\n", re.escape(f"{list_file}:3: 'joy' is not one of the MAFW single "
                                                           "labels (anger, disgust, fear, happiness"))
    expect("00025.mp4\n", re.escape(f"{list_file}:1: expected '<clip file> <label>', got '00025.mp4'"))
    expect("00025.mp4\tanger\t\u4e2d\u6587\tcaption\n", re.escape(f"{list_file}:1: expected '<clip file> <label>'"))
    list_file.write_text("00025.mp4 anger\n00099.mp4 fear\n00026.mp4 Happiness\n")  # class words in any case
    with pytest.raises(data.DataError, match=re.escape(f"1 of the 3 clips listed in {list_file} are missing from "
                                                       f"{root / 'data' / 'clips'} (first: {list_file}:2 (clip 99))")):
        convert_video.prepare_mafw(root, tmp_path / "out", 1, "train")
    convert_video.prepare_mafw(root, root, 1, "train", skip_missing=True)
    assert rows_of(root / "train.jsonl") == [("data/clips/00025.mp4", "angry"), ("data/clips/00026.mp4", "happy")]
    assert "MAFW train: skipped 1 of 3 listed clips" in capsys.readouterr().out
    with pytest.raises(data.DataError, match=re.escape(f"{mafw_list(root, 4, 'test')}: no such list")):
        convert_video.prepare_mafw(root, tmp_path / "out", 4, "test")
    with pytest.raises(data.DataError, match="no Train & Test Set/ in it or one level down"):
        convert_video.prepare_mafw(root / "data", tmp_path / "out", 1, "test")
    with pytest.raises(ValueError, match="label_names"):
        convert_video.prepare_mafw(root, tmp_path / "out", 1, "test", label_names="english")


# --- command line -------------------------------------------------------------------------------------

def run_cli(*args):
    return subprocess.run([sys.executable, "prepare_data.py", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_cli_writes_both_lists_of_the_fold(tmp_path):
    """`python prepare_data.py dfew|mafw` would write something other than the functions do, or hide errors."""
    root = make_dfew(tmp_path / "DFEW")
    out = tmp_path / "dfew1"
    result = run_cli("dfew", root, "--out", out, "--fold", 1)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"wrote 4 rows to {out / 'train.jsonl'}",
                                          f"wrote 3 rows to {out / 'test.jsonl'}", f"labels: {out / 'labels.txt'}"]
    assert rows_of(out / "test.jsonl") == [(str(root / clip), label) for clip, label in DFEW_FOLD1_TEST]
    for split in ("train", "test"):
        path, _ = convert_video.prepare_dfew(root, tmp_path / "api", 1, split)
        assert (out / f"{split}.jsonl").read_text() == path.read_text()

    (root / "Clip" / "original" / "00007.mp4").unlink()
    result = run_cli("dfew", root, "--out", tmp_path / "x", "--fold", 1)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: 1 of the 3 clips listed in" in result.stderr
    result = run_cli("dfew", root, "--out", tmp_path / "y", "--fold", 1, "--split", "test", "--skip-missing",
                     "--clips", "clip_224x224")  # the frame folders are complete
    assert result.returncode == 0, result.stderr
    assert rows_of(tmp_path / "y" / "test.jsonl")[2] == (tuple(str(root / f) for f in dfew_frames(7)), "neutral")
    assert not (tmp_path / "y" / "train.jsonl").exists()

    mafw = make_mafw(tmp_path / "MAFW")
    result = run_cli("mafw", mafw, "--out", tmp_path / "m", "--fold", 1, "--split", "test", "--clips", "frames",
                     "--label-names", "release", "--no-label-list")
    assert result.returncode == 0, result.stderr
    convert_video.prepare_mafw(mafw, tmp_path / "m_api", 1, "test", "frames", label_list=False, label_names="release")
    assert (tmp_path / "m" / "test.jsonl").read_text() == (tmp_path / "m_api" / "test.jsonl").read_text()


@pytest.mark.parametrize("args, message", [
    (["dfew", "--out", "o"], "--fold 1-5 is required for dfew and mafw"),
    (["fi", "--out", "o", "--fold", 1], "--fold 1-5 is required for dfew and mafw"),
    (["dfew", "--out", "o", "--fold", 6], "invalid choice: 6"),
    (["dfew", "--out", "o", "--fold", 1, "--split", "val"], "--split for dfew is train or test"),
    (["dfew", "--out", "o", "--fold", 1, "--label-names", "release"], "--label-names is for mafw only"),
    (["fi", "--out", "o", "--clips", "frames"], "--clips is for dfew and mafw only"),
    (["emotion6", "--out", "o", "--no-label-list"], "--no-label-list is for dfew and mafw only"),
    (["fi", "--out", "o", "--skip-missing"], "--skip-missing is for webemo, dfew and mafw only"),
])
def test_cli_flags_belong_to_their_datasets(tmp_path, args, message):
    """A flag given to a converter that ignores it would look applied when it was not."""
    result = run_cli(args[0], tmp_path, *args[1:])
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_cli_help_names_the_video_datasets_and_flags():
    """`python prepare_data.py --help` would not tell a person how to convert DFEW and MAFW."""
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for word in ("dfew", "mafw", "--fold", "--clips", "--no-label-list", "--label-names", "EmoLabel_DataSplit",
                 "Train & Test Set/single/no_caption"):
        assert word in result.stdout, word
