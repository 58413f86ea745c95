"""sft.py (Cold-Start-Emo) and the demo's story: cold start, then EMO-R3 GRPO that visibly learns; and
sft.py as safe as the trainer: checkpoints, exact --resume, refused folders, non-finite steps, images
decoded per step. Most runs are in-process worlds of one (~seconds); torchrun only where ranks matter."""

import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

import common
import model as modeling
import data
import sft
import startup
from checkpoint import load_checkpoint
from test_train import REPO, read_jsonl

PORTS = iter(range(29850, 29900))  # in-process runs' rendezvous ports; torchrun launches use 29801-29849


def world_of_one(monkeypatch):
    """The environment torchrun would give a single process, on a port of this file's own range."""
    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(next(PORTS))).items():
        monkeypatch.setenv(key, value)


def run_sft(monkeypatch, *args):
    """sft.main in this process as a world of one: no torchrun, no second import of torch and transformers."""
    world_of_one(monkeypatch)
    try:
        sft.main([str(a) for a in args])
    finally:  # a refused run exits before its own clean-up; the next run needs a fresh group and lock
        if dist.is_initialized():
            dist.destroy_process_group()
        if getattr(common.lock_run_folder, "handle", None):
            common.lock_run_folder.handle.close()
            del common.lock_run_folder.handle


def small(tiny_model_dir, demo_dir, out, *more):
    """The demo's sizes, 4 examples a step in 2 micro-batches, an LR that warms up over 4 steps (so a resume
    that lost the schedule shows), without --demo (which builds into .cache)."""
    return ["--model", tiny_model_dir, "--train-files", demo_dir / "train.jsonl", "--output-dir", out,
            "--min-pixels", 56 * 56, "--max-pixels", 112 * 112, "--max-prompt-length", 512, "--batch-size", 4,
            "--micro-batch-size", 2, "--lr", 3e-3, "--warmup-steps", 4, "--no-gradient-checkpointing",
            "--reflection-examples", "--shuffle-targets", "--allow-cpu", *more]


def restored(checkpoint, model_dir, monkeypatch):
    """{name: tensor} of the weights and AdamW moments that load_checkpoint restores from `checkpoint`, as
    a resumed run gets them (read through checkpoint.py, whatever its on-disk format)."""
    world_of_one(monkeypatch)
    common.setup_distributed()
    try:
        model = modeling.load_model(str(model_dir), torch.device("cpu"), trainable=True)
        optimizer = torch.optim.AdamW(model.parameters())
        load_checkpoint(model, optimizer, checkpoint, 0)
        full = {name: p for name, p in model.named_parameters()}
        full.update({f"{name}/{key}": optimizer.state[p][key] for name, p in model.named_parameters()
                     for key in ("exp_avg", "exp_avg_sq")})
        return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in full.items()}
    finally:
        dist.destroy_process_group()


def recorded_run(monkeypatch, *args):
    """A run that records the rows each step asks for, and every image decoded (header reads not counted)."""
    steps, decoded = [], []
    real_batch, real_open = sft.get_batch_on_every_rank, data.open_image

    def get_batch_on_every_rank(dataset, rows):
        steps.append(list(rows))
        return real_batch(dataset, rows)

    def open_image(source, base_dir, size_only=False):
        if not size_only:
            decoded.append(source)
        return real_open(source, base_dir, size_only)
    monkeypatch.setattr(sft, "get_batch_on_every_rank", get_batch_on_every_rank)
    monkeypatch.setattr(data, "open_image", open_image)
    run_sft(monkeypatch, *args)
    return steps, decoded


@pytest.fixture(scope="module")
def straight(tiny_model_dir, demo_dir, tmp_path_factory):
    """One uninterrupted 4-step run (checkpoints every 2 steps), shared by the tests below. It is launched with
    --resume into a new folder, as a requeue script launches every try, its first included. Returns its
    folder, the rows each step asked for, the images decoded and what it printed."""
    out = tmp_path_factory.mktemp("sft") / "straight"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as monkeypatch, contextlib.redirect_stdout(printed):
        steps, decoded = recorded_run(monkeypatch, *small(tiny_model_dir, demo_dir, out, "--max-steps", 4,
                                                          "--save-freq", 2, "--resume"))
    return out, steps, decoded, printed.getvalue()


