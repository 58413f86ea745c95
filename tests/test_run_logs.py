"""What a GRPO run writes beside its checkpoints: each step's metrics.jsonl and samples.jsonl lines on disk
(fsynced) before that step's checkpoint is renamed complete, the rows dropped at load for --max-prompt-length
counted in metrics.jsonl, and a first launch with --resume (a requeue script's) training from step 0.

One run of train_grpo.main in this process, a world of one (tests/test_train.py, main_in_process): 2 steps
of 2 prompts x 2 responses of up to 4 tokens on the HF engine, a checkpoint after each, validation at step 2;
its training and validation files each hold one row over --max-prompt-length. Every os.fsync and os.rename
of the run is recorded in order (the real calls still run)."""

import contextlib
import io
import json
import os
from pathlib import Path

import pytest

from test_train import main_in_process, read_jsonl


def with_a_long_row(source, target, images_dir):
    """`source`'s rows (image paths made absolute) and one more whose problem is far over 512 tokens."""
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    for row in rows:
        row["images"] = [str(images_dir / path) for path in row["images"]]
    rows.append({**rows[0], "problem": rows[0]["problem"] + " Look closely at every detail." * 150})
    target.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return target


@pytest.fixture(scope="module")
def run(tiny_model_dir, demo_dir, tmp_path_factory):
    """The run's folder, its recorded file events [("fsync", path, size) or ("rename", src, dst)] and what
    it printed."""
    folder = tmp_path_factory.mktemp("run_logs")
    train = with_a_long_row(demo_dir / "train.jsonl", folder / "train.jsonl", demo_dir)
    val = folder / "val.jsonl"
    val_rows = (demo_dir / "test.jsonl").read_text().splitlines()[:2]
    (folder / "val_source.jsonl").write_text("\n".join(val_rows) + "\n")
    with_a_long_row(folder / "val_source.jsonl", val, demo_dir)
    out = folder / "run"
    events, real_fsync, real_rename = [], os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")), os.fstat(fd).st_size))
        real_fsync(fd)

    def rename(src, dst, *args, **kwargs):
        events.append(("rename", Path(src), Path(dst)))
        real_rename(src, dst, *args, **kwargs)
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as monkeypatch, contextlib.redirect_stdout(printed):
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "rename", rename)
        main_in_process(monkeypatch, "--demo", "--model", tiny_model_dir, "--train-files", train, "--val-files", val,
                        "--engine", "hf", "--rollout-batch-size", 2, "--mini-batch-size", 2, "--group-size", 2,
                        "--max-response-length", 4, "--no-reflect-text", "--no-reflect-image", "--kl-coef", 0,
                        "--max-steps", 2, "--val-freq", 2, "--save-freq", 1, "--samples-per-step", 2,
                        "--output-dir", out, "--resume", port=29953)
    return out, events, printed.getvalue()


def test_log_lines_reach_the_disk_before_their_checkpoint(run):
    """Broken: a step's metrics.jsonl or samples.jsonl lines are not fsynced before its checkpoint's rename,
    so a machine crash can keep the checkpoint and lose the lines; a resume would never redo them
    (docs/reliability.md, "The run is killed")."""
    out, events, _ = run
    out = out.resolve()  # the paths of the recorded calls are the real ones
    for name in ("metrics.jsonl", "samples.jsonl"):
        lines = (out / name).read_bytes().splitlines(keepends=True)
        per_step = {}
        for line in lines:
            per_step[json.loads(line)["step"]] = per_step.get(json.loads(line)["step"], 0) + len(line)
        assert sorted(per_step) == [1, 2], per_step
        for step in (1, 2):
            renamed = events.index(("rename", out / "checkpoints" / f"step_{step}.tmp",
                                    out / "checkpoints" / f"step_{step}"))
            synced = [size for what, path, size in events[:renamed] if what == "fsync" and path == out / name]
            through_step = sum(size for s, size in per_step.items() if s <= step)
            # the file held the step's lines when it was synced, before the rename made the checkpoint count
            assert synced and synced[-1] == through_step, (name, step, synced, through_step)


def test_rows_over_max_prompt_length_are_counted_in_the_metrics(run):
    """Broken: training or validation rows dropped at load for --max-prompt-length leave no trace in
    metrics.jsonl (data/dropped_long_train, data/dropped_long_val), so a dataset that loses rows goes
    unnoticed."""
    out, _, printed = run
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [(m["data/dropped_long_train"], m["data/dropped_long_val"]) for m in metrics] == [(1, 1), (1, 1)], metrics
    assert "dropped at load: {'train': 1, 'val': 1}" in printed
    assert metrics[1]["val/rows"] == 2  # the long row is not validated


def test_a_first_launch_with_resume_trains_from_step_0_and_says_why(run):
    """Broken: a requeue script's first launch (it passes --resume to every launch) fails for want of a
    checkpoint, or starts at step 0 without a word."""
    out, _, printed = run
    assert f"--resume: no checkpoint in {out / 'checkpoints'} yet, so the run starts at step 0" in printed
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_1", "step_2"]
