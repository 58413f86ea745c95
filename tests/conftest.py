"""Shared fixtures: the tiny model and the demo data are built once per test session, offline, and the
suite's 2-rank runs share one torchrun launch (shared_launch)."""

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
def shared_launch(tiny_model_dir, demo_dir, tmp_path_factory):
    """The suite's runs on 2 ranks, in one torchrun launch of tests/dist_runs.py (a launch costs 20-30 s of
    start-up on 2 cores, and its first vLLM engine 10 s more). Each step runs as in a launch of its own (a
    fresh process group, main's own seeding) and writes its own result; each test reads only its own steps,
    so a step that breaks fails its tests, and the others keep theirs. In order:

      precision, sync     tests/dist_precision_check.py, tests/dist_sync_check.py (tests/test_train.py);
                          the precision check first, before anything a vLLM engine sets up
      cold_start, grpo    the demo's story, shortened: a 60-step cold start (sft.py) on 128 demo rows, then
                          40 steps of EMO-R3 GRPO from it, validation on 15 rows at steps 20 and 40,
                          checkpoints at 20 and 40 (tests/test_sft.py, tests/test_train.py)
      merge               its newest checkpoint exported and compared with the policy
                          (tests/dist_merge_check.py; tests/test_merge_evaluate.py)
      hf, learns, dapo, bf16, dapo_dry, corrupt_sync    the runs of tests/test_train.py
      strict, skip        the broken-image runs of tests/test_resume.py
      straight, killed    the run that tests/test_resume.py resumes, straight and then again: this launch
                          is SIGKILLed while "killed" writes its step_4 checkpoint

    Returns steps (a test_train.Steps), killed_mid_save (whether the kill came there), the demo's data,
    cold_start (sft.py's run folder), run (the GRPO run folder) and args (its flags), merged (the exported
    folder) and merge_outputs (what the merge check wrote), and bad (the broken row of "strict")."""
    import json
    from types import SimpleNamespace

    import tiny
    from test_resume import SMALL, broken_data, flags, kill_during_checkpoint_write
    from test_train import Steps, steps_command
    out = tmp_path_factory.mktemp("shared_launch")
    train = demo_dir / "train.jsonl"
    for name in ("precision", "sync"):
        (out / name).mkdir()
    demo = tiny.make_demo_dataset(out / "demo", num_train=128, num_test=16, seed=0)
    rows = [json.loads(line) for line in (demo / "test.jsonl").read_text().splitlines()][:15]
    for row in rows:  # the same images, from another folder
        row["images"] = [str(demo / path) for path in row["images"]]
    (out / "val15.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    bad, train_skip, val_skip = broken_data(demo_dir, out / "broken")

    small = ["--demo", "--model", tiny_model_dir, "--train-files", train]
    quiet = ["--val-files", "", "--no-reflect-text", "--no-reflect-image", "--kl-coef", "0", "--save-freq", "0"]
    dapo = [*small, *quiet, "--online-filter", "--max-response-length", "8"]
    broken = ["--demo", "--model", tiny_model_dir, "--train-files", out / "broken" / "train.jsonl", "--val-files", "",
              *SMALL[:-2], "--max-steps", "2", "--save-freq", "0"]
    grpo = dict(name="grpo", args=["--demo", "--model", tiny_model_dir, "--train-files", demo / "train.jsonl",
                                   "--val-files", out / "val15.jsonl", "--init-from",
                                   out / "cold_start" / "checkpoints" / "step_60", "--max-steps", "40",
                                   "--val-freq", "20", "--save-freq", "20"])
    # LoRA rank 8 from the cold start (its base), 2 updates a step (old log-probs), validation at step 2
    lora = [*small, "--val-files", out / "val15.jsonl", "--init-from", out / "cold_start" / "checkpoints" / "step_60",
            "--lora-rank", "8", "--rollout-batch-size", "8", "--group-size", "4", "--mini-batch-size", "4",
            "--max-response-length", "24", "--val-freq", "2"]
    steps = [
        dict(name="precision", kind="precision", args=[tiny_model_dir, train, out / "precision"]),
        dict(name="cold_start", kind="sft", args=["--demo", "--model", tiny_model_dir, "--train-files",
                                                  demo / "train.jsonl", "--max-steps", "60"]),
        dict(name="hf", args=[*small, "--val-files", demo_dir / "test.jsonl", "--engine", "hf", "--max-steps", "2",
                              "--val-freq", "2", "--save-freq", "0", "--max-response-length", "16",
                              "--rollout-batch-size", "8", "--mini-batch-size", "8"]),
        grpo,
        dict(name="merge", kind="merge", args=[tiny_model_dir, out / "grpo", out / "grpo" / "checkpoints" / "step_40",
                                               out / "merged", demo / "train.jsonl", out / "merge_outputs.pt"]),
        dict(name="sync", kind="sync", args=[tiny_model_dir, train, out / "sync"]),
        dict(name="learns", args=[*small, *quiet, "--reward-fn", "tests/reward_letter_e.py:reward", "--max-steps", "12",
                                  "--group-size", "8", "--lr", "1e-2", "--max-response-length", "24"]),
        dict(name="dapo", args=[*dapo, "--max-steps", "2", "--reward-fn", "tests/reward_dapo.py:by_label"]),
        dict(name="bf16", args=[*small, "--val-files", "", "--precision", "bf16", "--max-steps", "2", "--save-freq", "0"]),
        dict(name="top_k", args=[*small, *quiet, "--top-k", "1", "--max-steps", "1", "--group-size", "4",
                                 "--rollout-batch-size", "8", "--mini-batch-size", "8", "--max-response-length", "16"]),
        dict(name="lora_adapter", args=[*lora, "--max-steps", "3", "--save-freq", "1"]),
        dict(name="lora_merged", args=[*lora, "--lora-sync", "merged", "--max-steps", "3", "--save-freq", "0"]),
        dict(name="lora_half", args=[*lora, "--max-steps", "2", "--save-freq", "2"]),
        dict(name="lora_resume_one", world=1, args=[*lora, "--output-dir", out / "lora_half", "--resume",
                                                    "--max-steps", "3", "--save-freq", "1"]),
        dict(name="dapo_dry", args=[*dapo, "--max-steps", "1", "--max-try-make-batch", "2",
                                    "--reward-fn", "tests/reward_dapo.py:always_right"]),
        dict(name="corrupt_sync", corrupt_sync=True,
             args=[*small, "--val-files", "", "--max-steps", "4", "--save-freq", "0", "--logp-gap-patience", "2",
                   "--no-reflect-text", "--no-reflect-image"]),
        dict(name="strict", args=broken),
        dict(name="skip", args=[*broken, "--train-files", train_skip, "--val-files", val_skip, "--skip-bad-rows"]),
        dict(name="straight", args=flags(tiny_model_dir, demo_dir)),
        dict(name="killed", args=flags(tiny_model_dir, demo_dir)),
    ]
    launch, killed = kill_during_checkpoint_write(steps_command(out, 29700, steps),
                                                  out / "killed" / "checkpoints" / "step_4.tmp", out / "launch")
    return SimpleNamespace(steps=Steps(out, launch), killed_mid_save=killed, data=demo, cold_start=out / "cold_start",
                           run=out / "grpo", args=grpo["args"], merged=out / "merged",
                           merge_outputs=out / "merge_outputs.pt", bad=bad)


@pytest.fixture(scope="session")
def demo_run(shared_launch):
    """The demo's cold start and GRPO run, and the merge of its checkpoint (see shared_launch)."""
    return shared_launch


def pytest_configure(config):
    # third-party deprecation noise (torch.jit in transformers, vLLM internals), not ours
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning")
    config.addinivalue_line("filterwarnings", "ignore::FutureWarning")