def test_cold_start_then_grpo_learns(demo_run, tiny_model_dir):
    """sft.py would not train, its checkpoint would not start train_grpo.py, or the demo would not learn.

    A shortened demo, the session's shared one (tests/conftest.py, `demo_run`): the tiny model, the 4-class
    demo data (128 rows), a 60-step cold start at world size 2, 40 GRPO steps from it.
    """
    losses = [m["loss"] for m in read_jsonl(demo_run.steps.finished("cold_start") / "metrics.jsonl")]
    assert len(losses) == 60 and sum(losses[-5:]) / 5 < 0.25 * sum(losses[:5]) / 5, losses
    checkpoint = demo_run.cold_start / "checkpoints" / "step_60"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["config"]["model"] == str(tiny_model_dir)

    grpo_out = demo_run.steps.finished("grpo")
    assert json.loads((grpo_out / "config.json").read_text())["init_from"] == str(checkpoint)
    metrics = read_jsonl(grpo_out / "metrics.jsonl")
    accuracy = [m["reward/accuracy"] for m in metrics]
    fmt = [m["reward/format"] for m in metrics]
    assert len(metrics) == 40
    first, last = sum(accuracy[:10]) / 10, sum(accuracy[-10:]) / 10
    # the cold start taught the format (most rollouts are well formed from the first step) ...
    assert sum(fmt[:5]) / 5 > 0.5, fmt
    # ... and GRPO, not the cold start, teaches the emotions: accuracy starts near chance (0.25) and rises
    assert first < 0.35 and last > first + 0.12, accuracy
    assert (grpo_out / "curves.png").exists()


def test_cold_start_reflection_examples_answer_what_the_text_says():
    """The cold start would teach the judge answers the text does not support (a label its step 2 does not
    name; "yes" for a step 1 describing another colour than the image's), or tie images to emotions."""
    import random
    from types import SimpleNamespace

    import rewards
    import sft
    import tiny
    labels = ["amusement", "anger", "contentment", "sadness"]
    rows = [SimpleNamespace(answer=label, response=tiny.demo_response(label)) for label in labels * 3]
    cfg = sft.Config(reflection_examples=True, shuffle_targets=True)
    examples = sft.build_examples(rows, labels, cfg, random.Random(0))
    colour = {label: tiny.DEMO_COLOUR_NAMES[label] for label in labels}
    coherence = [e for e in examples if e.row is None]  # text only
    consistency = [e for e in examples if e.row is not None and e.question is not None]  # with the row's image
    assert len(coherence) == 12 and len(consistency) == 24
    assert all("Can the following text describe the image?" in e.question for e in consistency)
    for e in coherence:  # the answer is the emotion its step 2 names
        step2 = e.question[e.question.index("<step2>"):e.question.index("</step2>")]
        named = [label for label in labels if label in step2]
        assert named == [e.target], (e.question, e.target)
    for e in consistency:  # "yes" exactly when step 1 describes this row's image (its colour)
        step1 = e.question[e.question.index("<step1>"):e.question.index("</step1>")]
        assert e.target == ("yes" if colour[rows[e.row].answer] in step1 else "no"), (e.question, e.target)
    assert {e.target for e in consistency} == {"yes", "no"}
    # format-only: no example pairs an image with an emotion word as its answer
    assert all(e.target not in labels for e in examples if e.row is not None)
    assert rewards.reflection_prompt("text", "no steps", labels) == "Answer 'None'"


def test_step_shuffled_cold_start_reasons_incoherently_and_its_judge_must_read_step_2():
    """--shuffle-steps would not test a judge that reads if its targets stayed coherent (step 2's emotion
    given away by step 1's colour or by the box), or if its coherence answers were not step 2's emotion."""
    import random
    from types import SimpleNamespace

    import sft
    import tiny
    labels = ["amusement", "anger", "contentment", "sadness"]
    rows = [SimpleNamespace(answer=label, response=tiny.demo_response(label)) for label in labels * 10]
    examples = sft.build_examples(rows, labels, sft.Config(reflection_examples=True, shuffle_steps=True),
                                  random.Random(0))
    targets = [e.target for e in examples if e.question is None]
    assert len(targets) == 40
    named = lambda text: [label for label in labels if label in text]  # noqa: E731
    colour_of = {name: label for label, name in tiny.DEMO_COLOUR_NAMES.items()}
    incoherent = 0
    for target in targets:  # every target is still one whole SET answer, its parts from three rows
        step1, step2, rest = sft.split_steps(target)
        assert step1.startswith("<step1>The image is mostly ") and step2.startswith("<step2>A viewer would feel")
        (emotion,) = named(step2)
        colour = colour_of[step1.removeprefix("<step1>The image is mostly ").split(".")[0]]
        incoherent += emotion != colour or f"\\boxed{{{emotion}}}" not in rest
    assert incoherent >= 20  # independent draws: 1 - 1/16 of them disagree somewhere; 40 coherent would fail
    for e in (e for e in examples if e.row is None):  # coherence: the emotion step 2 names, whatever step 1 says
        step2 = e.question[e.question.index("<step2>"):e.question.index("</step2>")]
        assert named(step2) == [e.target], (e.question, e.target)


