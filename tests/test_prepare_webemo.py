"""Tests for the WebEmo converter (convert_images.prepare_webemo) and its command line, on a small replica of
the release: train25.txt/test25.txt URL lists, category.txt as shipped, and the public download script's tree.
The shared helpers (tiny JPEGs, reading what was written, loading it through PromptDataset) are test_prepare.py's.
"""

import re

import pytest

import convert_images
import data
from test_prepare import check_loads, read_jsonl, rows_of, run_cli, save_jpg

# --- WebEmo: train25.txt/test25.txt (`<URL> <id>`), category.txt, and the download script's tree ----------
# category.txt byte for byte as the release ships it: CRLF line ends, tabs, a Python literal, two misspellings.
WEBEMO_CATEGORY_TXT = (
    "# Three level emotion hierarchy.\r\nlabels=[('affection', 'love', '+'), \r\n\t('cheerfullness', 'joy', '+'), "
    "\r\n\t('confusion', 'confusion', '-'), \r\n\t('contentment', 'joy', '+'), \r\n\t('disappointment', 'sadness', "
    "'-'), \r\n\t('disgust', 'anger', '-'), \r\n\t('enthrallment', 'joy', '+'), \r\n\t('envy', 'anger', '-'),\r\n\t"
    "('exasperation', 'anger', '-'), \r\n\t('gratitude', 'love', '+'), \r\n\t('horror', 'fear', '-'), \r\n\t"
    "('irritabilty', 'anger', '-'), \r\n\t('lust', 'love', '+'), \r\n\t('neglect', 'sadness', '-'), \r\n\t"
    "('nervousness', 'fear', '-'), \r\n\t('optimism', 'joy', '+'), \r\n\t('pride', 'joy', '+'),\r\n\t('rage', "
    "'anger', '-'), \r\n\t('relief', 'joy', '+'), \r\n\t('sadness', 'sadness', '-'), \r\n\t('shame', 'sadness', "
    "'-'), \r\n\t('suffering', 'sadness', '-'), \r\n\t('surprise', 'surprise', '+'), \r\n\t('sympathy', 'sadness', "
    "'-'),\r\n\t('zest', 'joy', '+')]")
WEBEMO_TABLE = [  # by hand, from category.txt: label id -> (25-level, 7-level, 2-level), spellings corrected
    ("affection", "love", "positive"), ("cheerfulness", "joy", "positive"), ("confusion", "confusion", "negative"),
    ("contentment", "joy", "positive"), ("disappointment", "sadness", "negative"), ("disgust", "anger", "negative"),
    ("enthrallment", "joy", "positive"), ("envy", "anger", "negative"), ("exasperation", "anger", "negative"),
    ("gratitude", "love", "positive"), ("horror", "fear", "negative"), ("irritability", "anger", "negative"),
    ("lust", "love", "positive"), ("neglect", "sadness", "negative"), ("nervousness", "fear", "negative"),
    ("optimism", "joy", "positive"), ("pride", "joy", "positive"), ("rage", "anger", "negative"),
    ("relief", "joy", "positive"), ("sadness", "sadness", "negative"), ("shame", "sadness", "negative"),
    ("suffering", "sadness", "negative"), ("surprise", "surprise", "positive"), ("sympathy", "sadness", "negative"),
    ("zest", "joy", "positive"),
]
LEVEL_LABELS = {25: [fine for fine, _, _ in WEBEMO_TABLE],
                7: ["anger", "confusion", "fear", "joy", "love", "sadness", "surprise"], 2: ["negative", "positive"]}


def stock_url(n):
    return f"https://as2.ftcdn.net/jpg/00/42/93/{n % 100:02d}/220_F_{42937800 + n}_x{n}.jpg"


def webemo_image(split, label_id, n):
    """Where the public download script saves a listed URL: <split>/<label as listed>/<URL's file name>."""
    return f"{split}/{label_id}/220_F_{42937800 + n}_x{n}.jpg"


# train25.txt: one image per label id, listed in id order (n = id); test25.txt below, with one dead link
WEBEMO_TEST = [(100, 22, True), (101, 1, True), (102, 5, False), (103, 11, True)]  # (n, label id, downloaded)
WEBEMO_TEST_ROWS = {  # by hand: the three downloaded test images and their label at each level
    25: [(webemo_image("test", 22, 100), "surprise"), (webemo_image("test", 1, 101), "cheerfulness"),
         (webemo_image("test", 11, 103), "irritability")],
    7: [(webemo_image("test", 22, 100), "surprise"), (webemo_image("test", 1, 101), "joy"),
        (webemo_image("test", 11, 103), "anger")],
    2: [(webemo_image("test", 22, 100), "positive"), (webemo_image("test", 1, 101), "positive"),
        (webemo_image("test", 11, 103), "negative")],
}


