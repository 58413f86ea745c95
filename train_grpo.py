"""EMO-R3: GRPO with Structured Emotional Thinking and the Reflective Emotional Reward, on Qwen2.5-VL.

One SPMD script: every rank runs the same loop, top to bottom. No Ray, no RPC, no DataProto.

What one step does (METHOD.md has the prompts, the reward and the maths):
  1. prompts    each rank takes its own slice of the step's prompts (a GRPO group never spans ranks)
  2. rollout    the colocated vLLM engine gets the current weights and samples n responses per prompt
  3. reflect    same engine, same weights: the policy answers rewards.py's re-ask questions about each
                response ("which emotion does your step1-2 text express?", text only; "does your step1
                text describe the image?", image + text); the answers are reward terms
  4. reward     rewards.py scores format, accuracy and the reflection answers
  5. advantage  GRPO: (R - group mean) / (group std + 1e-6), one scalar per response
  6. log-probs  old (when a rollout feeds more than one optimizer step) and reference (when KL is on)
                log-probs from the FSDP2 models, with the rollout's images, mrope positions, temperature
  7. update     mini-batches of micro-batches; clipped + dual-clipped policy loss + low-variance KL;
                token-mean over the whole mini-batch across micro-batches and ranks; grad clip; AdamW
  8. log        metrics.jsonl, samples.jsonl, progress bar; validation; sharded checkpoint
Steps 1-4 are collect_rollouts, which returns one Rollout record per response; main() is the loop.

What it deliberately is not: no critic, no Ulysses, no pipeline parallelism. This file holds what a
reader needs to see (the config, the GRPO maths, the rollout, the update, the loop with the engine's
wake / sync / sleep order); the mechanics live in modules: engines.py (vLLM, HF generate), rollout.py
(pushing the policy, the re-ask, the step's rollout figures), packing.py (how a micro-batch is packed and
scored), model.py and lora.py (loading, sharding, LoRA), startup.py (the flags and start-up both stages
share), common.py (process group, flags, metrics), checkpoint.py (saving and resuming). Every default is
EMO-R3's released recipe (examples/config.yaml + qwen2_5_vl_3b_emor3.sh); `--demo` switches to the tiny
model and the demo data on CPU.

Launch (README, "Training on GPUs", has the one-GPU and two-node commands; bench/memory.py sizes them):
  torchrun --nproc_per_node 2 train_grpo.py --demo                     # CPU demo, a few minutes
  torchrun --nproc_per_node 8 train_grpo.py --model Qwen/Qwen2.5-VL-3B-Instruct \\
      --train-files DATA@train --val-files DATA@test                    # the paper's setup, 8 GPUs
"""

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.distributed as dist

import data
import lora
import rewards
import startup
import tiny
from checkpoint import load_checkpoint, save_checkpoint
from common import Tracker, exit_process, mean, parse_flags, print0, seed_for, sum_over_ranks, timed
from data import get_batch_on_every_rank, skipped_on_any_rank
from engines import Request, check_tensor_parallel, start_engine
from model import compute_dtype
from packing import Sample, batched_logprobs, collate, encode_prompts, micro_batches, pad_stack, response_logprobs
from plots import draw_curves
from rollout import SyncGuard, ask_reflections, push_policy, rollout_metrics, sample_lines, visuals
from startup import RunConfig, config_problems, load_models, prompt_set, run_length, start_run


# --- config -------------------------------------------------------------------------------------
# A field's comment is its --help (continued on the comment lines indented under it). The flags both
# stages share (model, precision, LoRA, data, seed, run folder and guards) are startup.RunConfig's.

