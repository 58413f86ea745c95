"""The pictures of a run, drawn with matplotlib on its Agg backend (PNG files, no display needed):

- draw_curves: a run's training curves (curves.png) from its metrics.jsonl, in panels: the overall
  reward with validation reward and accuracy as points; accuracy and format; the two reflection scores
  (and any coherence/* key); extra reward terms of a --reward-fn; loss and KL; response length; grad norm.
- draw_arms: several runs (ablation arms) overlaid, one colour per arm, one panel per key.
- draw_confusion: a benchmark's confusion matrix (confusion.png) as a row-normalised heat map.

Which reward terms a run has comes from rewards.REWARD_KEYS and the metrics file itself, so a new term
shows up without an edit here. Per-step series with many steps are drawn as a thin raw line under a
centred moving average (the legend says so); validation values (val/*) are drawn as points.

Not here: computing metrics (train_grpo.py writes them, report.py computes a benchmark's), time/* and
other diagnostics by default (pass keys=[...] to draw them), and any interactive display.
"""

import json
import math
from pathlib import Path

import numpy as np

import rewards

DPI = 110
SMOOTH_FROM = 30  # a per-step series with at least this many points gets a moving average over its raw line

# One colour per quantity, the same in every panel (validation points share their training series' colour).
KEY_COLOURS = {
    "reward/overall": "black", "val/reward": "black",
    "reward/accuracy": "tab:red", "val/accuracy": "tab:red",
    "reward/format": "tab:blue", "val/format": "tab:blue",
    "reward/reflect_text": "tab:green", "reward/reflect_image": "tab:orange",
    "loss": "tab:purple", "kl": "tab:brown", "ppo_kl": "tab:pink",
    "response_length": "tab:cyan", "grad_norm": "tab:olive",
}
OTHER_COLOURS = ["tab:purple", "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan", "tab:blue", "tab:red"]
ARM_COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray"]
VAL_MARKERS = {"val/reward": "s", "val/accuracy": "o", "val/format": "D"}
VAL_MARKERS_BY_ARM = ["o", "s", "D", "^", "v", "P", "X", "*"]
NAMES = {  # legend and panel names; keys not listed are shown as they are logged
    "reward/overall": "overall reward", "val/reward": "validation reward",
    "reward/accuracy": "accuracy", "val/accuracy": "validation accuracy",
    "reward/format": "format", "val/format": "validation format",
    "reward/reflect_text": "emotional coherence (reflect_text)",
    "reward/reflect_image": "visual-text consistency (reflect_image)",
    "coherence/model_free": "model-free coherence",
    "loss": "policy loss", "kl": "KL to reference", "ppo_kl": "PPO KL (old to current policy)",
    "response_length": "response length", "grad_norm": "grad norm",
}


def _pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display), imported on first use: importing
    it takes a second or two, which train_grpo.py and evaluate.py would otherwise pay at every start."""
    import matplotlib
    matplotlib.use("Agg")  # before pyplot is imported
    import matplotlib.pyplot as plt
    return plt


def curve_keys(rows):
    """reward/KEY for every reward term (rewards.REWARD_KEYS first, then a --reward-fn's own), then
    val/accuracy: the reward series a run's curves show."""
    seen = {k for r in rows for k in r}
    extra = sorted(k for k in seen if k.startswith("reward/") and k[7:] not in rewards.REWARD_KEYS)
    return [f"reward/{k}" for k in rewards.REWARD_KEYS] + extra + ["val/accuracy"]


def read_metrics(metrics_file):
    """The rows of a metrics.jsonl sorted by step; a step logged twice (a resumed run) keeps its last
    row, and a line that is not JSON (a run killed mid-write) is skipped."""
    by_step = {}
    for line in Path(metrics_file).read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            by_step[row["step"]] = row
    return [by_step[s] for s in sorted(by_step)]


def _series(rows, key):
    """(steps, values) of a key's finite numeric values."""
    points = [(r["step"], r[key]) for r in rows
              if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) and math.isfinite(r[key])]
    return np.array([p[0] for p in points], dtype=float), np.array([p[1] for p in points], dtype=float)


def _name(key):
    return NAMES.get(key, key)


