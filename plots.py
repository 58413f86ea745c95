"""The pictures of a run: training curves (curves.png) and a benchmark's confusion matrix (confusion.png).

Drawn with PIL, no plotting library. Which series a run has comes from rewards.REWARD_KEYS and the
metrics file itself, so a new reward term shows up without an edit here. Not here: the metrics
(train_grpo.py writes them, evaluate.py computes a benchmark's).
"""

import json
from pathlib import Path

import rewards


def draw_confusion(path, metrics, title=""):
    """The confusion matrix as a PNG heat map (row-normalised shade, counts written in the cells)."""
    from PIL import Image, ImageDraw, ImageFont
    cm = metrics["confusion_matrix"]
    rows, cols, counts = cm["rows_true"], cm["columns_predicted"], cm["counts"]
    font = ImageFont.load_default()
    cell, left, top = 56, 12 + 7 * max(len(r) for r in rows), 40 + 7 * max(len(c) for c in cols)
    image = Image.new("RGB", (left + cell * len(cols) + 12, top + cell * len(rows) + 30), "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 6), title + "  (rows: true, columns: predicted)", fill="black", font=font)
    for j, c in enumerate(cols):  # column labels, rotated to read bottom-up
        label = Image.new("RGB", (7 * len(c) + 4, 12), "white")
        ImageDraw.Draw(label).text((2, 0), c, fill="black", font=font)
        label = label.rotate(90, expand=True)
        image.paste(label, (left + j * cell + cell // 2 - 6, top - 4 - label.height))
    for i, (r, row) in enumerate(zip(rows, counts)):
        draw.text((8, top + i * cell + cell // 2 - 5), r, fill="black", font=font)
        total = max(sum(row), 1)
        for j, value in enumerate(row):
            shade = int(255 * (1 - value / total))
            box = [left + j * cell, top + i * cell, left + (j + 1) * cell - 1, top + (i + 1) * cell - 1]
            draw.rectangle(box, fill=(shade, shade, 255), outline="grey")
            draw.text((box[0] + 6, box[1] + cell // 2 - 5), str(value), fill="black" if shade > 110 else "white", font=font)
    image.save(path)


CURVE_COLOURS = [(0, 0, 0), (214, 39, 40), (31, 119, 180), (44, 160, 44), (255, 127, 14), (148, 103, 189)]


def curve_keys(rows):
    """reward/KEY for every reward term (rewards.REWARD_KEYS first, then a --reward-fn's own), then
    val/accuracy: the series a run's curves show."""
    seen = {k for r in rows for k in r}
    extra = sorted(k for k in seen if k.startswith("reward/") and k[7:] not in rewards.REWARD_KEYS)
    return [f"reward/{k}" for k in rewards.REWARD_KEYS] + extra + ["val/accuracy"]


def draw_curves(metrics_file, path, keys=None):
    """Training curves (reward and its components per step, validation accuracy) as a PNG line chart."""
    from PIL import Image, ImageDraw, ImageFont
    rows = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]
    keys = keys or curve_keys(rows)
    series = {k: [(r["step"], r[k]) for r in rows if k in r] for k in keys}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    font = ImageFont.load_default()
    width, height, left, top, bottom = 720, 420, 50, 20, 40
    plot_w, plot_h = width - left - 170, height - top - bottom
    last_step = max(step for v in series.values() for step, _ in v)
    high = max(1.0, max(value for v in series.values() for _, value in v))  # EMO-R3's reward reaches 1.1
    x = lambda step: left + plot_w * (step - 1) / max(1, last_step - 1)  # noqa: E731
    y = lambda value: top + plot_h * (1 - value / high)  # noqa: E731
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for tick in range(0, int(high * 10) + 1, 2):  # horizontal grid every 0.2
        draw.line([(left, y(tick / 10)), (left + plot_w, y(tick / 10))], fill=(225, 225, 225))
        draw.text((8, y(tick / 10) - 5), f"{tick / 10:.1f}", fill="black", font=font)
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
    draw.text((left, height - 28), f"step 1 .. {last_step}", fill="black", font=font)
    for i, (key, points) in enumerate(series.items()):
        colour = CURVE_COLOURS[i % len(CURVE_COLOURS)]
        coords = [(x(step), y(value)) for step, value in points]
        if len(coords) > 1:
            draw.line(coords, fill=colour, width=2)
        for cx, cy in coords if len(coords) < 40 else []:
            draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=colour)
        draw.line([(left + plot_w + 12, top + 14 * i + 6), (left + plot_w + 30, top + 14 * i + 6)], fill=colour, width=3)
        draw.text((left + plot_w + 36, top + 14 * i), key, fill="black", font=font)
    image.save(path)
    return path
