"""The end of a finished run under torchrun on gloo: it must leave through os._exit with everything it printed.

FSDP2's modules keep the process group alive past destroy_process_group, and gloo's worker threads free
the tensors of the last collectives only after the rank that waited on them has moved on. Freeing a tensor
Python has seen needs the GIL; a thread that asks for it while Python shuts down is ended inside a C++
destructor and the rank aborts ("terminate called without an active exception"), so torchrun reports a
failure for a run that finished. That abort comes in only a share of launches (BENCHMARKS.md, "Teardown"),
so a test that waits for it passes by luck. This one checks the mechanism instead, which fails every time
it is missing: each rank registers an atexit handler that only Python's own shutdown runs and that exits
with status 86, and os._exit (common.exit_process) skips it.

Each of the three ranks of one launch runs the real `if __name__ == "__main__":` block of one stage script
(train_grpo.py, sft.py, evaluate.py), with that script's `main` replaced by the pattern that makes the race
likely (an all_gather of Python tensors, then a barrier, twenty times): a block that no longer ends through
exit_process, or an exit_process that no longer skips Python's shutdown, exits 86."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ["train_grpo", "sft", "evaluate"]  # rank r runs SCRIPTS[r]'s __main__ block
SHUTDOWN_RAN = 86  # the exit status of the witness below

DRIVER = """
import ast, atexit, importlib, os, sys
sys.path.insert(0, {repo!r})
import torch, torch.distributed as dist

script = {scripts!r}[int(os.environ["RANK"])]
module = importlib.import_module(script)


def main():  # in place of the script's main: a finished run whose gloo threads are still busy
    global kept
    dist.init_process_group("gloo")
    kept = dist.group.WORLD  # as FSDP2's modules keep it: the group outlives destroy_process_group
    for _ in range(20):
        outs = [torch.empty(100) for _ in range(dist.get_world_size())]
        dist.all_gather(outs, torch.ones(100))
        dist.barrier()
    dist.destroy_process_group()
    print(f"{{script}} finished", end="")  # no newline: the exit must flush it


def python_shutdown_ran():  # atexit handlers run in Python's own shutdown only, never after os._exit
    os.write(2, f"{{script}}: Python's shutdown ran (where gloo's threads can abort), not os._exit\\n".encode())
    os._exit({code})


# the script's own `if __name__ == "__main__":` block, as written, in the script's namespace
tree = ast.parse(open(module.__file__).read())
block = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'"]
atexit.register(python_shutdown_ran)  # last registered, first run: before torch's or vLLM's own handlers
exec(compile(ast.Module(body=block, type_ignores=[]), module.__file__, "exec"),
     {{**vars(module), "__name__": "__main__", "main": main}})
"""


def test_the_stage_scripts_end_through_os_exit_with_their_output(tmp_path):
    """Broken: a stage script's __main__ block no longer ends through common.exit_process, or exit_process
    no longer skips Python's shutdown (where gloo's threads abort a finished run in some launches), or it
    loses the last line printed without a newline."""
    driver = tmp_path / "end.py"
    driver.write_text(DRIVER.format(repo=str(REPO), scripts=SCRIPTS, code=SHUTDOWN_RAN))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(len(SCRIPTS)),
                             "--master-port", "29761", str(driver)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Python's shutdown ran" not in result.stderr
    for script in SCRIPTS:
        assert f"{script} finished" in result.stdout, result.stdout[-2000:]
