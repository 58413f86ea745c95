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

Safe as the trainer: a checkpoint every --save-freq steps (--save-limit keeps the newest k);
--resume continues the newest complete one with the same flags (the data order is a function of
--seed and the step, so it picks up at the same example); an --output-dir that already holds a run
is refused without --resume; a step whose loss or grad norm is not finite on any rank is skipped on
every rank, and --max-bad-updates of them in a row stop the run. Images are decoded per step, only
those of the step's examples (all of EmoSet at once would not fit in host memory).

    torchrun --nproc_per_node 2 sft.py --demo                 # CPU, the tiny model on the demo data
    torchrun --nproc_per_node 8 sft.py --model Qwen/Qwen2.5-VL-3B-Instruct --train-files EmoSet2k@train \\
        --labels emoset --output-dir runs/cold-start
    torchrun --nproc_per_node 8 sft.py ...the same flags... --resume   # after a crash or preemption
"""

import dataclasses
import math
import random
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.distributed as dist

import data
import rewards
import tiny
from checkpoint import load_checkpoint, save_checkpoint
from common import Tracker, exit_process, parse_flags, print0
from data import get_batch_on_every_rank
from packing import Sample, collate, encode_prompts, has_visual, response_logprobs
from startup import RESUME_MAY_CHANGE, RunConfig, config_problems, load_models, prompt_set, run_length, start_run


@dataclass
class Config(RunConfig):
    # + startup.RunConfig's flags, shared with train_grpo.py: model, precision, LoRA, data, seed, run folder
    target: str = (  # label-only target, in --template's format (our choice: no public recipe)
        "<step1>The scene carries cues of {label}.</step1>\n"
        "<step2>A viewer would feel {label}.</step2>\n"
        "<step3>The emotion is {label}.</step3>\n"
        "\\boxed{{label}}")
    response_key: str = "response"  # the column holding a row's target response; rows without one
        # (every row with "") use --target
    reflection_examples: bool = False  # also train the coherence / consistency answers on the targets
    shuffle_targets: bool = False  # format-only warm-up: targets go to random rows, teaching the answer structure
        # but not the task
    shuffle_steps: bool = False  # format-only and incoherent: step 1, step 2 and the rest of each target come from
        # three random rows
    judge_swap: float = 0.0  # this share of the coherence examples shows its target with step 2 from a random row,
        # answered with that row's label (its step 2's emotion)
    shuffle_boxes: float = 0.0  # this share of the targets takes its box from a random row: the reasoning stays one
        # chain, the answer is a guess
    batch_size: int = 64  # examples per optimizer step, all ranks together
    micro_batch_size: int = 8  # examples per forward/backward per rank
    lr: float = 1e-5  # AdamW, constant after warm-up
    weight_decay: float = 0.0
    warmup_steps: int = 0
    epochs: int = 1
    save_freq: int = 50  # checkpoint every k steps (ours); 0 = only at the end


DEMO_DEFAULTS = dict(min_pixels=56 * 56, max_pixels=112 * 112, video_min_pixels=56 * 56, video_max_pixels=112 * 112,
                     video_max_frames=16, max_prompt_length=512, batch_size=16,
                     micro_batch_size=8, lr=3e-3, max_steps=400, save_freq=200, gradient_checkpointing=False,
                     reflection_examples=True, shuffle_targets=True, model=str(tiny.DEFAULT_DIR),
                     train_files=str(tiny.DEMO_DIR / "train.jsonl"))  # built at start-up (tiny.demo_paths)


def parse_config(argv=None):
    return parse_flags(Config, __doc__, argv, DEMO_DEFAULTS, check=check_config)


def check_config(cfg, printing=False):
    """Fail at start-up, with the flag's name (printing: --print-config, which needs no model or data)."""
    problems = config_problems(cfg, printing, split_evenly=("batch_size",))
    if "{label}" not in cfg.target:
        problems.append("--target must contain {label}")
    problems += [f"--{name.replace('_', '-')} is a share of the examples, from 0 to 1"
                 for name in ("judge_swap", "shuffle_boxes") if not 0.0 <= getattr(cfg, name) <= 1.0]
    if problems:
        raise SystemExit("config error:\n  " + "\n  ".join(problems))


