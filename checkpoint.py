"""Runs on disk: save, load, find, prune and resume checkpoints (export.py turns one into a model).

A checkpoint is `RUN/checkpoints/step_N/` and holds no pickle, so loading one runs no code from it:
- `shard-*.safetensors`, one per rank: the model and the AdamW tensors (exp_avg, exp_avg_sq, step), written
  by torch.distributed.checkpoint's HuggingFaceStorageWriter with each shard's offsets in its safetensors
  header, so that DCP reshards them to any world size when loading;
- `rng_rankR.json`: each rank's RNG states;
- `trainer_state.json`: the step, the run's config, the LR schedule, the optimizer's param_groups (its
  hyper-parameters: the non-tensor part, which DCP's safetensors writer cannot store) and the name and
  size of every other file, which the loaders check before trusting the folder.
It is written into `step_N.tmp`, flushed to disk (fsync) and renamed when complete, so a kill or a machine
crash mid-save leaves the older checkpoints as they were; --resume skips a damaged newest checkpoint and
says why. A folder of the older format (DCP's `.metadata`, a pickle, which runs code when read) is refused:
convert_pickle_checkpoint rewrites one that your own run wrote. Shared by the stage scripts
and export.py. Not here: when to save (the stage scripts' loops), the metrics files' contents.
"""

import base64
import json
import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

import lora
from common import check_shared_folder, lock_run_folder, rng_states, run_folder, set_rng_states

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def checkpoint_dirs(out):
    """Complete checkpoints, oldest first (a checkpoint is complete once its folder is renamed)."""
    return sorted((p for p in (out / "checkpoints").glob("step_*") if p.name[5:].isdigit()),
                  key=lambda p: int(p.name[5:]))


def fsync(path):
    """Flush a file's data, or a folder's entries (files created, renamed or deleted in it), to the disk.
    Without it a power loss can keep a rename but not the data written before it (ext4 and xfs write data
    back later): a complete-looking step_N of empty or zero-filled files."""
    fd = os.open(path, os.O_RDONLY)  # a folder opens read-only too (Linux)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_rng_states(path, states):
    """RNG states as JSON (the generators' ByteTensors in base64): nothing to unpickle when read back."""
    def encode(t):
        return base64.b64encode(t.numpy().tobytes()).decode()
    path.write_text(json.dumps({"torch": encode(states["torch"]), "python": states["python"],
                                **({"cuda": [encode(t) for t in states["cuda"]]} if "cuda" in states else {})}))
    fsync(path)


def load_rng_states(path):
    def decode(text):
        return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)
    saved = json.loads(path.read_text())
    version, internal, gauss = saved["python"]  # random.setstate wants the tuples JSON made lists
    states = {"torch": decode(saved["torch"]), "python": (version, tuple(internal), gauss)}
    if "cuda" in saved:
        states["cuda"] = [decode(text) for text in saved["cuda"]]
    return states


def without_tied_copies(model, state):
    """`state` (a model state dict) without the second name of a tied weight (the embedding and the LM
    head are one Parameter under two names): safetensors refuses to write one memory twice, and loading
    the first name fills both."""
    seen, copies = set(), set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            copies.add(name)
        seen.add(id(param))
    return {name: value for name, value in state.items() if name not in copies}


def saved_part(model, state):
    """What a checkpoint holds of a model state dict: every weight (a tied one once), or for a LoRA model
    its adapter alone (A and B: the base is the run's --model / --init-from, recorded by base_identity)."""
    state = without_tied_copies(model, state)
    if lora.lora_modules(model):
        state = {name: value for name, value in state.items() if lora.is_adapter(name)}
    return state


