"""Runs that cannot collide or silently change: one run per folder, --resume refusing changed flags, user
rewards failing loudly, the weight-sync guard seeing a NaN gap. In-process where possible, through the stage
scripts' main where the guard lives there; the lock's holder a real process (a flock dies with it)."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

import checkpoint
import rewards
import startup
import train_grpo
from rollout import SyncGuard
from test_sft import run_sft, small
from test_train import main_in_process

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


@pytest.fixture
def lock_process():
    """Start a process that holds OUT/.lock through common.lock_run_folder for `seconds` (a run in that folder):
    lock_process(out, seconds, port). Every process started is killed when the test ends, passed or failed."""
    started = []

    def start(out, seconds, port):
        code = LOCK.format(repo=str(REPO), out=str(out), port=port)
        started.append(subprocess.Popen([sys.executable, "-c", code, str(seconds)], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True))
        return started[-1]
    yield start
    for proc in started:  # only the processes this test started
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


class ModelLoaded(Exception):
    """Raised where a stage script would load its model: the run got past every start-up check."""


@pytest.fixture
def no_model_loads(monkeypatch):
    """A tripwire in place of model loading in train_grpo.main and sft.main (both load through
    startup.load_models), so that a start-up check that is missing fails the test at once (ModelLoaded)
    instead of starting the run it should have refused."""
    def load_model(*args, **kwargs):
        raise ModelLoaded("a model was being loaded: the run got past the check under test")
    monkeypatch.setattr(startup, "load_model", load_model)


def grpo_flags(tiny_model_dir, demo_dir, out):
    """A demo-sized train_grpo run in `out` (without --demo's .cache: the session's tiny model and data)."""
    return ["--demo", "--model", tiny_model_dir, "--train-files", demo_dir / "train.jsonl", "--val-files", "",
            "--output-dir", out]


def test_one_run_per_folder(tmp_path, lock_process):
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


def test_both_scripts_refuse_a_folder_another_run_holds(tmp_path, lock_process, no_model_loads, monkeypatch,
                                                       tiny_model_dir, demo_dir):
    """Broken: train_grpo.py or sft.py no longer takes its run folder's lock (lock_run_folder) before it
    writes, so a second run launched into the folder of a running one goes on beside it."""
    out = tmp_path / "run"
    holder = lock_process(out, 120, 29614)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(SystemExit, match="is in use by another run") as refused:
        main_in_process(monkeypatch, *grpo_flags(tiny_model_dir, demo_dir, out), port=29615)
    assert f'"pid": {holder.pid}' in str(refused.value)  # it names the holder
    with pytest.raises(SystemExit, match="is in use by another run") as refused:
        run_sft(monkeypatch, *small(tiny_model_dir, demo_dir, out, "--max-steps", 1))
    assert f'"pid": {holder.pid}' in str(refused.value)
    assert [p.name for p in out.iterdir()] == [".lock"]  # neither wrote anything


def fake_checkpoint(out, step, config):
    """A run folder whose newest checkpoint is step `step` of a run with flags `config`: the trainer_state.json
    that --resume reads before anything is loaded (it lists no shard, so none is looked for)."""
    folder = out / "checkpoints" / f"step_{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"step": step, "config": config, "files": {}}))
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, step + 2)))


def test_train_grpo_resume_refuses_changed_flags_and_a_lower_max_steps(tmp_path, no_model_loads, monkeypatch,
                                                                      tiny_model_dir, demo_dir):
    """Broken: train_grpo.main resumes without comparing its flags with the checkpoint's (start_or_resume
    called without the config), --rollout-batch-size becomes free to change (RESUME_MAY_CHANGE), or a
    --max-steps below the checkpoint's step is taken (the loop would not run, the run would end at once)."""
    out = tmp_path / "run"
    flags = [*grpo_flags(tiny_model_dir, demo_dir, out), "--max-steps", 10]
    fake_checkpoint(out, 6, dataclasses.asdict(train_grpo.parse_config([str(a) for a in flags])))
    for port, change, expected in (
            (29616, ["--lr", "1e-4"], "--lr: 0.001 in .*0.0001 now"),
            (29617, ["--rollout-batch-size", "32"], "--rollout-batch-size: 16 in .*32 now"),
            (29618, ["--max-steps", "4"], r"--max-steps 4 is below the step this run has reached: .*\(step 6\)")):
        with pytest.raises(SystemExit, match=expected):
            main_in_process(monkeypatch, *flags, "--resume", *change, port=port)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 7  # the refusals touched nothing
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_6"]
    # with --max-steps 0 the run's length comes from --epochs, known once the data is loaded: still refused
    with pytest.raises(SystemExit, match=r"is step 6, past the 0 steps that --epochs 0 give"):
        main_in_process(monkeypatch, *flags[:-2], "--max-steps", "0", "--epochs", "0", "--resume", port=29619)


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
            score("a response", "anger", {}, index=7)
        assert "response 7 (answer 'anger')" in str(failed.value) and name in str(failed.value)
    score = rewards.load_reward(reward_fn=f"{tmp_path / 'mine.py'}:extra")
    assert score("x", "anger", {}) == {"overall": 0.5, "format": 0.0, "accuracy": 0.0, "reflect_text": 0.0,
                                       "reflect_image": 0.0, "brevity": 0.25}  # its own key is kept


