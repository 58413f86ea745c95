"""Run under torchrun (2 ranks): the trainer's update loss and gradients on the tiny Qwen2.5-VL (FSDP2,
fp32), computed two ways, written for tests/test_grpo_math.py to compare:

  plain   each rank's sequences in ONE micro-batch of plainly padded [pad | prompt | response | pad]
          rows, in their original order, every sequence with its own copy of its prompt and image,
          the model's own causal mask and positions, log-probs from the full logits (log_softmax over
          the whole vocabulary, the textbook way); built here, independent of packing.collate
  packed  packing.micro_batches + collate + response_logprobs, as the trainer runs them:
          token-budget micro-batches (a different natural count on each rank: rank 1's responses are
          longer) equalised across ranks, packed rows (each prompt and its image once per micro-batch,
          its responses after it, a group split over two micro-batches where the budget demands), the
          text decoder's shared_prompt_attention on them, and the chunked, checkpointed LM head
          (chunks of 7 tokens)

    torchrun --nproc_per_node 2 tests/dist_microbatch_check.py MODEL_DIR DATA.jsonl OUT.pt
"""

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import data  # noqa: E402
import common  # noqa: E402
import packing  # noqa: E402
import train_grpo as tg  # noqa: E402

TOKEN_BUDGET = 500  # packed tokens per micro-batch (rows x longest row): a prompt is ~80 tokens here, responses 1-40
KL_COEF = 0.1


def plain_batch(samples, encoded, pad_id, device):
    """One row per sample: [left pad | prompt | response | right pad], its own image, a 2-D mask."""
    prompt_len = max(len(encoded[s.prompt]["input_ids"]) for s in samples)
    resp_len = max(len(s.response_ids) for s in samples)
    ids = torch.full((len(samples), prompt_len + resp_len), pad_id, dtype=torch.long)
    attention, types = torch.zeros_like(ids), torch.zeros_like(ids)
    response_mask = torch.zeros((len(samples), resp_len))
    for i, s in enumerate(samples):
        prompt, n = encoded[s.prompt], len(s.response_ids)
        p = len(prompt["input_ids"])
        ids[i, prompt_len - p:prompt_len] = prompt["input_ids"]
        types[i, prompt_len - p:prompt_len] = prompt["mm_token_type_ids"]
        ids[i, prompt_len:prompt_len + n] = torch.tensor(s.response_ids)
        attention[i, prompt_len - p:prompt_len + n] = 1
        response_mask[i, :n] = 1
    return {k: v.to(device) for k, v in dict(
        input_ids=ids, attention_mask=attention, mm_token_type_ids=types, response_ids=ids[:, prompt_len:],
        response_mask=response_mask, pixel_values=torch.cat([encoded[s.prompt]["pixel_values"] for s in samples]),
        image_grid_thw=torch.cat([encoded[s.prompt]["image_grid_thw"] for s in samples])).items()}


def plain_logprobs(model, batch):
    position_ids, _ = model.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"],
                                                 image_grid_thw=batch["image_grid_thw"],
                                                 attention_mask=batch["attention_mask"])
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=position_ids,
                   pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"], use_cache=False).logits
    logits = logits[:, -batch["response_ids"].shape[1] - 1:-1]
    return torch.log_softmax(logits.float(), -1).gather(-1, batch["response_ids"][..., None]).squeeze(-1)


def loss_and_grads(policy, samples, encoded, batches, old, ref, denom, make_batch, logprobs, device, world_size):
    """The trainer's step 7 for one mini-batch: sum of micro-batch losses (global), full gradients."""
    policy.zero_grad(set_to_none=True)
    total = torch.zeros((), dtype=torch.float64)
    for micro in batches:
        chunk = [samples[i] for i in micro]
        batch = make_batch(chunk, encoded, device)
        logp = logprobs(policy, batch)
        width = logp.shape[1]
        adv = torch.tensor([s.advantage for s in chunk])
        loss, _ = tg.policy_loss(logp, packing.pad_stack([old[i] for i in micro], width, device), adv,
                                 batch["response_mask"], denom=denom)
        kl = tg.kl_penalty(logp, packing.pad_stack([ref[i] for i in micro], width, device))
        loss = loss + KL_COEF * tg.aggregate(kl, batch["response_mask"], denom=denom)
        (loss * world_size).backward()
        total += loss.item()
    dist.all_reduce(total)
    return total, {name: p.grad.full_tensor() for name, p in policy.named_parameters()}


def main():
    model_dir, train_file, out_path = sys.argv[1:4]
    rank, world_size, device = common.setup_distributed()
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(model_dir)
    pad_id = processor.tokenizer.pad_token_id
    dataset = data.PromptDataset(train_file, processor, min_pixels=56 * 56, max_pixels=112 * 112)
    prompts = dataset.get_batch(list(range(rank * 4, rank * 4 + 4)))
    encoded = packing.encode_prompts(processor, prompts)
    rng = random.Random(rank)
    longest = 20 if rank == 0 else 40  # rank 1 needs more micro-batches under the budget
    samples = [packing.Sample(p, [rng.randrange(10, 600) for _ in range(rng.randint(1, longest))], [],
                         advantage=rng.uniform(-1.5, 1.5)) for p in range(4) for _ in range(3)]
    policy = common.load_model(model_dir, device, trainable=True)
    with torch.no_grad():  # old / ref log-probs near the policy's, far enough to reach the clips
        base = packing.batched_logprobs(policy, samples, encoded, 64, 0, pad_id, device, 1.0)
    old = [lp + 0.5 * torch.randn(lp.shape, generator=torch.Generator().manual_seed(i)) for i, lp in enumerate(base)]
    ref = [lp + 0.3 * torch.randn(lp.shape, generator=torch.Generator().manual_seed(100 + i)) for i, lp in enumerate(base)]
    count = torch.tensor(float(sum(len(s.response_ids) for s in samples)), dtype=torch.float64)
    dist.all_reduce(count)
    denom = count.item()
    everything = list(range(len(samples)))

    plain = loss_and_grads(policy, samples, encoded, [everything], old, ref, denom,
                           lambda c, e, d: plain_batch(c, e, pad_id, d), plain_logprobs, device, world_size)
    packed_batches = packing.micro_batches(samples, encoded, everything, 64, TOKEN_BUDGET)
    packed = loss_and_grads(policy, samples, encoded, packed_batches, old, ref, denom,
                            lambda c, e, d: packing.collate(c, e, pad_id, d),
                            lambda m, b: packing.response_logprobs(m, b, 1.0, chunk=7), device, world_size)
    rows = [{} for _ in packed_batches]  # prompt -> packed row length, per micro-batch
    for row, batch in zip(rows, packed_batches):
        for i in batch:
            p = samples[i].prompt
            row[p] = row.get(p, len(encoded[p]["input_ids"])) + len(samples[i].response_ids)
    shapes = [None] * world_size
    dist.all_gather_object(shapes, {"tokens": [len(r) * max(r.values()) for r in rows],  # what each forward computes
                                    "rows": [sorted(r) for r in rows],
                                    "seqs": sorted(i for b in packed_batches for i in b)})
    if rank == 0:
        torch.save({"plain": plain, "packed": packed, "shapes": shapes}, out_path)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
