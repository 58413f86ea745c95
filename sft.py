"""Cold-Start-Emo: a light supervised warm-up of the policy before EMO-R3 GRPO.

The paper reports that a small supervised warm-up on label-only data (no reasoning annotations)
lifts EMO-R3's overall score (60.50 -> 62.13); no code for it was released. This is ours:
- targets: the row's `response` column when it has one (full target responses), else a SET answer
  built from the label alone (--target, a template with {label}); the loss is on response tokens only;
- optionally (--reflection-examples) the two reflection questions of EMO-R3 about each target, with
  the answers the text supports (the emotion the target's step 2 names; "yes" for a step1 written
  about the row's own image, "no" for one from a row of another class), so the policy can judge its
  own reasoning from the first GRPO step;
- the same model loading, FSDP2 sharding, micro-batching and checkpoint format as train_grpo.py
  (common.py, packing.py, checkpoint.py), so `train_grpo.py --init-from RUN/checkpoints/step_N` starts from the result
  and `merge.py` converts it.

    torchrun --nproc_per_node 2 sft.py --demo                 # CPU, the tiny model on the demo data
    torchrun --nproc_per_node 8 sft.py --model Qwen/Qwen2.5-VL-3B-Instruct --train-files EmoSet2k@train \\
        --labels emoset --output-dir runs/cold-start
"""

import dataclasses
import json
import random
from dataclasses import dataclass

import torch
import torch.distributed as dist

import data
import rewards
import tiny
from checkpoint import save_checkpoint
from common import (demo_paths, load_model, lock_run_folder, parse_flags, print0, require_cuda, run_folder,
                    setup_distributed)
from packing import Sample, collate, encode_prompts, response_logprobs


@dataclass
class Config:
    model: str = ""  # HF folder or hub name; empty with --demo = the tiny model
    train_files: str = ""  # data.py layout; rows with a `response` column use it as the target
    labels: str = ""  # label set: emoset, emotion6 or a file (default: labels.txt beside the data)
    template: str = "set"  # prompt template: set, think, none
    trust_remote_code: bool = False  # let transformers run Python code shipped with the model folder
    target: str = "<step1>The scene carries cues of {label}.</step1>\n<step2>A viewer would feel {label}.</step2>\n<step3>The emotion is {label}.</step3>\n\\boxed{{label}}"  # label-only target (our choice: no public recipe)
    reflection_examples: bool = False  # also train the coherence / consistency answers on the targets
    shuffle_targets: bool = False  # format-only warm-up: targets go to random rows, teaching the answer structure but not the task
    min_pixels: int = 512 * 512  # as train_grpo.py (EMO-R3)
    max_pixels: int = 2048 * 2048
    max_prompt_length: int = 2048
    batch_size: int = 64  # examples per optimizer step, all ranks together
    micro_batch_size: int = 8  # examples per forward/backward per rank
    lr: float = 1e-5  # AdamW, constant after warm-up
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    epochs: int = 1
    max_steps: int = 0  # stop after this many optimizer steps (0: epochs decide)
    seed: int = 1
    gradient_checkpointing: bool = True
    freeze_vision: bool = False
    skip_bad_rows: bool = False
    output_dir: str = ""  # metrics.jsonl, config.json, checkpoints/ (default: runs/sft-DATE-TIME)
    demo: bool = False  # tiny model + demo data + CPU sizes
    allow_cpu: bool = False  # train a real model (not --demo) on the CPU when CUDA is unusable, instead of stopping


DEMO_DEFAULTS = dict(min_pixels=56 * 56, max_pixels=112 * 112, max_prompt_length=512, batch_size=16,
                     micro_batch_size=8, lr=3e-3, max_steps=60, gradient_checkpointing=False,
                     reflection_examples=True, shuffle_targets=True, model=str(tiny.DEFAULT_DIR),
                     train_files=str(tiny.DEMO_DIR / "train.jsonl"))  # built at start-up (common.demo_paths)


def parse_config(argv=None):
    cfg = parse_flags(Config, __doc__, argv, DEMO_DEFAULTS)
    if not cfg.demo and not (cfg.model and cfg.train_files):
        raise SystemExit("config error: --model and --train-files are required (or --demo)")
    if "{label}" not in cfg.target:
        raise SystemExit("config error: --target must contain {label}")
    return cfg


@dataclass
class Example:
    """One supervised pair: a prompt (chat text + images) and the target response text."""
    text: str
    images: list
    target: str


def build_examples(prompts, labels, cfg, rng):
    """The answers to imitate: targets for the prompts, plus (optionally) the reflection questions."""
    targets = [p.response or cfg.target.replace("{label}", p.answer) for p in prompts]
    answers = [p.answer for p in prompts]
    step1_by_label = {}
    for answer, target in zip(answers, targets):
        step1 = rewards.consistency_prompt(target)
        if step1:
            step1_by_label.setdefault(answer, []).append(step1)
    if cfg.shuffle_targets:  # pair each prompt with another row's target (and its label)
        order = list(range(len(prompts)))
        rng.shuffle(order)
        targets, answers = [targets[i] for i in order], [answers[i] for i in order]
    examples = [Example(p.text, p.images, target) for p, target in zip(prompts, targets)]
    if not cfg.reflection_examples:
        return examples
    for p, target, answer in zip(prompts, targets, answers):
        ask = rewards.coherence_prompt(target, labels)
        if ask:  # coherence: which emotion the reasoning names (text only, as at GRPO time)
            examples.append(Example(ask, [], answer))
        own = rewards.consistency_prompt(p.response or cfg.target.replace("{label}", p.answer))
        others = [s for label, texts in step1_by_label.items() if label != p.answer for s in texts]
        if own:  # consistency: "yes" for a step1 written about this row's own image ...
            examples.append(Example(own, p.images, "yes"))
        if others:  # ... and "no" for a step1 written about an image of another class
            examples.append(Example(rng.choice(others), p.images, "no"))
    return examples


