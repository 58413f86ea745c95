"""What both training stages (sft.py, train_grpo.py) share before their first step: the flags they have
in common (RunConfig, which each stage's Config extends) and the start-up that reads them: refuse a
config or a machine that cannot run the job, start the process group and seed it, open the run folder,
build the demo's files, read the prompt sets, and load the policy with AdamW and its lr schedule.

Each function takes the stage's Config and names the fields it reads beyond RunConfig's; a field that
one stage lacks (sft.py has no --init-from or KL) takes the value named beside it. Nothing here runs
during a step: the step is the stage script's own.
"""

import dataclasses
import os
import random
from dataclasses import dataclass
from typing import Literal

import torch

import data
import lora
import rewards
import tiny
import video
from checkpoint import check_run_length, find_checkpoint, load_weights, open_run
from common import print0, require_cuda, setup_distributed
from model import adamw, load_model


@dataclass
class RunConfig:
    """The flags both training stages have. A field's comment is its --help (continued on the comment lines
    indented under it); the defaults are EMO-R3's released recipe where it has one."""
    # the model
    model: str = ""  # HF folder or hub name; empty with --demo = the tiny model (tiny.py)
    trust_remote_code: bool = False  # let transformers/vLLM run Python code shipped with the model folder
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # bf16: bf16 compute, fp32 master weights and
        # gradient reduction (EMO-R3 on GPU); auto: bf16 on GPU, fp32 on CPU
    gradient_checkpointing: bool = True  # (EMO-R3)
    freeze_vision: bool = False  # EMO-R3 trains the vision tower
    grad_clip: float = 1.0  # max grad norm (EMO-R3)
    # LoRA (README, "LoRA"): the base frozen, A and B trained
    lora_rank: int = 0  # 0: full-parameter training (EMO-R3); R: LoRA of rank R (EasyR1 and verl ship 64)
    lora_alpha: float = 0.0  # the update is scaled by alpha / rank; 0: twice the rank (alpha 128 at rank 64)
    lora_targets: str = ",".join(lora.DEFAULT_TARGETS)  # layers wrapped, comma separated (the language model's)
    lora_vision: bool = False  # let targets reach the vision tower (vLLM's experimental tower LoRA)
    # data
    train_files: str = ""  # data.py layout; DIR@split selects files of one split
    labels: str = ""  # label set: emoset, emotion6 or a file; empty: labels.txt beside the data, else the answers
    image_dir: str = ""  # base folder for relative image paths (default: the data file's folder)
    skip_bad_rows: bool = False  # skip and count broken rows instead of stopping (data.py)
    template: Literal[rewards.PROMPT_TEMPLATES] = "set"  # prompt: set (EMO-R3), think (plain GRPO), r1-omni, none
    min_pixels: int = 512 * 512  # EMO-R3 data.min_pixels (262144)
    max_pixels: int = 2048 * 2048  # EMO-R3 data.max_pixels (4194304)
    max_prompt_length: int = 2048  # EMO-R3 data.max_prompt_length (tokens, image and video tokens included)
    video_fps: float = video.VIDEO_FPS  # frames sampled per second of a video file (EasyR1 data.video_fps);
        # a frame list is taken as sampled at this rate
    video_max_frames: int = video.VIDEO_MAX_FRAMES  # most frames per video (qwen-vl-utils FPS_MAX_FRAMES)
    video_min_pixels: int = video.VIDEO_MIN_PIXELS  # per-frame pixel range (EasyR1: its data.min_pixels)
    video_max_pixels: int = video.VIDEO_MAX_PIXELS  # (qwen-vl-utils VIDEO_MAX_PIXELS; a clip's total is capped too)
    # the run: its seed, its folder, its guards
    seed: int = 1  # data order, sampling seeds (EMO-R3 data.seed)
    max_steps: int = 0  # stop after this many steps (0: epochs decide)
    save_limit: int = 0  # keep the newest k checkpoints, deleting older ones once the new one is whole (0: all)
    output_dir: str = ""  # the run's folder: config.json, metrics.jsonl, checkpoints/ (default: runs/STAGE-DATE-TIME)
    resume: bool = False  # continue from the newest complete checkpoint in output_dir
    max_bad_updates: int = 3  # stop after this many consecutive updates with a non-finite loss or grad norm
    dist_timeout_minutes: float = 30.0  # longest wait in a collective: a dead or hung rank elsewhere ends the run
    allow_cpu: bool = False  # run a real model (not --demo) on the CPU when CUDA is unusable, instead of stopping
    demo: bool = False  # tiny model + demo data + small sizes: the CPU demo


# The flags of RunConfig (and epochs and save_freq, which both stages have) that a resumed run may change:
# how far it goes, how often it saves, its guards, where it runs. Any other change (lr, batch size, seed,
# data) alters what the run trains, and --resume refuses it.
RESUME_MAY_CHANGE = {"max_steps", "epochs", "save_freq", "save_limit", "max_bad_updates", "resume", "allow_cpu",
                     "skip_bad_rows", "dist_timeout_minutes", "output_dir"}


