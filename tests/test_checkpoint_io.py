"""Checkpoints on disk: a pickle-free round trip of everything a resume needs (also across world sizes),
--save-limit deleting only after a complete save, fsync before and after the rename, and --resume falling
back from a damaged newest checkpoint. In-process worlds of one on a small tied-weight module (~0.1 s a
save); one torchrun for the 2 -> 1 rank reshard."""

import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn

import checkpoint

REPO = Path(__file__).resolve().parents[1]


class Tied(nn.Module):
    """An embedding, a layer and an LM head tied to the embedding, as Qwen2.5-VL's small models."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(32, 16)
        self.body = nn.Linear(16, 16)
        self.head = nn.Linear(16, 32, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.body(self.embed(ids))))


def trained(seed=0, steps=2):
    """A sharded Tied model, its AdamW (betas a tuple, as the trainer's) and LR schedule after `steps` updates."""
    from torch.distributed.fsdp import fully_shard
    torch.manual_seed(seed)
    model = Tied()
    fully_shard(model.body)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.9), weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 4))
    for _ in range(steps):
        model(torch.randint(0, 32, (24,))).logsumexp(-1).mean().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return model, optimizer, scheduler


def full(model, optimizer):
    """{name: full tensor} of the weights and the AdamW state, and the param_groups."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
    model_sd, optim_sd = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    tensors = {**model_sd, **{f"{name}/{key}": value for name, state in optim_sd["state"].items()
                              for key, value in state.items()}}
    return {k: v.detach().clone() for k, v in tensors.items()}, optim_sd["param_groups"]


@contextlib.contextmanager
def world_of_one(folder):
    """An in-process gloo world of one (a file rendezvous: no port to collide with other tests)."""
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.fixture
def world(tmp_path):
    with world_of_one(tmp_path):
        yield


def save(out, step, save_limit=0, seed=0):
    model, optimizer, scheduler = trained(seed)
    checkpoint.save_checkpoint(model, optimizer, step, {"lr": 1e-2, "model": "tied"}, out, 0, scheduler, save_limit)
    return out / "checkpoints" / f"step_{step}"


def steps_on_disk(out):
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def test_round_trip_restores_everything_without_pickle(world, tmp_path):
    """A resume would silently change the weights, the AdamW moments or step, its hyper-parameters or the LR
    schedule; or a checkpoint would again hold a pickle (.metadata, .distcp, .pt)."""
    model, optimizer, scheduler = trained()
    checkpoint.save_checkpoint(model, optimizer, 2, {"lr": 1e-2}, tmp_path, 0, scheduler)
    saved_tensors, saved_groups = full(model, optimizer)
    folder = tmp_path / "checkpoints" / "step_2"
    assert {p.suffix for p in folder.iterdir()} == {".safetensors", ".json"}

    model2, optimizer2, scheduler2 = trained(seed=1, steps=1)  # other weights, moments, step and lr
    assert checkpoint.load_checkpoint(model2, optimizer2, folder, 0, scheduler2) == 2
    loaded_tensors, loaded_groups = full(model2, optimizer2)
    assert saved_tensors.keys() == loaded_tensors.keys() and any(k.endswith("/exp_avg_sq") for k in saved_tensors)
    assert [k for k in saved_tensors if not torch.equal(saved_tensors[k], loaded_tensors[k])] == []
    assert loaded_groups == saved_groups and optimizer2.param_groups[0]["betas"] == (0.8, 0.9)
    assert scheduler2.state_dict() == scheduler.state_dict()
    assert model2.head.weight is model2.embed.weight  # still tied


def test_rng_streams_continue_after_a_load(world, tmp_path):
    """A resumed run would draw other random numbers (sampling seeds, dropout) than the run it continues."""
    model, optimizer, scheduler = trained()
    random.seed(3)
    torch.manual_seed(3)
    checkpoint.save_checkpoint(model, optimizer, 1, {}, tmp_path, 0, scheduler)
    expected = (torch.rand(4), random.random())
    torch.manual_seed(99)
    random.seed(99)
    checkpoint.load_checkpoint(model, optimizer, tmp_path / "checkpoints" / "step_1", 0, scheduler)
    drawn = (torch.rand(4), random.random())
    assert torch.equal(drawn[0], expected[0]) and drawn[1] == expected[1]


RESHARD = """
import sys
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
from pathlib import Path
import torch, torch.distributed as dist
import checkpoint, common, test_checkpoint_io as t
dist.init_process_group("gloo")
model, optimizer, scheduler = t.trained()
checkpoint.save_checkpoint(model, optimizer, 2, {{}}, Path({out!r}), dist.get_rank(), scheduler)
tensors, groups = t.full(model, optimizer)  # a collective: on every rank
if dist.get_rank() == 0:
    torch.save(tensors, Path({out!r}) / "expected.pt")
