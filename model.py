"""Loading a Qwen2.5-VL for training: read on rank 0 and broadcast, FSDP2-sharded per decoder layer and
vision block, with its precision policy (fp32 master weights; bf16 compute on GPU; a frozen reference
stored in bf16 there), and the AdamW that updates it.

Not here: the process group (common.py), how a micro-batch is scored (packing.py), checkpoints
(checkpoint.py), the rollout engines' own copies of the weights (engines.py).
"""

import torch
import torch.distributed as dist

from packing import register_shared_prompt_attention


def attention_implementation():
    """flash-attn on GPU when installed, PyTorch sdpa otherwise."""
    if torch.cuda.is_available():
        try:
            import flash_attn  # noqa: F401
            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def compute_dtype(precision, device):
    """--precision auto|bf16|fp32 -> the dtype forwards compute in (auto: bf16 on GPU, fp32 on CPU)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]


def load_model(path, device, trainable, precision="auto", gradient_checkpointing=False, freeze_vision=False,
               trust_remote_code=False, lora=None):
    """A Qwen2.5-VL, FSDP2-sharded per decoder layer and per vision block, then as a whole.

    fp32 parameters (the master weights); with bf16 precision (the GPU default) FSDP2 casts them to
    bf16 for the forward and backward and reduces gradients in fp32. The LM head's log-probs are fp32
    whatever the precision (response_logprobs). A frozen model (trainable=False: the KL reference) under
    bf16 compute is stored in bf16: half the memory, and the same log-probs, since FSDP2 casts fp32
    weights to bf16 at every all-gather anyway (tests/test_model_load.py holds the two equal).

    With more than one rank only global rank 0 reads the weights, so a node holds one fp32 copy in host
    RAM, not one per rank (8 x 15 GB for 3B). Every rank builds the model on the meta device from its
    config, shards it, allocates its shards and receives them from rank 0 (fill_from_rank0). What this
    relies on, read in torch 2.13 (torch/distributed/...) and transformers 5.19:
    - fsdp/_fully_shard/_fsdp_init.py `_move_states_to_device` leaves meta tensors on meta, and
      _fully_shard.py `FSDPModule._apply` (what to_empty runs) re-registers the new shards
      (reset_sharded_param): meta model -> fully_shard -> to_empty(device) -> load is the supported order.
    - to_empty after fully_shard keeps tied weights tied: torch/nn/modules/module.py `_apply` swaps a
      DTensor parameter in place (swap_tensors, same Parameter object), where a plain meta parameter
      would become a new Parameter per module, untying lm_head from embed_tokens (verl #7834).
    - checkpoint/state_dict.py `_load_model_state_dict` broadcasts on the device of the model's tensors
      (hence to_empty first); _state_dict_utils.py `_broadcast_state_dict` sends one tensor at a time
      ("to avoid OOM"): rank 0 moves it to that device if the group serves it (cuda on cpu:gloo,cuda:nccl,
      so a CPU state dict on rank 0 works with NCCL), the others `torch.empty` one full tensor there, and
      `_distribute_tensors` copy_'s each rank's slice into its shard (copy_ casts fp32 -> bf16).
    - state_dict.py `_iterate_valid_model_state` skips non-persistent buffers (the rotary inv_freq and
      original_inv_freq): fill_from_rank0 broadcasts every buffer itself.
    - transformers modeling_utils.py `_from_config` takes `dtype` and `attn_implementation` (per
      sub-config) as from_pretrained does; the configs come out equal.

    `lora` (apply_lora's keyword arguments: rank, alpha, targets, vision): LoRA layers added before sharding,
    everything else frozen; the frozen base is stored in bf16 under bf16 compute, as the reference is, and
    A and B stay fp32 (see lora.apply_lora for why FSDP2 allows both in one unit). Rank 0's A initialisation
    reaches every rank with its weights.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    attention = {"text_config": register_shared_prompt_attention(), "vision_config": attention_implementation()}
    from_rank0 = dist.is_initialized() and dist.get_world_size() > 1
    full = None  # the model from_pretrained read: every rank's model at world size 1, rank 0's source otherwise
    if not from_rank0 or dist.get_rank() == 0:
        full = read_pretrained(path, attention, trust_remote_code)
    model = full if not from_rank0 else meta_model(path, attention, trust_remote_code)
    if lora:  # on rank 0's weights and on the meta model alike: the same names, filled from rank 0
        import lora as lora_layers
        try:
            for each in {id(m): m for m in (full, model) if m is not None}.values():
                lora_layers.apply_lora(each, **lora)
        except lora_layers.LoRAError as e:  # a choice of layers the model refuses, said before anything runs
            raise SystemExit(f"--lora-targets: {e}") from e
    tied = tied_parameters(model)
    if from_rank0:  # a checkpoint that stores both copies with different values loads untied: say so on every rank
        loaded = [tied_parameters(full) if full is not None else None]
        dist.broadcast_object_list(loaded, src=0)
        if loaded[0] != tied:
            raise RuntimeError(f"{path}: the weights read tie {loaded[0]}, the config {tied}; fix tie_word_embeddings "
                               f"in config.json to match the checkpoint")
    model.config.use_cache = False  # training forward passes never need the KV cache
    if trainable and gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not trainable:
        model.requires_grad_(False)
    elif freeze_vision:
        model.model.visual.requires_grad_(False)
    bf16 = compute_dtype(precision, device) == torch.bfloat16
    if bf16 and (not trainable or lora):
        for param in model.parameters():  # parameters only: the rotary buffers stay fp32, as in an fp32 model
            if not param.requires_grad:  # frozen: the whole reference, the base under LoRA
                param.data = param.data.to(torch.bfloat16)
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if bf16 else MixedPrecisionPolicy())
    for block in list(model.model.visual.blocks) + list(model.model.language_model.layers):
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    if not from_rank0:
        return model.to(device)
    model.to_empty(device=device)  # this rank's shards and buffers, uninitialised
    fill_from_rank0(model, full)
    del full
    check_loaded(model, tied)
    return model


def read_pretrained(path, attention, trust_remote_code):
    """The whole model from its folder, fp32, on the CPU."""
    from transformers import AutoModelForImageTextToText
    return AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32, use_safetensors=True,
                                                       trust_remote_code=trust_remote_code,
                                                       attn_implementation=attention)


