"""modeling.load_model at world size 2 (gloo, CPU), where only rank 0 reads the weights and broadcasts them:
how much host memory each rank needs during the load, and whether the result is the model every rank
reading the folder itself gives (`every_rank_reads`, the load before rank-0 broadcast).

    torchrun --standalone --nproc_per_node 2 tests/dist_model_load.py TINY_DIR MID_DIR OUT_DIR [--every-rank-reads]

MID_DIR is a model of a few hundred MB (tests/test_model_load.py writes one), TINY_DIR the tiny model.
Each rank writes OUT_DIR/rank{r}.json; tests/test_model_load.py checks it. The memory is measured first,
while the process holds nothing else; with --every-rank-reads it is every_rank_reads' memory instead.
"""

import gc
import json
import re
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
import model as modeling  # noqa: E402
import data  # noqa: E402
import packing  # noqa: E402


def every_rank_reads(path, device, trainable, precision="auto"):
    """The load as it was before rank 0 alone read the weights: every rank from_pretrained's the whole fp32
    model, then shards it, with the same attention settings, flags and wrapping as modeling.load_model."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from transformers import AutoModelForImageTextToText
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=torch.float32, use_safetensors=True,
        attn_implementation={"text_config": packing.register_shared_prompt_attention(),
                             "vision_config": modeling.attention_implementation()})
    model.config.use_cache = False
    if not trainable:
        model.requires_grad_(False)
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if modeling.compute_dtype(precision, device) == torch.bfloat16 else MixedPrecisionPolicy())
    for block in list(model.model.visual.blocks) + list(model.model.language_model.layers):
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model.to(device)


def memory_kb():
    """This process's resident memory now and its peak since the last reset_peak, in kB."""
    status = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M))
    return int(status["VmRSS"]), int(status["VmHWM"])


def reset_peak():
    """Start VmHWM again from the current resident size (Linux >= 4.0: `5` to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def measure_load(model_dir, device, load):
    """Peak resident growth of this rank while `load` loads `model_dir` (a trainable fp32 policy), with
    the byte size of one full fp32 copy and of this rank's own shards. The modules a load imports are
    imported before (a meta-device model built and dropped): they cost the same either way."""
    modeling.meta_model(model_dir, {"text_config": packing.register_shared_prompt_attention(),
                                  "vision_config": modeling.attention_implementation()}, False)
    gc.collect()
    dist.barrier()
    before, _ = memory_kb()
    reset_peak()
    model = load(model_dir, device, trainable=True)
    _, peak = memory_kb()
    unique = {id(p): p for p in model.parameters()}.values()
    result = {"growth_bytes": (peak - before) * 1024,
              "full_bytes": sum(p.numel() * 4 for p in unique),
              "shard_bytes": sum(p.to_local().numel() * p.element_size() for p in unique)}
    del model, unique
    gc.collect()
    return result


def compare_with_every_rank_reads(model_dir, device, trainable):
    """load_model's model against every_rank_reads' model: parameters (full tensors), buffers, flags."""
    loaded = modeling.load_model(model_dir, device, trainable=trainable)
    reference = every_rank_reads(model_dir, device, trainable=trainable)
    params, expected = dict(loaded.named_parameters()), dict(reference.named_parameters())
    buffers, expected_buffers = dict(loaded.named_buffers()), dict(reference.named_buffers())
    result = {
        "names_equal": list(params) == list(expected) and list(buffers) == list(expected_buffers),
        "params_unequal": [n for n in params if not torch.equal(params[n].full_tensor(), expected[n].full_tensor())],
        "dtypes_unequal": [n for n in params if params[n].dtype != expected[n].dtype],
        "requires_grad_unequal": [n for n in params if params[n].requires_grad != expected[n].requires_grad],
        "buffers": sorted(buffers),
        "buffers_unequal": [n for n in buffers if buffers[n].dtype != expected_buffers[n].dtype
                            or not torch.equal(buffers[n], expected_buffers[n])],
        "on_meta": [n for n, t in [*loaded.named_parameters(), *loaded.named_buffers()] if t.is_meta],
        "tied": loaded.lm_head.weight is loaded.model.language_model.embed_tokens.weight,
        "tied_before": reference.lm_head.weight is reference.model.language_model.embed_tokens.weight,
        "attention": [loaded.config.get_text_config()._attn_implementation,
                      loaded.config.vision_config._attn_implementation],
        "attention_expected": [reference.config.get_text_config()._attn_implementation,
                               reference.config.vision_config._attn_implementation],
        "use_cache": [loaded.config.use_cache, reference.config.use_cache],
    }
    del loaded, reference
    return result


def reference_logprobs(model_dir, device, rank):
    """Log-probs of the same packed batch under a frozen model at --precision bf16: stored in bf16 by
    load_model, and stored in fp32 (every_rank_reads, what the reference was) under the same policy."""
    from PIL import Image
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(model_dir)
    generator = torch.Generator().manual_seed(rank)
    colours = torch.randint(0, 256, (2, 3), generator=generator).tolist()
    prompts = [type("Prompt", (), dict(text=data.render_prompt(processor, f"<image> picture {i}", "none"),
                                       images=[Image.new("RGB", (56, 84), tuple(c))]))
               for i, c in enumerate(colours)]
    encoded = packing.encode_prompts(processor, prompts)
    samples = [packing.Sample(p, torch.randint(10, 600, (n,), generator=generator).tolist(), [])
               for p, n in ((0, 9), (0, 4), (1, 12))]
    batch = packing.collate(samples, encoded, processor.tokenizer.pad_token_id, device)
    result = {}
    for name, load in (("bf16_stored", modeling.load_model), ("fp32_stored", every_rank_reads)):
        model = load(model_dir, device, trainable=False, precision="bf16")
        result[f"{name}_dtypes"] = sorted({str(p.dtype) for p in model.parameters()})
        result[f"{name}_buffer_dtypes"] = sorted({str(b.dtype) for b in model.buffers()})
        with torch.no_grad():
            result[name] = packing.response_logprobs(model, batch, 0.7)
        del model
    mask = batch["response_mask"].bool()
    result["equal"] = torch.equal(result["bf16_stored"][mask], result["fp32_stored"][mask])
    result["max_difference"] = (result["bf16_stored"] - result["fp32_stored"])[mask].abs().max().item()
    result["logp_dtype"] = str(result.pop("bf16_stored").dtype)
    result.pop("fp32_stored")
    return result


def main():
    tiny_dir, mid_dir, out_dir = sys.argv[1:4]
    load = every_rank_reads if "--every-rank-reads" in sys.argv[4:] else modeling.load_model  # the memory before
    rank, world_size, device = common.setup_distributed()
    result = {"world_size": world_size, "memory": measure_load(mid_dir, device, load)}
    result["policy"] = compare_with_every_rank_reads(tiny_dir, device, trainable=True)
    result["reference"] = compare_with_every_rank_reads(tiny_dir, device, trainable=False)
    result["bf16_reference"] = reference_logprobs(tiny_dir, device, rank)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    common.exit_process()  # as the stage scripts end
