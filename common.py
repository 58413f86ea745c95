"""What every stage script needs and none should spell out again: the plumbing under train_grpo.py,
sft.py and evaluate.py.

- flags from a dataclass (`parse_flags`: one flag per field, its comment as the help);
- torchrun and the process group (`setup_distributed`: gloo on CPU, `cpu:gloo,cuda:nccl` on GPU),
  `require_cuda`, `print0`, RNG states, the run folder (its lock, and on several nodes the check that
  every node sees it), the demo's model and data;
- the metrics `Tracker`, `timed`, `sum_over_ranks` (scalar totals of every rank), `seed_for`.
Imports no module of ours.

Not here: anything about GRPO (train_grpo.py), loading and sharding a model (model.py), the rollout
engines (engines.py), how a micro-batch is packed and scored (packing.py), checkpoints (checkpoint.py).
"""

import argparse
import dataclasses
import datetime
import json
import os
import random
import sys
import time
import typing
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist


# --- flags ------------------------------------------------------------------------------------------

def config_parser(config_class, description):
    """An argparse parser with one flag per dataclass field (--rollout-batch-size, --no-reflect-image,
    ...); each flag's help is the field's comment (in the class or the base class that declares it),
    continued on the comment lines indented under it, and a Literal field's values are its choices.
    Shared by the stage scripts."""
    import inspect
    import re
    comments, field = {}, None  # a field's comment, with the more-indented comment lines under it
    sources = [inspect.getsource(c) for c in reversed(config_class.__mro__) if dataclasses.is_dataclass(c)]
    for line in "\n".join(sources).splitlines():
        if match := re.match(r"^ {4}(\w+): [^=#]+= .*?#\s*(.*)$", line):
            field, comments[match[1]] = match[1], match[2]
        elif field and (match := re.match(r"^ {5,}#\s*(.*)$", line)):
            comments[field] += " " + match[1]
        else:
            field = None
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(config_class):
        flag = "--" + f.name.replace("_", "-")
        help_text = comments.get(f.name, "").replace("%", "%%") + " (default: %(default)s)"
        if f.type is bool or f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        elif typing.get_origin(f.type) is typing.Literal:  # the values the flag may take, listed by --help
            choices = typing.get_args(f.type)
            parser.add_argument(flag, type=type(choices[0]), choices=choices, default=f.default, help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            parser.add_argument(flag, type=kind, default=f.default, help=help_text)
    return parser


RECIPE_DIR = Path(__file__).resolve().parent / "recipes"


def parse_flags(config_class, description, argv=None, demo_defaults=None, check=None):
    """A config_class instance from the command line: field defaults, then with --demo `demo_defaults`,
    then the --recipe file's values (when the class has a `recipe` field), then the flags given; nothing
    is rewritten after parsing. `check(config, printing)` validates it (printing: only --print-config, so
    the data and model a run needs may be left out). --print-config prints the result as JSON and exits,
    before the caller loads anything."""
    parser = config_parser(config_class, description)
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (defaults, --demo, --recipe and flags) as JSON and exit")
    argv = sys.argv[1:] if argv is None else list(argv)
    if demo_defaults and "--demo" in argv:
        parser.set_defaults(**demo_defaults)
    recipe = getattr(parser.parse_known_args(argv)[0], "recipe", "")
    if recipe:
        parser.set_defaults(**recipe_values(parser, recipe))
    args = vars(parser.parse_args(argv))
    print_config = args.pop("print_config")
    config = config_class(**args)
    if check is not None:
        check(config, print_config)
    if print_config:
        print(json.dumps(dataclasses.asdict(config), indent=1))
        raise SystemExit(0)
    return config


def recipe_values(parser, recipe):
    """{field: value} a recipe sets: recipes/NAME.flags (or a file of that form): flags as on the command
    line, any number per line, `#` starting a comment (where each value comes from)."""
    import shlex
    path = Path(recipe) if Path(recipe).is_file() else RECIPE_DIR / f"{recipe}.flags"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in RECIPE_DIR.glob("*.flags")))
        raise SystemExit(f"--recipe {recipe}: no recipe file {path} (recipes: {known}; or give a file's path)")
    tokens = [token for line in path.read_text().splitlines() for token in shlex.split(line, comments=True)]
    if any(t == "--recipe" or t.startswith("--recipe=") for t in tokens):
        raise SystemExit(f"{path}: a recipe cannot name another recipe")
    given, unknown = parser.parse_known_args(tokens)
    if unknown:
        raise SystemExit(f"{path}: not flags of this script: {' '.join(unknown)}")
    base = vars(parser.parse_args([]))
    return {k: v for k, v in vars(given).items() if v != base[k] and k != "print_config"}


# --- processes --------------------------------------------------------------------------------------

