"""Reliability of long runs: exact resume after SIGKILL, a kill during a checkpoint write, resuming at
another world size, keep-last-K, a broken row mid-run. Real torchrun + FSDP2 + vLLM on CPU. (Non-finite
updates are checked on update_policy itself, at world size 2: tests/test_grpo_math.py.)

The broken-image runs, the straight run and the run killed mid-save are the last steps of the suite's
shared launch (tests/conftest.py, shared_launch), which the kill ends; the killed run's --resume at world
size 2 and its resume at world size 1 are one launch of tests/dist_runs.py."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from test_train import REPO, launch_steps, read_jsonl

# 8 prompts x 4 responses per step, two optimizer steps per rollout (old log-probs are used), a
# warm-up so the LR schedule changes every update, and validation: every piece of state that a
# resume must restore shows up in the metrics.
SMALL = ["--rollout-batch-size", "8", "--group-size", "4", "--mini-batch-size", "4", "--micro-batch-size", "4",
         "--max-response-length", "32", "--lr-warmup-ratio", "0.5", "--val-freq", "2", "--save-freq", "2",
         "--max-steps", "4"]


def flags(tiny_model_dir, demo_dir):
    return ["--demo", "--model", tiny_model_dir, "--train-files", demo_dir / "train.jsonl", "--val-files",
            demo_dir / "test.jsonl", *SMALL]


def without_timings(metrics):
    return [{k: v for k, v in m.items() if not k.startswith(("time/", "memory/"))} for m in metrics]


def checkpoint_tensors(path, tmp_file=None):
    """Everything in a checkpoint (each shard's model weights and AdamW state, and the param_groups),
    flattened to {key: value}; read as plain safetensors, not through checkpoint.py."""
    from safetensors.torch import load_file
    flat = {f"{f.name}/{k}": v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(f).items()}
    flat["param_groups"] = json.loads((path / "trainer_state.json").read_text())["param_groups"]
    return flat


def kill_during_checkpoint_write(cmd, tmp_dir, log, timeout=1800):
    """Start `cmd` (torchrun) and SIGKILL its whole process group the moment `tmp_dir` (a checkpoint
    being written) appears: the real crash, no cooperation from the trainer. Returns the launch (its
    output, written to `log`.out / .err) and whether it was killed there; it is killed by the deadline
    otherwise."""
    with open(f"{log}.out", "w") as stdout, open(f"{log}.err", "w") as stderr:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=stdout, stderr=stderr, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + timeout
    while not tmp_dir.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002 if tmp_dir.parent.parent.exists() else 0.05)  # fast once its run has started
    killed = tmp_dir.exists()
    for pid in [proc.pid, *descendants(proc.pid)]:  # torchrun starts its workers in sessions of their own
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    launch = SimpleNamespace(returncode=proc.returncode, stdout=Path(f"{log}.out").read_text(),
                             stderr=Path(f"{log}.err").read_text())
    return launch, killed


def descendants(pid):
    """The pids of all processes below `pid`, read from /proc (Linux)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


@pytest.fixture
def runs(shared_launch):
    """The suite's shared launch (tests/conftest.py): its steps strict, skip, straight and killed."""
    return shared_launch


def broken_data(demo_dir, data_dir):
    """A copy of the demo data with broken rows: the image of the first prompt rank 1 takes in step 1 (rollout
    batch 8 over 2 ranks, seed 1) truncated in train.jsonl; train_skip.jsonl adds a row refused at load (every
    rank lists it); val_skip.jsonl holds both kinds. Returns the broken row's index and the two files."""
    import shutil

    import data
    shutil.copytree(demo_dir, data_dir)
    rows = (data_dir / "train.jsonl").read_text().splitlines()
    bad = data.rank_slice(data.step_indices(len(rows), 8, 0, seed=1), 1, 2)[0]
    image = data_dir / json.loads(rows[bad])["images"][0]
    image.write_bytes(image.read_bytes()[:100])
    label_row = json.dumps({**json.loads(rows[0]), "answer": "boredom"})
    (data_dir / "train_skip.jsonl").write_text("\n".join(rows + [label_row]) + "\n")
    val = (data_dir / "test.jsonl").read_text().splitlines()
    val_image = data_dir / json.loads(val[3])["images"][0]
    val_image.write_bytes(val_image.read_bytes()[:100])
    (data_dir / "val_skip.jsonl").write_text("\n".join(val + [label_row]) + "\n")
    return bad, data_dir / "train_skip.jsonl", data_dir / "val_skip.jsonl"


def test_exact_resume_after_kill_mid_save_and_at_another_world_size(runs, tiny_model_dir, demo_dir, tmp_path):
    """A run killed while writing a checkpoint would lose work, resume from a broken checkpoint, or
    continue differently (data order, RNG, LR schedule, optimizer) from the run that was not killed.
    The straight and the killed run: the shared launch (`runs`); the two resumes: a launch of their own."""
    straight, killed = runs.steps.finished("straight"), runs.steps.out / "killed"
    # the warm-up (ratio 0.5 of 4 steps) counts training steps, not optimizer updates (EasyR1); lr = the LR used
    assert [m["lr"] for m in read_jsonl(straight / "metrics.jsonl")] == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3])

    # SIGKILL while step_4 is being written: steps 3 and 4 are logged but their checkpoint is not complete
    assert runs.killed_mid_save, f"the launch ended before writing {killed / 'checkpoints' / 'step_4.tmp'}:\n" \
                                 f"{runs.steps.log('killed')[-3000:]}\n{runs.steps.launch.stderr[-4000:]}"
    assert not (killed / "checkpoints" / "step_4").exists()
    assert (killed / "checkpoints" / "step_2" / "trainer_state.json").exists()  # the previous one is intact
    assert [m["step"] for m in read_jsonl(killed / "metrics.jsonl")][-1] >= 3

    # resume: from step_2 (the .tmp is ignored and removed), redo steps 3-4, keep only the newest checkpoint;
    # then (below) the world-size-2 checkpoint at world size 1 (rank 0 alone, a world of one), 1 step more
    resumed = launch_steps(tmp_path, 29975, [
        dict(name="resume", args=[*flags(tiny_model_dir, demo_dir), "--output-dir", killed, "--resume",
                                  "--save-limit", "1"]),
        dict(name="resume_one", world=1, args=[*flags(tiny_model_dir, demo_dir), "--output-dir", killed, "--resume",
                                               "--max-steps", "5"])])
    resumed.finished("resume")
    assert "resumed from" in resumed.log("resume") and "step_2" in resumed.log("resume")
    metrics = read_jsonl(killed / "metrics.jsonl")
    assert [m["step"] for m in metrics if m["step"] <= 4] == [1, 2, 3, 4]  # steps 3-4's first lines were dropped

    # identical metrics (rewards, losses, grad norms, LR, validation: same data, sampling and state)...
    assert without_timings(metrics[:4]) == without_timings(read_jsonl(straight / "metrics.jsonl"))
    # ...the same prompts and responses, each step's once...
    samples = [s for s in read_jsonl(killed / "samples.jsonl") if s["step"] <= 4]
    assert samples == read_jsonl(straight / "samples.jsonl")
    # ...and bit-identical weights and optimizer state
    a = checkpoint_tensors(straight / "checkpoints" / "step_4", tmp_path / "a.pt")
    b = checkpoint_tensors(killed / "checkpoints" / "step_4", tmp_path / "b.pt")
    assert a.keys() == b.keys() and any("optimizer" in k and "exp_avg" in k for k in a)
    different = [k for k in a if not (torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k])]
    assert not different, different[:5]

    # the world-size-2 checkpoint resumed at world size 1 and trained on
    resumed.finished("resume_one")
    assert "step_4" in resumed.log("resume_one")
    # --save-limit 1 deleted step_2 once step_4 was complete (the resume at world size 1 keeps all: step_5 added)
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step_4", "step_5"]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5]
    assert metrics[-1]["rollout/logp_gap_max"] < 1e-3  # the engine serves the resumed weights


