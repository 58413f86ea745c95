"""The update arithmetic of train_grpo.py (step 7) on a toy policy, under torchrun + FSDP2 on CPU/gloo.

tests/test_grpo_math.py launches it and checks that what it writes equals one process computing the
loss over the whole mini-batch at once:

    torchrun --standalone --nproc_per_node 2 tests/dist_token_mean.py OUT.pt

Each of the 2 ranks takes 4 of the 8 ragged sequences, runs them in micro-batches (sizes 2, 1 and 3,
the last one uneven), each micro-batch padded only to its own longest response as collate() does,
with the trainer's global normaliser `denom` (all_reduce of the mini-batch's token / sequence count)
and `(loss * world_size).backward()` because FSDP2 averages gradients over ranks. Rank 0 saves, for
each (agg, micro-batch size), the loss summed over micro-batches and ranks and the full gradients.

Importing this file does nothing; the test imports it for the toy policy and the batch.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # train_grpo lives at the repo root

import train_grpo  # noqa: E402

VOCAB, DIM = 11, 8  # 11 rows: FSDP2 shards dim 0 unevenly over 2 ranks, as on real models
LENGTHS = [7, 3, 5, 1, 6, 2, 4, 7]  # response lengths; rank 0 gets the first 4, rank 1 the rest
T_MAX = max(LENGTHS)  # plays max_response_length (the Dr. GRPO constant)
KL_COEF = 0.1  # larger than EMO-R3's 0.01 so that the KL term's share of the gradient is clearly visible
ADVANTAGES = [1.5, -0.5, -0.5, -0.5, 0.8, -1.2, 0.3, -0.1]
AGGS = ("token", "seq", "drgrpo", "micro")
MICRO_SIZES = (2, 1, 3)


def build_policy():
    """Token embedding + LM head: enough to give per-token log-probs that depend on parameters."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(VOCAB, DIM), torch.nn.Linear(DIM, VOCAB))


def token_logprobs(model, tokens):
    """(B, W+1) token ids -> (B, W) log-probs of tokens 1..W, each predicted from the previous one."""
    logits = model(tokens[:, :-1])
    return F.log_softmax(logits.float(), -1).gather(-1, tokens[:, 1:, None]).squeeze(-1)


def make_batch():
    """8 sequences padded to T_MAX, with old/ref log-probs far enough from the policy to hit every clip."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(VOCAB, (len(LENGTHS), T_MAX + 1), generator=g)
    mask = (torch.arange(T_MAX)[None, :] < torch.tensor(LENGTHS)[:, None]).float()
    with torch.no_grad():
        logp0 = token_logprobs(build_policy(), tokens)
    old_logp = logp0 + 1.5 * torch.randn(logp0.shape, generator=g)  # ratios from ~0.05 to ~20
    ref_logp = logp0 + 0.5 * torch.randn(logp0.shape, generator=g)
    return dict(tokens=tokens, mask=mask, old_logp=old_logp, ref_logp=ref_logp,
                advantages=torch.tensor(ADVANTAGES))


def main(out_path):
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    model = build_policy()
    fully_shard(model[0])
    fully_shard(model[1])
    fully_shard(model)
    b = make_batch()
    per_rank = len(LENGTHS) // world_size
    mine = list(range(rank * per_rank, (rank + 1) * per_rank))
    results = {}
    for agg in AGGS:
        for micro_size in MICRO_SIZES:
            # the trainer's normaliser: the whole mini-batch's tokens / sequences, all ranks
            count = torch.tensor([b["mask"][mine].sum().item(), float(len(mine))], dtype=torch.float64)
            dist.all_reduce(count)
            denom = {"token": count[0], "seq": count[1], "drgrpo": count[1] * T_MAX, "micro": count[0]}[agg]
            denom = max(denom.item(), 1.0)
            micros = [mine[start:start + micro_size] for start in range(0, len(mine), micro_size)]
            scale = train_grpo.backward_scale(agg, len(micros), world_size)  # the trainer's own bookkeeping
            loss_agg, denom = ("token", None) if agg == "micro" else (agg, denom)
            model.zero_grad(set_to_none=True)
            total = torch.zeros(())
            for micro in micros:
                width = int(b["mask"][micro].sum(1).max())  # collate pads to the micro-batch's longest response
                mask = b["mask"][micro, :width]
                logp = token_logprobs(model, b["tokens"][micro, :width + 1])
                loss, _ = train_grpo.policy_loss(logp, b["old_logp"][micro, :width], b["advantages"][micro], mask,
                                                 agg=loss_agg, denom=denom)
                kl = train_grpo.aggregate(train_grpo.kl_penalty(logp, b["ref_logp"][micro, :width]), mask, loss_agg, denom)
                loss = loss + KL_COEF * kl
                (loss * scale).backward()  # FSDP2 averages over ranks
                total += loss.detach() * scale / world_size
            dist.all_reduce(total)
            grads = {name: p.grad.full_tensor() for name, p in model.named_parameters()}
            results[(agg, micro_size)] = {"loss": total, "grads": grads}
    if rank == 0:
        torch.save(results, out_path)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
