"""Images and prompt lengths as the released pipeline sees them (METHOD.md, "Differences from the
released code"). Expected sizes and token counts are worked out by hand from the reference's arithmetic:

1. EasyR1's process_image, with data.min_pixels = 512*512 = 262144 and data.max_pixels = 2048*2048 =
   4194304: if w*h > max_pixels, w, h = int(w * s), int(h * s) with s = sqrt(max_pixels / (w*h)); then if
   w*h < min_pixels, the same with s = sqrt(min_pixels / (w*h)).
2. The Qwen2.5-VL processor (trainer and vLLM alike), transformers' smart_resize with factor 28 in its
   own range [3136, 12845056]: each side round(side / 28) * 28 (Python's round); only if that product is
   outside the range, floor (too big) or ceil (too small) of side / beta / 28 instead.
Image tokens: (w / 14) * (h / 14) / 4 = (w / 28) * (h / 28).
Real files in tmp_path, the tiny model's real processor (same pixel range as Qwen2.5-VL's), no mocks.
"""

import io

import numpy as np
import pytest
from PIL import Image

import data
from test_data import write_jsonl

MIN_PIXELS, MAX_PIXELS = 512 * 512, 2048 * 2048  # EMO-R3's data.min_pixels / data.max_pixels

# (original size, size the model sees, image tokens), each worked out by hand
REFERENCE_SIZES = [
    # 187500 < 262144: s = sqrt(262144/187500) = 1.18241 -> int(591.21) = 591, int(443.41) = 443;
    # round(591/28 = 21.11) = 21 -> 588, round(443/28 = 15.82) = 16 -> 448; 263424 in range; 21*16 = 336
    # (qwen-vl-utils' smart_resize with min_pixels 512*512 gives 616x448, 352 tokens)
    ((500, 375), (588, 448), 336),
    ((375, 500), (448, 588), 336),  # the same, portrait
    # 90000 < 262144: s = sqrt(262144/90000) = 512/300 -> int(512.0) = 512 per side (511 would give the same);
    # round(512/28 = 18.29) = 18 -> 504; 504*504 = 254016 is in range; 18*18 = 324
    # (qwen-vl-utils: 532x532, 361 tokens)
    ((300, 300), (504, 504), 324),
    # 6000000 > 4194304: s = sqrt(4194304/6000000) = 0.836093 -> int(2508.28) = 2508, int(1672.19) = 1672;
    # round(2508/28 = 89.57) = 90 -> 2520, round(1672/28 = 59.71) = 60 -> 1680; 4233600 is over max_pixels
    # but inside the processor's range, so kept; 90*60 = 5400 (qwen-vl-utils: 2492x1652, 5251 tokens)
    ((3000, 2000), (2520, 1680), 5400),
    # 1920000 in [262144, 4194304]: no EasyR1 step; round(1600/28 = 57.14) = 57 -> 1596, round(1200/28 = 42.86)
    # = 43 -> 1204; 57*43 = 2451 (METHOD's example of an image too long for a 2048-token prompt)
    ((1600, 1200), (1596, 1204), 2451),
    # 307200 in range: round(640/28 = 22.86) = 23 -> 644, round(480/28 = 17.14) = 17 -> 476; 23*17 = 391
    ((640, 480), (644, 476), 391),
]


def jpeg(size, seed=0):
    """A small noisy JPEG of `size` (noise, so truncating it cuts pixel data, not just padding)."""
    width, height = size
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=50)
    return buffer.getvalue()


def test_processor_range_is_qwens(processor):
    """The hand-worked sizes below assume the processor's own range is Qwen2.5-VL's [3136, 12845056]."""
    assert processor.image_processor.size == {"shortest_edge": 3136, "longest_edge": 12845056}
    assert data.QWEN_PIXELS == (3136, 12845056)


