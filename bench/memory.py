"""Will a train_grpo.py command fit? GPU memory per GPU and host RAM per node, estimated by arithmetic.

    python bench/memory.py --model 3B --gpus 1 --gpu-gb 80 \\
        --rollout-batch-size 64 --mini-batch-size 32 --gpu-memory-utilization 0.3
    python bench/memory.py --model 7B --gpus 8 --gpu-gb 40                  # EMO-R3's defaults, 8 x A100-40GB
    python bench/memory.py --model 7B --gpus 8 --nodes 2 --gpu-gb 80 --host-gb 1000 --json
    python bench/memory.py --model .cache/tiny-qwen2.5-vl --gpus 2 --gpu-gb 80 --demo   # a model folder
    python bench/memory.py --model 7B --gpus 1 --gpu-gb 80 --lora-rank 64 \\
        --rollout-batch-size 64 --mini-batch-size 32 --gpu-memory-utilization 0.6    # LoRA on one card

--model: 3B or 7B (Qwen/Qwen2.5-VL-{3B,7B}-Instruct, dimensions written below) or a model folder, whose
config.json is read (no weights are loaded). --gpus: GPUs per node (torchrun's --nproc_per_node);
--nodes: how many nodes; --gpu-gb: the card's nominal size (80 for an H100, 141 for an H200, 40 for
an A100-40GB). Every other flag is train_grpo.py's own, parsed by the trainer's own parser, so defaults
and spellings are the trainer's. Printed: every term per GPU with its formula and source, the peak
of the rollout and of the update, the headroom and a verdict (FITS / DOES NOT FIT), host RAM per
node, and, when it does not fit, the cheapest one or two flag changes that do. `--json` prints the
same as one JSON object. It runs in seconds on the CPU: no model is built, CUDA is never touched.
`plan()` is the function behind it (tests/test_memory_planner.py, bench/gpu_step.py).

The trainer modelled is train_grpo.py with these five memory choices (a trainer without them needs
more: an fp32 reference, +2P/N bytes; AdamW's foreach temporary, +4P/N at each step; gradients
still live at the next rollout, +4P/N; every rank reading the full model, 4P of host RAM each):
  1. gradients are freed (set_to_none) as soon as a step's last optimizer step is done, so they are
     not live during the next rollout;
  2. the reference model (--kl-coef > 0) is kept in bf16 on the GPU (2 bytes per parameter; the
     compute dtype, so 4 under --precision fp32); the policy in fp32 master weights;
  3. AdamW runs with foreach=False (or fused): no full-size foreach temporary, only the one of the
     largest single sharded parameter;
  4. rank-0 load: only rank 0 of the job reads the full fp32 model into host RAM at start-up; the
     other ranks build it on the meta device and receive their shards by broadcast; the reference is
     loaded after the policy, not at the same time;
  5. vLLM sleep level 1 copies the engine's weights (compute dtype, divided by
     --tensor-parallel-size) into pinned host memory while asleep; level 2 discards them (--sleep-level).

LoRA (--lora-rank R; lora.py, model.load_model's `lora=`, startup.load_models, push_policy): the base is
frozen in the compute dtype (2 bytes per parameter, not 4), with no gradients or AdamW moments; A (R x in) and
B (out x R) on each target layer are fp32 and trained (4 + 4 + 8 bytes per adapter parameter, sharded), R x the
sum of (in + out) over a decoder layer's targets x the layers (adapter_counts). No reference model (the policy
with its adapter off). Activations as without LoRA (the backward runs through the frozen layers), the vision
tower frozen unless --lora-vision, plus a bound on the adapter's own. vLLM: --lora-sync adapter adds one LoRA
slot at lora.vllm_max_lora_rank(R); merged adds nothing, its push merges one decoder unit at a time in fp32.

The phases of a step and what is on the GPU in each (per GPU):
  engine start  the trainer's policy (+ reference) shards; vLLM asks for gpu_memory_utilization x
                the card's total and refuses to start when that much is not free
  sync          the training state + vLLM's weights (awake) + FSDP's root unit gathered for the push
  rollout       the training state + vLLM's whole share (weights, KV cache, its activations)
  log-probs     the training state + vLLM's asleep residual + a no-grad forward
  update        the training state + gradients + vLLM's residual + a micro-batch's backward, then
                AdamW's step (the training state = policy, AdamW moments, reference, log-prob buffers)
"peak at rollout" is the largest of the first three, "peak at update" of the last two.

Conventions. GiB = 2**30 bytes; P = parameters. The usable memory of a card of G nominal GB is 0.995 x G GiB:
an 80 GB H100 shows 81,559 MiB = 79.65 GiB (nvidia-smi's memory.total; the same total torch.cuda.mem_get_info
gives and vLLM's gpu_memory_utilization multiplies), 0.995 x 80 = 79.6; for an H200 0.995 x 141 = 140.3
(bench/gpu_step.py: "140 GiB"). A verdict FITS leaves --margin-gib (default 1 GiB, an estimate) free for the
caching allocator's fragmentation, which no term counts; expandable segments cannot help, vLLM's sleep-mode
pool turns them off (vllm/device_allocator/cumem.py ~382). Activations are upper estimates: every response at
--max-response-length, every micro-batch filled to its token budget, every prompt token an image token. Line
numbers in the sources are of vLLM 0.32-0.33 and torch 2.13.

What it does not model: the HF rollout engine (--engine hf keeps a full fp32 copy, 4P, on each GPU), videos
(frames count like an image's tokens, within --max-prompt-length), vLLM's own activation peak beyond the one
estimate below (vLLM prints the measured one at start-up; with LoRA its profile runs a dummy adapter:
gpu_model_runner.py maybe_dummy_run_with_lora).
"""

import argparse
import dataclasses
import itertools
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GIB = 2**30

# --- constants, each with where its figure comes from -----------------------------------------------

USABLE_PER_NOMINAL_GB = 0.995  # GiB usable per nominal GB: 81,559 MiB on an 80 GB H100 (see the docstring)
CUDA_CONTEXT_GIB = 0.5  # estimate: CUDA context, cuBLAS workspaces, kernels of one process (outside torch's allocator)
NCCL_GIB = 0.5  # estimate: NCCL's communicator buffers, only where there is more than one rank
VLLM_ASLEEP_GIB = 0.75  # estimate: what a sleeping engine keeps: the CUDA-graph pool (torch's allocator, not the
#                         cumem pool sleep frees: vllm/device_allocator/cumem.py sleep()) and cumem's bookkeeping
VLLM_ACTIVATION_GIB = 3.0  # estimate: vLLM's profiled activation peak (vllm/v1/worker/gpu_worker.py
#                            determine_available_memory): the vision encoder at the processor's largest image
#                            and the text model at max_num_batched_tokens (16384 on >= 70 GiB cards,
#                            vllm/engine/arg_utils.py get_batch_defaults), sampling for max_num_seqs
MARGIN_GIB = 1.0  # estimate: left free by a FITS verdict, for the caching allocator's fragmentation
HOST_BASELINE_GIB = 3.0  # estimate: host RAM of one trainer process (Python, torch, CUDA, transformers, vLLM, data)
LOGPROB_CHUNK = 1024  # packing.LOGPROB_CHUNK: response tokens per LM-head chunk (fp32 logits of one chunk at a time)
PIXEL_BYTES = 4  # the processor's pixel_values are fp32 (packing.collate moves them to the device as they are)