def test_a_reward_fn_without_its_file_or_function_stops_before_any_model_loads(tmp_path, no_model_loads, monkeypatch,
                                                                               tiny_model_dir, demo_dir):
    """Broken: train_grpo.py finds out that --reward-fn names a missing file or function only at the first
    reward, after the models and the engine were loaded (minutes on a GPU), or stops with a traceback."""
    (tmp_path / "mine.py").write_text("def reward(r, a, t, i):\n    return 1.0\n")
    for port, spec, expected in ((29619, f"{tmp_path / 'missing.py'}:reward", "expected an existing path.py:function"),
                                 (29620, f"{tmp_path / 'mine.py'}:rewrd", "mine.py has no function 'rewrd'")):
        with pytest.raises(SystemExit, match=expected):
            main_in_process(monkeypatch, *grpo_flags(tiny_model_dir, demo_dir, tmp_path / f"run{port}"),
                            "--reward-fn", spec, port=port)


def test_the_sync_guard_counts_a_nan_gap_as_too_high(tmp_path):
    """Broken: a NaN engine-vs-trainer log-prob gap (NaN log-probs on either side) passes as healthy
    (NaN > limit is False), so a run whose engine or trainer computes NaN is never stopped by the guard."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        guard = SyncGuard(1e-3, 2)
        guard.check(1e-6, 1)
        assert guard.high_steps == 0
        guard.check(float("nan"), 2)
        assert guard.high_steps == 1  # warned
        with pytest.raises(SystemExit, match="stayed above 0.001 for 2 steps"):
            guard.check(float("nan"), 3)
    finally:
        dist.destroy_process_group()


def test_demo_builds_only_what_the_run_uses(tmp_path, monkeypatch, tiny_model_dir, demo_dir):
    """--demo with your own --model / --train-files rebuilt the repository's .cache anyway (tests leaked
    into it); it builds the tiny model and the demo data only where the run's paths point at them."""
    import tiny
    monkeypatch.setattr(tiny, "DEFAULT_DIR", tmp_path / "cache" / "tiny")
    monkeypatch.setattr(tiny, "DEMO_DIR", tmp_path / "cache" / "demo")
    monkeypatch.setattr(dist, "get_rank", lambda: 0)  # rank 0 of a world of one, in-process
    monkeypatch.setattr(dist, "barrier", lambda: None)
    tiny.demo_paths(str(tiny_model_dir), [str(demo_dir / "train.jsonl"), ""])
    assert not (tmp_path / "cache").exists()
    tiny.demo_paths(str(tiny_model_dir), [str(tiny.DEMO_DIR / "train.jsonl")])  # the demo data only
    assert (tiny.DEMO_DIR / "demo.json").exists() and not tiny.DEFAULT_DIR.exists()
    tiny.demo_paths(str(tiny.DEFAULT_DIR), [str(demo_dir / "train.jsonl")])  # the tiny model only
    assert (tiny.DEFAULT_DIR / "config.json").exists()
