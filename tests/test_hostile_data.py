"""Hostile data for data.py: broken, odd-mode, huge, tiny and thin images, bad rows and unreadable or
empty data files. Each case must either stop with a DataError naming the file and row, or, with
skip_bad, be left out and counted in `PromptDataset.skipped`; valid image modes must load as the
right RGB pixels. Real files in tmp_path, the tiny model's real processor, no mocks."""

import io
import json
import os
import struct
import sys
import threading
import time
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import data
import video
# the data tests' pixel range (MIN_PIXELS 3136: a 56x56 image is kept as it is) and file helpers
from test_data import MAX_PIXELS, MIN_PIXELS, load, write_jsonl, write_parquet

QUESTION = "<image>Which emotion?"


# --- helpers ------------------------------------------------------------------------------------

def noise(size, seed=0):
    """An RGB noise image (noise, so a PNG of it does not compress to a few bytes)."""
    width, height = size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def encoded(image, format="PNG"):
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def png_claiming(width, height):
    """A small real PNG whose header (IHDR, with its CRC fixed) claims width x height pixels: the
    first bytes of a decompression bomb, without the gigabytes behind them."""
    png = bytearray(encoded(noise((8, 8))))
    # bytes 8-11 chunk length, 12-15 b"IHDR", 16-28 its data (width, height, depth, ...), 29-32 CRC
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def rows_for(images, answer="fear", problem=QUESTION):
    return [{"images": [image], "problem": problem, "answer": answer} for image in images]


def error_of(dataset, index):
    with pytest.raises(data.DataError) as error:
        dataset[index]
    return str(error.value)


# --- broken image files ---------------------------------------------------------------------------