# --- architectures ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Arch:
    """The dimensions the memory depends on (config.json's names in the comments)."""
    name: str
    hidden: int  # text_config.hidden_size
    layers: int  # text_config.num_hidden_layers
    intermediate: int  # text_config.intermediate_size
    heads: int  # text_config.num_attention_heads
    kv_heads: int  # text_config.num_key_value_heads
    head_dim: int  # text_config.head_dim, else hidden_size / num_attention_heads
    vocab: int  # text_config.vocab_size
    tied: bool  # tie_word_embeddings: the LM head is the embedding (3B) or a matrix of its own (7B)
    vision_depth: int  # vision_config.depth
    vision_hidden: int  # vision_config.hidden_size
    vision_intermediate: int  # vision_config.intermediate_size
    vision_heads: int  # vision_config.num_heads
    patch: int = 14  # vision_config.patch_size
    temporal_patch: int = 2  # vision_config.temporal_patch_size
    merge: int = 2  # vision_config.spatial_merge_size: 2 x 2 patches become one LLM token
    in_channels: int = 3  # vision_config.in_channels (in_chans in older configs)
    # the merger's output is the text hidden size (vision_config.out_hidden_size)


# Qwen/Qwen2.5-VL-3B-Instruct and -7B-Instruct, their config.json
ARCHS = {
    "3B": Arch("Qwen2.5-VL-3B-Instruct", hidden=2048, layers=36, intermediate=11008, heads=16, kv_heads=2,
               head_dim=128, vocab=151936, tied=True, vision_depth=32, vision_hidden=1280,
               vision_intermediate=3420, vision_heads=16),
    "7B": Arch("Qwen2.5-VL-7B-Instruct", hidden=3584, layers=28, intermediate=18944, heads=28, kv_heads=4,
               head_dim=128, vocab=151936, tied=False, vision_depth=32, vision_hidden=1280,
               vision_intermediate=3420, vision_heads=16),
}