@dataclass
class Config(RunConfig):
    # recipe: the starting point, the reward
    init_from: str = ""  # start from this checkpoint's weights (sft.py's cold start); --model: the architecture
    reward: Literal[rewards.VARIANTS] = "code"  # code: the released EMO-R3 reward; the others: rewards.py
    reward_fn: str = ""  # path.py:function replacing rewards.emor3_reward (this RUNS that file's code)
    reflect_text: bool = True  # ask the coherence question (EMO-R3 is_rethink=true)
    reflect_image: bool = True  # ask the consistency question
    recipe: str = ""  # flag values of recipes/NAME.flags (emo-r3, r1-omni) or a file; command-line flags win
    val_files: str = ""  # validation set (empty: no validation)
    # rollout and the re-ask
    rollout_batch_size: int = 512  # prompts per step, all ranks together (EMO-R3)
    group_size: int = 8  # responses per prompt, GRPO's n (EMO-R3 script: ROLLOUT_NUMBER=8)
    max_response_length: int = 2048  # EMO-R3 data.max_response_length
    temperature: float = 1.0  # rollout sampling temperature (EMO-R3); logits are divided by it in training too
    top_p: float = 1.0  # rollout top_p (EMO-R3)
    top_k: int = -1  # rollout top-k; -1: none (EMO-R3's vLLM); R1-Omni sampled with HF generate's default 50
    reflect_temperature: float = 0.6  # EMO-R3 uses the validation sampling for the re-ask
    reflect_top_p: float = 0.95
    reflect_max_tokens: int = 16  # the answer is one word; the reference lets it run to max_response_length
    online_filter: bool = False  # DAPO's online filter: keep only groups whose mean --filter-key is inside
        # the bounds, drawing more prompts until the step is full
    filter_key: str = "overall"  # the score the filter averages per group (EMO-R3's DAPO config)
    filter_low: float = 0.01  # keep a group when filter_low < its mean < filter_high (EMO-R3's DAPO config)
    filter_high: float = 0.99
    max_try_make_batch: int = 20  # draws of prompts per step before the filter stops the run; -1: no limit (EasyR1)
    engine: Literal["vllm", "hf"] = "vllm"  # hf: transformers generate (slow, for machines without vLLM)
    tensor_parallel_size: int = 1  # vLLM TP; 1 = one engine per rank (EMO-R3 script)
    gpu_memory_utilization: float = 0.6  # vLLM's share of GPU memory (EMO-R3); on CPU see cpu_kv_cache_gb
    sleep_level: Literal[1, 2] = 1  # vLLM sleep (GPU): 1 keeps weights in pinned host RAM, 2 drops them
    cpu_kv_cache_gb: float = 1.0  # vLLM KV cache size on CPU (GiB per rank)
    # update
    mini_batch_size: int = 256  # prompts per optimizer step, all ranks (EMO-R3 actor.global_batch_size)
    micro_batch_size: int = 4  # at most this many sequences per forward/backward per rank (EMO-R3)
    logprob_micro_batch_size: int = 16  # at most this many sequences per forward for old/ref log-probs (EMO-R3)
    micro_batch_tokens: int = 16384  # tokens per micro-batch per rank (packed rows x longest row); 0: counts only
    ppo_epochs: int = 1  # passes over each rollout batch (EMO-R3)
    lr: float = 2e-6  # AdamW (EMO-R3)
    weight_decay: float = 1e-2  # (EMO-R3)
    beta1: float = 0.9
    beta2: float = 0.999
    lr_warmup_ratio: float = 0.0  # linear warm-up share of all steps (EMO-R3: 0)
    lr_schedule: Literal["constant", "linear"] = "constant"  # after warm-up (EMO-R3: constant); linear: decay
        # to 0 (HF Trainer's, R1-Omni)
    clip_low: float = 0.2  # PPO clip: ratio >= 1 - clip_low (EasyR1 default)
    clip_high: float = 0.3  # ratio <= 1 + clip_high (EasyR1 default; DAPO uses 0.28)
    clip_dual: float = 3.0  # dual-clip constant for negative advantages (EasyR1 default)
    loss_agg: Literal["token", "micro", "seq", "drgrpo"] = "token"  # token: global token mean (EasyR1 since
        # PR #417); micro: the released fork's token mean per micro-batch of --micro-batch-size, averaged;
        # seq: mean of sequence means; drgrpo: token sum / (seqs * max_response_length)
    adv_std: bool = True  # divide advantages by the group std (False = Dr.GRPO)
    adv_eps: float = 1e-6  # (R - mean) / (std + adv_eps) (EasyR1 1e-6; TRL 0.14, R1-Omni's trainer: 1e-4)
    kl_coef: float = 1e-2  # KL loss coefficient (EMO-R3); 0 removes the reference model (with LoRA: the base)
    kl_kind: Literal["kl", "abs", "mse", "low_var_kl"] = "low_var_kl"  # k1, abs, k2 (mse), k3 (EMO-R3)
    lora_sync: Literal["adapter", "merged"] = "adapter"  # with --lora-rank: the adapter folder loaded in
        # place, or W + (alpha/R) B A pushed
    # safety knobs
    logp_check_prompts: int = 1  # prompts per rank whose rollouts also return the engine's log-probs, for
        # rollout/logp_gap (0: none, -1: all; each costs rollout time)
    logp_gap_limit: float = -1.0  # stop when rollout/logp_gap_mean stays above this (stale or corrupted engine
        # weights); -1: by precision (fp32 1e-3, bf16 0.1); 0: never
    logp_gap_patience: int = 3  # steps in a row above --logp-gap-limit before stopping (each one warns)
    # run: how long, what is written
    epochs: int = 20  # passes over the training prompts (EMO-R3 script)
    val_freq: int = 1  # validate every k steps (EMO-R3: every step); 0 = never
    val_temperature: float = 0.6  # (EMO-R3 val_override_config)
    val_top_p: float = 0.95
    save_freq: int = 5  # checkpoint every k steps (EMO-R3); 0 = only at the end
    samples_per_step: int = 4  # rollouts written to samples.jsonl per step (rank 0)
    logger: str = ""  # extra trackers, comma separated: wandb, tensorboard (when installed)