def config_problems(cfg, printing, split_evenly):
    """What is wrong with RunConfig's flags, each said with its flag's name: --model and --train-files
    without --demo, --resume without --output-dir, and batch sizes (the fields `split_evenly`, all ranks
    together) that torchrun's world size does not divide (printing: --print-config, which needs no model,
    data or world)."""
    problems = []
    world_size = int(os.environ.get("WORLD_SIZE", 1))  # torchrun's: the process group has not started
    if not printing and not cfg.demo and not (cfg.model and cfg.train_files):
        problems.append("--model and --train-files are required (or --demo)")
    if cfg.resume and not cfg.output_dir:
        problems.append("--resume needs --output-dir: the run folder to continue")
    uneven = [f"--{flag.replace('_', '-')} {getattr(cfg, flag)}" for flag in split_evenly
              if getattr(cfg, flag) % world_size]
    if uneven and not printing:
        problems.append(f"{' and '.join(uneven)}: must be a multiple of the world size ({world_size})")
    return problems


def start_run(cfg, name, may_change, data_files):
    """The process group, this rank's seeds, the run folder and where the run starts: (rank, world_size,
    device, out, resume_from, start_step).

    torch and Python's `random` are seeded with --seed + rank. Without --resume a folder holding a run
    (also one that crashed before its first save) is refused; with it, the newest complete checkpoint (a
    half-written step_N.tmp never counts), refused before any file is touched if a flag outside
    `may_change` differs: a changed lr, batch size or seed would silently change what it trains. The
    default folder is runs/NAME-DATE-TIME. With --demo the tiny model and the demo data are built where
    --model and `data_files` point."""
    require_cuda(cfg.allow_cpu, cfg.demo)
    rank, world_size, device = setup_distributed(timeout_minutes=cfg.dist_timeout_minutes)
    torch.manual_seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)
    out, resume_from, start_step = open_run(cfg.output_dir, f"runs/{name}-%Y%m%d-%H%M%S", cfg.resume,
                                            dataclasses.asdict(cfg), may_change)
    if cfg.demo:
        tiny.demo_paths(cfg.model, data_files)
    return rank, world_size, device, out, resume_from, start_step


def prompt_set(files, processor, cfg, **kwargs):
    """The data.PromptDataset of `files` (None when empty) with RunConfig's data flags. As the reference's
    filter_overlong_prompts, rows over --max-prompt-length (image and video tokens included) are dropped at
    load, and a stage's steps count the rows that remain."""
    if not files:
        return None
    return data.PromptDataset(files, processor, template=cfg.template, labels=cfg.labels or None,
                              min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels,
                              max_prompt_length=cfg.max_prompt_length, image_dir=cfg.image_dir or None,
                              skip_bad=cfg.skip_bad_rows, **video.video_kwargs(cfg), **kwargs)


def run_length(count, batch_flag, cfg, resume_from, start_step, unit="prompts"):
    """The run's steps: --max-steps, else --epochs passes of `count` (the usable prompts or examples) //
    the batch (the Config field `batch_flag`, all ranks together). Reads epochs.
    A batch larger than the data is refused, and so is a resumed step past the end (check_run_length)."""
    batch = getattr(cfg, batch_flag)
    if count < batch:
        raise SystemExit(f"{cfg.train_files}: {count} usable {unit}, fewer than --{batch_flag.replace('_', '-')} "
                         f"{batch}")
    total = cfg.max_steps or count // batch * cfg.epochs
    check_run_length(resume_from, start_step, total, cfg.epochs)
    return total


def load_models(cfg, device, lr_factor):
    """The policy, the KL reference, AdamW and its lr schedule (the lr of step s: --lr x lr_factor(s)).

    Reads kl_coef (0), init_from (""), lr, beta1 and beta2 (torch's 0.9, 0.999) and weight_decay. The
    reference is a frozen copy of the starting policy, None without KL and with LoRA (there it is the
    policy with its adapter off, lora.adapter_disabled). With --init-from both start from that
    checkpoint's weights."""
    kwargs = dict(precision=cfg.precision, gradient_checkpointing=cfg.gradient_checkpointing,
                  freeze_vision=cfg.freeze_vision, trust_remote_code=cfg.trust_remote_code)
    settings = lora.from_flags(cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, cfg.lora_vision)
    policy = load_model(cfg.model, device, trainable=True, lora=settings, **kwargs)
    with_reference = getattr(cfg, "kl_coef", 0) > 0 and not cfg.lora_rank
    reference = load_model(cfg.model, device, trainable=False, **kwargs) if with_reference else None
    if getattr(cfg, "init_from", ""):
        start = find_checkpoint(cfg.init_from)
        for model in filter(None, (policy, reference)):
            load_weights(model, start)
        print0(f"initialised from {start}")
    betas = getattr(cfg, "beta1", 0.9), getattr(cfg, "beta2", 0.999)
    optimizer = adamw(policy, cfg.lr, betas, cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    return policy, reference, optimizer, scheduler
