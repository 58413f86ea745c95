"""Shared fixtures: the tiny model and the demo data are built once per test session, offline."""

import os
import sys
from pathlib import Path

# Offline, quiet, in-process vLLM: set before any test imports transformers or vllm.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The tiny Qwen2.5-VL folder (random weights, seed 0), built fresh for this session."""
    import tiny
    return tiny.build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def processor(tiny_model_dir):
    from transformers import AutoProcessor
    return AutoProcessor.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """A small demo dataset (64 train / 16 test rows) written as a user would bring it."""
    import tiny
    return tiny.make_demo_dataset(tmp_path_factory.mktemp("demo") / "data", num_train=64, num_test=16, seed=0)


@pytest.fixture(scope="session")
def demo_run(tiny_model_dir, demo_dir, tmp_path_factory):
    """One 2-step CPU demo run of train_grpo.py under torchrun (2 ranks): rollout, reflection, update, sync,
    validation on 15 rows, a checkpoint at step 2. Shared by the tests that read its outputs
    (tests/test_train.py, tests/test_merge_evaluate.py): a launch costs about a minute on 2 cores.
    Returns the run folder and the flags it was launched with (without --max-steps)."""
    import json
    from test_train import torchrun
    tmp = tmp_path_factory.mktemp("demo_run")
    rows = [json.loads(line) for line in (demo_dir / "test.jsonl").read_text().splitlines()][:15]
    for row in rows:  # the same images, from another folder
        row["images"] = [str(demo_dir / path) for path in row["images"]]
    (tmp / "val15.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp / "run"
    args = ["train_grpo.py", "--demo", "--model", tiny_model_dir, "--train-files", demo_dir / "train.jsonl",
            "--val-files", tmp / "val15.jsonl", "--output-dir", out, "--val-freq", "2", "--save-freq", "2"]
    torchrun("--master-port", "29951", *args, "--max-steps", "2")
    return out, args


def pytest_configure(config):
    # third-party deprecation noise (torch.jit in transformers, vLLM internals), not ours
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning")
    config.addinivalue_line("filterwarnings", "ignore::FutureWarning")