def base_identity(model_path, init_from=""):
    """What a LoRA checkpoint's base is: the model's path and a hash of its config.json and weight index
    (or safetensors headers), and the --init-from checkpoint it started from with a hash of its file list.
    A resume on another base is refused (start_or_resume), as the adapter means nothing on it."""
    import hashlib

    from transformers.utils import cached_file

    def digest(files):
        h = hashlib.sha256()
        for f in files:
            with open(f, "rb") as stream:
                h.update(stream.read(8 + int.from_bytes(stream.read(8), "little")) if f.endswith(".safetensors")
                         else stream.read())  # a safetensors file: its header only (names, shapes, offsets)
        return h.hexdigest()[:16]

    def local(name):
        return cached_file(model_path, name, _raise_exceptions_for_missing_entries=False)
    index = local("model.safetensors.index.json")
    weights = [index] if index else sorted(str(p) for p in Path(local("config.json")).parent.glob("*.safetensors"))
    identity = {"model": str(model_path), "model_hash": digest([local("config.json"), *weights])}
    if init_from:
        start = find_checkpoint(init_from)
        identity.update(init_from=str(start.resolve()), init_from_hash=digest([str(start / "trainer_state.json")]))
    return identity


def save_checkpoint(model, optimizer, step, config, out, rank, scheduler=None, save_limit=0):
    """Sharded model + optimizer (torch.distributed.checkpoint), step, LR schedule, RNG states.

    Written into step_N.tmp, flushed and renamed to step_N when complete: a kill or a crash mid-save leaves
    the previous checkpoints as they were. With save_limit, older checkpoints are deleted only after the
    rename is on disk.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = out / "checkpoints" / f"step_{step}"
    tmp = out / "checkpoints" / f"step_{step}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    # Tensors only: HuggingFaceStorageWriter would write a non-tensor value (param_groups) as pickled
    # bytes in front of a shard's safetensors data, a file that no longer loads. save_distributed: each
    # rank writes its own shard file with its offsets (DCP fsyncs it); no pickled .metadata is written.
    tensors = {"model": saved_part(model, model_sd), "optimizer": {"state": optim_sd["state"]}}
    dcp.save(tensors, storage_writer=dcp.HuggingFaceStorageWriter(str(tmp), save_distributed=True))
    save_rng_states(tmp / f"rng_rank{rank}.json", rng_states())
    dist.barrier()
    if rank == 0:
        # "files": DCP's safetensors reader loads whatever shards it finds, and a lost one can leave tensors
        # silently half-filled; the loaders compare the folder with this list first (checkpoint_problem).
        state = {"step": step, "config": config,  # config: a dict, the run's resolved flags
                 "param_groups": optim_sd["param_groups"],
                 "files": {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}}
        if scheduler is not None:
            state["scheduler"] = scheduler.state_dict()
        if lora.lora_modules(model):  # an adapter: it holds no base, so it names the one it was trained on
            state["lora"] = lora.settings(model)
            state["lora_base"] = base_identity(config["model"], config.get("init_from", ""))
        (tmp / "trainer_state.json").write_text(json.dumps(state))
        fsync(tmp / "trainer_state.json")
        fsync(tmp)  # the folder's entries for every rank's files
        fsync(tmp.parent)  # step_N.tmp's own entry, before it is renamed
        if final.exists():  # the same step saved again (a resumed run that ends there): the new one wins
            shutil.rmtree(final)
        tmp.rename(final)  # only now does the checkpoint count as complete
        fsync(final.parent)  # the rename itself: only then may older checkpoints go
        if save_limit:
            for old in checkpoint_dirs(out)[:-save_limit]:
                shutil.rmtree(old)
    dist.barrier()


def checkpoint_problem(path):
    """Why the checkpoint folder `path` cannot be loaded, or None. A cheap look at its files (trainer_state.json,
    the size and safetensors header of each file it lists) that gives every rank the same answer; a failed
    load instead can fail on one rank only and leave the others waiting in a collective."""
    from safetensors import safe_open
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except FileNotFoundError:
        return "no trainer_state.json"
    except ValueError as e:  # empty or cut short (JSONDecodeError and UnicodeDecodeError are ValueErrors)
        return f"trainer_state.json is empty or cut short ({e})"
    if not isinstance(state, dict) or not {"step", "config"} <= state.keys():
        return "trainer_state.json has no step or config"
    if "files" not in state:
        if (path / ".metadata").exists():
            return ("a checkpoint of the older format, whose .metadata is a pickle that runs code when read: "
                    "it is not loaded. If your own run wrote it, convert it once with: python -c \"import "
                    f"checkpoint; checkpoint.convert_pickle_checkpoint('{path}')\"")
        return "trainer_state.json lists no files"
    unlisted = {p.name for p in path.glob("*.safetensors")} - set(state["files"])
    if unlisted:  # DCP's reader would load these too
        return f"files not written with this checkpoint: {sorted(unlisted)}"
    for name, size in state["files"].items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, {size} were written (cut short?)"
        if name.endswith(".safetensors"):
            try:
                with safe_open(file, framework="pt"):  # reads and checks the header only
                    pass
            except Exception as e:  # safetensors raises its own error types
                return f"{name} is not a readable safetensors file ({e})"
    return None


def require_loadable(path):
    problem = checkpoint_problem(path)
    if problem:
        raise SystemExit(f"{path}: cannot load this checkpoint: {problem}")


def load_weights(model, path):
    """Only the model weights of a checkpoint (any world size), e.g. a cold start for a new run."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    require_loadable(path)
    if "lora_base" in json.loads((path / "trainer_state.json").read_text()):
        raise SystemExit(f"{path} holds a LoRA adapter, not a model: merge it first (python merge.py {path} --out "
                         f"DIR) and start from DIR with --model")
    model_sd = get_model_state_dict(model)
    # always a HuggingFaceStorageReader: dcp.load(checkpoint_id=...) alone would pick the pickle reader.
    # It fills the tensors in place, the tied copy's too (one memory).
    # a LoRA model's base only: its A and B start fresh
    weights = {name: value for name, value in without_tied_copies(model, model_sd).items() if not lora.is_adapter(name)}
    dcp.load({"model": weights}, storage_reader=dcp.HuggingFaceStorageReader(str(path)))
    set_model_state_dict(model, model_sd)


