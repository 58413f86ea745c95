"""Runs on disk: save, load, find, prune and resume checkpoints, and turn one into a Hugging Face folder.

A checkpoint is `RUN/checkpoints/step_N/`: the model and optimizer as torch.distributed.checkpoint
shards (readable at any world size), `trainer_state.json` (step, the run's config, the LR schedule)
and each rank's RNG states. It is written into `step_N.tmp` and renamed when complete, so a kill
mid-save leaves the older checkpoints as they were. Shared by train_grpo.py, sft.py, merge.py and
evaluate.py. Not here: when to save (the stage scripts' loops), the metrics files' contents.
"""

import json
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from common import rng_states, set_rng_states

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def checkpoint_dirs(out):
    """Complete checkpoints, oldest first (a checkpoint is complete once its folder is renamed)."""
    return sorted((p for p in (out / "checkpoints").glob("step_*") if p.name[5:].isdigit()),
                  key=lambda p: int(p.name[5:]))


def save_checkpoint(model, optimizer, step, config, out, rank, scheduler=None, save_limit=0):
    """Sharded model + optimizer (torch.distributed.checkpoint), step, LR schedule, RNG states.

    Written into step_N.tmp and renamed to step_N when complete: a kill mid-save leaves the previous
    checkpoints as they were. With save_limit, older checkpoints are deleted only after the rename.
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
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(tmp))
    torch.save(rng_states(), tmp / f"rng_rank{rank}.pt")
    dist.barrier()
    if rank == 0:
        state = {"step": step, "config": config}  # a dict: the run's resolved flags
        if scheduler is not None:
            state["scheduler"] = scheduler.state_dict()
        (tmp / "trainer_state.json").write_text(json.dumps(state))
        if final.exists():  # the same step saved again (a resumed run that ends there): the new one wins
            shutil.rmtree(final)
        tmp.rename(final)  # only now does the checkpoint count as complete
        if save_limit:
            for old in checkpoint_dirs(out)[:-save_limit]:
                shutil.rmtree(old)
    dist.barrier()


def load_weights(model, path):
    """Only the model weights of a checkpoint (any world size), e.g. a cold start for a new run."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    state = {"model": get_model_state_dict(model)}
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"])


def load_checkpoint(model, optimizer, path, rank, scheduler=None):
    """Restore a save_checkpoint folder written at any world size; returns its step."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    rng_file = path / f"rng_rank{rank}.pt"
    if rng_file.exists():  # absent when resuming at a larger world size: seeds then come from the step
        set_rng_states(torch.load(rng_file, weights_only=True))  # ByteTensors and a tuple of ints: no pickled code
    state = json.loads((path / "trainer_state.json").read_text())
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    return state["step"]


def start_or_resume(out, resume, config=None, may_change=()):
    """The step a run starts from: 0, or with `resume` the newest complete checkpoint's (the caller then
    loads it), after check_resume_config against `config` (a dict of the run's flags) when given. Only
    then does rank 0 drop what the metrics and samples logs hold beyond that step (it is redone) and
    the half-written step_N.tmp a kill during a save left behind."""
    done = checkpoint_dirs(out) if resume else []
    if done and config is not None:
        check_resume_config(done[-1], config, may_change)
    step = json.loads((done[-1] / "trainer_state.json").read_text())["step"] if done else 0
    if dist.get_rank() == 0 and out.exists():
        for name in ("metrics.jsonl", "samples.jsonl"):
            truncate_log(out / name, step)
        for tmp in (out / "checkpoints").glob("step_*.tmp"):
            shutil.rmtree(tmp)
    return (done[-1] if done else None), step


def check_resume_config(checkpoint, config, may_change):
    """Stop when a resumed run's flags (`config`, a dict) differ from the checkpoint's in a way that changes
    what the run trains (restoring the optimizer would bring back the old lr; another batch size or seed
    re-slices the data), listing every difference. Fields in `may_change` may differ."""
    saved = json.loads((checkpoint / "trainer_state.json").read_text())["config"]
    changed = {k: (saved[k], v) for k, v in config.items() if k in saved and k not in may_change and saved[k] != v}
    if changed:
        lines = [f"--{k.replace('_', '-')}: {old!r} in {checkpoint}, {new!r} now" for k, (old, new) in changed.items()]
        raise SystemExit("--resume: these flags differ from the run being resumed and would change what it "
                         "trains:\n  " + "\n  ".join(lines) + "\nResume with the run's own flags (its "
                         "config.json), or start a new run in another --output-dir. Free to change: "
                         + ", ".join(sorted(may_change)))


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
    """A checkpoint folder, or the newest complete one (by step) of a run folder."""
    path = Path(path)
    if (path / "trainer_state.json").exists():
        return path
    steps = checkpoint_dirs(path)
    if not steps:
        raise SystemExit(f"{path}: neither a checkpoint (no trainer_state.json) nor a run with complete "
                         f"checkpoints under {path / 'checkpoints'}")
    return steps[-1]


def load_trained_model(checkpoint, base_model=None, dtype=None):
    """The base model's architecture with the checkpoint's weights, on CPU. Returns (model, base)."""
    import torch.distributed.checkpoint as dcp
    from transformers import AutoModelForImageTextToText

    checkpoint = find_checkpoint(checkpoint)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    base = base_model or state["config"]["model"]
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32, use_safetensors=True)
    # The checkpoint holds the model under "model" (and the optimizer, not read here) with the
    # same parameter names as this model's state_dict; DCP reshards from any world size.
    model_state = model.state_dict()
    with warnings.catch_warnings():  # "torch.distributed is ... uninitialized": single-process on purpose
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load({"model": model_state}, checkpoint_id=str(checkpoint), no_dist=True)  # fills tensors in place
    model.load_state_dict(model_state)
    if model.config.tie_word_embeddings:
        model.tie_weights()
    config_dtype = getattr(model.config, "dtype", None) or torch.float32
    target = DTYPES[dtype] if dtype else (config_dtype if isinstance(config_dtype, torch.dtype) else DTYPES[str(config_dtype)])
    return model.to(target), base, checkpoint


def export_hf_folder(checkpoint, out, base_model=None, dtype=None, overwrite=False):
    """Write the Hugging Face folder for `checkpoint` into `out` (atomically: a .tmp folder renamed)."""
    from transformers import AutoProcessor, GenerationConfig

    out = Path(out)
    if out.exists() and not overwrite:
        raise SystemExit(f"{out} exists; pass --overwrite to replace it")
    model, base, checkpoint = load_trained_model(checkpoint, base_model, dtype)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    AutoProcessor.from_pretrained(base).save_pretrained(tmp)  # tokenizer, chat template, processors
    try:
        GenerationConfig.from_pretrained(base).save_pretrained(tmp)
    except OSError:  # a base without generation_config.json: keep the one save_pretrained wrote
        pass
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    (tmp / "emo_r3_training.json").write_text(json.dumps(
        {"checkpoint": str(checkpoint), "step": state["step"], "base_model": base, "config": state["config"]}, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
