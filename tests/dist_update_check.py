"""Run under torchrun (2 ranks, CPU/gloo): train_grpo.update_policy itself, on the tiny Qwen2.5-VL (FSDP2
via modeling.load_model, fp32), in the scenarios below; tests/test_grpo_math.py reads what it writes.

    torchrun --nproc_per_node 2 --master-port 29931 tests/dist_update_check.py MODEL_DIR DATA.jsonl OUT.pt

Nothing of the trainer's update is copied here: each scenario calls update_policy(policy, optimizer,
samples, encoded, old_logp, ref_logp, cfg, pad_id, device, step, bad_updates) as main() does. The
optimizer is a recorder: its step() keeps every parameter's gradient (the DTensor shards, gathered to
full tensors after the call, when both ranks are known to have stepped alike) and changes no weight,
so every scenario starts from the same weights and its gradients can be set against one process
computing the loss from the formulas on all 24 sequences at once (the tests). SGD with lr 1 and
weight deltas would show the same, but through the update's arithmetic (w - (w - g) is not exactly g
in fp32) and with weights that drift from one scenario to the next.

Each rank holds 4 prompts x 3 responses of random tokens (rank 1's longer). Each scenario runs
main()'s step 6 before the update, as main() does: the policy's no-grad log-prob pass (when the
rollout feeds more than one optimizer step; that pass changes FSDP2's state before the update) and
the reference model's; fixed offsets are added to both, so the ratios reach every clip and the KL
term has a gradient. The trainer's micro-batches are its own (packing.micro_batches under a 500-token
budget, packed rows, shared_prompt_attention, the chunked LM head); they are recorded for the tests by
wrapping train_grpo's micro_batches and collate.

The non-finite scenarios break ONE rank's input (a NaN or inf advantage) or its backward (an inf
gradient through one decoder layer's MLP, the loss staying finite); both ranks must then skip the
step alike, and a run of them must stop every rank with SystemExit.

Rank 0 writes {"inputs": both ranks' prompts and samples, "pad_id", "base", "scenarios": {name: {"ranks":
[each rank's outcome: optimizer steps taken, stats, bad_updates, exit message, the old / reference
log-probs it was given, its micro-batches and forwards], "grads": [{param: full gradient} per step]}}}.
"""

import dataclasses
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the trainer's modules live at the repo root

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import common  # noqa: E402
import model as modeling  # noqa: E402
import data  # noqa: E402
import packing  # noqa: E402
import train_grpo as tg  # noqa: E402

PROMPTS_PER_RANK, GROUP_SIZE = 4, 3
TOKEN_BUDGET = 500  # packed tokens per micro-batch (rows x longest row): a prompt is ~80 tokens, responses 1-40
# the update's settings shared by every scenario: one mini-batch of all 12 sequences per rank, KL on
# (0.1, larger than EMO-R3's 0.01 so its share of the gradient shows), no grad clipping (a max norm no
# gradient reaches: clip_grad_norm_ multiplies by exactly 1), a temperature that is not 1
BASE = dict(group_size=GROUP_SIZE, mini_batch_size=2 * PROMPTS_PER_RANK, micro_batch_size=64,
            micro_batch_tokens=TOKEN_BUDGET, ppo_epochs=1, kl_coef=0.1, kl_kind="low_var_kl", grad_clip=1e9,
            temperature=0.8, max_response_length=40, max_bad_updates=3)
# name: (Config fields changed from BASE, what the scenario does to the inputs, bad_updates passed in, step)
# inputs: "advantage": (rank, sample(s), value) overwritten, "inf_grad": on that rank; "old" False: no
# old log-probs (one optimizer step per rollout: old = current); "ref" False: no reference (--kl-coef 0)
SCENARIOS = {
    # the aggregations; "token" starts after 2 skipped updates: a good update must reset the count to 0
    "token": (dict(loss_agg="token"), {}, 2, 1),
    "seq": (dict(loss_agg="seq"), {}, 0, 1),
    "drgrpo": (dict(loss_agg="drgrpo"), {}, 0, 1),
    "micro": (dict(loss_agg="micro", micro_batch_size=5), {}, 0, 1),  # micro-batches of 5, 5, 2 per rank
    "two_minis": (dict(loss_agg="token", mini_batch_size=PROMPTS_PER_RANK), {}, 0, 1),  # 2 optimizer steps
    "on_policy": (dict(loss_agg="token"), dict(old=False), 0, 1),  # the demo's path: one update per rollout
    "clipped": (dict(loss_agg="token", grad_clip=1e-3, kl_coef=0.0), dict(ref=False), 0, 1),  # KL off too
    # non-finite updates: one rank only
    "nan_rank1": (dict(loss_agg="token"), dict(advantage=(1, 4, float("nan"))), 0, 5),
    "inf_rank0": (dict(loss_agg="token"), dict(advantage=(0, 0, float("inf"))), 1, 6),
    "inf_grad_rank1": (dict(loss_agg="token"), dict(inf_grad=1), 0, 7),
    # the third in a row stops the run: NaN in both mini-batches of rank 1, one skip already counted
    "stop": (dict(loss_agg="token", mini_batch_size=PROMPTS_PER_RANK),
             dict(advantage=(1, (0, 6), float("nan"))), 1, 8),
}