@dataclass
class Example:
    """One supervised pair: a prompt and the target response text. The prompt is dataset row `row`'s own
    (question None) or a reflection `question` asked about that row's images (row None: text only). Only
    the row's index is kept: its images are decoded when the example's step comes (encode_step)."""
    row: int | None
    question: str | None
    target: str


def split_steps(target):
    """A SET target cut before <step2> and before <step3>: (step 1, step 2, the rest), or None."""
    two, three = target.find("<step2>"), target.find("<step3>")
    if not (0 < two < three):
        return None
    return target[:two], target[two:three], target[three:]


def replace_box(target, label):
    """`target` with the content of its last \\boxed{} replaced by `label` (unchanged without a closed one)."""
    span = rewards.boxed_span(target)
    return target[:span[0]] + label + target[span[1]:] if span else target


def build_examples(rows, labels, cfg, rng):
    """The answers to imitate: targets for the rows (rows.Row: answer, response), plus (optionally) the
    reflection questions. No image is opened here."""
    targets = [r.response or cfg.target.replace("{label}", r.answer) for r in rows]
    answers = [r.answer for r in rows]
    own_step1 = [rewards.consistency_prompt(t) for t in targets]  # each row's description of its own image
    step1_by_label = {}
    for answer, step1 in zip(answers, own_step1):
        if step1:
            step1_by_label.setdefault(answer, []).append(step1)
    if cfg.shuffle_targets:  # pair each prompt with another row's target (and its label)
        order = list(range(len(rows)))
        rng.shuffle(order)
        targets, answers = [targets[i] for i in order], [answers[i] for i in order]
    if cfg.shuffle_steps:  # step 1, step 2 and the rest from three random rows: the emotion the reasoning names
        parts = [split_steps(t) for t in targets]  # is step 2's row's, and neither the image nor the box tells it
        picks = [[rng.randrange(len(rows)) for _ in range(3)] for _ in rows]
        targets = [parts[a][0] + parts[b][1] + parts[c][2] if all(parts[k] for k in (a, b, c)) else targets[i]
                   for i, (a, b, c) in enumerate(picks)]
        answers = [answers[b] if all(parts[k] for k in (a, b, c)) else answers[i]
                   for i, (a, b, c) in enumerate(picks)]
    if cfg.shuffle_boxes:  # the answer a guess, the reasoning intact; `answers` stays the emotion the text names,
        # which the coherence examples answer. The first `keep` targets (a random set with --shuffle-targets)
        # keep theirs
        boxes = [answers[rng.randrange(len(rows))] for _ in rows]
        keep = round(len(rows) * (1 - cfg.shuffle_boxes))
        targets = [t if i < keep else replace_box(t, box) for i, (t, box) in enumerate(zip(targets, boxes))]
    examples = [Example(i, None, target) for i, target in enumerate(targets)]
    if not cfg.reflection_examples:
        return examples
    others_of = {}  # label -> the step1 texts of every other label, built once per label (not per row: N^2)
    for i, (r, target, answer, own) in enumerate(zip(rows, targets, answers, own_step1)):
        text, named = target, answer
        if cfg.judge_swap and rng.random() < cfg.judge_swap:  # step 2 from another row: only reading step 2 answers it
            j = rng.randrange(len(rows))
            mine, theirs = split_steps(target), split_steps(targets[j])
            if mine and theirs:
                text, named = mine[0] + theirs[1] + mine[2], answers[j]
        ask = rewards.coherence_prompt(text, labels)
        if ask:  # coherence: which emotion the reasoning names (text only, as at GRPO time)
            examples.append(Example(None, ask, named))
        if r.answer not in others_of:
            others_of[r.answer] = [s for label, texts in step1_by_label.items() if label != r.answer for s in texts]
        if own:  # consistency: "yes" for a step1 written about this row's own image ...
            examples.append(Example(i, own, "yes"))
        if others_of[r.answer]:  # ... and "no" for a step1 written about an image of another class
            examples.append(Example(i, rng.choice(others_of[r.answer]), "no"))
    return examples


