"""The end of a finished run under torchrun on gloo: it must exit 0 with everything it printed.

FSDP2's modules keep the process group alive past destroy_process_group, and gloo's worker threads free
the tensors of the last collectives only after the rank that waited on them has moved on. Freeing a tensor
Python has seen needs the GIL; a thread that asks for it while Python shuts down is ended inside a C++
destructor and the rank aborts ("terminate called without an active exception"), so torchrun reports a
failure for a run that finished. The script below ends as the stage scripts do (common.exit_process) after
the pattern that makes the race likely: an all_gather of Python tensors, then a barrier, twenty times, then
the exit. Ending it with Python's shutdown instead aborted a share of launches here, none through
os._exit (BENCHMARKS.md, "Teardown")."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
import torch, torch.distributed as dist
import common
dist.init_process_group("gloo")
rank, kept = dist.get_rank(), dist.group.WORLD  # as FSDP2's modules keep it: the group outlives destroy_process_group
for _ in range(20):
    outs = [torch.empty(100) for _ in range(dist.get_world_size())]
    dist.all_gather(outs, torch.ones(100))
    dist.barrier()
dist.destroy_process_group()
print(f"rank {{rank}} finished", end="")  # no newline: exit_process must flush it
common.exit_process()
"""


def test_a_finished_run_exits_cleanly_and_keeps_its_output(tmp_path):
    """Without exit_process a rank would abort at exit in some launches, or its last unflushed line be lost."""
    script = tmp_path / "end.py"
    script.write_text(SCRIPT.format(repo=str(REPO)))
    for launch in range(6):
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                 "--master-port", str(29761 + launch), str(script)],
                                capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, f"launch {launch}: {result.stderr[-3000:]}"
        assert "rank 0 finished" in result.stdout and "rank 1 finished" in result.stdout, result.stdout[-2000:]
