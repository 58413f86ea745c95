"""Scoring and reporting under evaluate.py: what a benchmark's responses score, and the files that say so.

- `parse_answer`: a response's predicted label (the reward's last-\\boxed{} rule, R1-Omni's <answer>
  rule, or --parse lenient's fall-backs); `reasoning_coherent`: the model-free coherence of a SET response;
- `compute_metrics`: accuracy, macro-F1, per-class metrics, the confusion matrix, the format, coherence
  and --reflect rates, from prediction rows;
- `read_predictions`, `rescore`: a saved predictions.jsonl read (a bad line stops with its number) and
  scored again, no model needed (`evaluate.py --predictions FILE`);
- `write_outputs`, `write_report`: a benchmark's folder (predictions.jsonl, labels.txt, metrics.json,
  report.md, confusion.png);
- `build_table`, `check_one_run`: the paper's Table 1 from evaluate.py output folders (`--table`), refusing
  a folder whose benchmarks come from different runs.

No torch here: re-scoring and Table 1 run anywhere. Not here: generating the responses, merging a
checkpoint, the run's record and which files --overwrite may delete (evaluate.py); how a response's
format and reasoning score (rewards.py); drawing the confusion matrix (plots.py).
"""

import csv
import json
import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import rewards
from plots import draw_confusion

DOMAIN_ORDER = ["emoset", "emotion6", "webemo"]  # Table 1's column order within a block


# --- parsing and metrics (pure Python: re-scoring needs no torch) ---------------------------------

def parse_answer(response, labels, mode="boxed", template="set"):
    """The predicted label (as spelled in `labels`) or None, and the parsed text. `boxed` is exactly the
    reward's rule: the last \\boxed{}, any case; with --template r1-omni, R1-Omni's rule (the <answer>
    content, or the whole response without one, equal to a label exactly). `lenient` falls back to a
    bare label or the one label the response mentions when that rule finds no answer."""
    by_lower = {label.lower(): label for label in labels}
    if template == "r1-omni":
        found = "<answer>" in (response or "") and "</answer>" in (response or "")
        answer = rewards.r1_omni_answer(response or "")
        if found or mode == "boxed":
            return (answer if answer in labels else None), answer
    else:
        boxed = rewards.extract_boxed(rewards.normalize_whitespace(response or ""))
        if boxed != "None" or mode == "boxed":
            return by_lower.get(boxed.lower()), boxed
    bare = re.sub(r"[^\w\s-]", "", response or "").strip().lower()  # "Sadness." -> "sadness"
    if bare in by_lower:
        return by_lower[bare], bare
    mentioned = [label for label in labels if re.search(rf"\b{re.escape(label.lower())}\b", (response or "").lower())]
    return (mentioned[0], mentioned[0]) if len(mentioned) == 1 else (None, "None")


def reasoning_coherent(response, labels):
    """Model-free coherence of one SET response: its step 1-2 text names exactly one label, and that
    label is the boxed answer (rewards.reasoning_names_answer; what the coherence re-ask asks the model)."""
    return rewards.reasoning_names_answer(response or "", labels) == 1.0


def compute_metrics(rows, labels):
    """Accuracy, macro-F1, per-class metrics and the confusion matrix from prediction rows.

    rows: dicts with "label", "prediction" (a label or None), "format_ok", optional "reflect_*" and
    "reasoning_coherent" (SET responses only; its rate is over the rows that carry it).
    Classes that never occur or are never predicted still count in macro-F1 (with F1 = 0).
    """
    n = len(rows)
    columns = labels + ["(unparseable)"]
    confusion = {t: {p: 0 for p in columns} for t in labels}
    for r in rows:
        confusion[r["label"]][r["prediction"] if r["prediction"] is not None else "(unparseable)"] += 1
    per_class = {}
    for c in labels:
        tp = confusion[c][c]
        predicted = sum(confusion[t][c] for t in labels)
        support = sum(confusion[c].values())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[c] = {"precision": precision, "recall": recall, "f1": f1, "accuracy": recall, "support": support,
                        "predicted": predicted}
    correct = sum(r["prediction"] == r["label"] for r in rows)
    metrics = {
        "count": n, "labels": labels,
        "accuracy": correct / n if n else 0.0,
        "macro_f1": sum(p["f1"] for p in per_class.values()) / len(labels),
        "format_rate": sum(bool(r.get("format_ok")) for r in rows) / n if n else 0.0,
        "unparseable_rate": sum(r["prediction"] is None for r in rows) / n if n else 0.0,
        "per_class": per_class,
        "confusion_matrix": {"rows_true": labels, "columns_predicted": columns,
                             "counts": [[confusion[t][p] for p in columns] for t in labels]},
    }
    judged = [r for r in rows if r.get("reasoning_coherent") is not None]
    if judged:  # model-free: steps 1-2 name exactly one label, the boxed answer (rewards.reasoning_names_answer)
        metrics["reasoning_coherent_rate"] = sum(bool(r["reasoning_coherent"]) for r in judged) / len(judged)
    asked = [r for r in rows if r.get("reflect_text") is not None]
    if asked:  # the model judging its own reasoning
        metrics["reflect_text_matches_label"] = sum(r["reflect_text"].strip().lower() == r["label"].lower()
                                                    for r in asked) / len(asked)
        metrics["reflect_text_matches_answer"] = sum(r["prediction"] is not None
                                                     and r["reflect_text"].strip().lower() == r["prediction"].lower()
                                                     for r in asked) / len(asked)
        metrics["reflect_image_yes"] = sum("yes" in r["reflect_image"].lower() for r in asked) / len(asked)
    return metrics