def make_webemo(root, tree=None):
    """The release (train25.txt, test25.txt, category.txt) with the download script's tree in `tree` (root)."""
    tree = tree or root
    root.mkdir(parents=True, exist_ok=True)
    (root / "category.txt").write_bytes(WEBEMO_CATEGORY_TXT.encode())
    (root / "train25.txt").write_text("".join(f"{stock_url(i)} {i}\n" for i in range(25)))
    (root / "test25.txt").write_text("".join(f"{stock_url(n)} {label}\n" for n, label, _ in WEBEMO_TEST))
    for i in range(25):
        save_jpg(tree / webemo_image("train", i, i), i)
    for n, label, downloaded in WEBEMO_TEST:
        if downloaded:
            save_jpg(tree / webemo_image("test", label, n), n)
    return root


def test_webemo_reads_category_txt(tmp_path):
    """The release's category.txt would be refused, its misspellings or +/- signs leak into prompts."""
    root = make_webemo(tmp_path / "WebEmo")
    assert convert_images.load_webemo_hierarchy(root / "category.txt") == WEBEMO_TABLE
    # the category.txt beside the lists is the one used: a copy that folds confusion into sadness gives 6 classes
    (root / "category.txt").write_text(WEBEMO_CATEGORY_TXT.replace("('confusion', 'confusion', '-')",
                                                                   "('confusion', 'sadness', '-')"))
    convert_images.prepare_webemo(root, tmp_path / "folded", 7, "train")
    assert (tmp_path / "folded" / "labels.txt").read_text() == "anger\nfear\njoy\nlove\nsadness\nsurprise\n"
    assert rows_of(tmp_path / "folded" / "train.jsonl")[2] == (str(root / webemo_image("train", 2, 2)), "sadness")
    (root / "category.txt").write_text("labels=[('affection', 'love')]\n")
    with pytest.raises(data.DataError, match=re.escape(f"{root / 'category.txt'}: cannot read it as WebEmo's "
                                                       "category.txt (not a list of (fine, mid, coarse)")):
        convert_images.prepare_webemo(root, tmp_path / "bad", 25, "train")


@pytest.mark.parametrize("level", [25, 7, 2])
def test_webemo_url_lists_and_downloaded_tree(tmp_path, processor, level):
    """The release's URL lists would be refused, or their downloaded images not found or mislabelled."""
    root = make_webemo(tmp_path / "WebEmo")
    out = tmp_path / f"level{level}"
    assert convert_images.prepare_webemo(root, out, level, "train") == (out / "train.jsonl", 25)
    column = {25: 0, 7: 1, 2: 2}[level]
    assert rows_of(out / "train.jsonl") == [(str(root / webemo_image("train", i, i)), WEBEMO_TABLE[i][column])
                                            for i in range(25)]
    assert (out / "labels.txt").read_text() == "\n".join(LEVEL_LABELS[level]) + "\n"
    assert convert_images.prepare_webemo(root, out, level, "test", skip_missing=True) == (out / "test.jsonl", 3)
    assert rows_of(out / "test.jsonl") == [(str(root / image), label) for image, label in WEBEMO_TEST_ROWS[level]]
    check_loads(out / "train.jsonl", processor, LEVEL_LABELS[level])


def test_webemo_image_root_elsewhere(tmp_path):
    """Images downloaded away from the lists would not be found without --image-root."""
    root = make_webemo(tmp_path / "WebEmo", tree=tmp_path / "downloads")
    first = root / webemo_image("train", 0, 0)  # looked for beside the lists, where the script would have saved it
    with pytest.raises(data.DataError, match=re.escape(f"25 of the 25 images listed in {root / 'train25.txt'} are "
                                                       f"missing (first: train25.txt:1 {first})") + ".* None is there"):
        convert_images.prepare_webemo(root, tmp_path / "out", 25, "train", skip_missing=True)
    convert_images.prepare_webemo(root, tmp_path / "out", 25, "test", image_root=tmp_path / "downloads",
                                  skip_missing=True)
    assert rows_of(tmp_path / "out" / "test.jsonl") == [(str(tmp_path / "downloads" / image), label)
                                                        for image, label in WEBEMO_TEST_ROWS[25]]


def test_webemo_dead_links_are_counted(tmp_path, capsys):
    """One dead link would stop the whole conversion, or dead links would be dropped without a word."""
    root = make_webemo(tmp_path / "WebEmo")
    dead = root / webemo_image("test", 5, 102)
    with pytest.raises(data.DataError, match=re.escape(f"1 of the 4 images listed in {root / 'test25.txt'} are "
                                                       f"missing (first: test25.txt:3 {dead}); a URL's image is looked "
                                                       f"for at {root}/test/<label id>/<file name of the URL> "
                                                       "(--image-root). Download them, or pass --skip-missing")):
        convert_images.prepare_webemo(root, tmp_path / "out", 25, "test")
    assert not (tmp_path / "out" / "test.jsonl").exists()
    assert convert_images.prepare_webemo(root, tmp_path / "out", 25, "test", skip_missing=True)[1] == 3
    assert f"WebEmo test: skipped 1 of 4 listed images, missing from {root} (first: test25.txt:3 {dead})" in \
        capsys.readouterr().out