# --demo changes defaults only: anything given on the command line still wins. Why these values (lr
# 1e-3, KL 0.05): docs/demo.md, "The --demo defaults".
DEMO_DEFAULTS = dict(
    rollout_batch_size=16, group_size=8, mini_batch_size=16, micro_batch_size=64, logprob_micro_batch_size=64,
    max_prompt_length=512, max_response_length=64, min_pixels=56 * 56, max_pixels=112 * 112,
    video_min_pixels=56 * 56, video_max_pixels=112 * 112, video_max_frames=16,
    reflect_max_tokens=8, lr=1e-3, kl_coef=0.05, max_steps=100, val_freq=25, save_freq=50, epochs=1,
    gradient_checkpointing=False, model=str(tiny.DEFAULT_DIR), train_files=str(tiny.DEMO_DIR / "train.jsonl"),
    val_files=str(tiny.DEMO_DIR / "test.jsonl"),  # built at start-up (tiny.demo_paths)
)


def parse_config(argv=None):
    """The run's Config: field defaults < --demo's < the --recipe file's < the command line. With
    --print-config it is printed as JSON and the process exits, before anything is loaded."""
    return parse_flags(Config, __doc__, argv, DEMO_DEFAULTS, check=check_config)


def check_config(cfg, printing=False):
    """Fail at start-up, with the flag's name, rather than an hour into a run; before the process group, so
    a launch torchrun cannot split fails before anything loads (printing: --print-config, and bench/memory.py
    planning another world, which need no model, data or launch)."""
    problems = config_problems(cfg, printing, split_evenly=("rollout_batch_size", "mini_batch_size"))
    if cfg.group_size < 2:
        problems.append("--group-size must be > 1: GRPO normalises rewards within a group of responses")
    if cfg.rollout_batch_size % cfg.mini_batch_size:
        problems.append("--rollout-batch-size must be a multiple of --mini-batch-size")
    if cfg.filter_key not in rewards.REWARD_KEYS and not cfg.reward_fn:
        problems.append(f"--filter-key must be one of {', '.join(rewards.REWARD_KEYS)}")
    if cfg.top_k == 0 or cfg.top_k < -1:
        problems.append("--top-k must be -1 (none) or at least 1")
    if cfg.lora_rank and cfg.lora_sync == "adapter" and cfg.engine == "hf":
        problems.append("--engine hf takes no LoRA adapter: add --lora-sync merged")
    if cfg.lora_rank and cfg.lora_sync == "adapter" and cfg.sleep_level == 2:
        problems.append("--sleep-level 2 discards the base weights that --lora-sync adapter loads once: use "
                        "--sleep-level 1 or --lora-sync merged")
    if problems:
        raise SystemExit("config error:\n  " + "\n  ".join(problems))
    if cfg.engine == "vllm" and not printing:
        check_tensor_parallel(cfg.tensor_parallel_size)  # a vLLM engine across two nodes, refused before any load
    if cfg.demo and not cfg.init_from and not printing and os.environ.get("RANK", "0") == "0":
        print("note: --demo without --init-from trains --model as it is: the tiny model's random weights never "
              "write the SET format, so the reward stays flat. demo.sh starts from sft.py's cold start "
              "(--init-from RUN/cold-start); see the README's quick start.")


# Flags a resumed run may change beyond RunConfig's (startup.RESUME_MAY_CHANGE): how often things happen
# and how the engine is sized. Any other change alters what the run means, and --resume refuses it.
RESUME_MAY_CHANGE = startup.RESUME_MAY_CHANGE | {
    "val_freq", "samples_per_step", "logger", "lora_sync", "logp_gap_limit", "logp_gap_patience", "logp_check_prompts",
    "gpu_memory_utilization", "cpu_kv_cache_gb", "sleep_level"}


# --- GRPO math (EasyR1's; METHOD.md, "GRPO") --------------------------------------------------

def lr_factor(step, total_steps, cfg):
    """The lr multiplier of training step `step` (0-based; stepped once per training step, as EasyR1 does):
    a linear warm-up over --lr-warmup-ratio of the steps that reaches the full lr at its first step (the
    released schedule's 0 at step 1 is an upstream bug, METHOD.md), then constant, or with --lr-schedule
    linear a decay to 0 at the end: 1 at the warm-up's last step, then (total - s) / (total - warm-up + 1),
    which without warm-up is HF Trainer's get_linear_schedule_with_warmup, (total - s) / total."""
    warmup = max(1, int(cfg.lr_warmup_ratio * total_steps))
    if step + 1 < warmup or cfg.lr_schedule == "constant":
        return min(1.0, (step + 1) / warmup)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup + 1))


def grpo_advantages(rewards, group_size, eps=1e-6, scale_by_std=True):
    """(R - group mean) / (group std + eps) with the unbiased std; rewards is 1-D, groups contiguous."""
    grouped = rewards.float().view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)  # torch.std is unbiased (n - 1)
    return centred.view(-1)


