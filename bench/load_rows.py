"""How fast data.PromptDataset loads a large dataset: prompt lengths come from image headers, nothing decoded.

Writes N synthetic rows to a temporary folder, as a JSONL with one JPEG file per row (and, with
--parquet, as a parquet file with the JPEG bytes inline, Hugging Face style), then times
PromptDataset construction: reading the rows, checking labels, reading each image's header, working
out the size the model sees and the prompt length (text tokens + image tokens), and dropping rows over
--max-prompt-length. Image sizes cycle through common photo sizes, one of them (1600x1200, 2451 image
tokens) over the 2048-token limit, so a quarter of the rows are dropped. For comparison, it also
times decoding the first --decode-rows images, which the load no longer does.

    .venv/bin/python bench/load_rows.py                        # 10,000 rows, the tiny model's processor
    .venv/bin/python bench/load_rows.py --rows 100000 --parquet --distinct-problems
    .venv/bin/python bench/load_rows.py --model Qwen/Qwen2.5-VL-3B-Instruct   # a real tokenizer, if cached
"""

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import data  # noqa: E402
import video  # noqa: E402

SIZES = [(500, 375), (640, 480), (1600, 1200), (375, 500)]  # the third is over 2048 prompt tokens


def jpegs():
    """One small JPEG per size (a gradient plus a little noise: realistic headers, small files)."""
    rng = np.random.default_rng(0)
    out = []
    for width, height in SIZES:
        x = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
        pixels = np.clip(x + rng.normal(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=60)
        out.append(buffer.getvalue())
    return out


def timed_load(path, processor, args):
    started = time.perf_counter()
    dataset = data.PromptDataset(path, processor, labels="emoset", max_prompt_length=args.max_prompt_length)
    return dataset, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--model", default=None, help="processor to use (default: the tiny model, built if missing)")
    parser.add_argument("--max-prompt-length", type=int, default=2048)
    parser.add_argument("--parquet", action="store_true", help="also time a parquet file with the images inline")
    parser.add_argument("--distinct-problems", action="store_true",
                        help="a different question on every row (the worst case for the text-length cache)")
    parser.add_argument("--decode-rows", type=int, default=500, help="rows to decode for the comparison (0: none)")
    args = parser.parse_args()

    from transformers import AutoProcessor
    if args.model is None:
        import tiny
        args.model = str(tiny.build_tiny_model())
    processor = AutoProcessor.from_pretrained(args.model)
    images = jpegs()
    labels = data.rewards.load_labels("emoset")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        rows = []
        started = time.perf_counter()
        for i in range(args.rows):
            name = f"images/{i:06d}.jpg"
            (tmp / name).write_bytes(images[i % len(images)])
            question = f"<image>Which emotion does this image evoke?{f' (#{i})' if args.distinct_problems else ''}"
            rows.append({"images": [name], "problem": question, "answer": labels[i % len(labels)]})
        data.write_jsonl(tmp / "train.jsonl", rows)
        print(f"wrote {args.rows} rows and JPEGs in {time.perf_counter() - started:.1f} s "
              f"(image sizes {', '.join(f'{w}x{h}' for w, h in SIZES)}, cycled)")

        results = {}
        layouts = [("jsonl + JPEG files", tmp / "train.jsonl")]
        if args.parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq
            for row, i in zip(rows, range(len(rows))):
                row["images"] = {"bytes": images[i % len(images)], "path": None}
            pq.write_table(pa.Table.from_pylist(rows), tmp / "train.parquet")
            layouts.append(("parquet, inline bytes", tmp / "train.parquet"))
        for layout, path in layouts:
            dataset, seconds = timed_load(path, processor, args)
            results[layout] = {"rows": args.rows, "kept": len(dataset), "dropped_long": len(dataset.dropped_long),
                               "seconds": round(seconds, 3), "rows_per_s": round(args.rows / seconds)}
            print(f"{layout}: loaded {args.rows} rows in {seconds:.2f} s = {args.rows / seconds:,.0f} rows/s "
                  f"({len(dataset)} kept, {len(dataset.dropped_long)} over {args.max_prompt_length} tokens dropped)")
        if args.decode_rows:
            count = min(args.decode_rows, args.rows)
            started = time.perf_counter()
            for i in range(count):
                video.open_image(f"images/{i:06d}.jpg", tmp)
            seconds = time.perf_counter() - started
            results["decode (for comparison)"] = {"rows": count, "rows_per_s": round(count / seconds)}
            print(f"for comparison, decoding {count} of these images: {count / seconds:,.0f} rows/s")
        print(json.dumps({"model": args.model, "distinct_problems": args.distinct_problems, **results}))


if __name__ == "__main__":
    main()