def test_a_broken_image_mid_run_stops_every_rank_or_is_skipped(runs):
    """A row that breaks on one rank mid-run would crash that rank and leave the other waiting
    forever in a collective, or (with --skip-bad-rows) crash anyway instead of being counted; rows
    refused at load were counted once per rank, and validation's skipped rows not at all.
    The runs: "strict" and "skip" in the shared launch (`runs`, see broken_data for the rows), where a
    rank left waiting ends the launch within 2 minutes (tests/dist_runs.py)."""
    message = runs.steps.stopped("strict")  # every rank stopped (the command line exits with status 1)
    assert f"train.jsonl:{runs.bad + 1}: cannot use image" in message and "--skip-bad-rows" in message
    assert not (runs.steps.out / "strict" / "metrics.jsonl").read_text().strip()  # it stopped in step 1

    # with --skip-bad-rows: the same broken image, plus a row refused at load (every rank lists it) in
    # training, and both kinds in validation; each row is counted once, whatever the world size
    metrics = read_jsonl(runs.steps.finished("skip") / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    assert metrics[0]["data/skipped_rows"] == 2  # the label row once (not once per rank) + the image
    assert metrics[1]["val/skipped_rows"] == 2 and metrics[1]["val/rows"] == 16 - 1


def test_validation_and_the_next_step_share_one_push(runs):
    """Broken: the engine keeping what validation pushed (engines.EngineState.holds): with validation after
    step 2, step 3's rollout needs the same weights and must not all-gather and push them again (on a GPU
    a full weight push per step, twice with --val-freq 1). The other steps push (`time/push` logged), and
    step 3's rollout still samples from the trainer's weights: its log-prob gap is at fp32 level. The
    resume test above shows the shared push changes no number: its resumed run pushes at step 3."""
    metrics = read_jsonl(runs.steps.finished("straight") / "metrics.jsonl")
    assert [m["step"] for m in metrics if "val/accuracy" in m] == [2, 4]  # --val-freq 2
    assert ["time/push" in m for m in metrics] == [True, True, False, True]
    assert metrics[2]["rollout/logp_gap_max"] < 1e-4