def process_group_backend(use_cuda):
    """The default process group's backend: gloo for CPU tensors, plus NCCL for CUDA tensors on a GPU.

    NCCL takes CUDA tensors only: an all_reduce of a CPU tensor on a plain "nccl" group fails with "No
    backend type associated with device type cpu". Small counts (micro-batch numbers, token totals,
    metric sums) live on the CPU, so the group covers both device types, as verl does; object
    collectives (all_gather_object) then also travel over gloo, on the CPU.
    """
    return "cpu:gloo,cuda:nccl" if use_cuda else "gloo"


def setup_distributed(timeout_minutes=30.0):
    """torchrun sets RANK/WORLD_SIZE/...; a plain `python train_grpo.py` becomes a world of one.

    `timeout_minutes` bounds every collective wait (gloo and NCCL alike): a rank that dies or hangs on
    another node ends the run with a timeout error on the others instead of a silent wait forever.
    The stage scripts pass their --dist-timeout-minutes.
    """
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1"),
                       ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(29500 + os.getpid() % 1000))):
        os.environ.setdefault(key, value)
    if timeout_minutes <= 0:
        raise SystemExit(f"--dist-timeout-minutes must be > 0, got {timeout_minutes}")
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        dist.init_process_group(process_group_backend(True), device_id=device, timeout=timeout)
    else:
        device = torch.device("cpu")
        dist.init_process_group(process_group_backend(False), timeout=timeout)
    return dist.get_rank(), dist.get_world_size(), device


def exit_process(code=0):
    """Leave a finished run here, without the interpreter's shutdown. Called by the stage scripts after
    main() returned: files closed, engine closed, process group destroyed.

    FSDP2's modules keep the gloo group alive past destroy_process_group, and gloo's worker threads free
    a collective's tensors only after the rank waiting on it has moved on. Freeing a tensor Python has
    seen needs the GIL; a thread that asks for it while Python shuts down is ended inside a C++ destructor
    and the process aborts ("terminate called without an active exception"): a failed torchrun for a run
    that finished (BENCHMARKS.md, "Teardown": how often). os._exit skips that shutdown, and with it
    the atexit handlers: Tracker.close ends wandb and tensorboard before."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def require_cuda(allow_cpu, demo=False):
    """Stop before loading a real model on CPU by accident (an old NVIDIA driver makes torch fall back
    to CPU without a word): the CPU is for --demo and the tests, or when asked for with --allow-cpu."""
    if demo or allow_cpu or torch.cuda.is_available():
        return
    raise SystemExit(
        f"CUDA is not usable here (torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}: "
        f"torch.cuda.is_available() is False). The pinned GPU stack (torch 2.14, vLLM 0.33) is built for CUDA 13 "
        f'and needs an NVIDIA driver >= 580: check `nvidia-smi`, or see the README, "The stack and the driver", for a '
        f"CUDA 12 stack. To run on the CPU anyway (slow: hours per step for a 3B model), pass --allow-cpu.")


def rng_states():
    """This process's RNG states: torch (CPU), Python, and every CUDA device's where there is CUDA."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {})}


def set_rng_states(states):
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def seed_for(seed, step=None, rank=0, attempt=0, question=0, data_order=False):
    """Every seed a run derives from --seed, in one place (each part moves it by its own prime, so two
    streams that differ in any part do not share a seed):
    - a step's rollout on a rank, DAPO draw `attempt` (0, 1, ...): seed_for(seed, step, rank, attempt);
      validation after step s: seed_for(seed, s, rank)
    - re-ask question k (1, 2, ...: its place in rewards.REASKS) on top of a sampling seed s already
      derived (the rollout's, or evaluate.py's per batch): seed_for(s, question=k)
    - the prompt order of DAPO draw `attempt`: seed_for(seed, attempt=attempt, data_order=True); draw 0 is
      --seed's own order, the one a run without the filter takes
    The values are those of earlier versions, so their runs reproduce."""
    if data_order:
        return seed + 7777 * attempt
    base = seed if step is None else seed * 7919 + step * 100003 + rank * 1009
    return base + 50021 * attempt + 500009 * question


def print0(*args, **kwargs):
    if dist.get_rank() == 0:
        print(*args, **kwargs, flush=True)


def run_folder(output_dir, default):
    """The run's output folder: `output_dir`, or a new timestamped one chosen by rank 0 (e.g. default
    "runs/emo-r3-%Y%m%d-%H%M%S"), the same on every rank."""
    name = [output_dir or time.strftime(default)]
    dist.broadcast_object_list(name, src=0)
    return Path(name[0])


def lock_run_folder(out):
    """Hold `out/.lock` for this process's lifetime (rank 0 takes it for the run; every rank learns the
    outcome). A second run on the same folder (a requeued job, a relaunch during model loading) stops
    here, before it writes anything, naming the holder. The lock is the kernel's (flock): it dies with
    its process, so a lock file left by a crashed run never blocks a resume."""
    import fcntl
    import socket
    error = None
    if dist.get_rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / ".lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            handle.seek(0), handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv}))
            handle.flush()
            lock_run_folder.handle = handle  # kept open (and locked) until the process ends
        except BlockingIOError:
            handle.seek(0)
            error = (f"{out} is in use by another run ({handle.read().strip() or 'holder unknown'}); wait for it "
                     f"to end, stop it, or choose another --output-dir")
    errors = [error]
    dist.broadcast_object_list(errors, src=0)
    if errors[0]:
        raise SystemExit(errors[0])