def test_box_shuffled_cold_start_guesses_the_box_and_its_judge_reads_step_2():
    """--shuffle-boxes would not leave the answer a guess if the box still followed the reasoning, or would
    break the reasoning's own chain (step 1's colour, step 2's emotion, step 3's valence); --judge-swap
    would teach the coherence judge to name step 1's colour's emotion, or the box, instead of step 2's."""
    import random
    from types import SimpleNamespace

    import rewards
    import sft
    import tiny
    labels = ["amusement", "anger", "contentment", "sadness"]
    rows = [SimpleNamespace(answer=label, response=tiny.demo_response(label)) for label in labels * 10]
    cfg = sft.Config(reflection_examples=True, shuffle_targets=True, shuffle_boxes=1.0, judge_swap=1.0)
    examples = sft.build_examples(rows, labels, cfg, random.Random(0))
    named = lambda text: [label for label in labels if label in text]  # noqa: E731
    colour_of = {name: label for label, name in tiny.DEMO_COLOUR_NAMES.items()}
    colour = lambda step1: colour_of[step1.split("mostly ")[1].split(".")[0]]  # noqa: E731
    targets = [e.target for e in examples if e.question is None]
    assert len(targets) == 40
    boxes_off = 0
    for target in targets:
        step1, step2, rest = sft.split_steps(target)
        (emotion,) = named(step2)
        assert colour(step1) == emotion  # the reasoning is one chain ...
        assert ("positive" in rest) == (emotion in tiny.POSITIVE)
        box = rewards.extract_boxed(rest)
        assert box in labels
        boxes_off += box != emotion  # ... and the box a guess
    assert 20 <= boxes_off < 40  # independent draws disagree 3 times in 4; boxes left alone would give 0
    swapped = 0
    for e in (e for e in examples if e.row is None):  # coherence: the emotion step 2 names, not the colour's
        step1, step2 = e.question.split("<step2>")[0], e.question.split("<step2>")[1].split("</step2>")[0]
        assert named(step2) == [e.target], (e.question, e.target)
        swapped += colour(step1) != e.target
    assert swapped >= 20  # with step 2 from a random row, step 1's colour gives the answer away 1 time in 4
    assert all(e.target in ("yes", "no") for e in examples if e.row is not None and e.question is not None)
    # a share: --shuffle-boxes 0.5 gives half the targets a random box (which is their own 1 time in 4)
    half = sft.build_examples(rows, labels, sft.Config(shuffle_targets=True, shuffle_boxes=0.5), random.Random(0))
    off = sum(named(sft.split_steps(e.target)[1]) != [rewards.extract_boxed(e.target)] for e in half)
    assert 8 <= off <= 20, off


def test_replace_box():
    """The box shuffle would cut a target wrongly: a nested brace, an earlier box, or a box never closed."""
    import sft
    assert sft.replace_box("<step1>a</step1> \\boxed{x{y}} then \\boxed{anger}.", "fear") == \
        "<step1>a</step1> \\boxed{x{y}} then \\boxed{fear}."
    assert sft.replace_box("\\boxed{a{b}c}", "fear") == "\\boxed{fear}"
    assert sft.replace_box("no box here", "fear") == "no box here"
    assert sft.replace_box("\\boxed{never closed", "fear") == "\\boxed{never closed"


def test_images_are_decoded_per_step(straight, demo_dir):
    """sft.py would decode every image of the dataset up front, on every rank: at EmoSet scale (tens of
    thousands of images) the ranks run out of host memory before the first step."""
    out, steps, decoded, _ = straight
    rows = len((demo_dir / "train.jsonl").read_text().splitlines())
    assert len(steps) == 4 and all(0 < len(step) <= 4 for step in steps)  # a step's 4 examples use <= 4 rows
    assert len(decoded) == sum(len(step) for step in steps) < rows, (len(decoded), rows)  # each once, when used
    assert [m["step"] for m in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4]


