"""Tests for report.py and evaluate.py without a model: re-scoring a hand-written predictions file, and Table 1 rebuilt
from the paper's own numbers (METHOD.md, "Paper results"). Every expected
value is worked out by hand in the comment beside it."""

import csv
import json
from pathlib import Path

import pytest

import evaluate
import report

LABELS = ["anger", "fear", "joy", "sadness"]


def set_response(answer_tail):
    """A full SET response whose steps mention no label word, ending with `answer_tail`."""
    return ("<step1>A person stands in a dark street.</step1>\n"
            "<step2>Viewers would feel uneasy.</step2>\n"
            "<step3>Negative valence, high arousal.</step3>\n" + answer_tail)


# id, true label, response -> what the boxed rule should make of it (worked out by hand)
ROWS = [
    (1, "anger", set_response("\\boxed{anger}")),  # correct; format ok
    (2, "anger", set_response("\\boxed{fear}")),  # wrong (fear); format ok
    (3, "anger", "\\boxed{anger}"),  # correct; no steps -> format fails
    (4, "fear", set_response("\\boxed{Fear}")),  # correct despite the capital; format ok
    (5, "fear", set_response("The answer is \\boxed{fear}.")),  # correct; format ok
    (6, "fear", set_response("The answer is fear.")),  # no \boxed: unparseable; format fails
    (7, "fear", set_response("\\boxed{anger}")),  # wrong (anger); format ok
    (8, "sadness", set_response("\\boxed{joy}")),  # wrong (joy, never a true label); format ok
    (9, "sadness", set_response("\\boxed{surprise}")),  # outside the label set: unparseable; format ok
    (10, "sadness", "< step1 >a</ step1 >< step2 >b</step2 ><step3>c</step3>\\boxed{ JOY }"),  # joy after
    # whitespace normalisation and the strip inside \boxed{}; format ok after normalisation
]
# sadness is a true label (3 rows) but never predicted; joy is predicted (2 rows) but never true.