def aggregate(values, mask, agg="token", denom=None):
    """Reduce per-token values (B, T) to a scalar.

    token:  sum over all masked tokens / number of masked tokens
    seq:    sum of per-sequence token means / number of sequences
    drgrpo: sum over all masked tokens / (number of sequences * T)  (Dr. GRPO's constant normaliser)
    `denom` replaces the local count (tokens or sequences) so that micro-batches and ranks add up to
    one global mean: pass the whole mini-batch's count across all ranks.
    """
    mask = mask.to(values.dtype)
    if agg == "token":
        return (values * mask).sum() / (mask.sum().clamp(min=1) if denom is None else denom)
    if agg == "seq":
        per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return per_seq.sum() / (values.shape[0] if denom is None else denom)
    if agg == "drgrpo":
        return (values * mask).sum() / (values.shape[0] * values.shape[1] if denom is None else denom)
    raise ValueError(f"unknown aggregation {agg!r}")


def policy_loss(logp, old_logp, advantages, mask, clip_low=0.2, clip_high=0.3, clip_dual=3.0, agg="token",
                denom=None):
    """EasyR1's clipped + dual-clipped surrogate. logp/old_logp/mask (B, T), advantages (B,)."""
    adv = advantages[:, None].to(logp.dtype)
    log_ratio = torch.clamp(logp - old_logp, -20.0, 20.0)  # clamp before exp: no inf/nan gradients
    ratio = torch.exp(log_ratio)
    clipped_ratio = torch.exp(torch.clamp(log_ratio, math.log(1.0 - clip_low), math.log(1.0 + clip_high)))
    loss_unclipped = -adv * ratio
    loss_clipped = -adv * clipped_ratio
    loss_dual = -adv * clip_dual
    loss_high = torch.max(loss_unclipped, loss_clipped)  # the usual PPO pessimism
    loss_low = torch.min(loss_high, loss_dual)  # dual clip: bound the loss of very large ratios when A < 0
    per_token = torch.where(adv < 0, loss_low, loss_high)
    m = mask.to(logp.dtype)
    count = m.sum().clamp(min=1)
    with torch.no_grad():  # token means over this call's tokens, for logging; tensors: no device sync here
        metrics = {"clip_frac_high": ((loss_unclipped < loss_clipped).to(m.dtype) * m).sum() / count,
                   "clip_frac_low": ((loss_high > loss_dual) & (adv < 0)).to(m.dtype).mul(m).sum() / count,
                   "ppo_kl": ((old_logp - logp) * m).sum() / count}
    return aggregate(per_token, mask, agg, denom), metrics


def kl_penalty(logp, ref_logp, kind="low_var_kl"):
    """Per-token KL estimate between the policy and the reference model, in fp32."""
    logp, ref_logp = logp.float(), ref_logp.float()
    if kind == "kl":  # k1
        return logp - ref_logp
    if kind == "abs":
        return (logp - ref_logp).abs()
    if kind == "mse":  # k2
        return 0.5 * (logp - ref_logp).square()
    if kind == "low_var_kl":  # k3, clamped as in EasyR1
        d = torch.clamp(ref_logp - logp, -20.0, 20.0)
        return torch.clamp(torch.exp(d) - d - 1.0, -10.0, 10.0)
    raise ValueError(f"unknown KL kind {kind!r}")


# --- steps 1-4: the rollout -----------------------------------------------------------------------

@dataclass
class Rollout(Sample):
    """One response to one prompt, and everything the step learns about it. Sample's fields are what the
    update reads: `prompt` (its index in the step's prompt list), the response's token ids, the engine's
    log-probs of them (for the sync guard), the advantage."""
    text: str = ""  # the response, decoded
    reflections: dict = field(default_factory=dict)  # re-ask question name (rewards.REASKS) -> the answer
    scores: dict = field(default_factory=dict)  # reward key -> score


def reask_prompt_limit(cfg):
    """The most tokens a re-ask's prompt may have: the engine's context (max_model_len, as the trainer and
    evaluate.py build it) less the answer's --reflect-max-tokens. The released fork counts an image as
    one token against --max-prompt-length and so almost never cuts; this cuts only a prompt that the
    engine could not take whole, where the fork's vLLM would refuse the request."""
    return cfg.max_prompt_length + max(cfg.max_response_length, cfg.reflect_max_tokens) - cfg.reflect_max_tokens