def test_checkpoints_and_exact_resume(straight, tiny_model_dir, demo_dir, tmp_path, monkeypatch, capsys):
    """A killed cold start would lose all its work (one checkpoint, at the end), could not be resumed, would
    resume with other flags or another data order, or a relaunch would mix a second run into its folder."""
    out, straight_steps, _, _ = straight
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_2", "step_4"]  # --save-freq 2

    # a run killed after logging step 3, before its checkpoint: the newest complete checkpoint is step_2
    crashed = tmp_path / "crashed"
    run_sft(monkeypatch, *small(tiny_model_dir, demo_dir, crashed, "--max-steps", 3, "--save-freq", 2))
    shutil.rmtree(crashed / "checkpoints" / "step_3")
    with pytest.raises(SystemExit, match="already holds a run: pass --resume"):
        run_sft(monkeypatch, *small(tiny_model_dir, demo_dir, crashed, "--max-steps", 4))
    with pytest.raises(SystemExit, match="--lr: 0.003 in .*0.001 now") as refused:
        run_sft(monkeypatch, *small(tiny_model_dir, demo_dir, crashed, "--max-steps", 4, "--resume", "--lr", 1e-3))
    assert "--max-steps" not in str(refused.value).split("Free to change")[0]  # extending a run is allowed
    assert len(read_jsonl(crashed / "metrics.jsonl")) == 3  # refusals touch nothing
    capsys.readouterr()

    # resume: from step_2, the same rows for steps 3 and 4, the same losses and weights as the straight run
    steps, _ = recorded_run(monkeypatch, *small(tiny_model_dir, demo_dir, crashed, "--max-steps", 4, "--resume",
                                                "--save-limit", 1))
    assert f"resumed from {crashed / 'checkpoints' / 'step_2'} (step 2)" in capsys.readouterr().out
    assert steps == straight_steps[2:]
    resumed, reference = read_jsonl(crashed / "metrics.jsonl"), read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in resumed] == [1, 2, 3, 4]  # step 3's first line was dropped, the step redone
    assert resumed == reference  # bit for bit: the README promises the weights of a run never killed
    assert sorted(p.name for p in (crashed / "checkpoints").iterdir()) == ["step_4"]  # --save-limit 1
    a = restored(out / "checkpoints" / "step_4", tiny_model_dir, monkeypatch)
    b = restored(crashed / "checkpoints" / "step_4", tiny_model_dir, monkeypatch)
    assert a.keys() == b.keys() and len(a) > 100
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, differ[:5]

    # a --max-steps below the step reached is refused, naming it (it printed "sft done" for a checkpoint
    # that does not exist, and exited 0), before anything is touched
    with pytest.raises(SystemExit, match=r"--max-steps 2 is below the step this run has reached: .*step_4 \(step 4\)"):
        run_sft(monkeypatch, *small(tiny_model_dir, demo_dir, crashed, "--max-steps", 2, "--resume"))
    assert [m["step"] for m in read_jsonl(crashed / "metrics.jsonl")] == [1, 2, 3, 4]
    with pytest.raises(SystemExit, match=r"is step 4, past the 0 steps that --epochs 0 give"):  # the length from --epochs
        run_sft(monkeypatch, *small(tiny_model_dir, demo_dir, crashed, "--max-steps", 0, "--epochs", 0, "--resume"))


def test_a_first_launch_with_resume_starts_the_run_and_says_so(straight):
    """Broken: a requeue script's first launch (it passes --resume to every launch) fails for want of a
    checkpoint, or starts at step 0 without a word on why."""
    out, _, _, printed = straight
    assert f"--resume: no checkpoint in {out / 'checkpoints'} yet, so the run starts at step 0" in printed
    assert [m["step"] for m in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4]