def write_predictions(folder, rows=ROWS, labels=LABELS):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "predictions.jsonl"
    path.write_text("".join(json.dumps({"id": i, "label": y, "response": r}) + "\n" for i, y, r in rows))
    if labels is not None:
        (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    return path


def check_hand_metrics(metrics):
    """The metrics of ROWS over LABELS, as computed by hand."""
    assert metrics["count"] == 10
    assert metrics["labels"] == LABELS
    assert metrics["accuracy"] == pytest.approx(0.4, abs=1e-12)  # rows 1, 3, 4, 5 correct: 4/10
    # row 6 (no \boxed) and row 9 (\boxed{surprise}): 2/10
    assert metrics["unparseable_rate"] == pytest.approx(0.2, abs=1e-12)
    # rows 3 (no steps) and 6 (no \boxed) fail the SET layout: 8/10
    assert metrics["format_rate"] == pytest.approx(0.8, abs=1e-12)
    # no row's steps 1-2 name a label (row 10's spaced tags give no step text; row 6 names fear after step 3)
    assert metrics["reasoning_coherent_rate"] == 0.0
    cm = metrics["confusion_matrix"]
    assert cm["rows_true"] == LABELS
    assert cm["columns_predicted"] == LABELS + ["(unparseable)"]
    assert cm["counts"] == [
        # anger fear joy sadness (unparseable)
        [2, 1, 0, 0, 0],  # anger: rows 1, 3 -> anger; row 2 -> fear
        [1, 2, 0, 0, 1],  # fear: row 7 -> anger; rows 4, 5 -> fear; row 6 unparseable
        [0, 0, 0, 0, 0],  # joy: never a true label
        [0, 0, 2, 0, 1],  # sadness: rows 8, 10 -> joy; row 9 (surprise) unparseable
    ]
    pc = metrics["per_class"]
    # anger: tp 2, predicted 3 (rows 1, 3, 7), support 3 -> P = R = 2/3, F1 = 2/3
    # fear: tp 2, predicted 3 (rows 2, 4, 5), support 4 -> P = 2/3, R = 1/2, F1 = 2*(1/3)/(7/6) = 4/7
    # joy: tp 0, predicted 2, support 0 -> P = R = F1 = 0
    # sadness: tp 0, predicted 0, support 3 -> P = R = F1 = 0
    expected = {"anger": (2 / 3, 2 / 3, 2 / 3, 3, 3), "fear": (2 / 3, 1 / 2, 4 / 7, 4, 3),
                "joy": (0.0, 0.0, 0.0, 0, 2), "sadness": (0.0, 0.0, 0.0, 3, 0)}
    assert list(pc) == LABELS
    for label, (precision, recall, f1, support, predicted) in expected.items():
        got = pc[label]
        assert got["precision"] == pytest.approx(precision, abs=1e-12), label
        assert got["recall"] == pytest.approx(recall, abs=1e-12), label
        assert got["accuracy"] == pytest.approx(recall, abs=1e-12), label  # per-class accuracy = recall
        assert got["f1"] == pytest.approx(f1, abs=1e-12), label
        assert (got["support"], got["predicted"]) == (support, predicted), label
    # mean over all four labels, the two F1 = 0 classes included: (2/3 + 4/7 + 0 + 0)/4 = (26/21)/4 = 13/42
    assert metrics["macro_f1"] == pytest.approx(13 / 42, abs=1e-12)


def test_rescore_hand_written_predictions(tmp_path):
    """Re-scored metrics would disagree with a hand count (accuracy, macro-F1 over unseen classes,
    per-class numbers, confusion matrix, format and unparseable rates) if this failed."""
    rows, metrics = report.rescore(write_predictions(tmp_path / "emotion6"))
    check_hand_metrics(metrics)
    assert [r["prediction"] for r in rows] == [
        "anger", "fear", "anger", "fear", "fear", None, "anger", "joy", None, "joy"]
    assert [r["format_ok"] for r in rows] == [True, True, False, True, True, False, True, True, True, True]
    assert rows[8]["parsed"] == "surprise"  # the out-of-set answer is kept as written, for reading


def test_rescore_cli_writes_metrics_beside_the_file(tmp_path):
    """`evaluate.py --predictions FILE` would not re-score or would not save metrics.rescored.json if this failed."""
    path = write_predictions(tmp_path / "emotion6")
    returned = evaluate.main(["--predictions", str(path)])
    saved = json.loads((tmp_path / "emotion6" / "metrics.rescored.json").read_text())
    check_hand_metrics(saved)
    check_hand_metrics(returned)


def test_labels_argument_overrides_labels_txt(tmp_path):
    """An explicit label set would be ignored in favour of labels.txt if this failed."""
    path = write_predictions(tmp_path / "emotion6")
    five = tmp_path / "five.txt"
    five.write_text("anger\nfear\njoy\nsadness\nsurprise\n")
    for metrics in (report.rescore(path, labels=str(five))[1],
                    evaluate.main(["--predictions", str(path), "--labels", str(five)])):
        assert metrics["labels"] == LABELS + ["surprise"]
        # row 9's \boxed{surprise} is now a (wrong) prediction: only row 6 is unparseable, 1/10
        assert metrics["unparseable_rate"] == pytest.approx(0.1, abs=1e-12)
        assert metrics["accuracy"] == pytest.approx(0.4, abs=1e-12)  # still rows 1, 3, 4, 5
        assert metrics["confusion_matrix"]["counts"][3] == [0, 0, 2, 0, 1, 0]  # sadness: 2 joy, 1 surprise
        assert metrics["per_class"]["surprise"]["predicted"] == 1
        assert metrics["per_class"]["surprise"]["support"] == 0
        # (2/3 + 4/7 + 0 + 0 + 0)/5 = (26/21)/5 = 26/105
        assert metrics["macro_f1"] == pytest.approx(26 / 105, abs=1e-12)


def test_without_labels_txt_the_true_labels_are_the_label_set(tmp_path):
    """Re-scoring a predictions file with no labels.txt beside it would use a wrong label set if this failed."""
    _, metrics = report.rescore(write_predictions(tmp_path / "x", labels=None))
    assert metrics["labels"] == ["anger", "fear", "sadness"]  # sorted distinct true labels; joy is absent
    # joy is out of set now, so rows 8 and 10 are unparseable too: rows 6, 8, 9, 10 -> 4/10
    assert metrics["unparseable_rate"] == pytest.approx(0.4, abs=1e-12)
    assert metrics["accuracy"] == pytest.approx(0.4, abs=1e-12)
    assert metrics["confusion_matrix"]["counts"] == [[2, 1, 0, 0], [1, 2, 0, 1], [0, 0, 0, 3]]
    # anger and fear as before, sadness 0: (2/3 + 4/7 + 0)/3 = (26/21)/3 = 26/63
    assert metrics["macro_f1"] == pytest.approx(26 / 63, abs=1e-12)


def test_true_label_outside_label_set_stops_with_its_name(tmp_path):
    """A row with a label outside the label set would be miscounted silently instead of stopping if this failed."""
    path = write_predictions(tmp_path / "x", rows=ROWS + [(11, "disgust", set_response("\\boxed{disgust}"))])
    with pytest.raises(SystemExit, match="disgust"):
        report.rescore(path)


def snapshot(folder):
    """Every file under `folder` with its bytes: what a refused command must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


GOOD_LINE = json.dumps({"id": 1, "label": "fear", "response": set_response("\\boxed{fear}")})
# a predictions file as a user may meet it -> its labels.txt?, the start of the message (PATH: the file)
BROKEN_PREDICTIONS = {
    # a run killed while writing: the last line stops mid-object, with no newline
    "cut short": (GOOD_LINE + "\n" + GOOD_LINE + "\n" + GOOD_LINE[:40], True, "PATH:3: not valid JSON"),
    "no label": (GOOD_LINE + "\n" + json.dumps({"id": 2, "response": "\\boxed{fear}"}) + "\n", True,
                 'PATH:2: the row has none for "label"'),
    "label null": (GOOD_LINE + "\n\n" + json.dumps({"id": 2, "label": None, "response": "x"}) + "\n", True,
                   'PATH:3: the row has null for "label"'),  # line 3: the blank line 2 counts, as in an editor
    "not an object": (GOOD_LINE + "\n[1, 2]\n", True, "PATH:2: a prediction is a JSON object"),
    "empty": ("", False, "PATH: holds no predictions (the file is empty)"),
    "blank": ("\n \n", True, "PATH: holds no predictions (the file is blank)"),
}


@pytest.mark.parametrize("case", BROKEN_PREDICTIONS)
def test_rescoring_a_broken_predictions_file_names_file_and_line(tmp_path, case):
    """`evaluate.py --predictions FILE` on a file cut short, a row without its label or an empty file would
    end in a JSONDecodeError, KeyError or ZeroDivisionError traceback (or write the metrics of no rows)
    instead of a sentence naming the file and line, and must change nothing on disk."""
    text, with_labels, message = BROKEN_PREDICTIONS[case]
    path = write_predictions(tmp_path / "emotion6", rows=[], labels=LABELS if with_labels else None)
    path.write_text(text)
    (tmp_path / "emotion6" / "metrics.rescored.json").write_text('{"from": "an earlier re-score"}')
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as stop:  # main() as the command line runs it: SystemExit is the message
        evaluate.main(["--predictions", str(path)])
    assert str(stop.value.code).startswith(message.replace("PATH", str(path))), stop.value.code
    if case == "cut short":
        assert "cut short" in str(stop.value.code)
    assert snapshot(tmp_path) == before


def test_lenient_parse_reads_a_bare_label():
    """Zero-shot baselines that answer without \\boxed{} would be scored wrongly if this failed."""
    parse = report.parse_answer
    assert parse("Sadness.", LABELS, "lenient")[0] == "sadness"  # the whole answer, punctuation dropped
    assert parse("Sadness.", LABELS, "boxed")[0] is None  # the reward's rule needs \boxed{}
    assert parse("I think it is fear", LABELS, "lenient")[0] == "fear"  # exactly one label mentioned
    assert parse("fear or joy", LABELS, "lenient")[0] is None  # two labels mentioned: no answer
    assert parse("I feel fearful", LABELS, "lenient")[0] is None  # whole words only
    assert parse("it looks like joy, but \\boxed{Fear}", LABELS, "lenient")[0] == "fear"  # boxed wins
    assert parse("it looks like joy, \\boxed{surprise}", LABELS, "lenient")[0] is None  # out-of-set boxed wins too


# R1-Omni responses (--template r1-omni), scored by hand with its rules: the first one-line
# <answer>..</answer>, stripped, or the whole stripped response, equal to a label exactly
R1_ROWS = [
    (1, "anger", "<think>He shouts.</think>\n<answer>anger</answer>"),  # correct; format ok
    (2, "anger", "<think>He shouts.</think> <answer> fear </answer>"),  # fear (stripped); format ok
    (3, "fear", "<think>x</think><answer>Fear</answer>"),  # "Fear" is no label (case counts); format ok
    (4, "fear", "fear"),  # no tags: the whole response, fear, correct; format fails
    (5, "sadness", "<think>x</think><answer>\nsadness\n</answer>"),  # no one-line answer: unparseable; format ok
    (6, "sadness", "<think>x</think><answer>sadness</answer> Done."),  # sadness; text after it: format fails
]


def test_rescore_r1_omni(tmp_path):
    """The R1-Omni arm's accuracy and format rate would not be R1-Omni's rules if this failed."""
    rows, metrics = report.rescore(write_predictions(tmp_path / "r1", R1_ROWS), template="r1-omni")
    assert [r["prediction"] for r in rows] == ["anger", "fear", None, "fear", None, "sadness"]
    assert metrics["accuracy"] == pytest.approx(3 / 6, abs=1e-12)  # rows 1, 4, 6
    assert metrics["format_rate"] == pytest.approx(4 / 6, abs=1e-12)  # rows 1, 2, 3, 5
    assert metrics["unparseable_rate"] == pytest.approx(2 / 6, abs=1e-12)  # rows 3, 5
    assert "reasoning_coherent_rate" not in metrics  # a SET-only measure
    # lenient: only where no <answer>..</answer> exists does it fall back, so row 5 (a tagged answer over
    # lines) stays unparseable and a tagged "Fear" stays wrong
    assert report.parse_answer("It is fear.", LABELS, "lenient", "r1-omni")[0] == "fear"
    assert report.parse_answer(R1_ROWS[2][2], LABELS, "lenient", "r1-omni")[0] is None


def test_table_names_the_arm():
    """Two arms evaluated from folders of the same name would merge into one Table row if this failed."""
    cfg = evaluate.Config(model="runs/final/", template="r1-omni")
    assert evaluate.default_method(cfg) == "final [r1-omni]"
    assert evaluate.default_method(evaluate.Config(model="runs/final")) == "final"


def test_rescore_lenient(tmp_path):
    """`--parse lenient` would not reach re-scoring if this failed."""
    path = write_predictions(tmp_path / "x")
    metrics = evaluate.main(["--predictions", str(path), "--parse", "lenient"])
    # row 6 ("The answer is fear.", steps name no label) now reads as fear: rows 1, 3, 4, 5, 6 -> 5/10
    assert metrics["accuracy"] == pytest.approx(0.5, abs=1e-12)
    assert metrics["unparseable_rate"] == pytest.approx(0.1, abs=1e-12)  # row 9 only (boxed surprise)
    assert metrics["format_rate"] == pytest.approx(0.8, abs=1e-12)  # the format rule does not change


# --- Table 1 from the paper's own numbers ----------------------------------------------------------

# METHOD.md, "Paper results" (Table 1): trained on EmoSet -> (EmoSet in, Emotion6, WebEmo);
# trained on Emotion6 -> (Emotion6 in, EmoSet, WebEmo); then the paper's Overall.
PAPER = {
    "Zero-shot": ((51.55, 50.00, 40.65), (50.00, 51.55, 40.65), "47.40"),
    "SFT": ((77.15, 34.51, 17.75), (69.53, 26.45, 37.65), "43.84"),
    "GRPO n=4": ((74.60, 60.10, 49.50), (70.88, 59.90, 44.85), "59.97"),
    "DAPO n=4": ((68.99, 56.90, 49.80), (68.56, 59.95, 45.50), "58.28"),
    "EMO-R3 n=4": ((75.50, 60.44, 50.45), (70.71, 60.70, 45.20), "60.50"),
    "GRPO n=8": ((75.45, 57.91, 49.40), (69.87, 60.30, 42.05), "59.16"),
    "DAPO n=8": ((70.21, 55.72, 48.80), (62.39, 58.05, 46.30), "56.91"),
    "EMO-R3 n=8": ((76.40, 59.26, 49.70), (71.72, 61.80, 43.65), "60.42"),
}
# In-domain mean = (EmoSet-trained EmoSet + Emotion6-trained Emotion6)/2; out-of-domain mean = the other four / 4;
# Overall = all six / 6.
HAND_MEANS = {
    "Zero-shot": (50.775, 45.7125, 47.40),  # (51.55+50.00)/2; (50.00+40.65+51.55+40.65)/4 = 182.85/4; 284.40/6
    "SFT": (73.34, 29.09, 43.84),  # 146.68/2; (34.51+17.75+26.45+37.65)/4 = 116.36/4; 263.04/6
    "GRPO n=4": (72.74, 53.5875, 359.83 / 6),  # 145.48/2; (60.10+49.50+59.90+44.85)/4 = 214.35/4; 59.9716..
    "DAPO n=4": (68.775, 53.0375, 349.70 / 6),  # 137.55/2; (56.90+49.80+59.95+45.50)/4 = 212.15/4; 58.2833..
    "EMO-R3 n=4": (73.105, 54.1975, 60.50),  # 146.21/2; (60.44+50.45+60.70+45.20)/4 = 216.79/4; 363.00/6
    "GRPO n=8": (72.66, 52.415, 354.98 / 6),  # 145.32/2; (57.91+49.40+60.30+42.05)/4 = 209.66/4; 59.1633..
    "DAPO n=8": (66.30, 52.2175, 341.47 / 6),  # 132.60/2; (55.72+48.80+58.05+46.30)/4 = 208.87/4; 56.9116..
    "EMO-R3 n=8": (74.06, 53.6025, 362.53 / 6),  # 148.12/2; (59.26+49.70+61.80+43.65)/4 = 214.41/4; 60.4216..
}
# table1.csv keeps 4 decimals (round(v, 4)); the in/out-of-domain means above need no more, Overall does:
CSV_OVERALL = {"Zero-shot": 47.40, "SFT": 43.84, "GRPO n=4": 59.9717, "DAPO n=4": 58.2833, "EMO-R3 n=4": 60.50,
               "GRPO n=8": 59.1633, "DAPO n=8": 56.9117, "EMO-R3 n=8": 60.4217}
HEADER = ["Method",
          "emoset (in, trained on emoset)", "emotion6 (out, trained on emoset)", "webemo (out, trained on emoset)",
          "emotion6 (in, trained on emotion6)", "emoset (out, trained on emotion6)",
          "webemo (out, trained on emotion6)",
          "In-domain mean", "Out-of-domain mean", "Overall"]


def write_fake_runs(root):
    """Two evaluate.py output folders per method, holding only what build_table reads."""
    folders = []
    for k, (method, (on_emoset, on_emotion6, _)) in enumerate(PAPER.items()):
        for train, values in (("emoset", dict(zip(["emoset", "emotion6", "webemo"], on_emoset))),
                              ("emotion6", dict(zip(["emotion6", "emoset", "webemo"], on_emotion6)))):
            folder = root / f"run{k}-{train}"
            folder.mkdir(parents=True)
            run = {"run_id": f"run{k}-{train}", "method": method, "train_domain": train}
            (folder / "run.json").write_text(json.dumps(run))
            for dataset, value in values.items():
                (folder / dataset).mkdir()
                (folder / dataset / "metrics.json").write_text(json.dumps({**run, "accuracy": value / 100}))
            folders.append(str(folder))
    return folders


def check_table(out):
    md = (out / "table1.md").read_text().splitlines()
    assert md[0] == "| " + " | ".join(HEADER) + " |"
    cells = {line.split(" | ")[0].lstrip("| "): [c.strip(" |") for c in line.split(" | ")[1:]] for line in md[2:]}
    assert list(cells) == list(PAPER)
    with open(out / "table1.csv", newline="") as f:
        csv_rows = list(csv.reader(f))
    assert csv_rows[0] == HEADER
    assert [r[0] for r in csv_rows[1:]] == list(PAPER)
    for row in csv_rows[1:]:
        method = row[0]
        on_emoset, on_emotion6, overall_text = PAPER[method]
        # each paper number lands in its own column, as the paper prints it
        assert cells[method][:6] == [f"{v:.2f}" for v in on_emoset + on_emotion6], method
        assert cells[method][8] == overall_text, method  # the paper's Overall, to the printed two decimals
        values = [float(v) for v in row[1:]]
        assert values[:6] == pytest.approx(list(on_emoset + on_emotion6), abs=1e-9), method
        in_mean, out_mean, _ = HAND_MEANS[method]
        assert values[6:] == pytest.approx([in_mean, out_mean, CSV_OVERALL[method]], abs=1e-9), method


def test_table_reproduces_paper_means(tmp_path):
    """Table 1 would put numbers in the wrong columns or average the wrong ones if the paper's own
    per-dataset accuracies did not give back its Overall column and the hand in/out-of-domain means."""
    folders = write_fake_runs(tmp_path / "eval")
    header, table = report.build_table(folders, tmp_path / "table")
    assert header == HEADER
    for row in table:
        assert row[7:] == pytest.approx(list(HAND_MEANS[row[0]]), abs=1e-9), row[0]
    check_table(tmp_path / "table")


def test_table_cli(tmp_path):
    """`evaluate.py --table FOLDERS --out DIR` would not build Table 1 if this failed."""
    folders = write_fake_runs(tmp_path / "eval")
    evaluate.main(["--table", ",".join(folders), "--out", str(tmp_path / "table")])
    check_table(tmp_path / "table")


def test_table_refuses_a_folder_whose_benchmarks_come_from_other_runs(tmp_path):
    """Table 1 would credit a benchmark left in a folder by another run (another method, evaluated there
    before) to the method in the folder's run.json, in its column and in the means, if --table did not
    refuse a folder whose benchmarks' run ids differ from its run.json's, naming each."""
    folders = write_fake_runs(tmp_path / "eval")
    mixed = Path(folders[0])  # Zero-shot trained on emoset; its emotion6 now from a SFT run
    (mixed / "emotion6" / "metrics.json").write_text(json.dumps({"run_id": "run1-emoset", "method": "SFT",
                                                                  "model": "sft-3b", "accuracy": 0.9}))
    (mixed / "webemo" / "metrics.json").write_text(json.dumps({"accuracy": 0.9}))  # no run id: cannot tell
    with pytest.raises(SystemExit) as stop:
        evaluate.main(["--table", ",".join(folders), "--out", str(tmp_path / "table")])
    message = str(stop.value.code)
    assert message.startswith(f"{mixed}: its benchmarks do not all come from the run in its run.json"), message
    assert "run.json: run run0-emoset (method 'Zero-shot'" in message, message
    assert "emotion6/metrics.json: run run1-emoset (method 'SFT', model sft-3b)" in message, message
    assert "webemo/metrics.json: no run id" in message, message
    assert message.count("/metrics.json:") == 2, message  # emoset, the run's own, is not named
    assert not (tmp_path / "table").exists()  # no table1.md of the mixed folder


# --- model-free coherence rate --------------------------------------------------------------------

def steps(step12, answer):
    """A SET response whose steps 1-2 read `step12` (step 3 names joy, which must not count)."""
    return f"<step1>{step12}</step1>\n<step2>Viewers react.</step2>\n<step3>Not joy.</step3>\n\\boxed{{{answer}}}"


# id, true label, response, stale "reasoning_coherent" from an older file -> coherent? (judged by hand)
COHERENCE_ROWS = [
    (1, "anger", steps("He shouts in anger.", "anger"), False),  # names anger only, boxed anger: yes
    (2, "anger", steps("He shouts in ANGER.", "fear"), True),  # names anger, boxed fear: no
    (3, "fear", steps("Fear and sadness.", "fear"), True),  # two labels: no
    (4, "fear", steps("A fearful child.", "fear"), True),  # "fearful" is not fear, nothing named: no
    (5, "fear", "fear \\boxed{fear}", True),  # no steps: no
    (6, "sadness", steps("Quiet sadness.", "Sadness"), False),  # sadness, boxed Sadness: yes (compared lower-cased)
    (7, "sadness", steps("Quiet sadness.", "joy"), None),  # names sadness, boxed joy: no
    (8, "joy", steps("Pure joy, joy!", "joy"), None),  # joy twice, one label, boxed joy: yes
]
# coherent: rows 1, 6, 8 -> 3/8; the stale values (which would give 4 of the 6 rows that carry one) are ignored


def test_reasoning_coherent_rate_is_the_hand_count(tmp_path):
    """The model-free coherence rate in metrics.json would not be the share of responses whose steps 1-2
    name only the boxed label, or re-scoring would trust stale per-row values, if this failed."""
    folder = tmp_path / "emotion6"
    folder.mkdir()
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    path = folder / "predictions.jsonl"
    path.write_text("".join(json.dumps({"id": i, "label": y, "response": r, "reasoning_coherent": stale}) + "\n"
                            for i, y, r, stale in COHERENCE_ROWS))
    rows, metrics = report.rescore(path)
    assert [r["reasoning_coherent"] for r in rows] == [True, False, False, False, False, True, False, True]
    assert metrics["reasoning_coherent_rate"] == pytest.approx(3 / 8, abs=1e-12)
    saved = evaluate.main(["--predictions", str(path)])
    assert saved["reasoning_coherent_rate"] == pytest.approx(3 / 8, abs=1e-12)
    on_disk = json.loads((folder / "metrics.rescored.json").read_text())
    assert on_disk["reasoning_coherent_rate"] == pytest.approx(3 / 8, abs=1e-12)
    # not SET responses: no per-row value and no rate (a <think> response has no steps to judge)
    rows, metrics = report.rescore(path, template="think")
    assert "reasoning_coherent_rate" not in metrics
    assert all("reasoning_coherent" not in r for r in rows)


def test_reasoning_coherent_rate_counts_only_rows_that_carry_it():
    """The rate would be diluted by rows that were never judged (not SET) if this failed."""
    rows = [{"label": "fear", "prediction": "fear", "format_ok": True, "reasoning_coherent": True},
            {"label": "fear", "prediction": "fear", "format_ok": True, "reasoning_coherent": False},
            {"label": "fear", "prediction": None, "format_ok": False, "reasoning_coherent": True},
            {"label": "joy", "prediction": "joy", "format_ok": True}]  # not judged
    assert report.compute_metrics(rows, LABELS)["reasoning_coherent_rate"] == pytest.approx(2 / 3, abs=1e-12)
    assert "reasoning_coherent_rate" not in report.compute_metrics(rows[3:], LABELS)


def test_report_shows_reasoning_coherent_rate_beside_reflection(tmp_path):
    """report.md would leave out the model-free rate, or not put it next to the self-judged reflection
    rates, if this failed."""
    rows = [{"label": "fear", "prediction": "fear", "format_ok": True, "reasoning_coherent": True,
             "reflect_text": "fear", "reflect_image": "yes"},
            {"label": "fear", "prediction": "joy", "format_ok": True, "reasoning_coherent": False,
             "reflect_text": "joy", "reflect_image": "no"}]
    metrics = report.compute_metrics(rows, LABELS)
    assert metrics["reasoning_coherent_rate"] == 0.5  # 1 of 2
    assert metrics["reflect_text_matches_answer"] == 1.0  # both reflections name the row's answer
    report.write_report(tmp_path, "x", metrics, "m")
    report_lines = (tmp_path / "report.md").read_text().splitlines()
    table = [line for line in report_lines if line.startswith("| reflect_") or line.startswith("| reasoning_")]
    assert table == ["| reflect_text_matches_label | 0.5000 |", "| reflect_text_matches_answer | 1.0000 |",
                     "| reasoning_coherent_rate | 0.5000 |", "| reflect_image_yes | 0.5000 |"]
    assert any("model-free" in line and "own judgement" in line for line in report_lines)