def encode_examples(processor, examples):
    """Processor tensors of each prompt (the trainer's encode_prompts) plus the target's token ids,
    ending in <|im_end|>. Reflection questions are plain user turns, rendered here."""
    tokenizer = processor.tokenizer
    rendered = [ex if ex.text.startswith("<|im_start|>")
                else dataclasses.replace(ex, text=data.render_prompt(processor, ex.text, "none")) for ex in examples]
    end = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    samples = [Sample(i, tokenizer(ex.target, add_special_tokens=False)["input_ids"] + end, [])
               for i, ex in enumerate(examples)]
    return encode_prompts(processor, rendered), samples


def main(argv=None):
    cfg = parse_config(argv)
    require_cuda(cfg.allow_cpu, cfg.demo)
    rank, world_size, device = setup_distributed()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    out = run_folder(cfg.output_dir, "runs/sft-%Y%m%d-%H%M%S")
    lock_run_folder(out)  # one run per folder, before anything is written
    if (out / "checkpoints").exists():
        raise SystemExit(f"{out} already holds a run; choose another --output-dir")
    if cfg.demo:  # the tiny model and the demo data (the --demo defaults of --model and --train-files)
        demo_paths()

    from tqdm import tqdm
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
    pad_id = processor.tokenizer.pad_token_id
    dataset = data.PromptDataset(cfg.train_files, processor, template=cfg.template, labels=cfg.labels or None,
                                 min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels,
                                 max_prompt_length=cfg.max_prompt_length, skip_bad=cfg.skip_bad_rows)
    prompts = dataset.get_batch(range(len(dataset)))
    examples = build_examples(prompts, dataset.labels, cfg, rng)
    rng.shuffle(examples)
    encoded, samples = encode_examples(processor, examples)
    # a zero-weight image example, added to any micro-batch without an image: every rank must run
    # the vision tower in every forward, or the FSDP collectives of the vision blocks fall out of step
    dummy = len(encoded)
    encoded += encode_examples(processor, [Example(prompts[0].text, prompts[0].images, "")])[0]
    steps_per_epoch = len(samples) // cfg.batch_size
    total = cfg.max_steps or steps_per_epoch * cfg.epochs
    if steps_per_epoch == 0 or cfg.batch_size % world_size:
        raise SystemExit(f"{len(samples)} examples, --batch-size {cfg.batch_size}, world size {world_size}: the batch must "
                         f"fit the data and split evenly over the ranks")

    policy = load_model(cfg.model, device, trainable=True, gradient_checkpointing=cfg.gradient_checkpointing,
                        freeze_vision=cfg.freeze_vision, trust_remote_code=cfg.trust_remote_code)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
        metrics_file = open(out / "metrics.jsonl", "a")
        print(f"sft: {len(prompts)} prompts -> {len(samples)} examples, {total} steps of {cfg.batch_size} "
              f"({len(dataset.dropped_long)} rows over --max-prompt-length dropped at load)")
    progress = tqdm(total=total, desc="sft", disable=rank != 0, dynamic_ncols=True)

    share = cfg.batch_size // world_size
    for step in range(total):
        order = data.step_indices(len(samples), cfg.batch_size, step, cfg.seed)
        mine = [samples[i] for i in data.rank_slice(order, rank, world_size)]
        # token-mean over the whole batch across ranks: each micro-batch divides by the global count
        tokens = torch.tensor(float(sum(len(s.response_ids) for s in mine)))
        dist.all_reduce(tokens)
        optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros(())
        for start in range(0, share, cfg.micro_batch_size):
            chunk = mine[start:start + cfg.micro_batch_size]
            if not any("pixel_values" in encoded[s.prompt] for s in chunk):
                chunk = chunk + [Sample(dummy, [pad_id], [], weight=0.0)]
            batch = collate(chunk, encoded, pad_id, device)
            mask = batch["response_mask"] * torch.tensor([s.weight for s in chunk], device=device)[:, None]
            logp = response_logprobs(policy, batch, 1.0)
            loss = -(logp * mask).sum() / tokens.item()
            (loss * world_size).backward()  # FSDP averages gradients over ranks; the mean is already global
            loss_sum += loss.detach().cpu()
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        if torch.isfinite(grad_norm):
            optimizer.step()
        scheduler.step()
        dist.all_reduce(loss_sum)
        if rank == 0:
            metrics_file.write(json.dumps({"step": step + 1, "loss": loss_sum.item(), "grad_norm": grad_norm.item(),
                                           "lr": scheduler.get_last_lr()[0]}) + "\n")
            metrics_file.flush()
            progress.set_postfix(loss=f"{loss_sum.item():.3f}")
        progress.update(1)
    progress.close()
    # the trainer's checkpoint format, so train_grpo.py --init-from and merge.py take it as it is
    save_checkpoint(policy, optimizer, total, dataclasses.asdict(cfg), out, rank)
    print0(f"sft done: {out / 'checkpoints' / f'step_{total}'}")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