def arch_from_folder(path):
    """An Arch from a model folder's config.json: transformers 5's nested text_config, or the older
    layout with the text model's keys at the top level."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise SystemExit(f"--model {path}: neither 3B, 7B nor a model folder with a config.json")
    config = json.loads(config_file.read_text())
    text, vision = config.get("text_config") or config, config["vision_config"]
    tied = config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
    return Arch(Path(path).name, hidden=text["hidden_size"], layers=text["num_hidden_layers"],
                intermediate=text["intermediate_size"], heads=text["num_attention_heads"],
                kv_heads=text.get("num_key_value_heads", text["num_attention_heads"]),
                head_dim=text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"],
                vocab=text["vocab_size"], tied=bool(tied), vision_depth=vision["depth"],
                vision_hidden=vision.get("hidden_size", vision.get("embed_dim")),
                vision_intermediate=vision["intermediate_size"], vision_heads=vision["num_heads"],
                patch=vision.get("patch_size", 14), temporal_patch=vision.get("temporal_patch_size", 2),
                merge=vision.get("spatial_merge_size", 2),
                in_channels=vision.get("in_channels", vision.get("in_chans", 3)))


def linear_shapes(arch):
    """(in, out) features of the nn.Linear layers of one text decoder layer, one vision block and the merger, by
    their names inside it (transformers' module names, which lora.apply_lora's targets match)."""
    h, i, q_dim, kv_dim = arch.hidden, arch.intermediate, arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim
    hv, iv, merged = arch.vision_hidden, arch.vision_intermediate, arch.vision_hidden * arch.merge ** 2
    return {"text_layer": {"self_attn.q_proj": (h, q_dim), "self_attn.k_proj": (h, kv_dim),
                           "self_attn.v_proj": (h, kv_dim), "self_attn.o_proj": (q_dim, h),
                           "mlp.gate_proj": (h, i), "mlp.up_proj": (h, i), "mlp.down_proj": (i, h)},
            "vision_block": {"attn.qkv": (hv, 3 * hv), "attn.proj": (hv, hv), "mlp.gate_proj": (hv, iv),
                             "mlp.up_proj": (hv, iv), "mlp.down_proj": (iv, hv)},
            # 2 x 2 patches' states side by side, then to the text hidden size
            "merger": {"merger.mlp.0": (merged, merged), "merger.mlp.2": (merged, h)}}


def param_counts(arch):
    """Parameters by part, counted from the dimensions as transformers' Qwen2_5_VLForConditionalGeneration
    lays them out (transformers/models/qwen2_5_vl/modeling_qwen2_5_vl.py):

    text decoder layer: the linear layers of linear_shapes, biases on q, k, v only, two RMSNorm weights;
      embedding V x H; final norm H; LM head V x H unless tied;
    vision block: its linear layers, all with biases, two RMSNorm weights; patch embedding Conv3d without
      bias (C x T x p x p -> Hv); merger: RMSNorm Hv, then its two linear layers with biases. Rotary tables
      are buffers, not counted.

    3B: 3,754,622,976 and 7B: 8,291,249,152, equal to the parameters of the transformers 5.19 module
    built from these dimensions on the meta device (tests/test_memory_planner.py holds the sums).
    `root` is what FSDP2's root unit holds (model.load_model shards each decoder layer and vision
    block, then the whole model): everything outside the layers and blocks.
    """
    shapes = linear_shapes(arch)
    weights = {part: sum(n_in * n_out for n_in, n_out in layers.values()) for part, layers in shapes.items()}
    biases = {part: sum(n_out for _, n_out in layers.values()) for part, layers in shapes.items()}
    h, hv = arch.hidden, arch.vision_hidden
    text_layer = weights["text_layer"] + (arch.heads + 2 * arch.kv_heads) * arch.head_dim + 2 * h
    vision_block = weights["vision_block"] + biases["vision_block"] + 2 * hv
    patch_embed = arch.in_channels * arch.temporal_patch * arch.patch ** 2 * hv
    merger = hv + weights["merger"] + biases["merger"]
    embed, head = arch.vocab * h, 0 if arch.tied else arch.vocab * h
    counts = dict(text_layer=text_layer, text_layers=arch.layers * text_layer, embed=embed, head=head,
                  final_norm=h, vision_block=vision_block, vision_blocks=arch.vision_depth * vision_block,
                  patch_embed=patch_embed, merger=merger)
    counts["vision"] = counts["vision_blocks"] + patch_embed + merger
    counts["total"] = counts["text_layers"] + embed + head + h + counts["vision"]
    counts["root"] = embed + head + h + patch_embed + merger
    # the largest single tensor (the embedding)
    counts["largest"] = max(embed, *(n_in * n_out for layers in shapes.values() for n_in, n_out in layers.values()))
    return counts


def adapter_counts(arch, rank, targets=None, vision=False):
    """LoRA's parameters, A (rank x in) + B (out x rank), on each linear layer a target names (its name or a dotted
    suffix, as lora.apply_lora matches; None: all, as vLLM's LoRA slot) per part, "total", the largest tensor.
    "<part>_act": elements per token (patch) LoRA adds to a layer's activations, bounded: A's outputs (saved
    for B's backward), B's output and its scaled copy (2 x the widest, transient: lora.LoRALinear.forward)."""
    shapes = linear_shapes(arch)
    parts = ("text_layer", "vision_block", "merger") if vision else ("text_layer",)
    chosen = set()
    for target in targets or [""]:  # "": every layer
        hits = {(part, name) for part in parts for name in shapes[part]
                if not target or name == target or name.endswith("." + target)}
        if not hits:  # lora.apply_lora refuses it at start-up; the planner says so now
            raise SystemExit(f"--lora-targets: {target!r} names no linear layer of the "
                             + ("model" if vision else "language model (--lora-vision: of the vision tower)"))
        chosen |= hits
    layers = {part: [shapes[part][name] for p, name in chosen if p == part] for part in shapes}
    counts = {part: rank * sum(n_in + n_out for n_in, n_out in layers[part]) for part in shapes}
    counts["total"] = arch.layers * counts["text_layer"] + arch.vision_depth * counts["vision_block"] + counts["merger"]
    counts["largest"] = rank * max(max(shape) for part in parts for shape in layers[part])
    for part in ("text_layer", "vision_block"):
        counts[part + "_act"] = rank * len(layers[part]) + 2 * max((n_out for _, n_out in layers[part]), default=0)
    return counts


# --- the trainer's flags ---------------------------------------------------------------------------

def trainer_config(argv):
    """train_grpo.py's Config from its own flags, by its own parser (defaults, --demo, spellings, choices),
    and its own start-up checks as --print-config runs them (check_config's printing=True: the model, the
    data and this process's world are the planner's business; the world it plans is checked in plan())."""
    import train_grpo
    from common import parse_flags
    return parse_flags(train_grpo.Config, train_grpo.__doc__, list(argv), train_grpo.DEMO_DEFAULTS,
                       check=lambda cfg, printing: train_grpo.check_config(cfg, printing=True))


# --- the plan --------------------------------------------------------------------------------------

class Terms:
    """Named figures in GiB, each with its formula (numbers filled in) and where it comes from."""

    def __init__(self):
        self.gib, self.how = {}, {}

    def add(self, key, num_bytes, formula, source):
        self.gib[key] = num_bytes / GIB
        self.how[key] = (formula, source)
        return self.gib[key]


def plan(arch, cfg, gpus, gpu_gb, nodes=1, host_gb=0.0, margin_gib=MARGIN_GIB):
    """The memory of train_grpo.py with `cfg` (its Config) on `nodes` x `gpus` cards of `gpu_gb` nominal GB.

    Returns a dict: "terms" (GiB per GPU, by name), "how" (each term's formula and source), the phases'
    figures and peaks ("rollout_peak_gib", "update_peak_gib", "peak_gib", "headroom_gib"), vLLM's
    minimum share ("vllm_min_gib"), host RAM per node ("host"), "problems" (why it does not fit or
    run) and "verdict" ("FITS" or "DOES NOT FIT").
    """
    import lora  # the trainer's LoRA layer: its vLLM ranks
    counts = param_counts(arch)
    world, tp = gpus * nodes, cfg.tensor_parallel_size
    sleep_level, params, vision = cfg.sleep_level, counts["total"], counts["vision"]
    lora_on = cfg.lora_rank != 0
    if lora_on and not 1 <= cfg.lora_rank <= lora.VLLM_MAX_RANKS[-1]:  # lora.apply_lora's own check
        raise SystemExit(f"--lora-rank {cfg.lora_rank}: 0 (off) or 1..{lora.VLLM_MAX_RANKS[-1]}")
    # the vision tower trains in full-parameter training unless frozen, and under LoRA with --lora-vision only
    vision_trained = not cfg.freeze_vision and (cfg.lora_vision or not lora_on)
    adapter = adapter_counts(arch, cfg.lora_rank, cfg.lora_targets.split(","), vision_trained) if lora_on else None
    if lora_on:  # only A and B train (lora.apply_lora freezes the rest); the root unit holds the merger's
        trainable, root_trainable, largest = adapter["total"], adapter["merger"], adapter["largest"]
    else:  # --freeze-vision: the vision blocks, the patch embedding and the merger (root) do not train
        trainable, largest = params - vision * cfg.freeze_vision, counts["largest"]
        root_trainable = counts["root"] - (counts["patch_embed"] + counts["merger"]) * cfg.freeze_vision
    # bytes of the compute dtype (model.compute_dtype: auto = bf16 on GPU): activations, FSDP2's unsharded
    # copies (MixedPrecisionPolicy param_dtype), the reference (change 2), LoRA's frozen base and vLLM's weights
    dtype_bytes = 4 if cfg.precision == "fp32" else 2
    usable = gpu_gb * USABLE_PER_NOMINAL_GB
    kl = cfg.kl_coef > 0
    reference = kl and not lora_on  # a reference model; under LoRA the reference is the policy, its adapter off
    h, i, hd, heads = arch.hidden, arch.intermediate, arch.head_dim, arch.heads
    hv, iv, vocab = arch.vision_hidden, arch.vision_intermediate, arch.vocab
    p_text, pt_text = f"{params / 1e9:.3f}e9", f"{trainable / 1e9:.3f}e9"  # P and trainable P, for the formulas
    t = Terms()

    # --- lengths and micro-batches
    prompt, response = cfg.max_prompt_length, cfg.max_response_length
    seq = prompt + response
    max_model_len = prompt + max(response, cfg.reflect_max_tokens)  # train_grpo's VLLMEngine(max_model_len=...)

    def packed(max_seqs):
        """(tokens, rows, responses) of the largest micro-batch packing.micro_batches can make: at most
        max_seqs sequences and --micro-batch-tokens tokens (rows x the longest row; one sequence over the
        budget still makes a micro-batch of its own); groups of --group-size responses are contiguous, so
        max_seqs sequences span at most ceil((max_seqs - 1) / n) + 1 prompts (rows)."""
        budget = cfg.micro_batch_tokens
        tokens = max_seqs * seq if budget <= 0 else max(seq, min(budget, max_seqs * seq))
        rows = max(1, min(max_seqs, math.ceil((max_seqs - 1) / cfg.group_size) + 1, tokens // prompt))
        responses = max(1, min(max_seqs, (tokens - prompt) // max(1, response)))
        return tokens, rows, responses

    tokens, rows, responses = packed(cfg.micro_batch_size)
    lp_tokens, lp_rows, lp_responses = packed(cfg.logprob_micro_batch_size)
    patches_per_token = arch.merge ** 2  # one image token = 2 x 2 patches in the vision tower
    patches, lp_patches = rows * prompt * patches_per_token, lp_rows * prompt * patches_per_token
    pixels_per_patch = arch.in_channels * arch.temporal_patch * arch.patch ** 2  # 3 x 2 x 14 x 14 = 1176
    per_rank_seqs = cfg.rollout_batch_size // max(1, world) * cfg.group_size
    updates = cfg.rollout_batch_size // max(1, cfg.mini_batch_size) * cfg.ppo_epochs
    passes = int(updates > 1) + int(kl)  # old log-probs when the policy moves within a step; reference with KL

    # --- per process
    base = t.add("cuda_context", CUDA_CONTEXT_GIB * GIB, f"{CUDA_CONTEXT_GIB} GiB", "estimate")
    base += t.add("nccl_buffers", NCCL_GIB * GIB * (world > 1), f"{NCCL_GIB} GiB x (world > 1)", "estimate")

    # --- persistent training state (FSDP2 shards: each rank holds 1/world of every parameter)
    base_bytes = dtype_bytes if lora_on else 4
    persistent = t.add("policy", (base_bytes * params + 4 * trainable * lora_on) / world,
                       f"{base_bytes} B x P {p_text} / {world}"
                       + (f" + 4 B x adapter {pt_text} / {world}" if lora_on else ""),
                       "model.load_model: fp32 master weights; LoRA: the frozen base in the compute dtype, fp32 "
                       "A and B (lora.LoRALinear); FSDP2-sharded")
    persistent += t.add("adamw", 8 * trainable / world, f"8 B x trainable {pt_text} / {world}",
                        "torch/optim/adam.py: exp_avg + exp_avg_sq, fp32 like the parameters; from the first step")
    persistent += t.add("reference", dtype_bytes * params / world * reference,
                        f"{dtype_bytes} B x P {p_text} / {world} x (kl_coef > 0 and no LoRA)",
                        "change 2: the reference in the compute dtype (bf16), FSDP2-sharded; LoRA: none, "
                        "train_grpo.reference_logprobs runs the policy with its adapter off")
    persistent += t.add("logprob_buffers", 4 * per_rank_seqs * response * passes,
                        f"4 B x {per_rank_seqs} seqs/rank x {response} x {passes} passes (old, ref)",
                        "train_grpo step 6: fp32 (B, R) log-probs kept on the device for the update")
    grads = t.add("grads", 4 * trainable / world, f"4 B x trainable {pt_text} / {world}",
                  "FSDP2 sharded gradients, fp32 (reduce_dtype fp32); live only in the update (change 1)")

    # --- vLLM: its share while awake; while asleep a residual; its minimum (else it refuses to start)
    util = cfg.gpu_memory_utilization
    vllm_awake = t.add("vllm_awake", util * usable * GIB, f"gpu_memory_utilization {util} x {usable:.2f} GiB",
                       "vllm/v1/worker/utils.py request_memory (~724): total x utilization, fixed at start")
    vllm_asleep = t.add("vllm_asleep", VLLM_ASLEEP_GIB * GIB, f"{VLLM_ASLEEP_GIB} GiB",
                        "estimate: CUDA-graph pool + cumem bookkeeping; sleep frees weights and KV cache")
    # --lora-sync adapter: one LoRA slot (max_loras=1) at vLLM's rank on every linear layer of the language model
    # (and the vision tower's with --lora-vision), whatever --lora-targets; not split by TP (an upper bound)
    slot_rank = lora.vllm_max_lora_rank(cfg.lora_rank) if lora_on and cfg.lora_sync == "adapter" else 0
    slot = adapter_counts(arch, slot_rank, None, cfg.lora_vision)["total"] if slot_rank else 0
    vllm_weights = t.add("vllm_weights", dtype_bytes * (params / tp + slot),
                         f"{dtype_bytes} B x (P {p_text} / TP {tp}"
                         + (f" + LoRA slot {slot / 1e6:.1f}M at rank {slot_rank})" if slot else ")"),
                         "the engine's weights in the compute dtype (VLLMEngine dtype), split by TP; the LoRA "
                         "slot: vllm/lora/layers/base_linear.py create_lora_weights, lora_dtype = the model's")
    kv_heads_per_rank = max(1, arch.kv_heads // tp)  # vLLM replicates KV heads when TP > their count
    kv_one_seq = t.add("vllm_kv_one_sequence", max_model_len * 2 * arch.layers * kv_heads_per_rank * hd * dtype_bytes,
                       f"{max_model_len} tokens x 2 (K, V) x {arch.layers} layers x {kv_heads_per_rank} kv heads"
                       f" x {hd} x {dtype_bytes} B", "vllm/v1/core/kv_cache_utils.py check_enough_kv_cache_memory: "
                       "one max_model_len sequence must fit")
    t.add("vllm_activation", VLLM_ACTIVATION_GIB * GIB, f"{VLLM_ACTIVATION_GIB} GiB",
          "estimate of vLLM's profiled peak (vllm/v1/worker/gpu_worker.py determine_available_memory)")
    vllm_min = vllm_weights + VLLM_ACTIVATION_GIB + VLLM_ASLEEP_GIB + kv_one_seq  # the graph pool counts too

    # --- the update's working set: one micro-batch's forward and backward
    checkpointing = cfg.gradient_checkpointing
    # elements per token a decoder layer keeps for its backward (see act_layer_recompute's source), and
    # per patch a vision block (its attention has as many kv heads as heads: 4 kv x hd = 4 Hv)
    layer_elems = 14 * h + 4 * arch.kv_heads * hd + 4 * i
    block_elems = 18 * hv + 4 * iv
    # LoRA's own activations per token and per patch (adapter_counts' bound); 0 without LoRA
    lora_token, lora_patch = (adapter["text_layer_act"], adapter["vision_block_act"]) if lora_on else (0, 0)
    lora_note = f" + {lora_token} LoRA" if lora_on else ""
    inputs = t.add("act_inputs", tokens * 80 + patches * pixels_per_patch * PIXEL_BYTES + responses * response * seq,
                   f"{tokens} tokens x 80 B (ids, positions, masks) + {patches} patches x {pixels_per_patch} "
                   f"x {PIXEL_BYTES} B pixels + {responses} x {response} x {seq} B key mask",
                   "packing.collate, packing.response_logprobs")
    text_saved = t.add("act_text_checkpoints",
                       arch.layers * tokens * (h if checkpointing else layer_elems) * dtype_bytes,
                       f"{arch.layers} layers x {tokens} tokens x " +
                       (f"{h} x {dtype_bytes} B (each layer's input)" if checkpointing else
                        f"{layer_elems} x {dtype_bytes} B (all, no checkpointing)"),
                       "model.load_model gradient_checkpointing_enable: one saved input per decoder layer; "
                       "tokens: packing.micro_batches' budget, rows x the longest row")
    vision_saved = t.add("act_vision_checkpoints", 0 if not vision_trained else
                         arch.vision_depth * patches * (hv if checkpointing else block_elems) * dtype_bytes,
                         f"{arch.vision_depth} blocks x {patches} patches ({rows} prompts x {prompt} tokens x "
                         f"{patches_per_token}) x {hv if checkpointing else block_elems} x {dtype_bytes} B"
                         + ("" if vision_trained else " (frozen: 0)"),
                         "Qwen2_5_VLVisionBlock is a GradientCheckpointingLayer; every prompt token taken as an "
                         "image token (upper bound)")
    root_params = t.add("fsdp_root_unsharded", counts["root"] * dtype_bytes,
                        f"root unit {counts['root'] / 1e6:.1f}M x {dtype_bytes} B",
                        "torch/distributed/fsdp/_fully_shard/_fsdp_state.py ~203: the root unit (embedding, LM "
                        "head, patch embedding, merger) stays unsharded from forward to backward")
    root_grads = t.add("fsdp_root_grads", root_trainable * dtype_bytes,
                       f"{root_trainable / 1e6:.1f}M x {dtype_bytes} B",
                       "the root unit's unsharded gradients, accumulated over the whole backward")
    head_copies = 1 if lora_on else 2  # the fp32 weight copy, and its gradient unless LoRA froze it
    head = t.add("act_head_backward",
                 vocab * h * 4 * head_copies + 4 * LOGPROB_CHUNK * vocab * 4 + responses * response * h * dtype_bytes,
                 f"LM head {vocab} x {h} fp32 copy + its gradient unless frozen (x {head_copies} x 4 B) + 4 x "
                 f"{LOGPROB_CHUNK} x {vocab} x 4 B (logits, / temperature, log_softmax, gradient) + gathered states",
                 "packing.response_logprobs chunk_logprobs: F.linear(hidden.float(), weight.float()), "
                 "recomputed chunk by chunk in backward")
    recomputed = layer_elems if checkpointing else 0  # without checkpointing they are in act_text_checkpoints
    layer_work = t.add("act_layer_recompute",
                       tokens * dtype_bytes * (recomputed + 2 * i + 2 * h + lora_token)
                       + responses * (2 * seq + response) * heads * hd * dtype_bytes * 2,
                       f"{tokens} tokens x {dtype_bytes} B x ({recomputed} saved + {2 * i + 2 * h} backward"
                       f"{lora_note}) + {responses} responses' gathered q, k, v and their gradients",
                       "estimate, counted from Qwen2_5_VLDecoderLayer: 2 RMSNorms keep an fp32 input + a normalised "
                       "copy (6H), q + rope (3H), attention and o_proj (2H), residuals (3H), k, v + rope (4 kv x hd), "
                       "MLP gate, up, silu, product (4I); packing.shared_prompt_attention's expanded keys")
    recomputed = block_elems if checkpointing else 0
    block_work = t.add("act_vision_block_recompute",
                       0 if not vision_trained else patches * dtype_bytes * (recomputed + 2 * iv + 2 * hv + lora_patch),
                       f"{patches} patches x {dtype_bytes} B x ({recomputed} saved + {2 * iv + 2 * hv} backward"
                       + (f" + {lora_patch} LoRA)" if lora_patch else ")"),
                       "estimate, the same count for Qwen2_5_VLVisionBlock")
    unit = max(counts["text_layer"], counts["vision_block"])
    reduce_copy = 4 if dtype_bytes != 4 else 0  # bf16 gradients are copied to fp32 for the reduce-scatter
    unit_grads = max(adapter["text_layer"], adapter["vision_block"]) if lora_on else unit  # LoRA: A and B only
    units = t.add("fsdp_units", unit * 2 * dtype_bytes + unit_grads * (dtype_bytes + reduce_copy),
                  f"{unit / 1e6:.1f}M x 2 units x {dtype_bytes} B + gradient {unit_grads / 1e6:.1f}M x "
                  f"({dtype_bytes} B + fp32 copy {reduce_copy} B)",
                  "FSDP2: the unit in use + the one prefetched; _fsdp_collectives.py foreach_reduce (reduce_dtype)")
    # the LM head's backward comes first, while every checkpoint is held; then layer by layer
    backward = (inputs + text_saved + vision_saved + root_params + root_grads
                + max(head, max(layer_work, block_work) + units))
    optimizer_temp = t.add("adamw_step_temp", 2 * 4 * largest / world,
                           f"2 x 4 B x largest trainable tensor {largest / 1e6:.1f}M / {world}",
                           "change 3: torch/optim/adam.py _single_tensor_adam ~544, exp_avg_sq.sqrt() / bc2")

    # --- the log-prob phase (old and reference, no grad): one layer's transients at a time
    lp_inputs = lp_tokens * 80 + lp_patches * pixels_per_patch * PIXEL_BYTES
    lp_layer = (lp_tokens * dtype_bytes * (3 * i + 4 * h + lora_token)
                + lp_responses * (2 * seq + response) * heads * hd * dtype_bytes)
    lp_vision = lp_patches * dtype_bytes * (3 * iv + 4 * hv)
    lp_head = vocab * h * 4 + 2 * LOGPROB_CHUNK * vocab * 4
    logprob_work = t.add("logprob_forward", lp_inputs + (counts["root"] + 2 * unit) * dtype_bytes
                         + max(lp_layer, lp_vision, lp_head),
                         f"{lp_tokens} tokens, {lp_patches} patches: inputs + root unit + 2 units + the largest of "
                         f"one layer's transients, a vision block's, the fp32 LM-head chunk's",
                         "estimate: packing.batched_logprobs, --logprob-micro-batch-size sequences")

    # --- phases and peaks (GiB per GPU)
    push = (counts["root"] + counts["largest"]) * dtype_bytes  # rollout.full_weights: a unit + one clone
    if lora_on and cfg.lora_sync == "merged":  # lora.merged_weights: a unit gathered, its weights merged in fp32
        push = max(push, unit * (dtype_bytes + 4))
    phases = {
        "engine_start": base + t.gib["policy"] + t.gib["reference"] + vllm_awake,  # AdamW's state comes later
        "sync": base + persistent + vllm_asleep + vllm_weights + push / GIB,
        "rollout": base + persistent + vllm_awake,
        "logprobs": base + persistent + vllm_asleep + logprob_work,
        "backward": base + persistent + grads + vllm_asleep + backward,
        "optimizer_step": base + persistent + grads + vllm_asleep + optimizer_temp,
    }
    rollout_peak = max(phases["engine_start"], phases["sync"], phases["rollout"])
    update_peak = max(phases["logprobs"], phases["backward"], phases["optimizer_step"])
    peak = max(rollout_peak, update_peak)

    # --- host RAM per node (GiB)
    # change 4: rank 0 reads the full fp32 model once (and adds the fp32 adapter); the reference after it
    full_fp32 = 4 * (params + trainable * lora_on) / GIB
    pinned = vllm_weights * (sleep_level == 1)  # change 5: each rank's engine weights (+ LoRA slot), pinned
    host = {"baseline_per_process": HOST_BASELINE_GIB, "full_fp32_model": full_fp32, "pinned_per_gpu": pinned,
            "startup_first_node": gpus * HOST_BASELINE_GIB + full_fp32,
            "startup_other_nodes": gpus * HOST_BASELINE_GIB if nodes > 1 else None,
            "asleep_per_node": gpus * (HOST_BASELINE_GIB + pinned)}
    host["peak_per_node"] = max(host["startup_first_node"], host["asleep_per_node"])

    # --- checks
    problems = []
    if cfg.rollout_batch_size % world or cfg.mini_batch_size % world:
        problems.append(f"--rollout-batch-size {cfg.rollout_batch_size} and --mini-batch-size "
                        f"{cfg.mini_batch_size} must be multiples of the world size {world} (train_grpo.check_config)")
    if world % tp:
        problems.append(f"--tensor-parallel-size {tp} does not divide the world size {world} (engines.VLLMEngine)")
    if vllm_min > vllm_awake:
        problems.append(f"vLLM refuses to start: its share {vllm_awake:.2f} GiB is below its weights "
                        f"{vllm_weights:.2f} + activations {VLLM_ACTIVATION_GIB} + graphs {VLLM_ASLEEP_GIB} + one "
                        f"{max_model_len}-token sequence's KV cache {kv_one_seq:.2f} = {vllm_min:.2f} GiB: raise "
                        f"--gpu-memory-utilization to >= {vllm_min / usable:.2f}")
    if phases["engine_start"] > usable:
        problems.append(f"vLLM refuses to start: {usable - phases['engine_start'] + vllm_awake:.2f} GiB free at "
                        f"its start < its share {vllm_awake:.2f} GiB (vllm/v1/worker/utils.py request_memory ~761)")
    for name, figure in (("rollout", rollout_peak), ("update", update_peak)):
        if figure > usable - margin_gib:
            problems.append(f"the {name} peak {figure:.2f} GiB exceeds the card's {usable:.2f} GiB less the "
                            f"{margin_gib} GiB margin")
    if host_gb and host["peak_per_node"] > host_gb:
        problems.append(f"host RAM: {host['peak_per_node']:.1f} GiB per node > --host-gb {host_gb}")

    return {
        "model": arch.name, "params": params, "trainable_params": trainable, "vision_params": vision,
        "world_size": world, "gpus_per_node": gpus, "nodes": nodes, "gpu_gb": gpu_gb, "usable_gib": usable,
        "margin_gib": margin_gib, "sleep_level": sleep_level, "host_gb": host_gb, "vision_trained": vision_trained,
        "lora": dict(rank=cfg.lora_rank, sync=cfg.lora_sync, adapter_params=trainable, vllm_slot_params=slot)
        if lora_on else None,
        "micro_batch": {"tokens": tokens, "prompts": rows, "responses": responses, "vision_patches": patches},
        "logprob_micro_batch": {"tokens": lp_tokens, "prompts": lp_rows, "responses": lp_responses},
        "max_model_len": max_model_len, "terms": t.gib, "how": {k: list(v) for k, v in t.how.items()},
        "persistent_gib": persistent, "update_working_gib": backward, "phases": phases,
        "rollout_peak_gib": rollout_peak, "update_peak_gib": update_peak, "peak_gib": peak,
        "headroom_gib": usable - peak, "vllm_min_gib": vllm_min, "vllm_min_utilization": vllm_min / usable,
        # what torch.cuda.max_memory_allocated (train_grpo's memory/peak_gb) can see of the update: not the
        # CUDA context, NCCL, or vLLM's residual (torch's allocator does not see vLLM's cumem pool)
        "update_peak_torch_gib": update_peak - base - vllm_asleep,
        "host": host, "problems": problems, "verdict": "DOES NOT FIT" if problems else "FITS",
    }


# --- when it does not fit: the cheapest change of one or two flags that does ----------------------

# cost of each kind of change, cheapest first: what a user gives up
COSTS = {"micro_batch_tokens": 1,  # more, smaller micro-batches: a little slower, same maths
         "gpu_memory_utilization": 2,  # a smaller KV cache: slower rollouts, same maths
         "tensor_parallel_size": 3,  # vLLM's weights split over ranks: rollouts synchronise across them
         "sleep_level": 4,  # no host copy; level 2 has open reports of corrupted VLM rollouts (vLLM #29341)
         "freeze_vision": 5,  # changes the algorithm: EMO-R3 trains the vision tower
         "kl_coef": 6,  # changes the algorithm: no KL term
         "gpus": 7}  # more hardware


def candidate_changes(arch, cfg, gpus, nodes, result):
    """{kind: [(flags, changes), ...]}, each list from the mildest change to the strongest."""
    seq = cfg.max_prompt_length + cfg.max_response_length
    options, budget = {}, result["micro_batch"]["tokens"]
    smaller = [budget // 2 ** k // 1024 * 1024 for k in (1, 2, 3, 4)]  # below one sequence it changes nothing
    options["micro_batch_tokens"] = [(f"--micro-batch-tokens {b}", {"micro_batch_tokens": b})
                                     for b in smaller if seq <= b < budget]
    util, least = cfg.gpu_memory_utilization, result["vllm_min_utilization"]
    steps = ([round(util + 0.05 * k, 2) for k in range(1, 20)] if least > util else
             [round(util - 0.05 * k, 2) for k in range(1, 20)])
    options["gpu_memory_utilization"] = [(f"--gpu-memory-utilization {u}", {"gpu_memory_utilization": u})
                                         for u in steps if least <= u <= 0.95]
    # vLLM needs the attention heads split evenly (and TP must divide the ranks)
    options["tensor_parallel_size"] = [(f"--tensor-parallel-size {k}", {"tensor_parallel_size": k})
                                       for k in (2, 4, 8) if k > cfg.tensor_parallel_size
                                       and arch.heads % k == 0 and (gpus * nodes) % k == 0]
    host_short = result["host_gb"] and result["host"]["peak_per_node"] > result["host_gb"]
    adapter_sync = cfg.lora_rank and cfg.lora_sync == "adapter"  # train_grpo.check_config refuses level 2 with it
    if cfg.sleep_level == 1 and host_short and not adapter_sync:  # level 2 saves host RAM only
        options["sleep_level"] = [("--sleep-level 2", {"sleep_level": 2})]
    if result["vision_trained"]:
        options["freeze_vision"] = [("--freeze-vision", {"freeze_vision": True})]
    if cfg.kl_coef > 0:
        options["kl_coef"] = [("--kl-coef 0", {"kl_coef": 0.0})]
    # more GPUs per node up to 8 (the planner's --gpus: torchrun --nproc_per_node), then more nodes
    options["gpus"] = ([(f"--gpus {g}", {"gpus": g}) for g in (2, 4, 8) if g > gpus] if gpus < 8 else
                       [(f"--nodes {n}", {"nodes": n}) for n in (nodes * 2, nodes * 4)])
    return {kind: found for kind, found in options.items() if found}


def suggest(arch, cfg, gpus, gpu_gb, nodes=1, host_gb=0.0, margin_gib=MARGIN_GIB):
    """The cheapest single change, or pair of changes of two kinds, that makes plan() say FITS: a list
    of {"flags", "cost", "plan"}, cheapest first (several, so a user can choose), or [] if none does."""
    result = plan(arch, cfg, gpus, gpu_gb, nodes, host_gb, margin_gib)
    options = candidate_changes(arch, cfg, gpus, nodes, result)
    ranked = {kind: [(COSTS[kind] + 0.01 * k, flags, change) for k, (flags, change) in enumerate(found)]
              for kind, found in options.items()}

    def fits(combo):  # plan() with the changes: Config fields, or the planner's gpus / nodes
        changes = {k: v for _, _, change in combo for k, v in change.items()}
        setting = (changes.pop("gpus", gpus), gpu_gb, changes.pop("nodes", nodes), host_gb, margin_gib)
        fixed = plan(arch, dataclasses.replace(cfg, **changes), *setting)
        return fixed if fixed["verdict"] == "FITS" else None

    alone = {flags: fits([(cost, flags, change)]) for found in ranked.values() for cost, flags, change in found}
    fixes, enough = [], set()  # enough: the kinds that fit alone at some value
    for kind, found in ranked.items():  # per kind, its mildest change that fits alone
        for cost, flags, _ in found:
            if alone[flags]:
                fixes.append({"flags": flags, "cost": cost, "plan": alone[flags]})
                enough.add(kind)
                break
    for x, y in itertools.combinations([kind for kind in ranked if kind not in enough], 2):
        pairs = sorted(itertools.product(ranked[x], ranked[y]), key=lambda pair: pair[0][0] + pair[1][0])
        for combo in pairs:  # the mildest pair of these two kinds that fits
            if fixed := fits(combo):
                fixes.append({"flags": f"{combo[0][1]} {combo[1][1]}", "cost": combo[0][0] + combo[1][0],
                              "plan": fixed})
                break
    return sorted(fixes, key=lambda fix: (fix["cost"], fix["flags"].count("--")))


# --- output ----------------------------------------------------------------------------------------

LABELS = {  # term -> how the printout names it
    "cuda_context": "CUDA context", "nccl_buffers": "NCCL buffers",
    "policy": "policy weights", "adamw": "AdamW moments, fp32",
    "reference": "reference model", "logprob_buffers": "old/ref log-prob buffers",
    "grads": "gradients, fp32 (update only)",
    "vllm_awake": "vLLM awake share", "vllm_asleep": "vLLM asleep residual", "vllm_weights": "vLLM weights",
    "vllm_kv_one_sequence": "vLLM KV, one max_model_len seq", "vllm_activation": "vLLM activation peak",
    "act_inputs": "inputs", "act_text_checkpoints": "text layer checkpoints",
    "act_vision_checkpoints": "vision block checkpoints", "fsdp_root_unsharded": "FSDP root unit, unsharded",
    "fsdp_root_grads": "FSDP root unit gradients", "act_head_backward": "LM-head chunk backward",
    "act_layer_recompute": "one decoder layer's backward", "act_vision_block_recompute": "one vision block's backward",
    "fsdp_units": "FSDP units gathered", "adamw_step_temp": "AdamW step temporary",
    "logprob_forward": "log-prob forward (no grad)",
}
GROUPS = (("per process", ("cuda_context", "nccl_buffers")),
          ("training state", ("policy", "adamw", "reference", "logprob_buffers", "grads")),
          ("vLLM", ("vllm_awake", "vllm_asleep", "vllm_weights", "vllm_kv_one_sequence", "vllm_activation")),
          ("update working set (backward of one micro-batch; peak = the larger of the LM-head chunk and a "
           "layer + units)", ("act_inputs", "act_text_checkpoints", "act_vision_checkpoints", "fsdp_root_unsharded",
                              "fsdp_root_grads", "act_head_backward", "act_layer_recompute",
                              "act_vision_block_recompute", "fsdp_units")),
          ("other phases", ("adamw_step_temp", "logprob_forward")))


def describe(result, cfg, show_sources=True):
    """The plan as lines a person reads."""
    r, mb = result, result["micro_batch"]

    def count(n):  # 3.755B, or every digit for a small model
        return f"{n / 1e9:.3f}B" if n >= 1e8 else f"{n:,}"
    lines = [
        f"{r['model']}: {count(r['params'])} parameters ({count(r['vision_params'])} vision), "
        f"{count(r['trainable_params'])} trainable; {r['nodes']} node(s) x {r['gpus_per_node']} GPU(s) = world "
        f"{r['world_size']}; {r['gpu_gb']:g} GB cards, {r['usable_gib']:.2f} GiB usable",
        f"trainer: KL {'on' if cfg.kl_coef > 0 else 'off'}, precision {cfg.precision}, "
        + (f"LoRA rank {cfg.lora_rank} ({cfg.lora_sync} sync), " if r["lora"] else "full-parameter, ")
        + f"vision {'trained' if r['vision_trained'] else 'frozen'}, "
        f"checkpointing {'on' if cfg.gradient_checkpointing else 'off'}; update micro-batch <= {cfg.micro_batch_size} "
        f"seqs -> {mb['tokens']} packed tokens ({mb['prompts']} prompt(s), {mb['vision_patches']} vision patches); "
        f"vLLM util {cfg.gpu_memory_utilization}, TP {cfg.tensor_parallel_size}, "
        f"max_model_len {r['max_model_len']}, sleep level {r['sleep_level']}",
        "", "GPU memory per GPU (GiB):"]
    for title, keys in GROUPS:
        lines.append(f"  {title}")
        for key in keys:
            formula, source = r["how"][key]
            lines.append(f"    {LABELS[key]:<34}{r['terms'][key]:8.2f}   {formula}")
            if show_sources:
                lines.append(f"    {'':<42}   [{source}]")
    p = r["phases"]
    lines += [
        "  phases",
        f"    {'engine start':<34}{p['engine_start']:8.2f}   context + policy + reference + vLLM share",
        f"    {'sync (weights pushed)':<34}{p['sync']:8.2f}   context + state + vLLM residual + weights + root unit",
        f"    {'rollout':<34}{p['rollout']:8.2f}   context + state {r['persistent_gib']:.2f} + vLLM share",
        f"    {'log-probs':<34}{p['logprobs']:8.2f}   context + state + vLLM residual + forward",
        f"    {'update backward':<34}{p['backward']:8.2f}   context + state + gradients + vLLM residual + "
        f"working set {r['update_working_gib']:.2f}",
        f"    {'optimizer step':<34}{p['optimizer_step']:8.2f}   context + state + gradients + vLLM residual + "
        f"temporary",
        f"  peak at rollout {r['rollout_peak_gib']:.2f} GiB, peak at update {r['update_peak_gib']:.2f} GiB "
        f"(torch-visible: {r['update_peak_torch_gib']:.2f}), card {r['usable_gib']:.2f}: "
        f"headroom {r['headroom_gib']:.2f} GiB",
        f"  vLLM needs >= {r['vllm_min_gib']:.2f} GiB (utilization >= {r['vllm_min_utilization']:.2f}); "
        f"its share is {r['terms']['vllm_awake']:.2f}",
    ]
    host = r["host"]
    other = (f", other nodes {host['startup_other_nodes']:.1f}" if host["startup_other_nodes"] is not None else "")
    reference_after = "; the reference after the policy" if r["terms"]["reference"] else ""
    lines += ["", f"host RAM per node (GiB; {host['baseline_per_process']} per process, estimate):",
              f"  start-up: first node {host['startup_first_node']:.1f} (rank 0 reads the full fp32 model, "
              f"{host['full_fp32_model']:.1f}, once{reference_after}){other}",
              f"  asleep: {host['asleep_per_node']:.1f} (sleep level {r['sleep_level']}: pinned weights "
              f"{host['pinned_per_gpu']:.1f} per GPU)",
              f"  peak {host['peak_per_node']:.1f}" + (f" of --host-gb {r['host_gb']:g}" if r["host_gb"] else
                                                         " (give --host-gb to check it)")]
    lines += ["", f"verdict: {r['verdict']} (headroom {r['headroom_gib']:.2f} GiB, margin {r['margin_gib']} GiB)"]
    lines += [f"  - {problem}" for problem in r["problems"]]
    return lines


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False, add_help=False)
    asks_help = "-h" in argv or "--help" in argv
    parser.add_argument("-h", "--help", action="store_true")
    parser.add_argument("--model", required=not asks_help, help="3B, 7B or a model folder (its config.json)")
    parser.add_argument("--gpus", type=int, required=not asks_help, help="GPUs per node (torchrun --nproc_per_node)")
    parser.add_argument("--gpu-gb", type=float, required=not asks_help, help="the card's nominal GB (80, 141, 40, ...)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes (torchrun --nnodes)")
    parser.add_argument("--host-gb", type=float, default=0.0, help="host RAM per node, GiB (0: not checked)")
    parser.add_argument("--margin-gib", type=float, default=MARGIN_GIB, help="left free by a FITS verdict")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the lines")
    parser.add_argument("--no-sources", action="store_true", help="leave out each term's source")
    args, trainer_argv = parser.parse_known_args(argv)
    if args.help:
        parser.print_help()
        print("\nEvery other flag is train_grpo.py's (python train_grpo.py --help).")
        return None
    cfg = trainer_config(trainer_argv)
    arch = ARCHS.get(args.model.upper()) or arch_from_folder(args.model)
    setting = dict(gpus=args.gpus, gpu_gb=args.gpu_gb, nodes=args.nodes, host_gb=args.host_gb,
                   margin_gib=args.margin_gib)
    result = plan(arch, cfg, **setting)
    fixes = suggest(arch, cfg, **setting) if result["verdict"] != "FITS" else []
    result["suggestions"] = [{"flags": f["flags"], "cost": f["cost"], "peak_gib": f["plan"]["peak_gib"],
                              "headroom_gib": f["plan"]["headroom_gib"]} for f in fixes]
    result["config"] = dataclasses.asdict(cfg)
    if args.json:
        print(json.dumps(result, indent=1))
        return result
    print(f"bench/memory.py --model {args.model} --gpus {args.gpus} --nodes {args.nodes} --gpu-gb {args.gpu_gb:g} "
          + " ".join(trainer_argv))
    print("\n".join(describe(result, cfg, show_sources=not args.no_sources)))
    if result["verdict"] != "FITS":
        if not fixes:
            print("no change of one or two of the flags tried makes it fit (--micro-batch-tokens, "
                  "--gpu-memory-utilization, --tensor-parallel-size, --sleep-level 2, --freeze-vision, --kl-coef 0, "
                  "more GPUs)")
        for rank, fix in enumerate(fixes[:4]):
            print(f"{'fits with' if rank == 0 else '  or with'}: {fix['flags']}  (peak {fix['plan']['peak_gib']:.2f} "
                  f"GiB, headroom {fix['plan']['headroom_gib']:.2f})")
    return result


if __name__ == "__main__":
    main()
