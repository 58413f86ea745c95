"""Reliability of long runs: exact resume after SIGKILL, a kill during a checkpoint write, resuming at
another world size, keep-last-K, a broken row mid-run. Real torchrun + FSDP2 + vLLM on CPU. (Non-finite
updates are checked on update_policy itself, at world size 2: tests/test_grpo_math.py.)"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_train import REPO, read_jsonl, torchrun

# 8 prompts x 4 responses per step, two optimizer steps per rollout (old log-probs are used), a
# warm-up so the LR schedule changes every update, and validation: every piece of state that a
# resume must restore shows up in the metrics.
SMALL = ["--rollout-batch-size", "8", "--group-size", "4", "--mini-batch-size", "4", "--micro-batch-size", "4",
         "--max-response-length", "32", "--lr-warmup-ratio", "0.5", "--val-freq", "2", "--save-freq", "2",
         "--max-steps", "4"]


def run_args(tiny_model_dir, demo_dir, out):
    return ["train_grpo.py", "--demo", "--model", tiny_model_dir, "--train-files", demo_dir / "train.jsonl",
            "--val-files", demo_dir / "test.jsonl", "--output-dir", out, *SMALL]


def without_timings(metrics):
    return [{k: v for k, v in m.items() if not k.startswith(("time/", "memory/"))} for m in metrics]


def checkpoint_tensors(path, tmp_file=None):
    """Everything in a checkpoint (each shard's model weights and AdamW state, and the param_groups),
    flattened to {key: value}; read as plain safetensors, not through checkpoint.py."""
    from safetensors.torch import load_file
    flat = {f"{f.name}/{k}": v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(f).items()}
    flat["param_groups"] = json.loads((path / "trainer_state.json").read_text())["param_groups"]
    return flat


def kill_during_checkpoint_write(cmd, tmp_dir, timeout=600):
    """Start `cmd` (torchrun) and SIGKILL its whole process group the moment `tmp_dir` (a checkpoint
    being written) appears: the real crash, no cooperation from the trainer."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + timeout
    while not tmp_dir.exists():
        assert proc.poll() is None, f"the run ended before writing {tmp_dir}:\n{proc.stderr.read()[-4000:]}"
        assert time.time() < deadline, "timed out waiting for the checkpoint write"
        time.sleep(0.002)
    for pid in [proc.pid, *descendants(proc.pid)]:  # torchrun starts its workers in sessions of their own
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


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


def test_exact_resume_after_kill_mid_save_and_at_another_world_size(tiny_model_dir, demo_dir, tmp_path):
    """A run killed while writing a checkpoint would lose work, resume from a broken checkpoint, or
    continue differently (data order, RNG, LR schedule, optimizer) from the run that was not killed."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    torchrun(*run_args(tiny_model_dir, demo_dir, straight))
    # the warm-up (ratio 0.5 of 4 steps) counts training steps, not optimizer updates (EasyR1); lr = the LR used
    assert [m["lr"] for m in read_jsonl(straight / "metrics.jsonl")] == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3])

    # SIGKILL while step_4 is being written: steps 3 and 4 are logged but their checkpoint is not complete
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           *map(str, run_args(tiny_model_dir, demo_dir, killed))]
    kill_during_checkpoint_write(cmd, killed / "checkpoints" / "step_4.tmp")
    assert not (killed / "checkpoints" / "step_4").exists()
    assert (killed / "checkpoints" / "step_2" / "trainer_state.json").exists()  # the previous one is intact
    assert [m["step"] for m in read_jsonl(killed / "metrics.jsonl")][-1] >= 3

    # resume: from step_2 (the .tmp is ignored and removed), redo steps 3-4, keep only the newest checkpoint
    result = torchrun(*run_args(tiny_model_dir, demo_dir, killed), "--resume", "--save-limit", "1")
    assert "resumed from" in result.stdout and "step_2" in result.stdout
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step_4"]

    # identical metrics (rewards, losses, grad norms, LR, validation: same data, sampling and state)...
    assert without_timings(read_jsonl(killed / "metrics.jsonl")) == without_timings(read_jsonl(straight / "metrics.jsonl"))
    # ...the same prompts and responses, each step's once...
    assert read_jsonl(killed / "samples.jsonl") == read_jsonl(straight / "samples.jsonl")
    # ...and bit-identical weights and optimizer state
    a = checkpoint_tensors(straight / "checkpoints" / "step_4", tmp_path / "a.pt")
    b = checkpoint_tensors(killed / "checkpoints" / "step_4", tmp_path / "b.pt")
    assert a.keys() == b.keys() and any("optimizer" in k and "exp_avg" in k for k in a)
    different = [k for k in a if not (torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k])]
    assert not different, different[:5]

    # the world-size-2 checkpoint resumes at world size 1 and trains on
    one = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1",
           *map(str, run_args(tiny_model_dir, demo_dir, killed)), "--resume", "--max-steps", "5"]
    result = subprocess.run(one, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    assert "step_4" in result.stdout
    metrics = read_jsonl(killed / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5]
    assert metrics[-1]["rollout/logp_gap_max"] < 1e-3  # the engine serves the resumed weights


def test_a_broken_image_mid_run_stops_every_rank_or_is_skipped(tiny_model_dir, demo_dir, tmp_path):
    """A row that breaks on one rank mid-run would crash that rank and leave the other waiting
    forever in a collective, or (with --skip-bad-rows) crash anyway instead of being counted; rows
    refused at load were counted once per rank, and validation's skipped rows not at all."""
    import shutil

    import data
    data_dir = tmp_path / "data"
    shutil.copytree(demo_dir, data_dir)
    rows = (data_dir / "train.jsonl").read_text().splitlines()
    # the first prompt rank 1 takes in step 1 (rollout batch 8 over 2 ranks, seed 1): truncate its image
    bad = data.rank_slice(data.step_indices(len(rows), 8, 0, seed=1), 1, 2)[0]
    image = data_dir / json.loads(rows[bad])["images"][0]
    image.write_bytes(image.read_bytes()[:100])
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "train_grpo.py", "--demo",
            "--model", str(tiny_model_dir), "--train-files", str(data_dir / "train.jsonl"), "--val-files", "",
            *SMALL[:-2], "--max-steps", "2", "--save-freq", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    stopped = subprocess.run([*args, "--output-dir", str(tmp_path / "strict")], cwd=REPO, capture_output=True,
                             text=True, timeout=300, env=env)  # a hang fails here
    assert stopped.returncode != 0
    assert f"train.jsonl:{bad + 1}: cannot use image" in stopped.stderr and "--skip-bad-rows" in stopped.stderr
    assert not (tmp_path / "strict" / "metrics.jsonl").read_text().strip()  # it stopped in step 1

    # with --skip-bad-rows: the same broken image, plus a row refused at load (every rank lists it) in
    # training, and both kinds in validation; each row is counted once, whatever the world size
    label_row = json.dumps({**json.loads(rows[0]), "answer": "boredom"})
    (data_dir / "train_skip.jsonl").write_text("\n".join(rows + [label_row]) + "\n")
    val = (data_dir / "test.jsonl").read_text().splitlines()
    val_image = data_dir / json.loads(val[3])["images"][0]
    val_image.write_bytes(val_image.read_bytes()[:100])
    (data_dir / "val_skip.jsonl").write_text("\n".join(val + [label_row]) + "\n")
    skip_args = [a.replace("train.jsonl", "train_skip.jsonl") for a in args]
    skip_args[skip_args.index("--val-files") + 1] = str(data_dir / "val_skip.jsonl")
    skipped = subprocess.run([*skip_args, "--output-dir", str(tmp_path / "skip"), "--skip-bad-rows"], cwd=REPO,
                             capture_output=True, text=True, timeout=300, env=env)
    assert skipped.returncode == 0, skipped.stderr[-4000:]
    metrics = read_jsonl(tmp_path / "skip" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    assert metrics[0]["data/skipped_rows"] == 2  # the label row once (not once per rank) + the image
    assert metrics[1]["val/skipped_rows"] == 2 and metrics[1]["val/rows"] == 16 - 1
