"""The GPU precision policy on CPU, under torchrun (2 ranks, gloo): fp32 master weights, bf16 compute,
fp32 gradient reduction, and an LM head whose log-probs are fp32 maths on the bf16 hidden states.

    torchrun --standalone --nproc_per_node 2 tests/dist_precision_check.py MODEL_DIR TRAIN_FILE OUT_DIR

Each rank writes OUT_DIR/rank{r}.json; tests/test_train.py checks it.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import data  # noqa: E402
import common  # noqa: E402
import model as modeling  # noqa: E402
import packing  # noqa: E402
import train_grpo as tg  # noqa: E402


def main():
    model_dir, train_file, out_dir = sys.argv[1:4]
    rank, world_size, device = common.setup_distributed()
    check(model_dir, train_file, out_dir, rank, world_size, device)
    dist.destroy_process_group()


def check(model_dir, train_file, out_dir, rank, world_size, device):
    """The whole check inside a process group set up by the caller (also tests/dist_runs.py)."""
    cfg = tg.parse_config(["--demo", "--model", model_dir, "--train-files", train_file, "--precision", "bf16"])
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(model_dir)
    pad_id = processor.tokenizer.pad_token_id
    dataset = data.PromptDataset(train_file, processor, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    prompts = [dataset[2 * rank], dataset[2 * rank + 1]]
    encoded = packing.encode_prompts(processor, prompts)
    generator = torch.Generator().manual_seed(rank)
    samples = [packing.Sample(p, torch.randint(10, 600, (n,), generator=generator).tolist(), [])
               for p, n in ((0, 9), (0, 4), (1, 12))]
    policy = modeling.load_model(cfg.model, device, trainable=True, precision=cfg.precision, gradient_checkpointing=cfg.gradient_checkpointing)

    # the head's input, as the model hands it over (bf16 under the policy), and the weight it uses
    captured = {}
    hook = policy.lm_head.register_forward_pre_hook(lambda module, args: captured.update(hidden=args[0].detach()))
    batch = packing.collate(samples, encoded, pad_id, device)
    logp = packing.response_logprobs(policy, batch, 0.7)
    hook.remove()
    weight = policy.lm_head.weight  # the root unit stays unsharded after its forward: a plain (bf16) tensor then
    weight = (weight.full_tensor() if hasattr(weight, "full_tensor") else weight).detach().to(torch.bfloat16)
    hidden = captured["hidden"].reshape(-1, captured["hidden"].shape[-1])[batch["logit_index"].reshape(-1)]
    expected = torch.log_softmax(F.linear(hidden.float(), weight.float()) / 0.7, -1)
    expected = expected.gather(-1, batch["response_ids"].reshape(-1, 1)).view(logp.shape)
    mask = batch["response_mask"].bool()

    # one update: gradients reach the fp32 master weights, reduced in fp32
    loss = -(logp * batch["response_mask"]).sum() / batch["response_mask"].sum()
    (loss * world_size).backward()
    grads = [p.grad for p in policy.parameters() if p.grad is not None]
    result = {
        "hidden_dtype": str(captured["hidden"].dtype),
        "logp_dtype": str(logp.dtype),
        "head_error": (logp - expected)[mask].abs().max().item(),
        "master_dtypes": sorted({str(p.dtype) for p in policy.parameters()}),
        "grad_dtypes": sorted({str(g.dtype) for g in grads}),
        "finite": bool(torch.isfinite(loss).item()) and all(bool(torch.isfinite(g.full_tensor()).all()) for g in grads),
    }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
    common.exit_process()  # as the stage scripts end