def meta_model(path, attention, trust_remote_code):
    """The model from its config alone on the meta device (no memory), set up as read_pretrained's."""
    from transformers import AutoConfig, AutoModelForImageTextToText, GenerationConfig
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32, attn_implementation=attention,
                                                        trust_remote_code=trust_remote_code)
    model.tie_weights()  # before fully_shard, so that FSDP2 sees lm_head and embed_tokens as one parameter
    try:  # as from_pretrained does; from_config leaves the class defaults
        model.generation_config = GenerationConfig.from_pretrained(path)
    except OSError:
        pass
    return model


def fill_from_rank0(model, full):
    """Every rank's shards and buffers of the sharded `model` (after to_empty) from rank 0's `full` model
    (None on the other ranks), broadcast one tensor at a time."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)  # strict: every key or an error
    set_model_state_dict(model, full.state_dict() if full is not None else {}, options=options)
    # The buffers (rotary inv_freq, non-persistent, so not in any state dict) as rank 0 computed them, on
    # the model's device: NCCL takes CUDA tensors only. Same names in the same order on every rank.
    source = dict(full.named_buffers()) if full is not None else {}
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if full is not None:
                buffer.copy_(source[name])
            dist.broadcast(buffer, src=0)


def tied_parameters(model):
    """Groups of names that share one parameter (lm_head.weight and embed_tokens.weight where tied)."""
    names = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return sorted(group for group in names.values() if len(group) > 1)


def check_loaded(model, tied):
    """Nothing left on the meta device (parameters and buffers, as torchtune's
    validate_no_params_on_meta_device checks), and the tied weights still one parameter."""
    on_meta = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if on_meta:
        raise RuntimeError(f"still on the meta device after loading: {on_meta}")
    if tied_parameters(model) != tied:
        raise RuntimeError(f"tied weights came apart while loading: {tied} before, {tied_parameters(model)} after")


def adamw(model, lr, betas, weight_decay):
    """AdamW over the model's trainable parameters, on the single-tensor path (foreach=False).

    On CUDA, torch would pick its foreach path for FSDP2's DTensor parameters (torch/optim/optimizer.py,
    _default_to_fused_or_foreach; torch/distributed/tensor/__init__.py adds DTensor to the foreach types),
    and its torch._foreach_sqrt(exp_avg_sq) (torch/optim/adam.py, _multi_tensor_adam) makes a temporary
    as large as every parameter shard together: 14 GiB for a 3B model on one GPU, at the peak of the update.
    The single-tensor path's temporaries are one parameter's; the update is the same (a test checks it is
    bit-equal), and on the CPU torch takes this path anyway."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=betas,
                             weight_decay=weight_decay, foreach=False)
