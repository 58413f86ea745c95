"""Run under torchrun: several train_grpo.py / sft.py runs and distributed checks one after another in one
launch, so that they share one start-up of Python, torch, transformers and vLLM, and one first vLLM engine
(together 20-30 s of every launch on 2 CPU cores).

    torchrun --nproc_per_node 2 --master-port PORT tests/dist_runs.py SPEC.json

SPEC.json: {"out": DIR, "steps": [{"name": NAME, "kind": KIND, "args": [...]}, ...]}, the steps in order:
  kind "train": train_grpo.main(args), what `train_grpo.py ARGS` runs (with "corrupt_sync": true, the
      weights pushed into the engine are corrupted first: tests/dist_corrupt_sync.py);
  kind "sft": `sft.py ARGS` itself, the file run as __main__ (runpy) with these arguments;
  kind "precision", "sync", "merge": the check of tests/dist_precision_check.py, tests/dist_sync_check.py,
      tests/dist_merge_check.py with these arguments (their command lines' arguments).
A step with "world": 1 runs on rank 0 alone, as a world of one (what `torchrun --nproc_per_node 1` runs);
the other rank goes on to the next step, whose rendezvous waits for rank 0.

Every step gets a fresh process group: step k meets on port PORT + 1 + k (rank 0 serves the rendezvous,
as in a launch of its own), and a run seeds every RNG itself, as in a launch of its own. Each rank writes,
per step, DIR/NAME.rank{r}.log (what the step printed: print0, tqdm) and DIR/NAME.rank{r}.json: the step's
"seconds" and "exit": null when the step returned, or the message when it stopped with SystemExit, with
"code" 1 (a refusal, a guard: what the command line prints before it exits with status 1), or the
"error" (a traceback) when it crashed. After a SystemExit or a crash every rank must have stopped too: a
monitored barrier (120 s) ends the launch otherwise (torchrun then stops the other rank, as it would stop
a launch of its own; the steps after it have no result, which tests/test_train.py's `Steps` says when
one is read). Then the step's engine is closed, its process group destroyed and its run folder's lock
released, as the end of its process would do, and the next step runs.
"""

import contextlib
import datetime
import importlib
import json
import os
import runpy
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch.distributed as dist  # noqa: E402

import common  # noqa: E402
import engines  # noqa: E402
import rollout  # noqa: E402
import train_grpo  # noqa: E402
from dist_corrupt_sync import corrupted_weights  # noqa: E402

ENGINES = []  # the engines the current run built: closed here when main stops before closing them


def tracked(engine_class):
    def build(*args, **kwargs):
        engine = engine_class(*args, **kwargs)
        ENGINES.append(engine)
        return engine
    return build


def end_of_step():
    """What the end of a step's process would do: close its engine (vLLM's shutdown tears down its own process
    groups, so before the world group), destroy the process group, release the run folder's lock."""
    while ENGINES:
        engine = ENGINES.pop()
        with contextlib.suppress(Exception):  # main closed it already
            engine.close()
    if dist.is_initialized():
        dist.destroy_process_group()
    handle = getattr(common.lock_run_folder, "handle", None)
    if handle is not None:
        handle.close()
        del common.lock_run_folder.handle


def run_step(kind, args):
    if kind == "train":
        return train_grpo.main(args)
    if kind == "sft":
        argv, sys.argv = sys.argv, ["sft.py", *args]
        try:
            return runpy.run_path(str(REPO / "sft.py"), run_name="__main__")
        finally:
            sys.argv = argv
    # one of the distributed checks, in a process group of its own, as its command line runs it
    rank, world_size, device = common.setup_distributed()
    if kind == "precision":
        import dist_precision_check
        dist_precision_check.check(*args, rank, world_size, device)
    elif kind == "sync":
        import dist_sync_check
        dist_sync_check.check(*args, rank, device)
    elif kind == "merge":
        import dist_merge_check
        dist_merge_check.check(*args, rank, device)
    else:
        raise ValueError(f"unknown step kind {kind!r}")


def main():
    spec = json.loads(Path(sys.argv[1]).read_text())
    out, rank, port = Path(spec["out"]), int(os.environ["RANK"]), int(os.environ["MASTER_PORT"])
    os.environ["TORCHELASTIC_USE_AGENT_STORE"] = "False"  # each step's own rendezvous, served by rank 0
    for module in ("transformers", "vllm"):  # before any output is redirected: their loggers keep the stream
        importlib.import_module(module)      # they first see
    real_full_weights = rollout.full_weights
    leave, common.exit_process = common.exit_process, lambda code=0: None  # sft.py's __main__ ends with it
    engines.VLLMEngine, engines.HFEngine = tracked(engines.VLLMEngine), tracked(engines.HFEngine)  # start_engine's
    world = {key: os.environ[key] for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")}
    for k, step in enumerate(spec["steps"]):
        if step.get("world", 2) == 1 and rank != 0:
            continue
        os.environ.update(world if step.get("world", 2) != 1 else
                          dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1"))
        os.environ["MASTER_PORT"] = str(port + 1 + k)
        rollout.full_weights = corrupted_weights if step.get("corrupt_sync") else real_full_weights
        args = [str(a) for a in step["args"]]
        result, start = {"exit": None}, time.perf_counter()
        with open(out / f"{step['name']}.rank{rank}.log", "w") as log, \
                contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                run_step(step.get("kind", "train"), args)
            except SystemExit as e:
                result = {"exit": str(e.code), "code": e.code if isinstance(e.code, int) else 1}
            except Exception:  # a crash: this step's tests fail with it, the next steps still run
                traceback.print_exc()
                result = {"exit": None, "error": traceback.format_exc()}
        result["seconds"] = round(time.perf_counter() - start, 1)
        (out / f"{step['name']}.rank{rank}.json").write_text(json.dumps(result))
        print(f"rank {rank}: step {step['name']}: {json.dumps(result)[:300]}", flush=True)
        if (result["exit"] is not None or "error" in result) and dist.is_initialized():  # the other rank too
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=120))
        end_of_step()
    leave()  # as the stage scripts end


if __name__ == "__main__":
    main()