def test_webemo_list_errors_name_the_line(tmp_path):
    """Unknown labels or malformed lines would not say which line to fix; local paths would not resolve."""
    root = make_webemo(tmp_path / "WebEmo")
    listing = root / "test25.txt"
    for text, message in [
        (f"{stock_url(100)} 22\n{stock_url(1)} 25\n", "expected '<image URL or path> <label id 0-24 or name>'"),
        (f"{stock_url(100)} 22\n{stock_url(1)}\n", "expected '<image URL or path>"),
    ]:
        listing.write_text(text)
        with pytest.raises(data.DataError, match=re.escape(f"{listing}:2: ") + message):
            convert_images.prepare_webemo(listing, tmp_path / "out", 25, "test")
    # lists rewritten with local paths and names (relative to the image root), with the release's spellings
    listing.write_text(f"{webemo_image('test', 1, 101)} cheerfullness\n\n{webemo_image('test', 11, 103)} irritabilty\n")
    convert_images.prepare_webemo(listing, tmp_path / "out", 25, "test")
    assert [a for _, a in rows_of(tmp_path / "out" / "test.jsonl")] == ["cheerfulness", "irritability"]
    with pytest.raises(ValueError, match="level must be 2, 7 or 25"):
        convert_images.prepare_webemo(root, tmp_path / "out", 6)


def test_webemo_hierarchy_tsv_overrides_category_txt(tmp_path):
    """--hierarchy would be ignored, or a malformed one accepted, if the TSV were not read row by row."""
    root = make_webemo(tmp_path / "WebEmo")
    tsv = tmp_path / "hierarchy.tsv"
    tsv.write_text("# fine\tmid\tcoarse\n" + "".join(f"c{i}\t{'even' if i % 2 == 0 else 'odd'}\tall\n"
                                                      for i in range(25)))
    convert_images.prepare_webemo(root, tmp_path / "out", 7, "train", hierarchy=tsv)
    assert [row["answer"] for row in read_jsonl(tmp_path / "out" / "train.jsonl")] == \
        ["even" if i % 2 == 0 else "odd" for i in range(25)]
    assert (tmp_path / "out" / "labels.txt").read_text() == "even\nodd\n"
    tsv.write_text("a\tb\tc\nd\te\n")
    with pytest.raises(data.DataError, match=re.escape(f"{tsv}:2: expected fine<TAB>mid<TAB>coarse")):
        convert_images.prepare_webemo(root, tmp_path / "out2", 7, "train", hierarchy=tsv)


def test_second_label_set_in_one_folder_is_refused(tmp_path):
    """A second level written to the same folder would silently relabel the first level's rows."""
    root = make_webemo(tmp_path / "WebEmo")
    convert_images.prepare_webemo(root, tmp_path / "out", 25, "train")
    with pytest.raises(data.DataError, match=re.escape(f"{tmp_path / 'out' / 'labels.txt'}: already holds a "
                                                       "different label set")):
        convert_images.prepare_webemo(root, tmp_path / "out", 2, "test", skip_missing=True)
    assert convert_images.prepare_webemo(root, tmp_path / "out", 25, "test", skip_missing=True)[1] == 3  # same set


def test_cli_webemo_needs_a_level_and_counts_dead_links(tmp_path):
    """`python prepare_data.py webemo` would run without a level, or hide or stop at dead links."""
    webemo = make_webemo(tmp_path / "WebEmo", tree=tmp_path / "downloads")
    result = run_cli("webemo", webemo, "--out", tmp_path / "w")
    assert result.returncode == 2 and "--level 2, 7 or 25 is required for webemo" in result.stderr
    result = run_cli("webemo", webemo, "--out", tmp_path / "w", "--level", 7, "--image-root", tmp_path / "downloads")
    assert result.returncode == 1 and "Traceback" not in result.stderr  # the dead link stops it, with its count
    assert f"error: 1 of the 4 images listed in {webemo / 'test25.txt'} are missing" in result.stderr
    result = run_cli("webemo", webemo, "--out", tmp_path / "w", "--level", 7, "--image-root", tmp_path / "downloads",
                     "--skip-missing")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"wrote 25 rows to {tmp_path / 'w' / 'train.jsonl'}"
    assert result.stdout.splitlines()[1].startswith("WebEmo test: skipped 1 of 4 listed images")
    assert result.stdout.splitlines()[2] == f"wrote 3 rows to {tmp_path / 'w' / 'test.jsonl'}"