def read_predictions(path):
    """The rows of a predictions.jsonl, each an object with the two fields re-scoring reads ("label",
    "response"); anything else stops with a message naming the file and line, before anything is written."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"{path}: cannot read it as a predictions file: {e}") from None
    lines = text.split("\n")  # (not splitlines: a line number must be the one an editor shows)
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            cut = (": the file is cut short (its last line is incomplete), as when the run writing it was killed "
                   "or the disk was full" if n == len(lines) else "")
            raise SystemExit(f"{path}:{n}: not valid JSON ({e.msg}, column {e.colno}){cut}") from None
        if not isinstance(row, dict):
            raise SystemExit(f"{path}:{n}: a prediction is a JSON object with \"label\" and \"response\", "
                             f"not a {type(row).__name__}")
        for key in ("label", "response"):  # the true label; the model's text, parsed again
            if not isinstance(row.get(key), str):
                got = "has none" if key not in row else f"has {json.dumps(row[key])}"
                raise SystemExit(f"{path}:{n}: the row {got} for \"{key}\"; every row needs \"label\" (the true "
                                 f"label) and \"response\" (the model's text) as strings")
        rows.append(row)
    if not rows:  # no metric of nothing (an accuracy of 0/0)
        raise SystemExit(f"{path}: holds no predictions (the file is {'empty' if not text else 'blank'})")
    return rows


def rescore(path, labels=None, parse="boxed", template="set"):
    """Recompute every metric from a predictions.jsonl (responses are parsed again)."""
    path = Path(path)
    rows = read_predictions(path)
    if labels:
        labels = rewards.load_labels(labels)
    elif (path.parent / "labels.txt").exists():
        labels = rewards.load_labels(str(path.parent / "labels.txt"))
    else:
        labels = sorted({r["label"] for r in rows})
    unknown = sorted({r["label"] for r in rows} - set(labels))
    if unknown:
        raise SystemExit(f"{path}: labels {unknown} are not in the label set {labels}")
    variant = rewards.variant_for_template(template)
    for r in rows:
        r["prediction"], r["parsed"] = parse_answer(r["response"], labels, parse, template)
        r["format_ok"] = rewards.emor3_reward(r["response"], r["label"], variant=variant)["format"] == 1.0
        r.pop("reasoning_coherent", None)  # recomputed from the response, and only for SET responses
        if template == "set":
            r["reasoning_coherent"] = reasoning_coherent(r["response"], labels)
    return rows, compute_metrics(rows, labels)


# --- outputs: report, picture, table --------------------------------------------------------------

def write_report(out, name, metrics, model):
    lines = [f"# {name}: {model}", "", f"{metrics['count']} prompts", "",
             "| metric | value |", "|---|---|"]
    for key in ("accuracy", "macro_f1", "format_rate", "unparseable_rate", "reflect_text_matches_label",
                "reflect_text_matches_answer", "reasoning_coherent_rate", "reflect_image_yes"):
        if key in metrics:
            lines.append(f"| {key} | {metrics[key]:.4f} |")
    if "reasoning_coherent_rate" in metrics:
        lines += ["", "reasoning_coherent_rate (model-free): the share of responses whose `<step1>`..`</step2>` text "
                      "names exactly one label (as a whole word, any case) and that label is the `\\boxed{}` answer"
                  + ("; reflect_text_matches_* are the model's own judgement of the same text."
                     if "reflect_text_matches_label" in metrics else ".")]
    lines += ["", "| class | precision | recall (accuracy) | F1 | support |", "|---|---|---|---|---|"]
    for c, p in metrics["per_class"].items():
        lines.append(f"| {c} | {p['precision']:.4f} | {p['recall']:.4f} | {p['f1']:.4f} | {p['support']} |")
    cm = metrics["confusion_matrix"]
    lines += ["", "Confusion matrix (rows: true label, columns: prediction)", "",
              "| | " + " | ".join(cm["columns_predicted"]) + " |", "|---" * (len(cm["columns_predicted"]) + 1) + "|"]
    lines += [f"| {t} | " + " | ".join(map(str, row)) + " |" for t, row in zip(cm["rows_true"], cm["counts"])]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def build_table(folders, out):
    """Table 1 from evaluate.py outputs: per method, per training domain, in/out-of-domain and overall means."""
    entries = {}  # method -> train domain -> dataset -> accuracy (%)
    for folder in folders:
        folder = Path(folder)
        if not (folder / "run.json").exists():
            raise SystemExit(f"{folder}: no run.json; --table takes folders written by evaluate.py")
        run = json.loads((folder / "run.json").read_text())
        if run["train_domain"] not in DOMAIN_ORDER:
            raise SystemExit(f"{folder}/run.json: train_domain {run['train_domain']!r} must be one of {DOMAIN_ORDER} "
                             f"(evaluate.py --train-domain)")
        by_dataset = entries.setdefault(run["method"], {}).setdefault(run["train_domain"], {})
        benchmarks = {path.parent.name: json.loads(path.read_text())
                      for path in sorted(folder.glob("*/metrics.json"))}
        check_one_run(folder, run, benchmarks)
        for name, metrics in benchmarks.items():
            metrics_file = folder / name / "metrics.json"
            if name not in DOMAIN_ORDER:
                raise SystemExit(f"{metrics_file}: benchmark {name!r} is not one of {DOMAIN_ORDER} "
                                 f"(name benchmarks with evaluate.py --names emoset,emotion6,webemo)")
            if name in by_dataset:
                raise SystemExit(f"{metrics_file}: a second {name} result for method {run['method']!r} trained on "
                                 f"{run['train_domain']}; give each run its own --method")
            by_dataset[name] = 100 * metrics["accuracy"]
    domains = [d for d in DOMAIN_ORDER if any(d in m for m in entries.values())]
    header, table = ["Method"], []
    for train in domains:
        header += [f"{d} ({'in' if d == train else 'out'}, trained on {train})"
                   for d in [train] + [x for x in DOMAIN_ORDER if x != train]]
    header += ["In-domain mean", "Out-of-domain mean", "Overall"]
    for method, by_train in entries.items():
        row, inside, outside = [method], [], []
        for train in domains:
            for d in [train] + [x for x in DOMAIN_ORDER if x != train]:
                value = by_train.get(train, {}).get(d)
                row.append(value)
                if value is not None:
                    (inside if d == train else outside).append(value)
        means = [sum(v) / len(v) if v else None for v in (inside, outside, inside + outside)]
        table.append(row + means)
    def fmt(v):  # half-up on the decimal value, so 50.775 prints 50.78 whatever its float error
        return "-" if v is None else str(Decimal(f"{v:.9f}").quantize(Decimal("0.01"), ROUND_HALF_UP))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join([row[0]] + [fmt(v) for v in row[1:]]) + " |" for row in table]
    (out / "table1.md").write_text("\n".join(md) + "\n")
    with open(out / "table1.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([[row[0]] + ["" if v is None else round(v, 4) for v in row[1:]] for row in table])
    return header, table


def check_one_run(folder, run, benchmarks):
    """Refuse an evaluation folder whose benchmarks (name -> metrics.json) were not all written by the run
    its run.json describes: a benchmark left by an earlier run would be credited to this run's method."""
    def source(record):
        return (f"run {record['run_id']} (method {record.get('method')!r}, model {record.get('model')})"
                if record.get("run_id") else "no run id (an evaluate.py older than run ids)")
    others = [name for name, metrics in benchmarks.items() if not run.get("run_id")
              or metrics.get("run_id") != run["run_id"]]
    if others:
        raise SystemExit(f"{folder}: its benchmarks do not all come from the run in its run.json, so its numbers "
                         f"would be credited to the wrong method. run.json: {source(run)}; "
                         + "; ".join(f"{name}/metrics.json: {source(benchmarks[name])}" for name in others)
                         + ". Evaluate again into an empty --out (or with --overwrite, which replaces every "
                           "benchmark of the folder)")


def write_outputs(out, name, rows, metrics, run):
    """A benchmark's folder; `run`: the run's id, model, method and training domain, recorded in its metrics.json."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    (out / "labels.txt").write_text("\n".join(metrics["labels"]) + "\n")
    (out / "metrics.json").write_text(json.dumps({"dataset": name, **run, **metrics}, indent=1))
    write_report(out, name, metrics, run["model"])
    draw_confusion(out / "confusion.png", metrics, f"{name}: accuracy {metrics['accuracy']:.3f}")