def load_checkpoint(model, optimizer, path, rank, scheduler=None):
    """Restore a save_checkpoint folder written at any world size; returns its step."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    require_loadable(path)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    tensors = {"model": saved_part(model, model_sd), "optimizer": {"state": optim_sd["state"]}}
    dcp.load(tensors, storage_reader=dcp.HuggingFaceStorageReader(str(path)))  # fills model_sd in place
    state = json.loads((path / "trainer_state.json").read_text())
    # JSON turned tuples (AdamW's betas) into lists; "params" is the list of parameter names
    param_groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in group.items()}
                    for group in state["param_groups"]]
    set_state_dict(model, optimizer, model_state_dict=model_sd,
                   optim_state_dict={"state": tensors["optimizer"]["state"], "param_groups": param_groups})
    rng_file = path / f"rng_rank{rank}.json"
    if rng_file.exists():  # absent when resuming at a larger world size: seeds then come from the step
        set_rng_states(load_rng_states(rng_file))
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    return state["step"]


def newest_loadable(out):
    """The newest checkpoint of the run folder `out` that checkpoint_problem passes (or None), and
    [(folder, why)] for the newer ones it skipped. Every rank reads the same files: the same answer."""
    skipped = []
    for path in reversed(checkpoint_dirs(out)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def open_run(output_dir, default, resume, config, may_change):
    """A stage's run folder (`output_dir`, else the time-stamped `default`), locked for this run before
    anything is written and, on several nodes, one that every node sees; then where the run starts
    (start_or_resume, which refuses a folder holding another run): (out, resume_from, start_step)."""
    out = run_folder(output_dir, default)
    lock_run_folder(out)
    check_shared_folder(out)
    return (out, *start_or_resume(out, resume, config, may_change))


def start_or_resume(out, resume, config=None, may_change=()):
    """The step a run starts from: 0, or with `resume` the newest checkpoint that is complete and intact (the
    caller then loads it), after check_resume_config against `config` (a dict of the run's flags) when given.
    A damaged newer checkpoint (cut short by a machine crash, a lost file) is skipped with a message and
    renamed step_N.bad, so that --save-limit does not keep it over the new ones. Only then does rank 0 drop
    what the metrics and samples logs hold beyond that step (it is redone) and the half-written step_N.tmp
    a kill during a save left behind. Without `resume`, a folder that already holds a run (metrics or
    checkpoints: also one that crashed before its first save) is refused, so two runs never mix.

    With `resume` and no checkpoint yet the run starts at step 0 and rank 0 says why: a requeue script
    passes --resume to its first launch too. A config whose max_steps is below the checkpoint's step is
    refused: the loop would not run, and the run would end naming a checkpoint that does not exist."""
    if not resume and ((out / "metrics.jsonl").exists() or (out / "checkpoints").exists()):
        raise SystemExit(f"{out} already holds a run: pass --resume to continue it, or another --output-dir")
    found, skipped = newest_loadable(out) if resume else (None, [])
    if skipped and found is None:
        raise SystemExit(f"--resume: no checkpoint of {out} can be loaded:\n  " + "\n  ".join(
            f"{path.name}: {why}" for path, why in skipped) + "\nRepair or convert a checkpoint named above, "
            "or start a new run in another --output-dir.")
    if dist.get_rank() == 0:
        for path, why in skipped:
            print(f"--resume: skipping {path}: {why}")
    if found and config is not None:
        check_resume_config(found, config, may_change)
    step = json.loads((found / "trainer_state.json").read_text())["step"] if found else 0
    max_steps = (config or {}).get("max_steps") or 0  # 0: --epochs decide
    if found and 0 < max_steps < step:  # before any file is touched
        raise SystemExit(f"--resume: --max-steps {max_steps} is below the step this run has reached: its newest "
                         f"checkpoint is {found} (step {step}). A resumed run does not go back: pass --max-steps "
                         f"{step} or more to continue it, or use a checkpoint under {out / 'checkpoints'} as it is.")
    if dist.get_rank() == 0 and resume:
        if found is None:  # a requeue script's first launch passes --resume too: not an error
            why = ("the run in it stopped before its first checkpoint: its log lines are dropped and redone"
                   if (out / "metrics.jsonl").exists() else "a first launch: a requeue script passes --resume to each")
            print(f"--resume: no checkpoint in {out / 'checkpoints'} yet, so the run starts at step 0 ({why})")
        elif step == max_steps:
            print(f"--resume: {found} is step {step}, --max-steps {max_steps}: nothing is left to train")
    if dist.get_rank() == 0 and out.exists():
        for path, _ in skipped:  # out of checkpoint_dirs, kept for a look
            shutil.rmtree(path.with_name(path.name + ".bad"), ignore_errors=True)
            path.rename(path.with_name(path.name + ".bad"))
            print(f"--resume: {path.name} renamed {path.name}.bad; resuming from {found.name}")
        for name in ("metrics.jsonl", "samples.jsonl"):
            truncate_log(out / name, step)
        for tmp in (out / "checkpoints").glob("step_*.tmp"):
            shutil.rmtree(tmp)
    return found, step


def same_path(a, b):
    """True when strings `a` and `b` are two spellings of one existing file or folder ("out/cold-start" and
    "/home/me/emo-r3/out/cold-start"): a resumed run given either trains on the same thing."""
    if not (isinstance(a, str) and isinstance(b, str)):  # samefile takes ints as file descriptors: seed 1 vs 2
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:  # either missing or empty, or a name the file system refuses
        return False


def check_resume_config(checkpoint, config, may_change):
    """Stop when a resumed run's flags (`config`, a dict) differ from the checkpoint's in a way that changes
    what the run trains (restoring the optimizer would bring back the old lr; another batch size or seed
    re-slices the data), listing every difference. Fields in `may_change` may differ."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    saved = state["config"]
    if "lora_base" in state:  # an adapter continues only on the base it was trained on
        now = base_identity(config["model"], config.get("init_from", ""))
        if now != state["lora_base"]:
            raise SystemExit(f"--resume: {checkpoint} is a LoRA adapter trained on the base "
                             f"{json.dumps(state['lora_base'])}, and this run's base is {json.dumps(now)}: the "
                             f"adapter means nothing on another base. Resume with the run's own --model and "
                             f"--init-from, as they were.")
    changed = {k: (saved[k], v) for k, v in config.items()
               if k in saved and k not in may_change and saved[k] != v and not same_path(saved[k], v)}
    if changed:
        lines = [f"--{k.replace('_', '-')}: {old!r} in {checkpoint}, {new!r} now" for k, (old, new) in changed.items()]
        raise SystemExit("--resume: these flags differ from the run being resumed and would change what it "
                         "trains:\n  " + "\n  ".join(lines) + "\nResume with the run's own flags (its "
                         "config.json), or start a new run in another --output-dir. Free to change: "
                         + ", ".join(sorted(may_change)))


def check_run_length(resume_from, start_step, total_steps, epochs):
    """With --max-steps 0 a run's length comes from --epochs, known only once the data is loaded (so
    start_or_resume cannot check it): a resumed step past it is refused, as a --max-steps below it is."""
    if start_step > total_steps:
        raise SystemExit(f"--resume: {resume_from} is step {start_step}, past the {total_steps} steps that "
                         f"--epochs {epochs} give; raise --epochs or --max-steps to continue it")


def truncate_log(path, step):
    """Keep the lines of a jsonl log up to `step`: a resumed run redoes the later ones. A line cut
    short by a kill is dropped too. The file is replaced atomically."""
    def keep(line):
        try:
            return json.loads(line)["step"] <= step
        except (json.JSONDecodeError, KeyError, TypeError):
            return False
    if path.exists():
        lines = path.read_text().splitlines(keepends=True)
        kept = [line if line.endswith("\n") else line + "\n" for line in lines if keep(line)]
        if kept != lines:
            path.with_suffix(".tmp").write_text("".join(kept))
            path.with_suffix(".tmp").replace(path)


def find_checkpoint(path):
    """A checkpoint folder, or the newest loadable one (by step) of a run folder."""
    path = Path(path)
    if (path / "trainer_state.json").exists():
        return path
    found, skipped = newest_loadable(path)
    if found is None:
        raise SystemExit(f"{path}: neither a checkpoint (no trainer_state.json) nor a run with a loadable checkpoint "
                         f"under {path / 'checkpoints'}" + "".join(f"\n  {p.name}: {why}" for p, why in skipped))
    if not dist.is_initialized() or dist.get_rank() == 0:
        for folder, why in skipped:
            print(f"skipping {folder}: {why}")
    return found


def convert_pickle_checkpoint(path):
    """Rewrite in place a checkpoint of the older format (DCP's pickled .metadata and .distcp shards, RNG
    states as .pt) in today's, as one shard (it loads at any world size). Reading .metadata unpickles it,
    which can run code: only for folders your own runs wrote. Holds the whole checkpoint in CPU memory."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    path = Path(path)
    with warnings.catch_warnings():  # single-process on purpose; the new files go next to the old ones
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        warnings.filterwarnings("ignore", message="Detected an existing checkpoint")
        dcp_to_torch_save(path, path / "legacy.pt")  # the one place a pickle is read, on purpose
        legacy = torch.load(path / "legacy.pt", weights_only=True)
        tensors = {"model": legacy["model"], "optimizer": {"state": legacy["optimizer"]["state"]}}
        dcp.save(tensors, storage_writer=dcp.HuggingFaceStorageWriter(str(path), save_distributed=True), no_dist=True)
    for rng_file in path.glob("rng_rank*.pt"):
        save_rng_states(rng_file.with_suffix(".json"), torch.load(rng_file, weights_only=True))
    old = [path / ".metadata", path / "legacy.pt", *path.glob("*.distcp"), *path.glob("rng_rank*.pt")]
    state = json.loads((path / "trainer_state.json").read_text())
    state["param_groups"] = legacy["optimizer"]["param_groups"]
    state["files"] = {p.name: p.stat().st_size for p in sorted(path.iterdir())
                      if p not in old and p.name != "trainer_state.json"}
    (path / "trainer_state.json.tmp").write_text(json.dumps(state))  # until this rename, a rerun starts over
    (path / "trainer_state.json.tmp").replace(path / "trainer_state.json")
    for p in old:
        p.unlink()
    print(f"{path}: converted to safetensors shards and JSON")