dist.destroy_process_group()
common.exit_process()  # as the stage scripts end: Python's shutdown aborted a rank in 2 launches of 110
"""


def test_two_rank_checkpoint_loads_on_one_rank(world, tmp_path):
    """A checkpoint written on 2 ranks (one safetensors shard each) would not resume, or merge, on 1."""
    script = tmp_path / "save2.py"
    script.write_text(RESHARD.format(repo=str(REPO), tests=str(REPO / "tests"), out=str(tmp_path)))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-port",
                             "29741", str(script)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    folder = tmp_path / "checkpoints" / "step_2"
    assert len(list(folder.glob("shard-*.safetensors"))) == 2
    expected = torch.load(tmp_path / "expected.pt", weights_only=True)
    model, optimizer, scheduler = trained(seed=1, steps=1)
    checkpoint.load_checkpoint(model, optimizer, folder, 0, scheduler)
    loaded, _ = full(model, optimizer)
    assert [k for k in expected if not torch.equal(expected[k], loaded[k])] == []


def test_save_limit_deletes_only_after_the_new_checkpoint_is_complete(world, tmp_path, monkeypatch):
    """--save-limit would delete the older checkpoints while the new one can still fail, or keep too many."""
    for step in (1, 2, 3):
        save(tmp_path, step, save_limit=2)
    assert steps_on_disk(tmp_path) == ["step_2", "step_3"]

    def fails(*args, **kwargs):
        raise OSError("disk full")
    with monkeypatch.context() as m:  # the shards cannot be written
        m.setattr(dcp, "save", fails)
        with pytest.raises(OSError):
            save(tmp_path, 4, save_limit=1)
    with monkeypatch.context() as m:  # everything is written but the rename fails
        m.setattr(Path, "rename", fails)
        with pytest.raises(OSError):
            save(tmp_path, 5, save_limit=1)
    assert checkpoint.checkpoint_dirs(tmp_path) == [tmp_path / "checkpoints" / n for n in ("step_2", "step_3")]

    events = []  # in order: the deletions must come after the rename is flushed to disk
    real_fsync, real_rmtree = checkpoint.fsync, shutil.rmtree

    def fsync(path):
        events.append(("fsync", Path(path), (tmp_path / "checkpoints" / "step_6").exists()))
        real_fsync(path)

    def rmtree(path, **kwargs):
        events.append(("rmtree", Path(path), None))
        real_rmtree(path, **kwargs)
    monkeypatch.setattr(checkpoint, "fsync", fsync)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    save(tmp_path, 6, save_limit=1)
    assert [p.name for p in checkpoint.checkpoint_dirs(tmp_path)] == ["step_6"]  # (the failed .tmp go at --resume)
    renamed_and_flushed = events.index(("fsync", tmp_path / "checkpoints", True))
    deleted = [i for i, (what, path, _) in enumerate(events) if what == "rmtree" and path.name in ("step_2", "step_3")]
    assert len(deleted) == 2 and renamed_and_flushed < min(deleted)


def test_save_fsyncs_every_file_and_the_folders_around_the_rename(world, tmp_path, monkeypatch):
    """A machine crash (power loss, kernel panic) could leave a complete-looking step_N of empty files."""
    synced = []
    real_fsync = os.fsync

    def record(fd):
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        synced.append((path, (tmp_path / "checkpoints" / "step_1").exists()))
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", record)
    save(tmp_path, 1)
    tmp = tmp_path / "checkpoints" / "step_1.tmp"
    files = {p for p, _ in synced if p.parent == tmp}
    assert {p.name for p in files} == {"trainer_state.json", "rng_rank0.json",
                                       "shard-00001-model-00001-of-00001.safetensors"}  # the last by DCP
    assert (tmp, False) in synced  # the folder's entries, before the rename
    folder_syncs = [renamed for p, renamed in synced if p == tmp_path / "checkpoints"]
    assert folder_syncs == [False, True]  # before and after the rename


DAMAGE = {
    "empty trainer_state.json": lambda c: (c / "trainer_state.json").write_text(""),
    "trainer_state.json cut short": lambda c: (c / "trainer_state.json").write_text(
        (c / "trainer_state.json").read_text()[:40]),
    "no trainer_state.json": lambda c: (c / "trainer_state.json").unlink(),
    "a missing shard": lambda c: next(c.glob("shard-*")).unlink(),
    "an empty shard": lambda c: next(c.glob("shard-*")).write_bytes(b""),
    "a shard cut short": lambda c: os.truncate(next(c.glob("shard-*")), next(c.glob("shard-*")).stat().st_size - 100),
    "a zero-filled shard (xfs after a crash)": lambda c: next(c.glob("shard-*")).write_bytes(
        bytes(next(c.glob("shard-*")).stat().st_size)),
    "an RNG file cut short": lambda c: os.truncate(c / "rng_rank0.json", 10),
    "a stray shard": lambda c: shutil.copy(next(c.glob("shard-*")), c / "shard-00009-model-00001-of-00001.safetensors"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_resume_falls_back_from_a_damaged_newest_checkpoint(world, tmp_path, capsys, damage):
    """--resume would crash (or hang the other ranks) on a checkpoint a machine crash left damaged, or
    load it silently half-filled, instead of continuing from the previous one and saying why."""
    save(tmp_path, 1)
    newest = save(tmp_path, 2)
    DAMAGE[damage](newest)
    found, step = checkpoint.start_or_resume(tmp_path, True)
    assert (found, step) == (tmp_path / "checkpoints" / "step_1", 1)
    out = capsys.readouterr().out
    assert f"skipping {newest}: " in out and "resuming from step_1" in out
    assert steps_on_disk(tmp_path) == ["step_1", "step_2.bad"]  # kept for a look, out of --save-limit's count
    model, optimizer, scheduler = trained(seed=1)
    assert checkpoint.load_checkpoint(model, optimizer, found, 0, scheduler) == 1


def test_resume_stops_when_no_checkpoint_loads(world, tmp_path):
    """--resume would start over from step 0 (or crash on a traceback) when every checkpoint is damaged."""
    for step in (1, 2):
        DAMAGE["a shard cut short"](save(tmp_path, step))
    with pytest.raises(SystemExit) as stopped:
        checkpoint.start_or_resume(tmp_path, True)
    message = str(stopped.value)
    assert "no checkpoint" in message and "step_1: shard-" in message and "step_2: shard-" in message
    assert "cut short" in message
    assert steps_on_disk(tmp_path) == ["step_1", "step_2"]  # nothing renamed or deleted
    with pytest.raises(SystemExit, match="cannot load this checkpoint"):  # and the loaders say so too
        model, optimizer, _ = trained()
        checkpoint.load_checkpoint(model, optimizer, tmp_path / "checkpoints" / "step_2", 0)


def test_resume_without_a_checkpoint_starts_at_step_0_and_says_why(world, tmp_path, capsys):
    """Broken: --resume into a folder without a checkpoint (a requeue script's first launch, or a run that
    stopped before its first save) stops, or starts over in silence, keeping the old run's log lines."""
    new = tmp_path / "new"
    assert checkpoint.start_or_resume(new, True, {"max_steps": 5}) == (None, 0)
    assert capsys.readouterr().out == (f"--resume: no checkpoint in {new / 'checkpoints'} yet, so the run starts at "
                                       f"step 0 (a first launch: a requeue script passes --resume to each)\n")
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    (crashed / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    assert checkpoint.start_or_resume(crashed, True, {"max_steps": 5}) == (None, 0)
    printed = capsys.readouterr().out
    assert f"--resume: no checkpoint in {crashed / 'checkpoints'} yet, so the run starts at step 0" in printed
    assert "stopped before its first checkpoint" in printed
    assert (crashed / "metrics.jsonl").read_text() == ""  # its lines are redone


def test_resume_refuses_a_max_steps_below_the_checkpoint(world, tmp_path, capsys):
    """Broken: a resume with --max-steps below the checkpoint's step runs no step and ends naming a checkpoint
    that does not exist (exit 0), or deletes the log lines past --max-steps."""
    save(tmp_path, 3)
    (tmp_path / "metrics.jsonl").write_text("".join(f'{{"step": {s}}}\n' for s in (1, 2, 3)))
    with pytest.raises(SystemExit, match=f"--max-steps 2 is below the step this run has reached: its newest "
                                         f"checkpoint is {tmp_path / 'checkpoints' / 'step_3'} \\(step 3\\)"):
        checkpoint.start_or_resume(tmp_path, True, {"max_steps": 2, "lr": 1e-2, "model": "tied"})
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3  # refused before touching anything
    assert checkpoint.start_or_resume(tmp_path, True, {"max_steps": 0, "lr": 1e-2})[1] == 3  # 0: --epochs decide
    assert checkpoint.start_or_resume(tmp_path, True, {"max_steps": 3})[1] == 3
    assert "step 3, --max-steps 3: nothing is left to train" in capsys.readouterr().out


def legacy_checkpoint(folder, model, optimizer, scheduler):
    """A checkpoint as the older save_checkpoint wrote it: DCP's default (pickle) format, RNG states as .pt."""
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from common import rng_states
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(folder))
    torch.save(rng_states(), folder / "rng_rank0.pt")
    state = {"step": 3, "config": {}, "scheduler": scheduler.state_dict()}
    (folder / "trainer_state.json").write_text(json.dumps(state))


def test_older_pickle_checkpoints_are_refused_then_converted(world, tmp_path):
    """A checkpoint of the older format would be unpickled without a word (code runs), or a run saved
    before the change could not be continued at all."""
    model, optimizer, scheduler = trained()
    folder = tmp_path / "checkpoints" / "step_3"
    legacy_checkpoint(folder, model, optimizer, scheduler)
    expected, groups = full(model, optimizer)
    with pytest.raises(SystemExit, match="pickle that runs code.*convert_pickle_checkpoint"):
        checkpoint.start_or_resume(tmp_path, True)

    checkpoint.convert_pickle_checkpoint(folder)
    assert {p.suffix for p in folder.iterdir()} == {".safetensors", ".json"}
    assert checkpoint.start_or_resume(tmp_path, True) == (folder, 3)
    model2, optimizer2, scheduler2 = trained(seed=1, steps=1)
    assert checkpoint.load_checkpoint(model2, optimizer2, folder, 0, scheduler2) == 3
    loaded, loaded_groups = full(model2, optimizer2)
    assert [k for k in expected if not torch.equal(expected[k], loaded[k])] == [] and loaded_groups == groups
