"""Multi-node runs, as users launch them: two torchrun agents (one per "node", here both on localhost)
meeting through a c10d rendezvous, `torchrun --nnodes 2 --nproc_per_node 1 --rdzv-backend c10d ...`.

What differs from one node of two processes: LOCAL_RANK is 0 and LOCAL_WORLD_SIZE 1 on both, the
rendezvous (not --master-port) sets up the process group, and the run folder must be one folder that
every node sees. The last one is checked at start-up (common.check_shared_folder); two agents started
in different working directories with a relative --output-dir see two different folders, which is what
nodes without a shared file system see.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "VLLM_LOGGING_LEVEL": "ERROR", "PYTHONPATH": str(REPO)}


def two_nodes(port, script_args, cwds, timeout=420):
    """Both agents of a 2-node launch of train_grpo.py, each from its own working directory; their
    (exit code, output) pairs."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"emo-r3-{port}",
               str(REPO / "train_grpo.py"), *map(str, script_args)]
    agents = [subprocess.Popen(command, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for cwd in cwds]
    try:
        return [(agent.wait(timeout=timeout), agent.stdout.read()) for agent in agents]
    finally:
        for agent in agents:
            agent.kill()


def demo_flags(tiny_model_dir, demo_dir):
    return ["--demo", "--model", tiny_model_dir, "--train-files", demo_dir / "train.jsonl", "--val-files", "",
            "--rollout-batch-size", "4", "--group-size", "2", "--mini-batch-size", "4", "--max-response-length",
            "16", "--save-freq", "1", "--no-reflect-image"]


def test_two_nodes_train_and_resume(tiny_model_dir, demo_dir, tmp_path):
    """Broken: a 2-node launch by c10d rendezvous (process group, one vLLM engine per node, FSDP2 across
    nodes), the shared-folder check passing on a shared folder, or --resume on several nodes."""
    out = tmp_path / "run"
    flags = [*demo_flags(tiny_model_dir, demo_dir), "--output-dir", out]
    results = two_nodes(29771, [*flags, "--max-steps", "2"], [tmp_path, tmp_path])
    assert all(code == 0 for code, _ in results), results
    results = two_nodes(29772, [*flags, "--max-steps", "3", "--resume"], [tmp_path, tmp_path])
    assert all(code == 0 for code, _ in results), results
    assert "resumed from" in "".join(output for _, output in results)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(m["rollout/logp_gap_max"] < 1e-3 for m in metrics)  # every node's engine serves the policy
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_1", "step_2", "step_3"]
    assert not list(out.glob(".ranks-*"))  # the check's markers are gone


def test_two_nodes_without_a_shared_folder_are_refused(tiny_model_dir, demo_dir, tmp_path):
    """Broken: the start-up check that --output-dir is one folder every node sees (without it, each node
    writes its own part of every checkpoint and the run's checkpoints are silently incomplete)."""
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for node in nodes:
        node.mkdir()
    flags = [*demo_flags(tiny_model_dir, demo_dir), "--output-dir", "run", "--max-steps", "1"]
    results = two_nodes(29773, flags, nodes, timeout=240)
    assert all(code != 0 for code, _ in results), results
    assert "is not one shared folder" in results[0][1]
    assert not (nodes[0] / "run" / "checkpoints").exists() and not (nodes[1] / "run" / "checkpoints").exists()


@pytest.mark.parametrize("tp", [2])
def test_tensor_parallel_must_divide_the_processes_per_node(tiny_model_dir, demo_dir, tmp_path, tp):
    """Broken: the refusal of a vLLM tensor-parallel group that would span two nodes (2 nodes x 1 process,
    --tensor-parallel-size 2: the world size is divisible, the processes per node are not)."""
    flags = [*demo_flags(tiny_model_dir, demo_dir), "--output-dir", tmp_path / "run", "--max-steps", "1",
             "--tensor-parallel-size", tp]
    results = two_nodes(29774, flags, [tmp_path, tmp_path], timeout=240)
    assert all(code != 0 for code, _ in results), results
    assert "must not span two nodes" in "".join(output for _, output in results)