def _window(n):
    """The moving-average window for a series of n points (0: no smoothing)."""
    return 0 if n < SMOOTH_FROM else max(5, (n // 25) | 1)


def _moving_average(values, window):
    """A centred moving average; near the ends it averages the points the window still holds (like
    pandas' rolling(center=True, min_periods=1)), so the last value is not one noisy step."""
    kernel = np.ones(window)
    return np.convolve(values, kernel, "same") / np.convolve(np.ones_like(values), kernel, "same")


LINE_STYLES = ["-", "--", "-.", ":"]  # the i-th line of a panel, so a line drawn over an equal one still shows
SHORT_MARKERS = ["o", "x", "^", "s", "v", "+"]


def _plot(ax, steps, values, key, colour, label, index=0, point=None):
    """One series: validation as points; a per-step series as a line, thin under a moving average
    when it is long. index: the series' place among the panel's lines (sets its dash and marker);
    point: the validation marker (default: one per val/ key).
    Returns the moving-average window used (0: none)."""
    if key.startswith("val/"):
        marker = VAL_MARKERS.get(key, "o") if point is None else point
        ax.plot(steps, values, ls=":", lw=0.8, color=colour, alpha=0.6)
        ax.plot(steps, values, ls="none", marker=marker, ms=6, mfc=colour, mec="white",
                mew=0.8, color=colour, label=label, zorder=3)
        return 0
    window = _window(len(steps))
    style = LINE_STYLES[index % len(LINE_STYLES)]
    if window:
        ax.plot(steps, values, lw=0.6, color=colour, alpha=0.35)
        ax.plot(steps, _moving_average(values, window), lw=2, ls=style, color=colour, label=label)
    else:
        marker = SHORT_MARKERS[index % len(SHORT_MARKERS)] if len(steps) <= 40 else None
        ax.plot(steps, values, lw=1.6, ls=style, color=colour, label=label, marker=marker, ms=5)
    return window


def _finish(ax, ylabel, windows, score=False, legend=True):
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if score:  # rewards are scores in [0, 1] (EMO-R3's overall reaches 1.1); a --reward-fn's may go further
        low, high = ax.get_ylim()
        ax.set_ylim(min(-0.05, low), max(1.05, high))
    if ax.get_xlim()[1] - ax.get_xlim()[0] < 10:  # a short run: whole steps only
        ax.xaxis.get_major_locator().set_params(integer=True)
    if legend:
        note = f"thick: {max(windows)}-step moving average, thin: per step" if any(windows) else None
        ax.legend(fontsize=8, title=note, title_fontsize=7, loc="best", framealpha=0.85)


def _panels(rows, keys=None):
    """[(title, ylabel, is_score, [keys])] for a run's curves: the standard panels with the keys the run
    has; when keys is given, only those, and a key no standard panel holds gets a panel of its own."""
    seen = {k for r in rows for k in r}
    extra_rewards = [k for k in curve_keys(rows) if k.startswith("reward/") and k[7:] not in rewards.REWARD_KEYS]
    coherence = sorted(k for k in seen if k.startswith("coherence/"))
    val_reflection = sorted(k for k in seen if k.startswith("val/") and k[4:] in ("reflect_text", "reflect_image"))
    panels = [
        ("Overall reward and validation", "reward / accuracy", True, ["reward/overall", "val/reward", "val/accuracy"]),
        ("Accuracy and format", "score", True, ["reward/accuracy", "reward/format", "val/format"]),
        ("Reflection scores", "score", True,
         ["reward/reflect_text", "reward/reflect_image"] + coherence + val_reflection),
        ("Other reward terms", "score", True, extra_rewards),
        ("Loss and KL", "value", False, ["loss", "kl"]),
        ("Response length", "tokens", False, ["response_length"]),
        ("Gradient norm", "L2 norm (before clipping)", False, ["grad_norm"]),
    ]
    if keys is not None:
        wanted = list(dict.fromkeys(keys))
        placed = {k for _, _, _, ks in panels for k in ks}
        panels = [(t, y, s, [k for k in ks if k in wanted]) for t, y, s, ks in panels]
        panels += [(_name(k), k, k.startswith(("reward/", "val/")), [k]) for k in wanted if k not in placed]
    return [(t, y, s, [k for k in ks if len(_series(rows, k)[0])]) for t, y, s, ks in panels
            if any(len(_series(rows, k)[0]) for k in ks)]


def _grid(n, width=6.0, height=3.6, spare=False):
    """A figure with n panels, two to a row; with spare=True also the first unused cell (or None)."""
    cols = 1 if n == 1 else 2
    rows = math.ceil(n / cols)
    fig, axes = _pyplot().subplots(rows, cols, figsize=(width * cols, height * rows + 0.7), squeeze=False)
    axes = axes.ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return (fig, axes[:n], axes[n] if len(axes) > n else None) if spare else (fig, axes[:n])


def draw_curves(metrics_file, path, keys=None, title=None):
    """A run's training curves as a PNG of panels (see the module docstring). keys: only these series
    (default: the standard panels); title: the run's name (default: the metrics file's folder name).
    Returns path, or None when the file has nothing to draw."""
    rows = read_metrics(metrics_file)
    panels = _panels(rows, keys)
    if not panels:
        return None
    title = title if title is not None else Path(metrics_file).resolve().parent.name
    fig, axes = _grid(len(panels))
    other = iter(OTHER_COLOURS)
    colours = {}
    for ax, (panel_title, ylabel, score, panel_keys) in zip(axes, panels):
        windows, lines = [], 0
        for key in panel_keys:
            colour = KEY_COLOURS.get(key) or colours.setdefault(key, next(other, "tab:gray"))
            windows.append(_plot(ax, *_series(rows, key), key, colour, _name(key), lines))
            lines += not key.startswith("val/")
        ax.set_title(panel_title, fontsize=11)
        _finish(ax, ylabel, windows, score)
    last = int(max(r["step"] for r in rows))
    fig.suptitle(f"{title}: training curves ({last} steps)", fontsize=13, fontweight="bold")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path


ARM_KEYS = ("reward/accuracy", "reward/reflect_text", "reward/reflect_image", "coherence/model_free", "val/accuracy")


def draw_arms(metrics_files, path, keys=ARM_KEYS, title=""):
    """Several runs overlaid: one panel per key, one colour per arm, one legend for the figure.

    metrics_files: {arm name: its metrics.jsonl}, in the order the legend lists them. A key no arm logs
    (e.g. reflect_* in a "SET (no reflection)" arm, coherence/model_free in an old run) is left out of
    that arm's panel, and a panel no arm has data for is left out. Returns path, or None if nothing to draw."""
    runs = {name: read_metrics(f) for name, f in metrics_files.items()}
    keys = [k for k in dict.fromkeys(keys) if any(len(_series(rows, k)[0]) for rows in runs.values())]
    if not keys:
        return None
    fig, axes, spare = _grid(len(keys), width=5.4, height=3.5, spare=True)
    colours = {name: ARM_COLOURS[i % len(ARM_COLOURS)] for i, name in enumerate(runs)}
    windows = []
    for ax, key in zip(axes, keys):
        for index, (name, rows) in enumerate(runs.items()):
            steps, values = _series(rows, key)
            if len(steps):
                point = VAL_MARKERS_BY_ARM[index % len(VAL_MARKERS_BY_ARM)]
                windows.append(_plot(ax, steps, values, key, colours[name], name, index, point))
        ax.set_title(_name(key) + (" (points)" if key.startswith("val/") else ""), fontsize=11)
        _finish(ax, "score" if key.startswith(("reward/", "val/", "coherence/")) else key,
                [], score=key.startswith(("reward/", "val/", "coherence/")), legend=False)
    from matplotlib.lines import Line2D
    points = any(k.startswith("val/") for k in keys)  # the legend shows each arm's validation marker too
    handles = [Line2D([], [], color=c, lw=2.5, ls=LINE_STYLES[i % len(LINE_STYLES)], label=name, ms=7, mec="white",
                      marker=VAL_MARKERS_BY_ARM[i % len(VAL_MARKERS_BY_ARM)] if points else None)
               for i, (name, c) in enumerate(colours.items())]
    if any(windows):
        handles += [Line2D([], [], color="gray", lw=0.8, alpha=0.7, label="thin: per step"),
                    Line2D([], [], color="gray", lw=2, label=f"thick: {max(windows)}-step moving average")]
    fig.suptitle(title or "Ablation: " + " vs ".join(runs), fontsize=13, fontweight="bold")
    if spare is not None:  # the legend fills the empty cell of the grid
        spare.set_visible(True)
        spare.axis("off")
        fig.tight_layout()
        spare.legend(handles=handles, loc="center", fontsize=11, title="arms", title_fontsize=11, frameon=False)
    else:  # one legend below all panels
        legend_rows = math.ceil(len(handles) / 5)
        fig.tight_layout(rect=(0, 0.01 + 0.3 * legend_rows / fig.get_figheight(), 1, 1))
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=10, frameon=False)
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path


def draw_confusion(path, metrics, title=""):
    """The confusion matrix as a PNG heat map: colour is the row-normalised fraction (each true class's
    share of predictions), the cells hold the counts; rows are true labels, columns predictions."""
    cm = metrics["confusion_matrix"]
    rows, cols = cm["rows_true"], cm["columns_predicted"]
    counts = np.array(cm["counts"], dtype=float).reshape(len(rows), len(cols))
    totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    size = (max(5.5, 0.75 * len(cols) + 3.2), max(4.5, 0.6 * len(rows) + 2.6))
    fig, ax = _pyplot().subplots(figsize=size)
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    font = 10 if max(len(rows), len(cols)) <= 10 else 7
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=font,
                    color="white" if fractions[i, j] > 0.55 else "black")
    ax.set_xticks(range(len(cols)), cols, rotation=40, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(rows)), [f"{r} ({int(t)})" for r, t in zip(rows, totals[:, 0])])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true label (count)")
    ax.set_xticks(np.arange(len(cols) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(rows) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", lw=1)
    ax.tick_params(which="minor", length=0)
    for j, c in enumerate(cols):  # a column that is no class (evaluate.py's "(unparseable)") is set apart
        if c not in rows and (j == 0 or cols[j - 1] in rows):
            ax.axvline(j - 0.5, color="dimgray", lw=1.5, ls="--")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03, label="fraction of the true class")
    ax.set_title(title or "confusion matrix", fontsize=12, fontweight="bold")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
