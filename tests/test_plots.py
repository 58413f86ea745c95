"""plots.py on synthetic metrics: the curves, the ablation arms and the confusion matrix are written as
real PNGs; nothing to draw gives None. No model, no GPU; a few seconds."""

import json
import math

from PIL import Image

import plots


def write_metrics(path, steps=40, reflect=True, speed=1.0):
    """A metrics.jsonl like train_grpo.py's: per-step rewards and diagnostics, val/* every 10 steps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for s in range(1, steps + 1):
            p = 1 - math.exp(-s * speed / 15)
            row = {"step": s, "reward/overall": 0.3 + 0.6 * p, "reward/accuracy": 0.25 + 0.6 * p,
                   "reward/format": 0.8 + 0.2 * p, "loss": 0.01 * math.sin(s), "kl": 0.001 * s,
                   "grad_norm": 0.3, "lr": 1e-6, "response_length": 150 - 20 * p, "time/step": 12.0,
                   "coherence/model_free": 0.3 + 0.5 * p}
            if reflect:
                row.update({"reward/reflect_text": 0.4 + 0.5 * p, "reward/reflect_image": 0.6 + 0.3 * p})
            if s % 10 == 0:
                row.update({"val/accuracy": 0.25 + 0.5 * p, "val/reward": 0.3 + 0.55 * p, "val/format": 1.0})
            f.write(json.dumps(row) + "\n")
    return path


def assert_png(path, min_width=500, min_height=350):
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.width >= min_width and image.height >= min_height, image.size
        assert len(set(image.convert("RGB").resize((200, 200)).getdata())) > 20  # far from blank


def test_curves_are_a_png(tmp_path):
    metrics = write_metrics(tmp_path / "my-run" / "metrics.jsonl")
    with open(metrics, "a") as f:  # a run killed mid-write: the torn last line is skipped
        f.write('{"step": 41, "reward/ov')
    out = tmp_path / "curves.png"
    assert plots.draw_curves(metrics, out) == out
    assert_png(out, 1000, 900)  # six panels, two to a row
    titles = [t for t, *_ in plots._panels(plots.read_metrics(metrics))]
    assert titles == ["Overall reward and validation", "Accuracy and format", "Reflection scores", "Loss and KL",
                      "Response length", "Gradient norm"]
    # only the keys asked for; a key no standard panel holds gets its own
    assert plots.draw_curves(metrics, tmp_path / "some.png", keys=["reward/accuracy", "time/step"], title="x")
    assert [p[3] for p in plots._panels(plots.read_metrics(metrics), ["reward/accuracy", "time/step"])] == \
        [["reward/accuracy"], ["time/step"]]


def test_curves_of_a_short_run_and_nothing_to_draw(tmp_path):
    short = write_metrics(tmp_path / "short" / "metrics.jsonl", steps=2)
    assert plots.draw_curves(short, tmp_path / "short.png") == tmp_path / "short.png"
    assert_png(tmp_path / "short.png")
    empty = tmp_path / "empty" / "metrics.jsonl"
    empty.parent.mkdir()
    empty.write_text(json.dumps({"step": 1, "time/step": 3.0, "reward/overall": float("nan")}) + "\n")
    assert plots.draw_curves(empty, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    empty.write_text("")
    assert plots.draw_curves(empty, tmp_path / "none.png") is None


def test_arms(tmp_path):
    files = {"SET (no reflection)": write_metrics(tmp_path / "set" / "metrics.jsonl", reflect=False, speed=0.8),
             "SET + coherence": write_metrics(tmp_path / "coh" / "metrics.jsonl", speed=0.9),
             "EMO-R3": write_metrics(tmp_path / "emo" / "metrics.jsonl", steps=30, speed=1.1)}
    out = tmp_path / "arms.png"
    assert plots.draw_arms(files, out, title="ablation") == out
    assert_png(out, 1000, 900)  # five panels and the legend in the sixth cell
    four = tmp_path / "arms4.png"
    assert plots.draw_arms(files, four, keys=("reward/accuracy", "val/accuracy")) == four
    assert_png(four)
    assert plots.draw_arms(files, tmp_path / "none.png", keys=("reward/nothing",)) is None


def test_confusion_matrix(tmp_path):
    labels = ["amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness"]
    counts = [[(30 if i == j else (i + j) % 4) for j in range(len(labels) + 1)] for i in range(len(labels))]
    counts[2] = [0] * (len(labels) + 1)  # a class with no rows
    confusion = {"rows_true": labels, "columns_predicted": labels + ["(unparseable)"], "counts": counts}
    metrics = {"accuracy": 0.7, "confusion_matrix": confusion}
    out = tmp_path / "confusion.png"
    plots.draw_confusion(out, metrics, "emoset: accuracy 0.700")
    assert_png(out, 700, 500)


def test_moving_average_is_centred():
    import numpy as np
    values = np.array([0.0, 1.0, 5.0, 2.0, 4.0, 3.0, 6.0])
    smooth = plots._moving_average(values, 5)
    assert np.isclose(smooth[3], values[1:6].mean())  # centred inside
    assert np.isclose(smooth[0], values[:3].mean()) and np.isclose(smooth[-1], values[-3:].mean())  # the ends
    assert np.allclose(plots._moving_average(np.full(9, 0.5), 5), 0.5)
