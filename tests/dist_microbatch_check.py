"""Run under torchrun (2 ranks): the trainer's update loss and gradients on the tiny Qwen2.5-VL (FSDP2,
fp32), computed two ways, written for tests/test_grpo_math.py to compare:

  plain   each rank's sequences in ONE padded micro-batch, in their original order, every sequence
          with its own copy of its image, log-probs from the model's full logits (log_softmax over
          the whole vocabulary, the textbook way)
  budget  train_grpo.micro_batches: length-sorted micro-batches under a token budget, a different
          natural count on each rank (rank 1's responses are longer) equalised across ranks, and
          train_grpo.response_logprobs' chunked, checkpointed LM head (chunks of 7 tokens), and each
          prompt's image through the vision tower once for its 3 responses

    torchrun --nproc_per_node 2 tests/dist_microbatch_check.py MODEL_DIR DATA.jsonl OUT.pt
"""

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import data  # noqa: E402
import train_grpo as tg  # noqa: E402

TOKEN_BUDGET = 600  # padded tokens per micro-batch: a prompt is ~80 tokens here, responses 1-40
KL_COEF = 0.1


def plain_logprobs(model, batch):
    position_ids, _ = model.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"],
                                                 image_grid_thw=batch["image_grid_thw"],
                                                 attention_mask=batch["attention_mask"])
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=position_ids,
                   pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"], use_cache=False).logits
    logits = logits[:, -batch["response_ids"].shape[1] - 1:-1]
    return torch.log_softmax(logits.float(), -1).gather(-1, batch["response_ids"][..., None]).squeeze(-1)


def loss_and_grads(policy, samples, encoded, batches, old, ref, denom, logprobs, pad_id, device, world_size, dedupe):
    """The trainer's step 7 for one mini-batch: sum of micro-batch losses (global), full gradients."""
    policy.zero_grad(set_to_none=True)
    total = torch.zeros((), dtype=torch.float64)
    for micro in batches:
        chunk = [samples[i] for i in micro]
        batch = tg.collate(chunk, encoded, pad_id, device, dedupe_images=dedupe)
        logp = logprobs(policy, batch)
        width = logp.shape[1]
        adv = torch.tensor([s.advantage for s in chunk])
        loss, _ = tg.policy_loss(logp, tg.pad_stack([old[i] for i in micro], width, device), adv,
                                 batch["response_mask"], denom=denom)
        kl = tg.kl_penalty(logp, tg.pad_stack([ref[i] for i in micro], width, device))
        loss = loss + KL_COEF * tg.aggregate(kl, batch["response_mask"], denom=denom)
        (loss * world_size).backward()
        total += loss.item()
    dist.all_reduce(total)
    return total, {name: p.grad.full_tensor() for name, p in policy.named_parameters()}


def main():
    model_dir, train_file, out_path = sys.argv[1:4]
    rank, world_size, device = tg.setup_distributed()
    cfg = tg.Config(model=model_dir, gradient_checkpointing=False)
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(model_dir)
    pad_id = processor.tokenizer.pad_token_id
    dataset = data.PromptDataset(train_file, processor, min_pixels=56 * 56, max_pixels=112 * 112)
    prompts = dataset.get_batch(list(range(rank * 4, rank * 4 + 4)))
    encoded = tg.encode_prompts(processor, prompts)
    rng = random.Random(rank)
    longest = 20 if rank == 0 else 40  # rank 1 needs more micro-batches under the budget
    samples = [tg.Sample(p, [rng.randrange(10, 600) for _ in range(rng.randint(1, longest))], [],
                         advantage=rng.uniform(-1.5, 1.5)) for p in range(4) for _ in range(3)]
    policy = tg.load_model(cfg, device, trainable=True)
    with torch.no_grad():  # old / ref log-probs near the policy's, far enough to reach the clips
        base = tg.batched_logprobs(policy, samples, encoded, 64, 0, pad_id, device, 1.0)
    old = [lp + 0.5 * torch.randn(lp.shape, generator=torch.Generator().manual_seed(i)) for i, lp in enumerate(base)]
    ref = [lp + 0.3 * torch.randn(lp.shape, generator=torch.Generator().manual_seed(100 + i)) for i, lp in enumerate(base)]
    count = torch.tensor(float(sum(len(s.response_ids) for s in samples)), dtype=torch.float64)
    dist.all_reduce(count)
    denom = count.item()
    everything = list(range(len(samples)))

    plain = loss_and_grads(policy, samples, encoded, [everything], old, ref, denom, plain_logprobs, pad_id, device,
                           world_size, dedupe=False)
    budget_batches = tg.micro_batches(samples, encoded, everything, 64, TOKEN_BUDGET)
    budget = loss_and_grads(policy, samples, encoded, budget_batches, old, ref, denom,
                            lambda m, b: tg.response_logprobs(m, b, 1.0, chunk=7), pad_id, device, world_size,
                            dedupe=True)
    length = {i: len(encoded[samples[i].prompt]["input_ids"]) + len(samples[i].response_ids) for i in everything}
    padded = [len(b) * max(length[i] for i in b) for b in budget_batches]  # tokens each micro-batch computes
    shapes = [None] * world_size
    dist.all_gather_object(shapes, {"padded": padded, "seqs": sorted(i for b in budget_batches for i in b)})
    if rank == 0:
        torch.save({"plain": plain, "budget": budget, "shapes": shapes}, out_path)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
