"""LoRA under FSDP2 at world size 2 (gloo, CPU): load_model(lora=...) wraps the layers before sharding, only A
and B train, and what adapter_weights / merged_weights gather equals what the unsharded model gives.

    torchrun --nproc_per_node 2 --master-port 29781 tests/dist_lora.py MODEL_DIR OUT_DIR

Each rank writes OUT_DIR/rank{r}.json; tests/test_lora.py checks it. A and B get random values (the same on
every rank, from one seed): at B = 0 a gather that lost the adapter would still pass.
"""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
import data  # noqa: E402
import lora  # noqa: E402
import model as modeling  # noqa: E402
import packing  # noqa: E402
import rollout  # noqa: E402

SPEC = dict(rank=8, alpha=16)


def random_adapter(model, seed):
    """{name: value} for every lora_A and lora_B of the model: random, non-zero (the same on every rank for one
    seed), large enough that the policy moves far from the base."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(param.shape, generator=generator) * 0.3 for name, param in model.named_parameters()
            if ".lora_" in name}


def scored_batch(processor):
    """One image prompt with two responses, collated as the trainer collates its micro-batches."""
    from PIL import Image
    image = Image.new("RGB", (56, 56), (200, 30, 30))
    text = data.render_prompt(processor, "<image>What emotion does this image evoke?", template="set")
    encoded = packing.encode_prompts(processor, [SimpleNamespace(text=text, images=[image])])
    samples = [packing.Sample(0, [100, 200, 300, 400], []), packing.Sample(0, [150, 250, 350], [])]
    return packing.collate(samples, encoded, processor.tokenizer.pad_token_id, torch.device("cpu"))


def logp_and_grads(model, batch):
    """Response log-probs and, after one backward of their mean, {name: full gradient} of every parameter
    that got one (FSDP2 averages them over ranks; both ranks score the same batch)."""
    logp = packing.response_logprobs(model, batch, 1.0)
    (-(logp * batch["response_mask"]).sum() / batch["response_mask"].sum()).backward()
    grads = {name: lora._full(p.grad) for name, p in model.named_parameters() if p.grad is not None}
    return logp.detach(), grads


def max_difference(a, b):
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a) if a else 0.0


def main():
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from transformers import AutoProcessor
    model_dir, out_dir = sys.argv[1:3]
    rank, world_size, device = common.setup_distributed()
    attention = {"text_config": packing.register_shared_prompt_attention(), "vision_config": "sdpa"}
    plain = modeling.read_pretrained(model_dir, attention, False)  # no LoRA: what adapter_disabled must give
    reference = modeling.read_pretrained(model_dir, attention, False)  # unsharded, with the same adapter
    lora.apply_lora(reference, **SPEC)
    adapter = random_adapter(reference, seed=0)
    reference.load_state_dict(adapter, strict=False)
    batch = scored_batch(AutoProcessor.from_pretrained(model_dir))
    reference_logp, reference_grads = logp_and_grads(reference, batch)
    with torch.no_grad():
        plain_logp = packing.response_logprobs(plain, batch, 1.0)
    reference_adapter = list(lora.adapter_weights(reference))
    result = {"world_size": world_size}
    for precision in ("fp32", "bf16"):
        sharded = modeling.load_model(model_dir, device, trainable=True, precision=precision, lora=SPEC)
        # every rank passes the full values; each keeps its own shard of them
        set_model_state_dict(sharded, adapter, options=StateDictOptions(full_state_dict=True, strict=False))
        check = {"trainable": sorted(n for n, p in sharded.named_parameters() if p.requires_grad),
                 "lora_dtypes": sorted({str(p.dtype) for n, p in sharded.named_parameters() if ".lora_" in n}),
                 "base_dtypes": sorted({str(p.dtype) for n, p in sharded.named_parameters() if ".lora_" not in n})}
        gathered = list(lora.adapter_weights(sharded))
        check["adapter_names_equal"] = [n for n, _ in gathered] == [n for n, _ in reference_adapter]
        check["adapter_dtypes"] = sorted({str(t.dtype) for _, t in gathered})
        check["adapter_unequal"] = [n for (n, t), (_, r) in zip(gathered, reference_adapter) if not torch.equal(t, r)]
        merged = list(lora.merged_weights(sharded))
        # the names and order the ordinary push sends for the same model sharded without LoRA
        without = modeling.load_model(model_dir, device, trainable=False, precision=precision)
        check["merged_names_equal"] = [n for n, _ in merged] == [n for n, _ in rollout.full_weights(without)]
        del without
        expected = dict(merged_expected(reference, torch.bfloat16 if precision == "bf16" else torch.float32))
        check["merged_unequal"] = [n for n, t in merged if not torch.equal(t, expected[n])]
        check["merged_count"] = len(merged)
        logp, grads = logp_and_grads(sharded, batch)
        check["got_grad"] = sorted(grads)
        if precision == "fp32":  # fp32 FSDP2 matches one process; under bf16 only that it runs is checked
            check["logp_difference"] = float((logp - reference_logp).abs().max())
            check["grad_difference"] = max_difference(grads, reference_grads)
            with torch.no_grad(), lora.adapter_disabled(sharded):
                check["disabled_difference"] = float((packing.response_logprobs(sharded, batch, 1.0)
                                                      - plain_logp).abs().max())
            check["adapter_moves_logp"] = float((logp - plain_logp).abs().max())
        result[precision] = check
        del sharded
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def merged_expected(reference, dtype):
    """What merged_weights must give for a sharded copy of `reference` whose parameters FSDP2 gathers in
    `dtype` (bf16 compute): the base in that dtype, the LoRA layers' W + (alpha / r) B A added in fp32."""
    modules = lora.lora_modules(reference)
    for name, param in reference.named_parameters(remove_duplicate=False):
        module_name = name.rpartition(".")[0]
        if module_name.rpartition(".")[0] in modules:
            continue
        base = param.detach().to(dtype)
        if module_name in modules and name.endswith(".weight"):
            m = modules[module_name]
            base = (base.float() + m.scale * (m.lora_B.weight.float() @ m.lora_A.weight.float())).to(dtype)
        yield name, base


if __name__ == "__main__":
    main()
    common.exit_process()