def broken_image_rows(tmp_path):
    """A JSONL whose rows 2-11 each have one unusable image, with a fragment of the reason each
    message must give; rows 1 and 12 are good."""
    noise((40, 30)).save(tmp_path / "good.png")
    png = encoded(noise((64, 64), seed=1))
    (tmp_path / "truncated.png").write_bytes(png[:len(png) // 2])
    jpeg = encoded(noise((64, 64), seed=2), "JPEG")
    (tmp_path / "truncated.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    (tmp_path / "random.png").write_bytes(np.random.default_rng(3).bytes(300))
    idat = png.index(b"IDAT") + 4  # valid header, pixel data overwritten: zlib cannot inflate it
    (tmp_path / "corrupt.png").write_bytes(png[:idat + 2] + b"\xff" * 64 + png[idat + 66:])
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    cases = [  # (image field, a fragment of the reason)
        ("truncated.png", "truncated"),
        ("truncated.jpg", "truncated"),
        ("random.png", "cannot identify image file"),
        ("corrupt.png", "broken data stream"),
        ("missing.png", "no such file"),
        ("zero.png", "empty file (0 bytes)"),
        ("", "empty image"),
        (None, "empty image"),
        ("folder.png", "not a file"),
        ({"bytes": None, "path": None}, "empty image"),
    ]
    rows = rows_for(["good.png"] + [image for image, _ in cases] + ["good.png"])
    return write_jsonl(tmp_path / "train.jsonl", rows), cases


def test_broken_images_name_file_row_and_reason(tmp_path, processor):
    """Users could not find a broken image in a large dataset if any kind of broken image surfaced as
    a bare exception from deep in PIL, or as a message without file, row and a readable reason."""
    path, cases = broken_image_rows(tmp_path)
    dataset = load(path, processor)
    assert len(dataset) == len(cases) + 2  # images are opened only when a row is used
    for index, (image, reason) in enumerate(cases, 1):
        message = error_of(dataset, index)
        assert message.startswith(f"{path}:{index + 1}: cannot use image "), message
        assert reason in message, message
        if image and isinstance(image, str):
            assert image in message
    assert dataset[len(cases) + 1].images[0].mode == "RGB"


def test_broken_images_are_skipped_and_counted_once(tmp_path, processor):
    """With --skip-bad-rows a broken image would stop training, vanish without a trace, or be counted
    again every epoch if get_batch did not leave each bad row out and record it exactly once."""
    path, cases = broken_image_rows(tmp_path)
    dataset = load(path, processor, skip_bad=True)
    everything = range(len(dataset))
    assert [p.index for p in dataset.get_batch(everything)] == [0, len(cases) + 1]
    assert [p.index for p in dataset.get_batch(everything)] == [0, len(cases) + 1]  # a second epoch
    assert [where for where, _ in dataset.skipped] == [f"{path}:{n}" for n in range(2, len(cases) + 2)]
    for (where, reason), (_, fragment) in zip(dataset.skipped, cases):
        assert reason.startswith("cannot use image ") and fragment in reason  # the reason, without `where` again


def test_broken_inline_images_in_parquet(tmp_path, processor):
    """Hugging Face parquet datasets carry images as bytes; a broken one would surface as a bare PIL error,
    or an empty one as "unsupported image field", if inline bytes were not checked like files."""
    png = encoded(noise((64, 64), seed=1))
    cases = [  # (the HF image dict, a fragment of the reason)
        ({"bytes": png[:len(png) // 2], "path": None}, "truncated"),
        ({"bytes": np.random.default_rng(3).bytes(300), "path": None}, "cannot identify image file"),
        ({"bytes": b"", "path": None}, "empty image field"),
        ({"bytes": None, "path": "missing.png"}, "no such file"),
    ]
    good = {"bytes": encoded(noise((40, 30))), "path": None}
    path = write_parquet(tmp_path / "train.parquet", [
        {"images": image, "problem": QUESTION, "answer": "fear"} for image in [good] + [c for c, _ in cases]])
    dataset = load(path, processor)
    for index, (_, reason) in enumerate(cases, 1):
        message = error_of(dataset, index)
        assert message.startswith(f"{path}:{index + 1}: cannot use image <dict image>: ") and reason in message
    skipping = load(path, processor, skip_bad=True)
    assert [p.index for p in skipping.get_batch(range(len(skipping)))] == [0]
    assert [where for where, _ in skipping.skipped] == [f"{path}:{n}" for n in range(2, len(cases) + 2)]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX named pipes")
def test_named_pipe_instead_of_image_does_not_hang(tmp_path, processor):
    """Loading would block forever on a named pipe (or a device) posing as an image file if open_image
    opened any path without checking it is a regular file."""
    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)

    def unblock():  # should the loader block on the pipe, a writer frees it after 3 s: a failure, not a hang
        time.sleep(3)
        try:
            os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # ENXIO: nobody is reading the pipe, as it should be
            pass

    threading.Thread(target=unblock, daemon=True).start()
    dataset = load(write_jsonl(tmp_path / "train.jsonl", rows_for(["pipe.png"])), processor)
    started = time.monotonic()
    message = error_of(dataset, 0)
    assert time.monotonic() - started < 2
    assert message.startswith(f"{tmp_path / 'train.jsonl'}:1: cannot use image pipe.png") and "not a file" in message


# --- valid image modes ----------------------------------------------------------------------------

def two_halves(mode, left, right, size=(56, 56), palette=None, transparency=None):
    """A `mode` image whose left half is `left` and right half `right` (pixel values in that mode)."""
    image = Image.new(mode, size, left)
    if palette:
        image.putpalette(palette)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    if transparency is not None:
        image.info["transparency"] = transparency
    return image


WHITE = (255, 255, 255)
# (name, image, file format, expected RGB of the left and right halves); transparent pixels land on
# white, as qwen-vl-utils does for RGBA; 16-bit grey is scaled from 0..65535 to 0..255
MODE_CASES = [
    ("RGB", two_halves("RGB", (10, 20, 30), (200, 100, 50)), "PNG", (10, 20, 30), (200, 100, 50)),
    ("RGBA", two_halves("RGBA", (10, 20, 30, 0), (200, 0, 0, 128)), "PNG", WHITE, (227, 127, 127)),
    ("L", two_halves("L", 0, 200), "PNG", (0, 0, 0), (200, 200, 200)),
    ("LA", two_halves("LA", (100, 0), (100, 255)), "PNG", WHITE, (100, 100, 100)),
    ("P", two_halves("P", 0, 1, palette=[255, 0, 0, 0, 0, 255]), "PNG", (255, 0, 0), (0, 0, 255)),
    ("P-transparent", two_halves("P", 0, 1, palette=[255, 0, 0, 0, 0, 255], transparency=0), "PNG",
     WHITE, (0, 0, 255)),
    ("P-alpha-palette", two_halves("P", 0, 1, palette=[255, 0, 0, 0, 0, 255], transparency=b"\x00\xff"), "PNG",
     WHITE, (0, 0, 255)),
    ("CMYK-tiff", two_halves("CMYK", (0, 0, 0, 0), (255, 0, 0, 0)), "TIFF", WHITE, (0, 255, 255)),
    ("CMYK-jpeg", two_halves("CMYK", (0, 0, 0, 0), (0, 255, 255, 0)), "JPEG", WHITE, (255, 0, 0)),
    ("I;16", two_halves("I;16", 128 * 257, 65535), "PNG", (128, 128, 128), WHITE),
    ("I", two_halves("I", 50 * 257, 0), "TIFF", (50, 50, 50), (0, 0, 0)),
]


def test_mode_cases_really_have_their_mode(tmp_path):
    """The mode tests below would test nothing if PIL reopened the files in some other mode."""
    for name, image, format, _, _ in MODE_CASES:
        path = tmp_path / f"{name}.{format.lower()}"
        image.save(path, format=format)
        assert Image.open(path).mode == image.mode, name


def test_valid_image_modes_load_as_the_right_rgb(tmp_path, processor):
    """Grey, palette, alpha, CMYK and 16-bit images (all common in scraped datasets) would be refused or
    reach the model with wrong colours (16-bit grey as all white, transparent pixels as their hidden
    colour) if open_image did not convert each mode to RGB correctly."""
    names = []
    for name, image, format, _, _ in MODE_CASES:
        names.append(f"{name}.{format.lower()}")
        image.save(tmp_path / names[-1], format=format)
    dataset = load(write_jsonl(tmp_path / "train.jsonl", rows_for(names)), processor)
    for index, (name, _, format, left, right) in enumerate(MODE_CASES):
        image = dataset[index].images[0]
        assert image.mode == "RGB" and image.size == (56, 56), name  # 56x56 is kept: no resampling
        tolerance = 4 if format == "JPEG" else 1  # JPEG is lossy; alpha blending rounds
        for (x, y), expected in (((14, 28), left), ((42, 28), right)):
            assert np.abs(np.subtract(image.getpixel((x, y)), expected)).max() <= tolerance, (name, x, expected)


def test_open_image_converts_pil_images_and_bytes_alike(tmp_path):
    """In-memory images and inline bytes (parquet) would get other colours than files if open_image
    converted modes differently per source."""
    for image, left, right in [(two_halves("I;16", 100 * 257, 65535, size=(4, 2)), (100, 100, 100), WHITE),
                               (two_halves("LA", (100, 0), (30, 255), size=(4, 2)), WHITE, (30, 30, 30))]:
        for source in (encoded(image), image):
            converted = video.open_image(source, tmp_path)
            assert converted.mode == "RGB" and converted.size == (4, 2)
            assert converted.getpixel((0, 0)) == left and converted.getpixel((3, 1)) == right, image.mode


# --- decompression bombs --------------------------------------------------------------------------

@pytest.mark.parametrize("side", [20000, 10000], ids=["over-2x-limit", "over-limit"])
def test_decompression_bomb_rejected_before_decoding(tmp_path, processor, side):
    """A crafted or huge image would allocate gigabytes (and kill a training node) if its header's size
    were not checked before the pixels are decoded; PIL only warns between 1x and 2x its limit."""
    bomb = png_claiming(side, side)
    assert side * side > Image.MAX_IMAGE_PIXELS
    (tmp_path / "bomb.png").write_bytes(bomb)
    jsonl = write_jsonl(tmp_path / "train.jsonl", rows_for(["bomb.png"]))
    parquet = write_parquet(tmp_path / "train.parquet", [
        {"images": {"bytes": bomb, "path": None}, "problem": QUESTION, "answer": "fear"}])
    raw = write_parquet(tmp_path / "raw.parquet", [{"images": bomb, "problem": QUESTION, "answer": "fear"}])
    for path in (jsonl, parquet, raw):
        started = time.monotonic()
        message = error_of(load(path, processor), 0)
        assert time.monotonic() - started < 2  # refused from the header, never decoded
        assert message.startswith(f"{path}:1: cannot use image "), message
        # the 8x8 pixel data behind the header would have failed as "truncated" had decoding started
        assert "decompression bomb" in message and f"{side * side} pixels" in message, message
        skipping = load(path, processor, skip_bad=True)
        assert skipping.get_batch([0]) == [] and [w for w, _ in skipping.skipped] == [f"{path}:1"]


# --- tiny and thin images -------------------------------------------------------------------------

def test_images_smaller_than_a_patch_are_upscaled(tmp_path, processor):
    """1-pixel and 3-pixel-wide images (icons, spacer GIFs) would crash the processor, which needs
    28 px per side, if the resize did not scale them up to whole 28-pixel patches as the reference does
    (EasyR1's int(side * sqrt(3136 / (w*h))), then the processor's smart_resize in [3136, 12845056])."""
    colour = (10, 200, 30)
    sizes = {
        # 1 < 3136: sqrt(3136/1) = 56 -> 56x56, a multiple of 28 with 3136 pixels: kept
        (1, 1): (56, 56),
        # 1500 < 3136: sqrt(3136/1500) = 1.4459 -> int(4.34) = 4, int(722.96) = 722; processor: round(4/28) = 0,
        # round(722/28 = 25.8) = 26 -> 0 px < 3136, so beta = sqrt(3136/(4*722)) = 1.0421: ceil(4.17/28) = 1 -> 28,
        # ceil(752.4/28 = 26.9) = 27 -> 756
        (3, 500): (28, 756),
        (500, 3): (756, 28),
        # 40000 is inside [3136, 50176], no EasyR1 step; processor: round(20/28) = 1 -> 28, round(2000/28 = 71.4)
        # = 71 -> 1988; 1988*28 = 55664 is inside the processor's own range, so kept although over MAX_PIXELS
        (2000, 20): (1988, 28),
    }
    names = []
    for width, height in sizes:
        names.append(f"{width}x{height}.png")
        Image.new("RGB", (width, height), colour).save(tmp_path / names[-1])
    dataset = load(write_jsonl(tmp_path / "train.jsonl", rows_for(names)), processor)
    for index, resized in enumerate(sizes.values()):
        prompt = dataset[index]
        image = prompt.images[0]
        assert image.size == resized and image.getpixel((image.width // 2, image.height // 2)) == colour
        batch = data.encode(processor, [prompt])  # the processor takes it as it is: no second resize
        assert batch["image_grid_thw"].tolist() == [[1, image.height // 14, image.width // 14]]
        assert prompt.num_tokens == batch["input_ids"].shape[1]


@pytest.mark.parametrize("size, max_pixels, fragment", [
    ((1000, 4), MAX_PIXELS, "1000x4"),  # aspect ratio 250: qwen-vl-utils refuses it
    ((4, 1000), MAX_PIXELS, "4x1000"),
    # ratio 200 is allowed, but 200 < 3136 pixels: sqrt(3136/200) = 3.96 -> int(791.96) = 791, int(3.96) = 3:
    # ratio 264, which the processor refuses
    ((200, 1), MAX_PIXELS, "200x1"),
    ((11900, 60), 28 * 28 * 1024, "11900x60"),  # ratio 198, rounded to 11900x56: ratio 212, refused by the processor
], ids=["wide-250", "tall-250", "truncates-over-200", "rounds-over-200"])
def test_too_thin_images_name_row_and_size(tmp_path, processor, size, max_pixels, fragment):
    """Extreme banners would fail with a bare library error (or, worse, pass here and crash the trainer's
    processor with no row named) if the size and aspect-ratio limits were not checked on the resized image."""
    Image.new("RGB", size, (1, 2, 3)).save(tmp_path / "thin.png")
    path = write_jsonl(tmp_path / "train.jsonl", rows_for(["thin.png"]))
    message = error_of(load(path, processor, max_pixels=max_pixels), 0)
    assert message.startswith(f"{path}:1: cannot use image thin.png"), message
    assert fragment in message and "aspect ratio" in message and "200" in message, message
    skipping = load(path, processor, max_pixels=max_pixels, skip_bad=True)
    assert skipping.get_batch([0]) == [] and len(skipping.skipped) == 1


# --- bad rows -------------------------------------------------------------------------------------

def test_bad_labels_and_problems_name_row_or_are_counted(tmp_path, processor):
    """Rows with a label the reward can never give, or no question, would train the policy on
    nonsense if they were not refused (or, with skip_bad, left out and counted) before any image loads."""
    noise((40, 30)).save(tmp_path / "a.png")
    good = {"images": ["a.png"], "problem": QUESTION, "answer": "fear"}
    bad = [  # (row, the start of its reason)
        ({"images": ["a.png"], "problem": QUESTION, "answer": "boredom"}, "label 'boredom' is not in the label set"),
        ({"images": ["a.png"], "problem": QUESTION, "answer": ""}, "empty or missing 'answer'"),
        ({"images": ["a.png"], "problem": QUESTION}, "empty or missing 'answer'"),
        ({"images": ["a.png"], "problem": "", "answer": "fear"}, "empty or missing 'problem'"),
        ({"images": ["a.png"], "answer": "fear"}, "empty or missing 'problem'"),
        ({"images": ["a.png"], "problem": None, "answer": "fear"}, "empty or missing 'problem'"),
    ]
    for row, reason in bad:  # without skip_bad each such row stops the load with its own message
        one_bad = write_jsonl(tmp_path / "one.jsonl", [good, row])
        with pytest.raises(data.DataError) as error:
            load(one_bad, processor)
        assert str(error.value).startswith(f"{one_bad}:2: {reason}"), str(error.value)
        assert "--skip-bad-rows" in str(error.value)
    path = write_jsonl(tmp_path / "train.jsonl", [good] + [row for row, _ in bad])
    expected = [(f"{path}:{n}", reason) for n, (_, reason) in enumerate(bad, 2)]
    dataset = load(path, processor, skip_bad=True)
    assert [row.where for row in dataset.rows] == [f"{path}:1"]
    assert [(where, reason[:len(r)]) for (where, reason), (_, r) in zip(dataset.skipped, expected)] == expected


@pytest.mark.parametrize("skip_bad", [False, True])
def test_prompt_over_max_prompt_length_is_dropped_and_listed(tmp_path, processor, skip_bad):
    """An over-long prompt would be truncated by vLLM, stop training, or vanish without a trace if it
    were not dropped at load (as the reference's filter_overlong_prompts, with or without skip_bad) and
    listed in dropped_long with its row and length."""
    noise((40, 30)).save(tmp_path / "a.png")
    long_question = QUESTION + " why?" * 200
    path = write_jsonl(tmp_path / "train.jsonl", rows_for(["a.png"]) + rows_for(["a.png"], problem=long_question)
                       + rows_for(["a.png"]))
    everything = load(path, processor)
    short, long = everything[0].num_tokens, everything[1].num_tokens
    dataset = load(path, processor, max_prompt_length=short + 5, skip_bad=skip_bad)
    assert [row.where for row in dataset.rows] == [f"{path}:1", f"{path}:3"]  # steps count on these two
    assert dataset.dropped_long == [(f"{path}:2", long)] and dataset.skipped == []
    assert [p.num_tokens for p in dataset.get_batch(range(len(dataset)))] == [short, short]


# --- empty and unreadable data files --------------------------------------------------------------

@pytest.mark.parametrize("labels", ["emoset", None])
@pytest.mark.parametrize("skip_bad", [False, True])
def test_empty_datasets_say_so(tmp_path, processor, labels, skip_bad):
    """A run on an empty dataset would start with nothing to train on, or fail with a misleading
    message ("every row's answer is empty"), if files and folders without rows were not named as empty."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n\t\n")
    no_list = tmp_path / "rows.json"
    no_list.write_text("[]")
    empty_parquet = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"images": pa.array([], pa.string()), "problem": pa.array([], pa.string()),
                             "answer": pa.array([], pa.string())}), empty_parquet)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n")
    for path in (empty, blank, no_list, empty_parquet, folder):
        with pytest.raises(data.DataError) as error:
            load(path, processor, labels=labels, skip_bad=skip_bad)
        assert str(error.value).startswith(f"{path}: no rows"), str(error.value)


def test_unreadable_data_files_name_the_file(tmp_path, processor):
    """A corrupt or misnamed data file would end in a pyarrow or codec traceback, or a misleading hint,
    instead of a message naming the file and what to do."""
    good = write_parquet(tmp_path / "good.parquet", rows_for(["a.png"]))
    whole = good.read_bytes()
    cases = {  # file name: (content, a fragment of the message)
        "truncated.parquet": (whole[:len(whole) // 2], "cannot read parquet file"),
        "zero.parquet": (b"", "cannot read parquet file"),
        "text.parquet": (b'{"images": "a.png", "problem": "x", "answer": "fear"}\n', "cannot read parquet file"),
        "parquet.jsonl": (whole, "is a parquet file"),
        "parquet.json": (whole, "is a parquet file"),
        "image.jsonl": (encoded(noise((8, 8))), "not UTF-8 text"),
    }
    for name, (content, fragment) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(data.DataError) as error:
            load(tmp_path / name, processor)
        assert str(error.value).startswith(f"{tmp_path / name}"), str(error.value)
        assert fragment in str(error.value), str(error.value)
    # in a folder, the corrupt file is named, not only the folder
    folder = tmp_path / "hf"
    write_parquet(folder / "train-00000.parquet", rows_for(["a.png"]))
    (folder / "train-00001.parquet").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(data.DataError, match="train-00001.parquet: cannot read parquet file"):
        load(f"{folder}@train", processor)


# --- the check command ----------------------------------------------------------------------------

def run_check(monkeypatch, capsys, tiny_model_dir, path, *flags):
    argv = ["data.py", "check", str(path), "--model", str(tiny_model_dir), "--labels", "emoset",
            "--min-pixels", str(MIN_PIXELS), "--max-pixels", str(MAX_PIXELS), *flags]
    monkeypatch.setattr(sys, "argv", argv)
    try:
        data.main()
        code = 0
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().out


def test_check_command_reports_bad_rows(tmp_path, monkeypatch, capsys, tiny_model_dir):
    """`python data.py check` would print a traceback instead of the file and row, or list skipped rows
    with their location twice, if it did not report DataErrors as messages."""
    path, cases = broken_image_rows(tmp_path)
    code, _ = run_check(monkeypatch, capsys, tiny_model_dir, path)
    assert isinstance(code, str) and code.startswith(f"error: {path}:2: cannot use image truncated.png"), code
    assert "--skip-bad-rows" in code and "skip_bad" not in code, code  # the flag, not the Python keyword
    code, out = run_check(monkeypatch, capsys, tiny_model_dir, path, "--skip-bad-rows")
    assert code == 0
    summary = json.loads(out[:out.index("\n}\n") + 3])
    assert summary["rows"] == len(cases) + 2 and summary["usable"] == 2 and summary["skipped"] == len(cases)
    skipped_lines = [line for line in out.splitlines() if line.startswith("skipped ")]
    assert all(line.count(str(path)) == 1 for line in skipped_lines), skipped_lines
    assert [line.split(": ")[0] for line in skipped_lines] == [f"skipped {path}:{n}" for n in range(2, len(cases) + 2)]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert run_check(monkeypatch, capsys, tiny_model_dir, empty) == (f"error: {empty}: no rows", "")


@pytest.mark.parametrize("flags", [[], ["--skip-bad-rows"]])
def test_check_command_names_the_columns_of_another_layout(tmp_path, monkeypatch, capsys, tiny_model_dir, flags):
    """A parquet file with other column names (image, question, label) was refused row by row ("empty or
    missing 'problem'" at every row, or every row skipped with --skip-bad-rows) without ever naming the
    columns it has: `data.py check` must say once which columns the file has and which it needs."""
    noise((40, 30)).save(tmp_path / "a.png")
    path = write_parquet(tmp_path / "other.parquet", [{"image": "a.png", "question": QUESTION, "label": "fear"}] * 3)
    before = sorted(tmp_path.rglob("*"))
    code, out = run_check(monkeypatch, capsys, tiny_model_dir, path, *flags)
    assert code == (f"error: {path}: no 'problem' or 'answer' or 'images' (or 'videos') column. Its columns are "
                    f"'image', 'question', 'label'; data.py reads 'problem' (the question), 'answer' (the label) "
                    f"and 'images' (or 'videos'): rename the file's columns to these (the layout: docs/data.md)"), code
    assert out == "" and sorted(tmp_path.rglob("*")) == before  # nothing printed as a result, nothing written


def test_check_command_without_model_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    """`python data.py check` without --model would fail deep in transformers, or build the tiny model
    itself (data.py must not import tiny.py, which imports data.py), instead of saying what to pass."""
    monkeypatch.setattr(sys, "argv", ["data.py", "check", str(tmp_path / "train.jsonl")])
    with pytest.raises(SystemExit) as stop:
        data.main()
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--model is required" in err and "python tiny.py" in err, err