class RecordingOptimizer(torch.optim.Optimizer):
    """An optimizer that changes nothing: step() keeps a copy of every gradient. zero_grad is torch's."""

    def __init__(self, named_parameters):
        named = list(named_parameters)
        super().__init__([p for _, p in named], {})
        self.names = [name for name, _ in named]
        self.steps = []  # per step: each parameter's gradient (this rank's DTensor shard) or None

    @torch.no_grad()
    def step(self, closure=None):
        self.steps.append([None if p.grad is None else p.grad.detach().clone() for p in self.param_groups[0]["params"]])


class InfGradient(torch.autograd.Function):
    """The identity forward; backward returns inf everywhere: a finite loss with a non-finite gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("inf"))


def make_inputs(rank, processor, train_file):
    """This rank's prompts (rows rank*4 .. rank*4+3) and 12 samples; the offsets of the old and reference
    log-probs from the policy's (old: ratios ~e^-2..e^2, every clip is hit; reference: KL ~0.05)."""
    dataset = data.PromptDataset(train_file, processor, min_pixels=56 * 56, max_pixels=112 * 112)
    prompts = dataset.get_batch(list(range(rank * PROMPTS_PER_RANK, (rank + 1) * PROMPTS_PER_RANK)))
    encoded = packing.encode_prompts(processor, prompts)
    rng = random.Random(rank)
    longest = 20 if rank == 0 else 40  # rank 1 needs more micro-batches under the budget: the counts are equalised
    # token ids from 14 on: 0-13 are the tiny tokenizer's special tokens, and an <|image_pad|> (12) in a
    # response would be taken for an image slot (the forward stops: "Image features and image tokens do not match")
    samples = [packing.Sample(p, [rng.randrange(14, 600) for _ in range(rng.randint(1, longest))], [],
                              advantage=rng.uniform(-1.5, 1.5))
               for p in range(PROMPTS_PER_RANK) for _ in range(GROUP_SIZE)]
    noise = torch.Generator().manual_seed(rank)
    old_offset = [1.0 * torch.randn(len(s.response_ids), generator=noise) for s in samples]
    ref_offset = [0.3 * torch.randn(len(s.response_ids), generator=noise) for s in samples]
    return encoded, samples, old_offset, ref_offset