def test_a_broken_image_mid_run_stops_naming_its_row_or_is_counted(straight, tiny_model_dir, demo_dir, tmp_path,
                                                                    monkeypatch):
    """Broken: an image that passes the load-time header check but cannot be decoded when its step comes
    (a truncated file) crashes the cold start with a traceback instead of naming the row, or with
    --skip-bad-rows its examples are dropped without being counted (data/skipped_examples)."""
    _, straight_steps, _, _ = straight
    data_dir = tmp_path / "data"
    shutil.copytree(demo_dir, data_dir)
    bad = straight_steps[0][0]  # a row step 1 uses (the examples and their order depend on --seed alone)
    rows = (data_dir / "train.jsonl").read_text().splitlines()
    image = data_dir / json.loads(rows[bad])["images"][0]
    image.write_bytes(image.read_bytes()[:100])  # the header survives: the row passes the load-time checks
    with pytest.raises(SystemExit, match=f"train.jsonl:{bad + 1}: cannot use image") as stopped:
        run_sft(monkeypatch, *small(tiny_model_dir, data_dir, tmp_path / "strict", "--max-steps", 1))
    assert data.SKIP_HINT in str(stopped.value)
    run_sft(monkeypatch, *small(tiny_model_dir, data_dir, tmp_path / "skip", "--max-steps", 1, "--skip-bad-rows"))
    (metrics,) = read_jsonl(tmp_path / "skip" / "metrics.jsonl")
    assert metrics["data/skipped_examples"] >= 1 and math.isfinite(metrics["loss"]), metrics


def test_refuses_a_crashed_run_folder_and_passes_the_timeout(tiny_model_dir, demo_dir, tmp_path, monkeypatch):
    """A relaunch into the folder of a run that crashed before its first checkpoint would append a second
    run to its metrics.jsonl; --resume without a folder would start afresh; a dead rank would hang the rest."""
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    (crashed / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    with pytest.raises(SystemExit, match="already holds a run: pass --resume to continue it, or another --output-dir"):
        run_sft(monkeypatch, *small(tiny_model_dir, demo_dir, crashed, "--max-steps", 1))
    with pytest.raises(SystemExit, match="--resume needs --output-dir"):
        sft.parse_config(["--demo", "--resume"])

    assert sft.Config().dist_timeout_minutes == 30.0
    seen = []

    def setup_distributed(**kwargs):
        seen.append(kwargs)
        raise SystemExit("stop here")
    monkeypatch.setattr(startup, "setup_distributed", setup_distributed)  # sft.main's start-up (startup.start_run)
    with pytest.raises(SystemExit, match="stop here"):
        sft.main(["--demo", "--dist-timeout-minutes", "7.5"])
    assert seen == [{"timeout_minutes": 7.5}]


# rank 1's loss turns NaN on steps 2, 4 and 5 without reaching its gradients (a NaN added to the log-probs:
# d(logp + c)/d logp = 1), so the grad norm stays finite and only rank 1 sees the problem; every rank
# writes the steps at which it stepped its optimizer
NAN_DRIVER = """
import os, sys
sys.path.insert(0, {repo!r})
import torch
import sft
rank, calls = int(os.environ["RANK"]), []
real_logprobs, real_step = sft.response_logprobs, torch.optim.AdamW.step

def response_logprobs(*args):
    calls.append(1)  # one micro-batch per step: the call count is the step
    logp = real_logprobs(*args)
    return logp + float("nan") if rank == 1 and len(calls) in (2, 4, 5) else logp

def step(self, *args, **kwargs):
    with open(os.path.join({out!r}, f"stepped_rank{{rank}}.txt"), "a") as f:
        f.write(f"{{len(calls)}}\\n")
    return real_step(self, *args, **kwargs)

sft.response_logprobs, torch.optim.AdamW.step = response_logprobs, step
sft.main(sys.argv[1:])
"""


def test_non_finite_steps_are_skipped_on_every_rank_then_stop(tiny_model_dir, demo_dir, tmp_path):
    """A NaN loss on one rank would be stepped on the others (the shards of one model updated on some ranks
    only), or a run of them would go on forever. Step 3 resets the count; steps 4 and 5 stop the run."""
    out = tmp_path / "run"
    out.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(NAN_DRIVER.format(repo=str(REPO), out=str(out)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-port", "29803", driver,
           *small(tiny_model_dir, demo_dir, out, "--max-steps", 8, "--max-bad-updates", 2,
                  "--no-reflection-examples")]
    result = subprocess.run([str(c) for c in cmd], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0, result.stderr[-3000:]
    assert "step 5: 2 consecutive steps with a non-finite loss or grad norm (--max-bad-updates 2)" in result.stderr
    for rank in (0, 1):  # both ranks stepped exactly at steps 1 and 3
        assert (out / f"stepped_rank{rank}.txt").read_text().split() == ["1", "3"], result.stderr[-3000:]
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert [m.get("update/skipped", 0) for m in metrics] == [0, 1, 0, 1]
    assert metrics[2]["loss"] == metrics[2]["loss"]  # step 3 is finite: step 2's NaN never reached the weights
