"""Runs that cannot collide or silently change: one run per folder, --resume refusing changed flags, user
rewards failing loudly. In-process where possible; the lock with real processes (a flock dies with them)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import checkpoint
import rewards
import train_grpo

REPO = Path(__file__).resolve().parents[1]
LOCK = """
import sys, time
sys.path.insert(0, {repo!r})
import torch.distributed as dist
from pathlib import Path
import common
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{port}", rank=0, world_size=1)
common.lock_run_folder(Path({out!r}))
print("locked", flush=True)
time.sleep(float(sys.argv[1]))
"""


def lock_process(out, seconds, port):
    code = LOCK.format(repo=str(REPO), out=str(out), port=port)
    return subprocess.Popen([sys.executable, "-c", code, str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_one_run_per_folder(tmp_path):
    """Two runs on one --output-dir (a requeued job, a relaunch) would delete each other's checkpoints and
    interleave their metrics; a lock left by a crashed run must not block a resume."""
    out = tmp_path / "run"
    holder = lock_process(out, 60, 29611)
    assert holder.stdout.readline().strip() == "locked"
    second = lock_process(out, 0, 29612)
    _, err = second.communicate(timeout=120)
    assert second.returncode != 0 and "is in use by another run" in err and f'"pid": {holder.pid}' in err
    holder.kill()  # a crash: the lock file stays, the kernel's lock goes with the process
    holder.wait()
    assert (out / ".lock").exists()
    third = lock_process(out, 0, 29613)
    assert third.communicate(timeout=120)[0].strip() == "locked" and third.returncode == 0


def test_resume_refuses_changed_flags(tmp_path):
    """Resuming with another --lr would silently train at the checkpoint's lr (the optimizer state brings it
    back); another --seed or --rollout-batch-size re-slices the data."""
    ckpt = tmp_path / "checkpoints" / "step_4"
    ckpt.mkdir(parents=True)
    saved = {"lr": 1e-3, "seed": 1, "rollout_batch_size": 16, "max_steps": 10, "val_freq": 5}
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 4, "config": saved}))
    may = train_grpo.RESUME_MAY_CHANGE
    checkpoint.check_resume_config(ckpt, {**saved, "max_steps": 20, "val_freq": 1}, may)  # extend, validate more
    with pytest.raises(SystemExit) as refused:
        checkpoint.check_resume_config(ckpt, {**saved, "lr": 1e-4, "seed": 2, "max_steps": 20}, may)
    message = str(refused.value)
    assert "--lr: 0.001 in" in message and "0.0001 now" in message and "--seed: 1 in" in message
    assert "--max-steps" not in message.split("Free to change")[0]  # allowed changes are not listed as faults
    with pytest.raises(SystemExit, match="--resume needs --output-dir"):
        train_grpo.parse_config(["--demo", "--resume"])


def test_resume_accepts_another_spelling_of_the_same_path(tmp_path, monkeypatch):
    """A run started with --init-from /abs/out/cold-start and resumed with --init-from out/cold-start (the same
    folder) was refused as a changed flag. Another folder is still refused."""
    (tmp_path / "out" / "cold-start").mkdir(parents=True)
    (tmp_path / "out" / "other").mkdir()
    ckpt = tmp_path / "run" / "checkpoints" / "step_4"
    ckpt.mkdir(parents=True)
    saved = {"init_from": str(tmp_path / "out" / "cold-start"), "lr": 1e-3}
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 4, "config": saved}))
    monkeypatch.chdir(tmp_path)
    may = train_grpo.RESUME_MAY_CHANGE
    checkpoint.check_resume_config(ckpt, {**saved, "init_from": "out/cold-start"}, may)
    checkpoint.check_resume_config(ckpt, {**saved, "init_from": "out/../out/cold-start/"}, may)
    for other in ("out/other", "out/missing"):
        with pytest.raises(SystemExit, match="--init-from"):
            checkpoint.check_resume_config(ckpt, {**saved, "init_from": other}, may)


def test_user_rewards_fail_loudly(tmp_path):
    """A --reward-fn whose dict lacks "overall" scored 0 for everything: the run learned nothing, silently.
    A NaN or inf reward made its whole group's advantages NaN and the update was skipped, silently too."""
    (tmp_path / "mine.py").write_text(
        "def no_overall(r, a, t, i):\n    return {'accuracy': 1.0}\n"
        "def text(r, a, t, i):\n    return {'overall': 'high'}\n"
        "def broken(r, a, t, i):\n    raise KeyError('label')\n"
        "def nan(r, a, t, i):\n    return float('nan')\n"
        "def inf(r, a, t, i):\n    return {'overall': 1.0, 'accuracy': float('-inf')}\n"
        "def extra(r, a, t, i):\n    return {'overall': 0.5, 'brevity': 0.25}\n")
    for name, expected in (("no_overall", "has no 'overall'"), ("text", "not numbers: {'overall': 'high'}"),
                           ("broken", "the function raised KeyError"), ("nan", "not finite: {'overall': nan}"),
                           ("inf", "not finite: {'accuracy': -inf}")):
        score = rewards.load_reward(reward_fn=f"{tmp_path / 'mine.py'}:{name}")
        with pytest.raises(SystemExit, match=expected) as failed:
            score("a response", "anger", None, None, index=7)
        assert "response 7 (answer 'anger')" in str(failed.value) and name in str(failed.value)
    score = rewards.load_reward(reward_fn=f"{tmp_path / 'mine.py'}:extra")
    assert score("x", "anger", None, None) == {"overall": 0.5, "format": 0.0, "accuracy": 0.0, "reflect_text": 0.0,
                                               "reflect_image": 0.0, "brevity": 0.25}  # its own key is kept


def test_demo_builds_only_what_the_run_uses(tmp_path, monkeypatch, tiny_model_dir, demo_dir):
    """--demo with your own --model / --train-files rebuilt the repository's .cache anyway (tests leaked
    into it); it builds the tiny model and the demo data only where the run's paths point at them."""
    import common
    import tiny
    monkeypatch.setattr(tiny, "DEFAULT_DIR", tmp_path / "cache" / "tiny")
    monkeypatch.setattr(tiny, "DEMO_DIR", tmp_path / "cache" / "demo")
    monkeypatch.setattr(common.dist, "get_rank", lambda: 0)  # rank 0 of a world of one, in-process
    monkeypatch.setattr(common.dist, "barrier", lambda: None)
    common.demo_paths(str(tiny_model_dir), [str(demo_dir / "train.jsonl"), ""])
    assert not (tmp_path / "cache").exists()
    common.demo_paths(str(tiny_model_dir), [str(tiny.DEMO_DIR / "train.jsonl")])  # the demo data only
    assert (tiny.DEMO_DIR / "demo.json").exists() and not tiny.DEFAULT_DIR.exists()
    common.demo_paths(str(tiny.DEFAULT_DIR), [str(demo_dir / "train.jsonl")])  # the tiny model only
    assert (tiny.DEFAULT_DIR / "config.json").exists()