def run_scenario(name, policy, reference, encoded, samples, old_offset, ref_offset, pad_id, device, rank):
    """Steps 6 and 7 of main() once: the no-grad log-prob passes, then update_policy; this rank's outcome."""
    changes, breaks, bad_in, step = SCENARIOS[name]
    cfg = tg.Config(**{**BASE, **changes})
    samples = [dataclasses.replace(s) for s in samples]  # this scenario's copies: a break stays in it
    if "advantage" in breaks and breaks["advantage"][0] == rank:
        _, which, value = breaks["advantage"]
        for i in (which if isinstance(which, tuple) else (which,)):
            samples[i].advantage = value
    # 6. log-probs as main() computes them: the policy's (eval mode, no grad) when old log-probs are used,
    # the reference model's when KL is on; offsets as if the policy had moved since the rollout
    policy.eval()
    sizes = (cfg.logprob_micro_batch_size, cfg.micro_batch_tokens, pad_id, device, cfg.temperature)

    def logprobs(model, offsets):
        return [lp + offset for lp, offset in zip(packing.batched_logprobs(model, samples, encoded, *sizes), offsets)]

    old = None if breaks.get("old") is False else logprobs(policy, old_offset)
    ref = None if breaks.get("ref") is False else logprobs(reference, ref_offset)
    policy.train()
    hook = None
    if breaks.get("inf_grad") == rank:  # one decoder layer's MLP output passes an inf gradient back
        mlp = policy.model.language_model.layers[1].mlp
        hook = mlp.register_forward_hook(lambda module, args, out: InfGradient.apply(out))
    optimizer = RecordingOptimizer(policy.named_parameters())
    recorded = {"micro_batches": [], "forwards": []}
    original_micro_batches, original_collate = tg.micro_batches, tg.collate

    def micro_batches(*args):  # the trainer's own, recorded
        out = original_micro_batches(*args)
        recorded["micro_batches"].append(out)
        return out

    def collate(chunk, *args):  # the trainer's own; recorded: the prompts packed and the tokens computed
        batch = original_collate(chunk, *args)
        recorded["forwards"].append({"prompts": sorted({s.prompt for s in chunk}),
                                     "tokens": batch["input_ids"].numel(), "seqs": len(chunk)})
        return batch

    tg.micro_batches, tg.collate = micro_batches, collate
    outcome = {"bad_updates_in": bad_in, "exit": None, "stats": None, "bad_updates": None, "old": old, "ref": ref}
    try:
        stats, gaps, bad_out = tg.update_policy(policy, optimizer, samples, encoded, old, ref, cfg, pad_id, device,
                                                step, bad_in)
        outcome.update(stats=stats, bad_updates=bad_out, gaps=len(gaps))
    except SystemExit as e:  # the run would stop here; the test checks that every rank does
        outcome["exit"] = str(e)
    finally:
        tg.micro_batches, tg.collate = original_micro_batches, original_collate
        if hook is not None:
            hook.remove()
    outcome["steps"] = len(optimizer.steps)
    # gradients still held when update_policy returns: they would stay live through the next rollout
    outcome["grads_left"] = sum(p.grad is not None for p in policy.parameters())
    outcome.update(recorded)
    # every rank's outcome first (small objects): a rank that stepped alone must not leave the other
    # waiting in the gradients' all-gather below
    outcomes = [None] * dist.get_world_size()
    dist.all_gather_object(outcomes, outcome)
    grads = []
    if len({o["steps"] for o in outcomes}) == 1:
        for shards in optimizer.steps:  # full_tensor: an all-gather, on every rank
            grads.append({n: None if g is None else g.full_tensor() for n, g in zip(optimizer.names, shards)})
    return {"ranks": outcomes, "grads": grads}


def adamw_paths(policy):
    """modeling.adamw (the single-tensor path) against torch's foreach path, which torch picks on CUDA for
    DTensor parameters: three steps each from the same weights with the same gradients (functions of the
    weights and the step, computed shard by shard). Returns {name: max |difference|} of the full weights."""
    params = [p for p in policy.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    finals = []
    for make in (lambda: modeling.adamw(policy, 1e-3, (0.9, 0.999), 1e-2),
                 lambda: torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-2, foreach=True)):
        with torch.no_grad():
            for p, w in zip(params, start):
                p.copy_(w)
        optimizer = make()
        for k in range(3):
            for p in params:
                p.grad = torch.sin(p.detach() * (k + 1) + 0.5)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        finals.append([p.detach().full_tensor() for p in params])
        foreach = optimizer.defaults["foreach"]
        finals[-1].append(foreach)
    with torch.no_grad():
        for p, w in zip(params, start):
            p.copy_(w)
    names = [n for n, p in policy.named_parameters() if p.requires_grad]
    return {"trainer_foreach": finals[0][-1],
            "max_diff": {n: (a - b).abs().max().item() for n, a, b in zip(names, finals[0][:-1], finals[1][:-1])}}


def main():
    model_dir, train_file, out_path = sys.argv[1:4]
    rank, world_size, device = common.setup_distributed()
    assert world_size == 2, "run with torchrun --nproc_per_node 2"
    torch.manual_seed(0)
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(model_dir)
    pad_id = processor.tokenizer.pad_token_id
    policy = modeling.load_model(model_dir, device, trainable=True)  # FSDP2, fp32, as train_grpo.main loads them
    reference = modeling.load_model(model_dir, device, trainable=False)
    encoded, samples, old_offset, ref_offset = make_inputs(rank, processor, train_file)
    results = {}
    for name in SCENARIOS:
        results[name] = run_scenario(name, policy, reference, encoded, samples, old_offset, ref_offset, pad_id,
                                     device, rank)
    results_adamw = adamw_paths(policy)
    inputs = [None] * world_size  # the prompts and samples of both ranks, for the one-process reference
    dist.all_gather_object(inputs, {"encoded": encoded, "samples": [(s.prompt, s.response_ids, s.advantage)
                                                                    for s in samples]})
    if rank == 0:
        torch.save({"inputs": inputs, "scenarios": results, "base": BASE, "pad_id": pad_id, "adamw": results_adamw},
                   out_path)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    common.exit_process()  # as the stage scripts end