@pytest.mark.parametrize("size, seen, tokens", REFERENCE_SIZES, ids=[f"{w}x{h}" for (w, h), _, _ in REFERENCE_SIZES])
def test_resize_image_gives_the_size_the_reference_model_sees(processor, size, seen, tokens):
    """The policy would be trained and evaluated on other image sizes and token counts than EMO-R3's
    (a 500x375 Flickr photo at 352 tokens instead of 336) if resize_image did not follow EasyR1's
    int()-truncated square-root scaling and the processor's own rounding, or if the processor resized
    our image again (then trainer and vLLM would not see the pixels we sent)."""
    image = data.resize_image(Image.new("RGB", size, (120, 60, 30)), MIN_PIXELS, MAX_PIXELS)
    assert image.size == seen and image.mode == "RGB"
    assert data.reference_size(*size, MIN_PIXELS, MAX_PIXELS) == seen
    assert data.image_token_count(image, processor) == tokens
    grid = processor.image_processor(images=[image], return_tensors="pt")["image_grid_thw"].tolist()
    assert grid == [[1, seen[1] // 14, seen[0] // 14]] and grid[0][1] * grid[0][2] // 4 == tokens


def test_final_images_pass_only_the_processors_own_range(processor):
    """Trainer and vLLM would see different images if the engine's processor were told [min_pixels,
    max_pixels]: the reference's final sizes step outside it (3000x2000 -> 2520x1680 = 4233600 > 4194304,
    300x300 -> 504x504 = 254016 < 262144), so it would resize them again, to 2492x1652 and 532x532."""
    for size, seen, again in [((3000, 2000), (2520, 1680), (2492, 1652)), ((300, 300), (504, 504), (532, 532))]:
        image = data.resize_image(Image.new("RGB", size, (1, 2, 3)), MIN_PIXELS, MAX_PIXELS)
        own = processor.image_processor(images=[image], return_tensors="pt")["image_grid_thw"].tolist()
        assert own == [[1, seen[1] // 14, seen[0] // 14]]
        told = processor.image_processor(images=[image], size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
                                         return_tensors="pt")["image_grid_thw"].tolist()
        assert told == [[1, again[1] // 14, again[0] // 14]]


def test_overlong_rows_dropped_at_load_from_image_headers(tmp_path, processor):
    """Over-long rows would reach training (and steps be counted on them), unlike the reference's
    filter_overlong_prompts, if they were not dropped at load; and loading 100k images would take
    minutes if each were decoded to learn its size. Rows 2 and 3 cannot be decoded at all (pixel data
    cut off) but their headers give their size, so their length is known at load."""
    (tmp_path / "photo.jpg").write_bytes(jpeg((500, 375)))
    whole = jpeg((500, 375), seed=1)
    (tmp_path / "cut.jpg").write_bytes(whole[:len(whole) // 2])  # header intact, pixel data truncated
    big = jpeg((1600, 1200), seed=2)
    (tmp_path / "big.jpg").write_bytes(big[:len(big) // 3])
    with pytest.raises(OSError, match="truncated"):  # really undecodable
        Image.open(tmp_path / "cut.jpg").load()
    rows = [{"images": [name], "problem": "<image>Which emotion?", "answer": "fear"}
            for name in ("photo.jpg", "big.jpg", "cut.jpg", "photo.jpg")]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    settings = dict(template="set", labels="emoset", min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)

    dataset = data.PromptDataset(path, processor, max_prompt_length=2048, **settings)
    # the 500x375 prompt as the processor encodes it: its text tokens plus 336 image pads
    encoded = data.encode(processor, [dataset[0]])
    photo = encoded["input_ids"].shape[1]
    assert encoded["image_grid_thw"].tolist() == [[1, 448 // 14, 588 // 14]]
    text = photo - 336  # the same chat text with the image's 336 pads taken out
    # 1600x1200: 2451 image tokens (hand-worked above), over 2048 alone: dropped with its exact length
    assert dataset.dropped_long == [(f"{path}:2", text + 2451)]
    assert [row.where for row in dataset.rows] == [f"{path}:1", f"{path}:3", f"{path}:4"]
    assert len(dataset) == 3  # steps per epoch count these rows only
    with pytest.raises(data.DataError, match=f"{path}:3: cannot use image cut.jpg"):
        dataset[1]  # kept (its length fits), and fails as before only when used

    # the limit is inclusive, and the truncated row's length came from its header
    exact = data.PromptDataset(path, processor, max_prompt_length=photo, **settings)
    assert len(exact) == 3 and [where for where, _ in exact.dropped_long] == [f"{path}:2"]
    with pytest.raises(data.DataError) as error:
        data.PromptDataset(path, processor, max_prompt_length=photo - 1, **settings)
    assert str(error.value) == f"{path}: no usable rows (0 skipped, 4 over max_prompt_length={photo - 1})"