def encode_step(processor, dataset, examples):
    """This rank's examples of one step, ready for collate: (encoded prompts, Samples, examples left out).

    The images of the rows they use are decoded here, a step's worth at a time: decoding the whole
    dataset up front (tens of thousands of EmoSet images, on every rank) runs out of host memory. A
    bad image stops every rank together, or with --skip-bad-rows its row's examples are left out.
    Prompts get the trainer's encode_prompts; targets their token ids, ending in <|im_end|>."""
    rows = sorted({ex.row for ex in examples if ex.row is not None})
    prompts = {p.index: p for p in get_batch_on_every_rank(dataset, rows)}
    kept = [ex for ex in examples if ex.row is None or ex.row in prompts]
    chats = []
    for ex in kept:
        if ex.question is None:  # the row's own prompt, rendered by the dataset
            chats.append(prompts[ex.row])
        else:  # a reflection question: a plain user turn, with the row's image or clip, or nothing
            row = prompts[ex.row] if ex.row is not None else None
            question = ex.question  # a video row's consistency question shows its clip where the image would be
            if row is not None and row.videos and question.startswith("<image>"):
                question = "<video>" + question.removeprefix("<image>")
            chats.append(SimpleNamespace(text=data.render_prompt(processor, question, "none"),
                                         images=row.images[:1] if row is not None and not row.videos else [],
                                         videos=row.videos[:1] if row is not None else []))
    end = [processor.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    samples = [Sample(i, processor.tokenizer(ex.target, add_special_tokens=False)["input_ids"] + end, [])
               for i, ex in enumerate(kept)]
    return encode_prompts(processor, chats), samples, len(examples) - len(kept)


def main(argv=None):
    cfg = parse_config(argv)
    # the process group, seeds, the run folder (a resume: metrics.jsonl lines after its checkpoint are
    # dropped, those steps are redone), the demo's files
    rank, world_size, device, out, resume_from, start_step = start_run(cfg, "sft", RESUME_MAY_CHANGE,
                                                                       [cfg.train_files])
    rng = random.Random(cfg.seed)

    from PIL import Image
    from tqdm import tqdm
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
    pad_id = processor.tokenizer.pad_token_id
    # rows are read and checked here, image sizes from the headers (for --max-prompt-length); no pixel is decoded
    dataset = prompt_set(cfg.train_files, processor, cfg, response_key=cfg.response_key)
    # built from --seed alone, the same on every rank and in a resumed run: step N gets the same examples
    examples = build_examples(dataset.rows, dataset.labels, cfg, rng)
    rng.shuffle(examples)
    # a zero-weight image example, added to any micro-batch without an image: every rank must run the vision
    # tower in every forward, or the FSDP collectives of the vision blocks fall out of step. A blank image at
    # the processor's smallest size: its pixels never reach the loss
    blank = data.resize_image(Image.new("RGB", (28, 28)), *dataset.processor_pixels, dataset.processor_pixels)
    dummy = encode_prompts(processor, [SimpleNamespace(text=data.render_prompt(processor, "<image>", "none"),
                                                       images=[blank])])[0]
    total = run_length(len(examples), "batch_size", cfg, resume_from, start_step, unit="examples")

    # the policy (LoRA layers with --lora-rank), AdamW with torch's default betas, a linear warm-up
    policy, _, optimizer, scheduler = load_models(cfg, device, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    if resume_from:  # weights, AdamW state, LR schedule and this rank's RNG states
        load_checkpoint(policy, optimizer, resume_from, rank, scheduler)
        print0(f"resumed from {resume_from} (step {start_step})")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        tracker = Tracker(dataclasses.asdict(cfg), out)
        print(f"sft: {len(dataset)} rows -> {len(examples)} examples, {total} steps of {cfg.batch_size} "
              f"({len(dataset.dropped_long)} rows over --max-prompt-length dropped at load, "
              f"{len(dataset.skipped)} bad rows skipped)")
    progress = tqdm(total=total, initial=start_step, desc="sft", disable=rank != 0, dynamic_ncols=True)

    share = cfg.batch_size // world_size
    bad_updates = 0  # consecutive steps skipped for a non-finite loss or grad norm
    for step in range(start_step, total):
        # data: a pure function of (step, seed), so a resumed run continues with the same examples
        order = data.step_indices(len(examples), cfg.batch_size, step, cfg.seed)
        mine = [examples[i] for i in data.rank_slice(order, rank, world_size)]
        encoded, samples, left_out = encode_step(processor, dataset, mine)  # decodes this step's images
        encoded.append(dummy)
        # token-mean over the whole batch across ranks: each micro-batch divides by the global count
        tokens = torch.tensor(float(sum(len(s.response_ids) for s in samples)))
        dist.all_reduce(tokens)
        loss_sum = torch.zeros(())
        # the same number of micro-batches on every rank (from the share, not from what survived --skip-bad-rows)
        for start in range(0, share, cfg.micro_batch_size):
            chunk = samples[start:start + cfg.micro_batch_size]
            if not any(has_visual(encoded[s.prompt]) for s in chunk):
                chunk = chunk + [Sample(len(encoded) - 1, [pad_id], [], weight=0.0)]
            batch = collate(chunk, encoded, pad_id, device)
            mask = batch["response_mask"] * torch.tensor([s.weight for s in chunk], device=device)[:, None]
            logp = response_logprobs(policy, batch, 1.0)
            loss = -(logp * mask).sum() / tokens.clamp(min=1).item()
            # even a non-finite loss goes backward: every rank must run the same collectives
            (loss * world_size).backward()  # FSDP averages gradients over ranks; the mean is already global
            loss_sum += loss.detach().cpu()
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
        grad_norm = (grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm).item()
        # update: skipped on every rank when the loss or grad norm is not finite on any. The grad norm is
        # global, but a NaN in one rank's loss value need not reach the gradients, so each rank's verdict
        # travels with the loss sum and the left-out count in one collective
        finite_here = bool(loss_sum.isfinite()) and math.isfinite(grad_norm)
        totals = torch.tensor([loss_sum.item(), float(not finite_here), left_out])
        dist.all_reduce(totals)
        loss_total, bad_ranks, left_out_total = totals.tolist()
        if bad_ranks == 0:
            optimizer.step()
            bad_updates = 0
        else:
            bad_updates += 1
            print0(f"step {step + 1}: non-finite loss or grad norm ({loss_total}, {grad_norm}), update skipped "
                   f"({bad_updates} in a row)")
            if bad_updates >= cfg.max_bad_updates:
                raise SystemExit(f"step {step + 1}: {bad_updates} consecutive steps with a non-finite loss or grad "
                                 f"norm (--max-bad-updates {cfg.max_bad_updates}); stopping. Lower --lr, check the "
                                 f"targets, or continue from the last checkpoint with --resume.")
        optimizer.zero_grad(set_to_none=True)  # a skipped step's gradients must not leak into the next
        lr = scheduler.get_last_lr()[0]  # the LR this step used
        scheduler.step()  # once per step, skipped or not, as the trainer does

        # log, then checkpoint: a crash between the two leaves a line that --resume drops and redoes
        if rank == 0:
            tracker.log({"loss": loss_total, "grad_norm": grad_norm, "lr": lr,
                         **({"update/skipped": 1} if bad_ranks else {}),
                         **({"data/skipped_examples": int(left_out_total)} if left_out_total else {})}, step + 1)
            progress.set_postfix(loss=f"{loss_total:.3f}")
        progress.update(1)
        # the trainer's checkpoint format, so train_grpo.py --init-from and merge.py take it as it is
        if (cfg.save_freq and (step + 1) % cfg.save_freq == 0) or step + 1 == total:
            save_checkpoint(policy, optimizer, step + 1, dataclasses.asdict(cfg), out, rank, scheduler, cfg.save_limit)
    progress.close()
    if rank == 0:
        tracker.close()
    print0(f"sft done: {out / 'checkpoints' / f'step_{total}'}")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    exit_process()  # not Python's shutdown, where gloo's threads can abort a finished run: see its docstring