def check_shared_folder(out, poll_seconds=10.0):
    """Stop unless every rank sees one and the same `out` (the run folder). Checkpoints are written by
    every rank into it and read back whole: on nodes that each have a folder of their own, a run would
    save checkpoints that are silently incomplete. Each rank writes a marker under a name rank 0 drew
    for this launch (so markers of an earlier launch cannot fool it); rank 0 looks each one up by name
    (not by listing the folder, which a network file system may serve from a stale cache) for up to
    `poll_seconds`, and every rank learns the outcome."""
    import socket
    import uuid
    rank, world_size = dist.get_rank(), dist.get_world_size()
    token, hosts = [uuid.uuid4().hex], [None] * world_size
    dist.broadcast_object_list(token, src=0)
    dist.all_gather_object(hosts, socket.gethostname())
    marks = out / f".ranks-{token[0]}"
    marks.mkdir(parents=True, exist_ok=True)
    (marks / str(rank)).write_text(hosts[rank])
    dist.barrier()
    error = None
    if rank == 0:
        deadline = time.monotonic() + poll_seconds
        while missing := [r for r in range(world_size) if not (marks / str(r)).exists()]:
            if time.monotonic() > deadline:
                where = sorted({hosts[r] for r in missing})
                error = (f"--output-dir {out} is not one shared folder: rank 0 ({hosts[0]}) cannot see what ranks "
                         f"{missing} (on {', '.join(where)}) wrote there. Every node must see the same folder "
                         f"(a shared file system) or the checkpoints are incomplete; use a path on shared "
                         f"storage, the same on every node.")
                break
            time.sleep(0.5)
    errors = [error]
    dist.broadcast_object_list(errors, src=0)  # after rank 0 has looked: every marker may go
    (marks / str(rank)).unlink(missing_ok=True)
    dist.barrier()
    if rank == 0 or errors[0]:
        try:
            marks.rmdir()  # each node's own copy, where the folder is not shared
        except OSError:
            pass
    if errors[0]:
        raise SystemExit(errors[0])


# --- outputs ----------------------------------------------------------------------------------------

class Tracker:
    """A run's record, rank 0 only: config.json, metrics.jsonl, with `samples` samples.jsonl (lines of
    sample rollouts), and wandb / tensorboard when asked for and installed."""

    def __init__(self, config, out, loggers="", samples=False):
        (out / "config.json").write_text(json.dumps(config, indent=1))
        self.file = open(out / "metrics.jsonl", "a")
        self.samples = open(out / "samples.jsonl", "a") if samples else None
        self.backends, self.closers = [], []
        for name in filter(None, loggers.split(",")):
            try:
                if name == "wandb":
                    import wandb
                    wandb.init(project="emo-r3", config=config, dir=str(out))
                    self.backends.append(lambda m, step: wandb.log(m, step=step))
                    self.closers.append(wandb.finish)
                elif name == "tensorboard":
                    from torch.utils.tensorboard import SummaryWriter
                    writer = SummaryWriter(str(out / "tensorboard"))
                    self.backends.append(lambda m, step: [writer.add_scalar(k, v, step) for k, v in m.items()])
                    self.closers.append(writer.close)
            except ImportError:
                print(f"logger {name!r} is not installed; metrics go to metrics.jsonl only")

    def log(self, metrics, step, samples=()):
        """One step's metrics line, and its samples.jsonl lines, on disk before the step's checkpoint is (a
        machine crash keeps both or the lines)."""
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        for f, lines in ((self.file, ()), (self.samples, samples)):
            if f is not None:
                f.writelines(lines)
                f.flush()
                os.fsync(f.fileno())
        for backend in self.backends:
            backend(metrics, step)

    def close(self):
        """The end of a run: wandb's run finished, tensorboard's events written (exit_process skips the
        atexit handlers that would do it)."""
        self.file.close()
        if self.samples is not None:
            self.samples.close()
        for close in self.closers:
            close()


def sum_over_ranks(values):
    """{name: number} summed over all ranks. The names may differ between ranks (a user reward's own
    keys): a missing one counts 0. One small object collective, on the CPU (gloo)."""
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {k: float(v) for k, v in values.items()})
    return {k: sum(g.get(k, 0.0) for g in gathered) for k in sorted({k for g in gathered for k in g})}


@contextmanager
def timed(timings, name):
    start = time.perf_counter()
    yield
    timings[f"time/{name}"] = timings.get(f"time/{name}", 0.0) + time.perf_counter() - start


def mean(values):
    values = list(values)
    return sum(values) / len(values) if values else 0.0