def collect_rollouts(engine, processor, train_set, step, cfg, score, timings):
    """Steps 1-4 on this rank, on an awake engine: prompts, n responses each, the re-ask, the reward.
    With the DAPO filter, again on further draws of prompts until every rank holds its share of groups
    whose mean --filter-key score is strictly inside (--filter-low, --filter-high); the reference cuts
    the filled batch to the step's size, and so does this. Returns (prompts, rollouts, metrics): this
    rank's share of prompts, group_size rollouts each (a group is a contiguous block), the filter's figures."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    per_rank, n = cfg.rollout_batch_size // world_size, cfg.group_size
    prompts, rollouts, attempt, generated = [], [], 0, 0
    while True:
        # 1. prompts: this rank's contiguous share of the step's prompts
        order = data.step_indices(len(train_set), cfg.rollout_batch_size, step,
                                  seed_for(cfg.seed, attempt=attempt, data_order=True))
        batch = get_batch_on_every_rank(train_set, data.rank_slice(order, rank, world_size),
                                        f"step {step + 1}: every prompt of rank {rank}'s share was unusable")
        batch = (batch * per_rank)[:per_rank]  # skipped rows: repeat good ones, ranks stay in step
        # 2. rollout: n responses per prompt, the first --logp-check-prompts with the engine's log-probs
        seed = seed_for(cfg.seed, step, rank, attempt)
        with timed(timings, "rollout"):
            outputs = engine.generate([Request(p.text, p.prompt_ids, p.images, p.videos) for p in batch], n,
                                      cfg.temperature, cfg.top_p, cfg.max_response_length, seed,
                                      logprobs_for=None if cfg.logp_check_prompts < 0 else cfg.logp_check_prompts,
                                      top_k=cfg.top_k)
        new = [Rollout(i, ids, logp, text=processor.tokenizer.decode(ids, skip_special_tokens=True))
               for i, group in enumerate(outputs) for ids, logp in group]
        # 3. reflect: the same engine and weights judge each response (shown the image or clip it saw)
        with timed(timings, "reflect"):
            answers = ask_reflections(engine, processor, rewards.reasks_on(cfg), [r.text for r in new],
                                      [visuals(batch[r.prompt]) for r in new], train_set.labels,
                                      temperature=cfg.reflect_temperature, top_p=cfg.reflect_top_p,
                                      max_tokens=cfg.reflect_max_tokens, limit=reask_prompt_limit(cfg), seed=seed)
        # 4. reward
        with timed(timings, "reward"):
            for k, r in enumerate(new):
                r.reflections = {name: answers[name][k] if name in answers else None for name in rewards.REASKS}
                r.scores = score(r.text, batch[r.prompt].answer, r.reflections, index=k)
        means = torch.tensor([r.scores[cfg.filter_key] for r in new]).view(-1, n).mean(1).tolist()
        for i, group_mean in enumerate(means):
            if not cfg.online_filter or cfg.filter_low < group_mean < cfg.filter_high:
                prompts.append(batch[i])
                for r in new[i * n:(i + 1) * n]:
                    r.prompt = len(prompts) - 1
                    rollouts.append(r)
        attempt, generated = attempt + 1, generated + len(batch)
        short = torch.tensor([float(len(prompts) < per_rank)])
        dist.all_reduce(short, op=dist.ReduceOp.MAX)  # every rank decides alike
        if not short.item():
            break
        if cfg.max_try_make_batch > 0 and attempt >= cfg.max_try_make_batch:
            raise SystemExit(f"step {step + 1}: the DAPO filter kept too few groups: after {attempt} draws of prompts "
                             f"(--max-try-make-batch) a rank holds {len(prompts)} of the {per_rank} it needs. "
                             f"Groups are kept when their mean {cfg.filter_key} is strictly inside "
                             f"({cfg.filter_low}, {cfg.filter_high}); the paper's DAPO rows ran dry this way too.")
    metrics = {}
    if cfg.online_filter:  # draws of prompts, and the share of generated groups that passed the filter
        kept = sum_over_ranks({"kept": len(prompts), "generated": generated})
        metrics = {"dapo/tries": attempt, "dapo/kept_fraction": kept["kept"] / kept["generated"]}
    return prompts[:per_rank], rollouts[:per_rank * n], metrics


def reference_logprobs(policy, reference, rollouts, encoded, scoring):
    """The KL reference's log-probs: the frozen starting policy's, or with LoRA the policy's with its
    adapter switched off (the same base weights, no second copy)."""
    if reference is not None:
        return batched_logprobs(reference, rollouts, encoded, **scoring)
    with lora.adapter_disabled(policy):
        return batched_logprobs(policy, rollouts, encoded, **scoring)


# --- validation ---------------------------------------------------------------------------------

def validate(engine, policy, val_set, cfg, tokenizer, step, score):
    """Reward, accuracy and format of the policy after step `step` on the validation set, one sample per
    prompt (EMO-R3: every step), with the rollout's choreography: the push it makes is also the next
    step's (engine.holds). Every row counts: each rank takes a contiguous share of ceil(rows / ranks),
    and a short last share is padded with repeats of row 0 that are generated (the ranks stay in step)
    but not counted."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    engine.wake_up(["weights"])
    push_policy(engine, policy, step + 1, cfg.lora_sync)
    engine.reset_caches()
    engine.wake_up(["kv_cache"])
    share = -(-len(val_set) // world_size)
    prompts = get_batch_on_every_rank(val_set, range(rank * share, min(len(val_set), (rank + 1) * share)))
    counted = len(prompts)
    prompts += get_batch_on_every_rank(val_set, [0]) * (share - counted)
    outputs = engine.generate([Request(p.text, p.prompt_ids, p.images, p.videos) for p in prompts], 1,
                              cfg.val_temperature, cfg.val_top_p, cfg.max_response_length,
                              seed=seed_for(cfg.seed, step, rank), logprobs_for=0)
    scores = [score(tokenizer.decode(o[0][0], skip_special_tokens=True), p.answer, {})
              for p, o in zip(prompts[:counted], outputs)]
    totals = sum_over_ranks({"count": counted,
                             **{k: sum(s[k] for s in scores) for k in ("overall", "accuracy", "format")}})
    engine.sleep()
    count = max(totals["count"], 1)
    skipped = {"val/skipped_rows": skipped_on_any_rank(val_set)} if cfg.skip_bad_rows else {}
    return {"val/reward": totals["overall"] / count, "val/accuracy": totals["accuracy"] / count,
            "val/format": totals["format"] / count, "val/rows": int(totals["count"]), **skipped}


# --- the update -----------------------------------------------------------------------------------

def backward_scale(agg, micro_count, world_size):
    """What a micro-batch's loss is multiplied by before backward; FSDP averages gradients over ranks.
    The global means (token, seq, drgrpo) already divide by the whole mini-batch's count over all
    ranks, so that average is undone (x world size). The released fork's "micro" mean is a token mean
    within each micro-batch divided by the accumulation count (micro-batches per rank), and FSDP's
    average over ranks is part of it."""
    return 1.0 / micro_count if agg == "micro" else float(world_size)


def update_policy(policy, optimizer, samples, encoded, old_logp, ref_logp, cfg, pad_id, device, step, bad_updates):
    """Step 7: this rank's samples in mini-batches (one optimizer step each, every PPO epoch) of
    micro-batches (one forward/backward each). The loss of a micro-batch is divided by the count of
    the whole mini-batch over all ranks, so micro-batches and ranks add up to one global token mean.

    Returns (stats, gaps, bad_updates): the update's metrics; on-policy |engine - trainer| log-prob
    differences (the first forward sees the rollout's weights); consecutive non-finite updates so far.
    """
    world_size = dist.get_world_size()
    per_mini = cfg.mini_batch_size // world_size * cfg.group_size  # this rank's sequences per mini-batch
    minis = [list(range(start, start + per_mini)) for _ in range(cfg.ppo_epochs)
             for start in range(0, len(samples), per_mini)]
    losses, micro_stats, gaps, stats = [], [], [], {}
    for mini in minis:
        # the normaliser of the whole mini-batch across ranks: tokens, sequences or sequences x T
        count = sum_over_ranks({"tokens": sum(len(samples[i].response_ids) for i in mini), "seqs": len(mini)})
        if count["tokens"] == 0:  # no response token anywhere: no signal, and AdamW must not drift
            continue
        # "micro": each micro-batch's own token mean (denom None), micro-batches of --micro-batch-size in order
        denoms = {"token": count["tokens"], "seq": count["seqs"], "drgrpo": count["seqs"] * cfg.max_response_length}
        agg, denom = ("token", None) if cfg.loss_agg == "micro" else (cfg.loss_agg, denoms[cfg.loss_agg])
        micros = ([mini[i:i + cfg.micro_batch_size] for i in range(0, len(mini), cfg.micro_batch_size)]
                  if cfg.loss_agg == "micro" else
                  micro_batches(samples, encoded, mini, cfg.micro_batch_size, cfg.micro_batch_tokens))
        scale = backward_scale(cfg.loss_agg, len(micros), world_size)
        optimizer.zero_grad(set_to_none=True)
        mini_loss = torch.zeros((), device=device)  # this rank's share of the mini-batch loss
        for micro in micros:
            chunk = [samples[i] for i in micro]
            batch = collate(chunk, encoded, pad_id, device)
            mask = batch["response_mask"]
            logp = response_logprobs(policy, batch, cfg.temperature)  # (B, R), fp32
            if old_logp is None:  # on-policy: old = current (ratio 1, gradient intact); the gap's trainer side
                old = logp.detach()
                gaps += [(old[k, :len(s.response_ids)] - torch.tensor(s.rollout_logp, device=device)).abs()
                         for k, s in enumerate(chunk) if s.rollout_logp]
            else:
                old = pad_stack([old_logp[i] for i in micro], logp.shape[1], device)
            adv = torch.tensor([s.advantage for s in chunk], device=device)
            loss, micro_stat = policy_loss(logp, old, adv, mask, cfg.clip_low, cfg.clip_high, cfg.clip_dual, agg, denom)
            if ref_logp is not None:  # the KL term is aggregated exactly as the policy loss
                kl = kl_penalty(logp, pad_stack([ref_logp[i] for i in micro], logp.shape[1], device), cfg.kl_kind)
                loss = loss + cfg.kl_coef * aggregate(kl, mask, agg, denom)
                micro_stat["kl"] = (kl.detach() * mask).sum() / mask.sum().clamp(min=1)
            # even a non-finite loss goes backward: every rank must run the same collectives
            (loss * scale).backward()
            mini_loss += loss.detach() * scale / world_size
            micro_stats.append(micro_stat)
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
        grad_norm = (grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm).item()
        dist.all_reduce(mini_loss)  # the mini-batch's loss; NaN if any rank's was
        losses.append(mini_loss.item())
        stats["grad_norm"] = grad_norm
        if math.isfinite(losses[-1]) and math.isfinite(grad_norm):  # the same on every rank: both are global
            optimizer.step()
            bad_updates = 0
            continue
        bad_updates += 1
        stats["update/skipped"] = stats.get("update/skipped", 0) + 1
        print0(f"step {step}: non-finite loss or grad norm ({grad_norm}), update skipped ({bad_updates} in a row)")
        if bad_updates >= cfg.max_bad_updates:
            raise SystemExit(f"step {step}: {bad_updates} consecutive updates with a non-finite loss or grad norm "
                             f"(--max-bad-updates {cfg.max_bad_updates}); stopping. Check the rewards (NaN?), "
                             f"lower --lr, or resume from the last checkpoint.")
    # the gradients are not needed until the next update: freed now, they leave GPU memory to the engine's
    # wake-up (as large as the fp32 policy, they would otherwise stay live through the next rollout)
    optimizer.zero_grad(set_to_none=True)
    if losses:
        stats["loss"] = mean(losses)
    for key in ("kl", "clip_frac_high", "clip_frac_low", "ppo_kl"):  # token means over micro-batches
        if micro_stats and key in micro_stats[0]:
            stats[key] = torch.stack([m[key] for m in micro_stats]).mean().item()
    return stats, gaps, bad_updates


# --- the training loop --------------------------------------------------------------------------

def main(argv=None):
    cfg = parse_config(argv)
    rank, world_size, device, out, resume_from, start_step = start_run(cfg, "emo-r3", RESUME_MAY_CHANGE,
                                                                       [cfg.train_files, cfg.val_files])

    # --- data, models, engine
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
    tokenizer = processor.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_set = prompt_set(cfg.train_files, processor, cfg)
    val_set = prompt_set(cfg.val_files if cfg.val_freq else "", processor, cfg)  # None: no validation
    dropped = {name: len(ds.dropped_long) for name, ds in (("train", train_set), ("val", val_set)) if ds is not None}
    print0(f"rows over --max-prompt-length {cfg.max_prompt_length}, dropped at load: {dropped}")
    score = rewards.load_reward(cfg.reward, cfg.reward_fn)  # --reward-fn RUNS that file's code
    total_steps = run_length(len(train_set), "rollout_batch_size", cfg, resume_from, start_step)
    policy, reference, optimizer, scheduler = load_models(cfg, device, lambda s: lr_factor(s, total_steps, cfg))
    engine = start_engine(cfg.engine, cfg.model, processor, device, dtype=compute_dtype(cfg.precision, device),
                          seed=cfg.seed, max_model_len=cfg.max_prompt_length + max(cfg.max_response_length,
                                                                                   cfg.reflect_max_tokens),
                          tensor_parallel_size=cfg.tensor_parallel_size, sleep_level=cfg.sleep_level,
                          gpu_memory_utilization=cfg.gpu_memory_utilization, cpu_kv_cache_gb=cfg.cpu_kv_cache_gb,
                          trust_remote_code=cfg.trust_remote_code, videos=train_set.has_videos,
                          lora_rank=cfg.lora_rank if cfg.lora_sync == "adapter" else 0, lora_vision=cfg.lora_vision)
    if resume_from:
        load_checkpoint(policy, optimizer, resume_from, rank, scheduler)
        print0(f"resumed from {resume_from} (step {start_step})")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        print(json.dumps(dataclasses.asdict(cfg), indent=1))
        tracker = Tracker(dataclasses.asdict(cfg), out, cfg.logger, samples=True)
    from tqdm import tqdm
    progress = tqdm(total=total_steps, initial=start_step, desc="steps", disable=rank != 0, dynamic_ncols=True)
    bad_updates = 0  # consecutive updates skipped for a non-finite loss or grad norm
    base_pending = bool(cfg.lora_rank and cfg.init_from)  # the LoRA engine's base is --model's until pushed
    # stops the run when the engine keeps sampling from weights other than the trainer's (a failed sync)
    sync_guard = SyncGuard(cfg.logp_gap_limit if cfg.logp_gap_limit >= 0 else
                           SyncGuard.DEFAULT_LIMITS[compute_dtype(cfg.precision, device)], cfg.logp_gap_patience)
    for step in range(start_step, total_steps):
        timings = {}
        step_start = time.perf_counter()

        # sync: wake the engine's weights, push the policy's (FSDP2 shards -> full tensors, one unit at a time),
        # forget caches computed with the old weights, then wake the KV cache. The policy has taken `step`
        # steps: when validation already pushed these weights and the sleep kept them, no push
        with timed(timings, "sync"):
            engine.wake_up(["weights"])
            if not engine.holds(step):
                with timed(timings, "push"):
                    push_policy(engine, policy, step, cfg.lora_sync, base=base_pending)
                base_pending = False
                engine.reset_caches()
            engine.wake_up(["kv_cache"])

        # 1-4. prompts, rollout, reflect, reward (with the DAPO filter: until every rank's share is full)
        prompts, rollouts, metrics = collect_rollouts(engine, processor, train_set, step, cfg, score, timings)
        engine.sleep()  # on GPU: frees the engine's weights and KV cache for the update
        encoded = encode_prompts(processor, prompts)

        # 5. advantage: (R - group mean) / (group std + eps), one scalar per response
        advantages = grpo_advantages(torch.tensor([r.scores["overall"] for r in rollouts]), cfg.group_size,
                                     eps=cfg.adv_eps, scale_by_std=cfg.adv_std)
        for r, a in zip(rollouts, advantages.tolist()):
            r.advantage = a

        # 6. log-probs: reference when KL is on; old only when the policy moves within this step
        num_updates = (cfg.rollout_batch_size // cfg.mini_batch_size) * cfg.ppo_epochs
        with timed(timings, "logprobs"):
            policy.eval()
            scoring = dict(micro_batch_size=cfg.logprob_micro_batch_size, micro_batch_tokens=cfg.micro_batch_tokens,
                           pad_id=pad_id, device=device, temperature=cfg.temperature)
            old_logp = batched_logprobs(policy, rollouts, encoded, **scoring) if num_updates > 1 else None
            ref_logp = reference_logprobs(policy, reference, rollouts, encoded, scoring) if cfg.kl_coef > 0 else None
            policy.train()
        gaps = [(lp - torch.tensor(r.rollout_logp, device=device)).abs()  # with one update: measured in it
                for lp, r in zip(old_logp, rollouts) if r.rollout_logp] if old_logp is not None else []

        # 7. update: mini-batches of micro-batches, clipped loss + KL, global token mean, grad clip, AdamW
        with timed(timings, "update"):
            update_stats, update_gaps, bad_updates = update_policy(policy, optimizer, rollouts, encoded, old_logp,
                                                                   ref_logp, cfg, pad_id, device, step + 1, bad_updates)
        metrics.update(update_stats)
        metrics["lr"] = scheduler.get_last_lr()[0]  # the LR this step's updates used
        scheduler.step()  # once per training step, as EasyR1 does (warm-up counts steps, not updates)

        # 8. the sync guard, metrics, validation, log, checkpoint
        if gaps + update_gaps:  # |engine log-prob - trainer log-prob| of sampled tokens: ~1e-6 in fp32
            gap = torch.cat(gaps + update_gaps)
            metrics["rollout/logp_gap_mean"], metrics["rollout/logp_gap_max"] = gap.mean().item(), gap.max().item()
        sync_guard.check(metrics.get("rollout/logp_gap_mean"), step + 1)  # every rank, gap or not (a collective)
        metrics.update(rollout_metrics(rollouts, advantages, train_set.labels if cfg.template == "set" else None))
        if cfg.skip_bad_rows and (skipped := skipped_on_any_rank(train_set)):  # distinct rows left out so far
            metrics["data/skipped_rows"] = skipped
        metrics.update({f"data/dropped_long_{name}": count for name, count in dropped.items() if count})
        if val_set is not None and ((step + 1) % cfg.val_freq == 0 or step + 1 == total_steps):
            with timed(timings, "validate"):
                metrics.update(validate(engine, policy, val_set, cfg, tokenizer, step, score))
        metrics.update(timings)
        metrics["time/step"] = time.perf_counter() - step_start  # the whole step, validation included
        if device.type == "cuda":
            metrics["memory/peak_gb"] = torch.cuda.max_memory_allocated() / 2**30  # vLLM's pool not included
            torch.cuda.reset_peak_memory_stats()
        if rank == 0:
            tracker.log(metrics, step + 1, sample_lines(step + 1, prompts, rollouts, cfg.samples_per_step))
            progress.set_postfix(reward=f"{metrics['reward/overall']:.3f}", acc=f"{metrics['reward/accuracy']:.2f}")
        # the checkpoint after the step's log lines: a kill between the two leaves lines that --resume drops
        # and redoes; the other order would lose this step's line for good
        if (cfg.save_freq and (step + 1) % cfg.save_freq == 0) or step + 1 == total_steps:
            save_checkpoint(policy, optimizer, step + 1, dataclasses.asdict(cfg), out, rank, scheduler, cfg.save_limit)
        progress.update(1)

    progress.close()
    if rank == 0:  # the curves of the whole run (a resumed run included), next to metrics.jsonl
        tracker.close()
        draw_curves(out / "metrics.jsonl", out / "curves.png", title=f"{out.parent.name}/{out.name}")
    print0(f"done: {total_steps} steps; outputs in {out} (curves.png, samples.jsonl, metrics.jsonl)")
    engine.close()
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    exit_process()  # not Python's shutdown, where gloo's threads can abort a finished run: see its docstring
