"""EMO-R3 GRPO steps of a Qwen2.5-VL-3B-sized model on one GPU: phase times, tokens/s, MFU, memory,
the engine-vs-trainer log-prob gap, and which sdpa kernel the trainer's attention gets.

It runs train_grpo.py itself (torchrun, one process) with `--engine hf`: rollouts and re-asks go
through transformers generate (HFEngine), NOT vLLM, which the lent GPU machines lack (flash-attn
too: attention is sdpa). Rollout figures are the HF fallback's; the others are the trainer's own.
Trainer flags set here: `--logp-gap-limit 0` turns the log-prob gap guard off, so that the gap
between the HF engine's fp32 copy and the trainer's bf16 compute (large, perhaps, with random
weights) is reported instead of stopping the run; `--allow-cpu` only where nvidia-smi sees no GPU
(--smoke in CI); `--precision` stays auto (bf16 compute on the GPU, fp32 on the CPU).

The model: Qwen/Qwen2.5-VL-3B-Instruct's architecture (config.json values below, 3.75B parameters),
random weights, built here on the CPU and saved in bf16, with tiny.py's tokenizer and processor (678
ids, all below the 151,936-entry vocabulary; ids it lacks decode to nothing). With random weights
(1) EOS is practically never sampled, so every response runs to --max-response-length (a worst-case
step), and (2) no response has the SET tags, so each re-ask is answered "None" without generating:
time/reflect is about 0, where a trained policy asks two short questions per response. The data:
--prompts square images of --image-side pixels (1024 -> 1036x1036 after Qwen's resize: 1369 image
tokens, 1562-token prompts of EMO-R3's 2048), EmoSet's 8 labels, the SET template.

Kept from EMO-R3: n=8, temperature 1, prompts up to 2048 tokens, 512^2..2048^2 pixels, two optimizer
steps per rollout batch (so old log-probs are computed), gradient checkpointing, bf16 compute over
fp32 master weights and AdamW, the vision tower trained. Changed to fit one GPU in 5 minutes: 2
prompts per step (not 512; the work per sequence is the same), 3 steps (1 warm-up, 2 measured),
responses capped at 512 tokens (not 2048), micro-batches of 2 sequences (update) and 4 (log-probs),
not 4 / 16, and the KL term (an fp32 reference model) only where the estimate fits, else --kl-coef 0.
Time on an H200 (an estimate, not measured): building the model on the CPU about 1 minute, the
trainer's start (policy, reference and engine copy loaded) about 1 minute, a step 30-50 s, most of
it HF generate on the fp32 copy (2 prompts x 512 tokens at an assumed 20-30 ms per decoding step,
8 responses at a time): about 4 minutes in all. At EMO-R3's 2048-token responses each rollout takes
about 4x as long and 3 steps would pass 5 minutes (`--max-response-length 2048 --steps 2` for that:
about 6-7 minutes, and 107 (121) GiB, below). The script prints the wall time of each part at the end.
Memory, GiB for 3.75B parameters: policy 14 + gradients 14 + AdamW 28 + the HF engine's own fp32 copy
14 (+ reference 14) = 70 (84), held from step 2 on, plus at the rollout the logits HFEngine keeps for
every generated position, (n, 151,936) fp32 each, up to four copies alive (9 GiB at n=8, T=512; 37 at
T=2048), and at each optimizer step AdamW's foreach temporary (14). So about 84 (98) GiB at T=512:
an H200 (140 GiB) holds it with KL; an 80 GB H100 cannot, even with --kl-coef 0.
Flags after `--` go to the trainer unchanged (`-- --group-size 4`): state them beside the figures.

Configurations (--config, CONFIGS below): `3b`, the default, trains every parameter as above. `3b-lora64`
trains a LoRA (train_grpo.py --lora-rank 64; alpha 128, EasyR1's and verl's rank) on the language model's q,
k, v, o, gate, up, down projections, 0.12B parameters; the rest is frozen and stored in bf16, the KL
reference is the same model with its adapter off (no second copy, so KL stays on), and the adapter is
merged into the HF engine's copy every step (`--lora-sync merged`: HFEngine takes no adapter folder, so
vLLM's adapter sync is not what is measured). Its memory, GiB: bf16 base 7 + the HF engine's fp32 copy 14
+ adapter, its gradients and AdamW 2 = 23, plus generate's logits at the rollout (9 at T=512): about 32,
and activations: an H100 holds it. Its update MFU counts (2 x params (forward) + 2 x the text decoder's
params (input gradients; none reach the frozen vision tower) + 6 x adapter params) x tokens. bench/memory.py
gets the run's config.json, LoRA flags included, as for any other flag.

Reported, as medians over the steps after the first (warm-up): seconds and share of the step per
phase; rollout tokens/s = generated tokens / time/rollout; update tokens/s = prompt + response tokens
of every sequence / time/update; update MFU = 6 x trainable parameters x those tokens / time/update /
peak; log-prob MFU = 2 x parameters x tokens x passes (old, reference) / time/logprobs / peak. Peak =
989 TFLOP/s dense bf16 for an H100 SXM or H200 (NVIDIA's datasheets), else --peak-tflops. 6N per
token ignores attention's T^2 term and the checkpointing recompute (the GPU does about 8N).
Per step (a table of every step, then the median and the max over the measured ones): time/step;
peak GPU memory (memory/peak_gb, torch.cuda.max_memory_allocated; the headline figure is the
largest of any step), beside it bench/memory.py's estimate of it for the run's own config.json on
this card (planner_estimate; measured / planned is the planner's error); the log-prob gap
rollout/logp_gap_mean and rollout/logp_gap_max from the run's metrics.jsonl: |engine log-prob -
trainer log-prob| of the sampled tokens (the trainer's side is the old-log-prob pass), mean and
largest over the tokens of a step. On the GPU that is the HF engine's fp32 copy against the
trainer's bf16 compute; on the CPU both are fp32 (1e-7 to 1e-6).

The sdpa probe, run before the trainer (on the GPU in a child process, so that this process holds no
CUDA context while the trainer runs): the two sdpa calls of shared_prompt_attention, the trainer's
text-decoder attention, at the 3B text decoder's heads (16 query, 2 kv, head dim 128): (a) the
prompt part, causal, no mask, enable_gqa; (b) the responses, (B, 16, R, 128) queries against (B, 16,
P + R, 128) keys and values whose kv heads are expanded with repeat_interleave, and a boolean mask
(B, 1, R, P + R); and, for comparison, (c) (b)'s old form: 2 kv heads with enable_gqa=True and the
mask. On the GPU in bf16 at the run's shapes (B = n = 8, P = the prompt tokens, R =
--max-response-length), on the CPU in fp32 at B=2, P=96, R=32. Each backend is tried alone
(sdpa_kernel([FLASH_ATTENTION]), EFFICIENT_ATTENTION, CUDNN_ATTENTION, MATH): ok (median ms of 3
calls) or refused (RuntimeError; torch's warnings say why). "default dispatch" is the kernel the
call without sdpa_kernel really ran: the fused aten op a TorchDispatchMode saw it reach
(_scaled_dot_product_{flash,efficient,cudnn}_attention...), MATH when it reached none (math is bmm +
softmax). The JSON also holds first_accepting, the first backend accepting alone in torch's priority
order, the usual approximation of that choice. On the CPU, EFFICIENT and CUDNN are CUDA kernels and
are refused; FLASH and MATH have CPU kernels and accept.

On a lent GPU machine (torch and transformers, no vLLM, no network; data.py no longer needs
qwen-vl-utils), one run call per configuration, each with a timeout_s of about 420 (about 4 minutes
expected), the second on the same warm machine (it reuses the model folder in .cache/bench-gpu-step). On
an 80 GB H100 the LoRA one first: the full-parameter 3b is expected not to fit there (above).
    HF_HUB_OFFLINE=1 python3 bench/gpu_step.py --config 3b-lora64 --json $OUT/gpu_step_lora.json \\
        --section $OUT/gpu_step_lora.md
    HF_HUB_OFFLINE=1 python3 bench/gpu_step.py --json $OUT/gpu_step.json --section $OUT/gpu_step.md
Here, on the CPU:
    .venv/bin/python bench/gpu_step.py --smoke          # tiny dims, 2 steps, about a minute
    .venv/bin/python bench/gpu_step.py --smoke --config 3b-lora64   # the LoRA configuration's code path
--append would write to the device's copy of BENCHMARKS.md, which does not come back: bring the
section back with --section and append it here.
"""

import argparse
import dataclasses
import json
import math
import random
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import phases  # noqa: E402  (helpers shared with bench/phases.py)

REPO = phases.REPO
sys.path.insert(0, str(REPO))

# Qwen/Qwen2.5-VL-3B-Instruct's config.json (tie_word_embeddings true), in transformers 5 names
TEXT_3B = dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, vocab_size=151936, max_position_embeddings=128000, rms_norm_eps=1e-6,
               hidden_act="silu", rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                                   "mrope_section": [16, 24, 24]})
VISION_3B = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                 patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112, in_chans=3,
                 fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu", tokens_per_second=2)
# --smoke: the same builder at tiny.py's sizes; vocabulary larger than the tokenizer, as for the 3B
TEXT_SMOKE = dict(TEXT_3B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, vocab_size=2048, max_position_embeddings=4096,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]})
VISION_SMOKE = dict(VISION_3B, depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                    fullatt_block_indexes=[1])
# run settings (flags override them): EMO-R3's lengths and pixels on the GPU, tiny ones for --smoke
GPU_RUN = dict(image_side=1024, min_pixels=512 * 512, max_pixels=2048 * 2048, max_prompt_length=2048,
               max_response_length=512, group_size=8, prompts=2, steps=3, micro_batch_size=2,
               logprob_micro_batch_size=4)
SMOKE_RUN = dict(GPU_RUN, image_side=112, min_pixels=56 * 56, max_pixels=112 * 112, max_prompt_length=512,
                 max_response_length=16, group_size=4, steps=2)
# dense, NVIDIA datasheets; the first match wins
PEAK_BF16_TFLOPS = {"H100 PCIe": 756, "H100": 989, "H200": 989, "A100": 312}
# the configurations a lent GPU measures (--config), each the 3B-sized model with these train_grpo.py flags
CONFIGS = {
    "3b": {"about": "full-parameter training, the vision tower trained (EMO-R3)", "flags": {}},
    # EasyR1's and verl's LoRA rank; --lora-sync merged: --engine hf takes no adapter (train_grpo.check_config)
    "3b-lora64": {"about": "LoRA rank 64, alpha 128, on the language model's q, k, v, o, gate, up, down projections, "
                           "the rest frozen (bf16 under bf16 compute), merged into the HF engine's copy every step",
                  "flags": {"lora_rank": 64, "lora_sync": "merged"}},
}


def build_model(out_dir, text, vision, tokenizer_dir, dtype):
    """A Qwen2.5-VL folder: random weights (transformers' init, std 0.02), tiny.py's tokenizer/processor.

    Built on the CPU so that this process never holds GPU memory the trainer needs. Reused when
    the folder was built from the same recipe.
    """
    import torch
    from transformers import AutoProcessor, GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    recipe = {"text": text, "vision": vision, "dtype": dtype, "tokenizer": str(tokenizer_dir)}
    marker = out_dir / "bench_model.json"
    if marker.exists() and json.loads(marker.read_text())["recipe"] == recipe:
        return json.loads(marker.read_text())
    processor = AutoProcessor.from_pretrained(tokenizer_dir)
    tok = processor.tokenizer
    if len(tok) > text["vocab_size"]:
        raise SystemExit(f"{tokenizer_dir}: {len(tok)} tokens do not fit the vocabulary of {text['vocab_size']}")
    ids = {t: tok.convert_tokens_to_ids(f"<|{t}|>") for t in
           ("endoftext", "im_end", "image_pad", "video_pad", "vision_start", "vision_end")}
    config = Qwen2_5_VLConfig(
        text_config=dict(text, bos_token_id=ids["endoftext"], eos_token_id=ids["im_end"],
                         pad_token_id=ids["endoftext"]),
        vision_config=vision, image_token_id=ids["image_pad"], video_token_id=ids["video_pad"],
        vision_start_token_id=ids["vision_start"], vision_end_token_id=ids["vision_end"], tie_word_embeddings=True)
    print(f"building the model in {out_dir} ...", flush=True)
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(bos_token_id=ids["endoftext"], pad_token_id=ids["endoftext"],
                                               eos_token_id=[ids["im_end"], ids["endoftext"]], do_sample=False)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    info = {"recipe": recipe, "params": sum(p.numel() for p in model.parameters()),  # the tied head counted once
            "vision_params": sum(p.numel() for p in model.model.visual.parameters())}
    (tmp / "bench_model.json").write_text(json.dumps(info))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return info


def build_data(out_dir, rows, side):
    """rows square images of `side` pixels with EmoSet's labels, in the EMO-R3 data layout."""
    import data
    import tiny
    labels = (REPO / "prompts" / "labels" / "emoset.txt").read_text().split()
    rng = random.Random(0)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    question = data.default_question(labels)
    lines = []
    for i in range(rows):
        label, name = labels[i % len(labels)], f"images/{i:03d}_{side}.png"
        tiny.make_demo_image(label, rng).resize((side, side)).save(out_dir / name)
        lines.append({"images": [name], "problem": question, "answer": label})
    (out_dir / "labels.txt").write_text("\n".join(labels) + "\n")
    return data.write_jsonl(out_dir / "train.jsonl", lines)


def lora_trainable(model_dir, cfg):
    """The trainable parameters (A and B) of the LoRA that train_grpo's lora_* fields in `cfg` ask for, counted
    on a meta-device copy of the model (no memory, apply_lora's own choice of layers); None without LoRA."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    import lora
    settings = lora.from_flags(cfg["lora_rank"], cfg["lora_alpha"], cfg["lora_targets"], cfg["lora_vision"])
    if settings is None:
        return None
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(model_dir))
    lora.apply_lora(model, **settings)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --- which sdpa kernel the trainer's attention calls get ------------------------------------------

SDPA_BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")
SDPA_CALLS = {  # shared_prompt_attention's two calls (the trainer's text-decoder attention), and (b)'s old form
    "prompt": "(a) prompt: causal, no mask, 2 kv heads, enable_gqa",
    "response": "(b) responses: bool mask (B,1,R,P+R), kv heads expanded (repeat_interleave)",
    "response_gqa": "(c) old (b): bool mask, 2 kv heads, enable_gqa",
}
# the aten op each fused kernel runs as (the math kernel is composite: bmm + softmax, no op of its own)
SDPA_OPS = {"_scaled_dot_product_flash_attention": "FLASH_ATTENTION",
            "_scaled_dot_product_flash_attention_for_cpu": "FLASH_ATTENTION",
            "_scaled_dot_product_efficient_attention": "EFFICIENT_ATTENTION",
            "_scaled_dot_product_cudnn_attention": "CUDNN_ATTENTION",
            "_scaled_dot_product_fused_attention_overrideable": "OVERRIDEABLE"}


def sdpa_probe(rows, prompt, response, on_gpu):
    """Which sdpa backends accept shared_prompt_attention's calls at the 3B text decoder's head shapes.

    Each call is tried with each backend alone (torch.nn.attention.sdpa_kernel([backend])): "ok" with
    its median time over 3 calls, or refused (RuntimeError) with torch's warnings saying why. Then the
    call runs with the default dispatch under a TorchDispatchMode that records the aten ops it runs:
    the fused op it reaches names the backend (none: the composite math kernel). The tensors have the
    trainer's layouts: (rows, width, heads, dim) projections transposed to (rows, heads, width, dim).
    """
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils._python_dispatch import TorchDispatchMode

    device, dtype = (torch.device("cuda"), torch.bfloat16) if on_gpu else (torch.device("cpu"), torch.float32)
    heads, kv_heads = TEXT_3B["num_attention_heads"], TEXT_3B["num_key_value_heads"]
    dim, width = TEXT_3B["hidden_size"] // heads, prompt + response
    gen = torch.Generator(device).manual_seed(0)
    query = torch.randn(rows, width, heads, dim, device=device, dtype=dtype, generator=gen).transpose(1, 2)
    key, value = (torch.randn(rows, width, kv_heads, dim, device=device, dtype=dtype, generator=gen).transpose(1, 2)
                  for _ in range(2))
    # response b's query k sees its prompt (prompt_len[b] tokens, the rest padding) and its own tokens <= k
    prompt_len = torch.randint(prompt // 2, prompt + 1, (rows,), device=device, generator=gen)
    sees_prompt = torch.arange(prompt, device=device) < prompt_len[:, None]
    sees_own = torch.ones(response, response, dtype=torch.bool, device=device).tril()
    mask = torch.cat([sees_prompt[:, None].expand(-1, response, -1), sees_own.expand(rows, -1, -1)], -1)[:, None]
    groups, scale = heads // kv_heads, dim ** -0.5
    resp_q = query[:, :, prompt:]
    calls = {
        "prompt": lambda: F.scaled_dot_product_attention(query[:, :, :prompt], key[:, :, :prompt], value[:, :, :prompt],
                                                         is_causal=True, scale=scale, enable_gqa=True),
        "response": lambda: F.scaled_dot_product_attention(resp_q, key.repeat_interleave(groups, dim=1),
                                                           value.repeat_interleave(groups, dim=1), attn_mask=mask,
                                                           scale=scale),
        "response_gqa": lambda: F.scaled_dot_product_attention(resp_q, key, value, attn_mask=mask, scale=scale,
                                                               enable_gqa=True),
    }

    def timed(fn):
        fn()  # warm-up (and the first refusal)
        times = []
        for _ in range(3):
            if on_gpu:
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if on_gpu:
                torch.cuda.synchronize()
            times.append(1e3 * (time.perf_counter() - start))
        return statistics.median(times)

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    result = {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "rows": rows, "prompt": prompt,
              "response": response, "heads": heads, "kv_heads": kv_heads, "head_dim": dim, "calls": {}}
    try:
        result["priority"] = [SDPBackend(i).name for i in torch._C._get_sdp_priority_order()]
    except (AttributeError, ValueError):
        result["priority"] = list(SDPA_BACKENDS[:2]) + ["MATH", "CUDNN_ATTENTION"]  # an older torch's default
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the refusals' reasons are recorded below; the rest is noise
        for name, call in calls.items():
            backends = {}
            for backend in SDPA_BACKENDS:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        with sdpa_kernel([getattr(SDPBackend, backend)]):
                            backends[backend] = {"ok": True, "ms": timed(call)}
                    except RuntimeError as e:
                        why = [str(w.message).split("\n")[0] for w in caught] or [str(e).split("\n")[0]]
                        backends[backend] = {"ok": False, "reason": " / ".join(dict.fromkeys(why))[:300]}
            with Ops() as ops:
                call()
            ran = [SDPA_OPS[op] for op in ops.names if op in SDPA_OPS]
            accepted = [b for b in result["priority"] if backends.get(b, {}).get("ok")]
            result["calls"][name] = {
                "backends": backends, "default": ran[0] if ran else "MATH",
                "default_op": next((op for op in ops.names if op in SDPA_OPS), "math (composite: bmm, softmax)"),
                "first_accepting": accepted[0] if accepted else None, "default_ms": timed(call)}
            if on_gpu:
                torch.cuda.empty_cache()
    return result


def run_sdpa_probe(rows, prompt, response, on_gpu):
    """sdpa_probe; on the GPU in a child process, so that this process holds no CUDA context (or cached
    memory) while the trainer runs and a kernel that crashes cannot take the benchmark down. On the CPU
    here (a child would add seconds of imports). None if it failed: the step figures are still wanted."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    try:
        if not on_gpu:
            return sdpa_probe(rows, prompt, response, on_gpu)
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(sdpa_probe, rows, prompt, response, on_gpu).result()
    except Exception as e:  # noqa: BLE001  (a diagnostic)
        print(f"WARNING: the sdpa probe failed: {type(e).__name__}: {e}", flush=True)
        return None


def sdpa_table(probe):
    """The probe as markdown: call x backend (ok with ms / refused), the default dispatch, the reasons."""
    if probe is None:
        return "sdpa probe: failed (see the warning above)"
    head = (f"sdpa kernels of the trainer's text-decoder attention (shared_prompt_attention), {probe['dtype']} on "
            f"{probe['device']}: B={probe['rows']} responses, {probe['heads']} query / {probe['kv_heads']} kv heads "
            f"x {probe['head_dim']}, "
            f"P={probe['prompt']} prompt + R={probe['response']} response tokens. A backend alone "
            f"(sdpa_kernel([backend])): ok (median ms of 3) or refused; default = the kernel the default dispatch "
            f"ran (its aten op, recorded), torch's priority order {' > '.join(probe['priority'])}.")
    lines = [head, "", "| call | " + " | ".join(SDPA_BACKENDS) + " | default dispatch |",
             "|---|" + "---|" * (len(SDPA_BACKENDS) + 1)]
    reasons = {}  # why refused -> which call and backend (the CPU gives one reason for all)
    for name, call in probe["calls"].items():
        cells = []
        for backend in SDPA_BACKENDS:
            b = call["backends"][backend]
            cells.append(f"ok ({b['ms']:.2f} ms)" if b["ok"] else "refused")
            if not b["ok"]:
                reasons.setdefault(b["reason"], []).append(f"{SDPA_CALLS[name].split(' ')[0]} {backend}")
        lines.append(f"| {SDPA_CALLS[name]} | " + " | ".join(cells) +
                     f" | {call['default']} ({call['default_ms']:.2f} ms) |")
    if reasons:
        lines += ["", "Why refused (torch's warnings, else its error):",
                  *(f"- {', '.join(where)}: {why}" for why, where in reasons.items())]
    return "\n".join(lines)


def planner_estimate(model_dir, cfg, gpu, logits_gib):
    """bench/memory.py's figure for this very run, to set beside its measured peak: the trainer's resolved
    config (its config.json), the model folder's dimensions, this card. torch.cuda.max_memory_allocated sees
    neither the CUDA context nor vLLM, so the planner's update peak as torch's allocator holds it
    (update_peak_torch_gib), plus what --engine hf adds and the planner does not model: HFEngine's fp32
    copy of the model (4 bytes x P) in every phase, and at the rollout generate's logits (logits_gib, this
    script's estimate). The larger of that update and that rollout is the estimate. The planner models the
    trainer with its memory changes (bf16 reference, per-parameter AdamW step, gradients freed before the
    rollout: its docstring); a trainer without them measures more. None (and a warning) if it fails."""
    try:
        import memory as planner  # bench/memory.py
        import train_grpo
        fields = {f.name for f in dataclasses.fields(train_grpo.Config)}
        config = train_grpo.Config(**{k: v for k, v in cfg.items() if k in fields})
        gpu_gb = gpu["memory_gib"] / planner.USABLE_PER_NOMINAL_GB if gpu else 80.0  # CPU: any card will do
        planned = planner.plan(planner.arch_from_folder(model_dir), config, gpus=1, gpu_gb=gpu_gb)
    except Exception as e:  # noqa: BLE001  (a diagnostic: the measured figures are still wanted)
        print(f"WARNING: the memory planner failed: {type(e).__name__}: {e}", flush=True)
        return None
    hf_copy = 4 * planned["params"] / 2**30
    update = planned["update_peak_torch_gib"] + hf_copy
    rollout = planned["persistent_gib"] + hf_copy + logits_gib
    return {"estimate_gib": max(update, rollout), "update_gib": update, "hf_rollout_gib": rollout,
            "hf_engine_copy_gib": hf_copy, "planner_update_peak_torch_gib": planned["update_peak_torch_gib"],
            "planner_terms_gib": planned["terms"]}


def per_step_figures(metrics, measured_steps):
    """Per step: time/step, peak GPU memory, the engine-vs-trainer log-prob gap (mean, max), response
    length; then the median and the max of each over the measured steps (after the warm-up)."""
    keys = {"time_s": "time/step", "peak_memory_gib": "memory/peak_gb", "logp_gap_mean": "rollout/logp_gap_mean",
            "logp_gap_max": "rollout/logp_gap_max", "response_length": "response_length"}
    rows = [{"step": m["step"], "warmup": m["step"] not in measured_steps, **{k: m.get(v) for k, v in keys.items()}}
            for m in metrics]
    stats = {}
    for k in keys:
        values = [r[k] for r in rows if not r["warmup"] and r[k] is not None]
        stats[k] = {"median": statistics.median(values), "max": max(values)} if values else None
    return rows, stats


def step_table(rows, stats):
    def fmt(v, spec):
        return "n/a" if v is None else format(v, spec)
    lines = ["| step | time/step (s) | peak GPU memory (GiB) | log-prob gap mean | log-prob gap max "
             "| response tokens |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['step']}{' (warm-up)' if r['warmup'] else ''} | {fmt(r['time_s'], '.2f')} | "
                     f"{fmt(r['peak_memory_gib'], '.1f')} | {fmt(r['logp_gap_mean'], '.3g')} | "
                     f"{fmt(r['logp_gap_max'], '.3g')} | {fmt(r['response_length'], '.0f')} |")
    for what in ("median", "max"):
        cells = [fmt(stats[k][what] if stats[k] else None, spec) for k, spec in
                 (("time_s", ".2f"), ("peak_memory_gib", ".1f"), ("logp_gap_mean", ".3g"), ("logp_gap_max", ".3g"),
                  ("response_length", ".0f"))]
        lines.append(f"| {what} after warm-up | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    started = time.time()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU-sized model and lengths, 2 steps: the same code path")
    parser.add_argument("--config", choices=CONFIGS, default="3b",
                        help="what is trained: " + "; ".join(f"{k}: {v['about']}" for k, v in CONFIGS.items()) +
                        " (default: %(default)s)")
    parser.add_argument("--work-dir", help="model, data and run folder (default: .cache/bench-gpu-step[-smoke])")
    parser.add_argument("--tokenizer-from", help="model folder whose tokenizer/processor to use (default: tiny.py's)")
    for name, kind in (("prompts", int), ("steps", int), ("image-side", int), ("max-response-length", int),
                       ("group-size", int), ("micro-batch-size", int), ("logprob-micro-batch-size", int)):
        parser.add_argument(f"--{name}", type=kind, help=f"default {GPU_RUN[name.replace('-', '_')]} "
                            f"({SMOKE_RUN[name.replace('-', '_')]} with --smoke)")
    parser.add_argument("--kl-coef", type=float, help="default: 0.01 (EMO-R3) where the memory estimate fits, else 0")
    parser.add_argument("--peak-tflops", type=float,
                        help="device peak dense bf16 TFLOP/s for MFU (default: from the GPU's name)")
    parser.add_argument("--no-sdpa-probe", action="store_true", help="skip the sdpa kernel probe")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--section", help="write the BENCHMARKS.md section (markdown) to this file")
    parser.add_argument("--append", action="store_true", help="append that section to BENCHMARKS.md")
    parser.add_argument("trainer_args", nargs=argparse.REMAINDER, help="after `--`: extra train_grpo.py flags")
    args = parser.parse_args()
    run = dict(SMOKE_RUN if args.smoke else GPU_RUN)
    run.update({k: v for k, v in vars(args).items() if k in run and v is not None})
    extra = [a for a in args.trainer_args if a != "--"]
    gpu = phases.gpu_info()
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if gpu and k in gpu["name"]), None)
    work = Path(args.work_dir or REPO / ".cache" / ("bench-gpu-step-smoke" if args.smoke else "bench-gpu-step"))
    work.mkdir(parents=True, exist_ok=True)
    print("gpu_step: HF rollout path (train_grpo --engine hf: transformers generate), not vLLM", flush=True)
    print(f"machine: {phases.machine()}\nversions: {phases.versions()}\nsettings: {run}, extra {extra}")
    print(f"configuration {args.config}: {CONFIGS[args.config]['about']}", flush=True)

    # --- the model, the data and the prompt length they give
    import tiny
    from transformers import AutoProcessor

    import data
    wall = {}
    tokenizer_dir = Path(args.tokenizer_from) if args.tokenizer_from else tiny.build_tiny_model()
    text, vision = (TEXT_SMOKE, VISION_SMOKE) if args.smoke else (TEXT_3B, VISION_3B)
    model_dir = work / ("model-smoke" if args.smoke else "model-qwen2.5-vl-3b-random")
    info = build_model(model_dir, text, vision, tokenizer_dir, "float32" if args.smoke else "bfloat16")
    train_file = build_data(work / "data", run["prompts"], run["image_side"])
    processor = AutoProcessor.from_pretrained(model_dir)
    dataset = data.PromptDataset(train_file, processor, min_pixels=run["min_pixels"], max_pixels=run["max_pixels"],
                                 max_prompt_length=run["max_prompt_length"])
    prompt_tokens = statistics.mean(dataset[i].num_tokens for i in range(len(dataset)))
    image = dataset[0].images[0]
    wall["model and data"] = time.time() - started
    print(f"model: {info['params']:,} parameters ({info['vision_params']:,} in the vision tower), random weights; "
          f"data: {run['prompts']} prompts, images {image.width}x{image.height}, {prompt_tokens:.0f} prompt tokens "
          f"each ({wall['model and data']:.0f} s)", flush=True)

    # --- which sdpa kernel the trainer's attention gets: the run's shapes on the GPU, small ones on the CPU
    probe = None
    if not args.no_sdpa_probe:
        t0 = time.time()
        sizes = ((run["group_size"], round(prompt_tokens), run["max_response_length"]) if gpu else (2, 96, 32))
        probe = run_sdpa_probe(*sizes, on_gpu=gpu is not None)
        wall["sdpa probe"] = time.time() - t0
        print(sdpa_table(probe), flush=True)

    # memory estimate (GiB), bytes held from step 2 on: full-parameter training, per parameter fp32 policy 4 +
    # grads 4 + AdamW 8 + HF engine copy 4 (+ reference 4); LoRA, per parameter the frozen base 2 (bf16; 4 on the
    # CPU) + HF engine copy 4, per adapter parameter 16 (fp32 A and B, grads, AdamW), and no reference (it is the
    # adapter switched off). Plus the larger of generate's logits at the rollout ((n, V) fp32 per position, up to
    # 4 copies alive) and AdamW's foreach temporary (4 bytes per trained parameter) at its step
    import train_grpo
    gib, params = 2**30, info["params"]
    adapter = lora_trainable(model_dir, {**dataclasses.asdict(train_grpo.Config()), **CONFIGS[args.config]["flags"]})
    trained = adapter or params
    logits = 4 * run["group_size"] * run["max_response_length"] * text["vocab_size"] * 4 / gib
    if adapter:
        need = dict.fromkeys((False, True), ((2 if gpu else 4) + 4) * params / gib + 16 * adapter / gib)
    else:
        need = {with_kl: (20 + 4 * with_kl) * params / gib for with_kl in (False, True)}
    need = {with_kl: held + max(logits, 4 * trained / gib) for with_kl, held in need.items()}
    fits = gpu is None or gpu["memory_gib"] > 1.05 * need[True]
    kl = args.kl_coef if args.kl_coef is not None else (0.01 if fits else 0.0)
    print(f"memory estimate: {need[bool(kl)]:.0f} GiB at the peak of step 2+ (generate's logits {logits:.0f}, AdamW's "
          f"temporary {4 * trained / gib:.1f}), kl_coef {kl}" +
          (f"; the GPU has {gpu['memory_gib']:.0f} GiB" if gpu else ""), flush=True)
    if gpu and need[bool(kl)] > gpu["memory_gib"]:
        print("WARNING: the estimate exceeds the GPU's memory: expect an out-of-memory error (see --help)", flush=True)

    # --- the trainer, one process. --logp-gap-limit 0: the guard off, so that a large bf16-vs-fp32 gap
    # (random weights) is reported rather than stopping the run; --allow-cpu only where there is no GPU
    out = work / time.strftime(f"run-{args.config}-%Y%m%d-%H%M%S")
    config_flags = [item for key, value in CONFIGS[args.config]["flags"].items()
                    for item in (f"--{key.replace('_', '-')}", value)]
    trainer = ["train_grpo.py", "--model", model_dir, "--train-files", train_file, "--val-files", "", "--val-freq", "0",
               "--engine", "hf", "--rollout-batch-size", run["prompts"],
               "--mini-batch-size", max(1, run["prompts"] // 2),
               "--group-size", run["group_size"], "--micro-batch-size", run["micro_batch_size"],
               "--logprob-micro-batch-size", run["logprob_micro_batch_size"], "--min-pixels", run["min_pixels"],
               "--max-pixels", run["max_pixels"], "--max-prompt-length", run["max_prompt_length"],
               "--max-response-length", run["max_response_length"], "--kl-coef", kl, "--max-steps", run["steps"],
               "--logp-gap-limit", 0, "--save-freq", 10**6, "--output-dir", out,
               *(["--allow-cpu"] if gpu is None else []), *config_flags, *extra]
    env = phases.clean_env()
    if gpu:  # fewer fragmentation OOMs with micro-batches of varying length; safe without vLLM's sleep mode
        env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    if args.smoke:  # one thread: two oversubscribe a shared 2-core machine (seen: 25x slower steps)
        env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", *trainer]
    t0 = time.time()
    try:
        metrics = phases.run_trainer(cmd, out, run["steps"], work / "train.log", env=env, stop_after_last=True)
    finally:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # a half-written final checkpoint: not needed
    wall["trainer (start to last step)"] = time.time() - t0
    cfg = json.loads((out / "config.json").read_text())

    # --- figures per measured step, then medians
    summary = phases.phase_summary(metrics)
    measured = [m for m in metrics if m["step"] in summary["steps"]]
    steps, step_stats = per_step_figures(metrics, summary["steps"])
    # the update's FLOPs per token: 6 x trained parameters (forward, input and weight gradients); with LoRA the
    # frozen base's forward (2 x params) and input gradients (2 x the text decoder's: no gradient reaches the
    # frozen vision tower), and 6 x the adapter's parameters
    adapter = lora_trainable(model_dir, cfg) if cfg.get("lora_rank") else None
    if adapter:
        trainable = adapter
        update_flops = 2 * params + 2 * (params - info["vision_params"]) + 6 * adapter
        flops_text = (f"(2 x {params / 1e9:.2f}B + 2 x {(params - info['vision_params']) / 1e9:.2f}B text + "
                      f"6 x {adapter / 1e9:.3f}B adapter) x tokens")
    else:
        trainable = params - (info["vision_params"] if cfg["freeze_vision"] else 0)
        update_flops = 6 * trainable
        flops_text = f"6 x {trainable / 1e9:.2f}B x tokens"
    sequences = cfg["rollout_batch_size"] * cfg["group_size"]
    optimizer_steps = cfg["rollout_batch_size"] // cfg["mini_batch_size"] * cfg["ppo_epochs"]
    passes = [name for name, on in (("old", optimizer_steps > 1), ("reference", cfg["kl_coef"] > 0)) if on]
    compute = cfg.get("precision", "auto")
    if compute == "auto":
        compute = "bf16" if gpu else "fp32"

    def med(fn):
        return statistics.median(fn(m) for m in measured)
    response = med(lambda m: m["response_length"])
    tokens = sequences * (prompt_tokens + response)  # every sequence's prompt + response, once
    wall["total"] = time.time() - started
    result = {
        "rollout_path": "HF generate (train_grpo --engine hf), not vLLM", "device": phases.machine(),
        "config": args.config, "config_about": CONFIGS[args.config]["about"],
        "params": params, "trainable_params": trainable, "update_flops_per_token": update_flops,
        "sequences_per_step": sequences,
        "prompt_tokens": prompt_tokens, "response_tokens_mean": response, "phases": summary,
        "rollout_tokens_per_s": med(lambda m: sequences * m["response_length"] / m["time/rollout"]),
        "update_tokens_per_s": med(lambda m: tokens * cfg["ppo_epochs"] / m["time/update"]),
        "logprob_passes": passes, "peak_tflops": peak,
        "peak_memory_gib": max((m["memory/peak_gb"] for m in metrics if "memory/peak_gb" in m), default=None),
        "per_step": steps, "step_time_s": step_stats["time_s"], "logp_gap_mean": step_stats["logp_gap_mean"],
        "logp_gap_max": step_stats["logp_gap_max"], "trainer_precision": compute, "sdpa_probe": probe,
        "wall_s": wall, "settings": run, "kl_coef": cfg["kl_coef"],
        "trainer_command": " ".join(["torchrun"] + list(map(str, cmd[3:]))),
    }
    result["planner"] = planner_estimate(model_dir, cfg, gpu, logits)
    if result["planner"] and result["peak_memory_gib"] is not None:  # the planner's error, measured / planned
        result["planner"]["measured_over_planned"] = result["peak_memory_gib"] / result["planner"]["estimate_gib"]
    if peak:
        result["update_mfu"] = med(lambda m: update_flops * tokens * cfg["ppo_epochs"] / m["time/update"]
                                   / (peak * 1e12))
        if passes:
            result["logprob_mfu"] = med(lambda m: 2 * params * tokens * len(passes) / m["time/logprobs"]
                                        / (peak * 1e12))

    # --- report
    def pct(key):
        return f"{100 * result[key]:.1f} %" if key in result else "n/a (no --peak-tflops)"
    memory = f"{result['peak_memory_gib']:.1f} GiB" if result["peak_memory_gib"] is not None else "n/a (no GPU)"
    planned = result["planner"]
    planned_text = "n/a (the planner failed)" if planned is None else (
        f"{planned['estimate_gib']:.1f} GiB = max(update {planned['update_gib']:.1f}, HF rollout "
        f"{planned['hf_rollout_gib']:.1f}), HF copy {planned['hf_engine_copy_gib']:.1f} included; measured / planned "
        + (f"{planned['measured_over_planned']:.2f}" if "measured_over_planned" in planned else "n/a (no GPU)"))
    gap = result["logp_gap_mean"]
    gap_text = (f"{gap['median']:.3g} (max over steps {gap['max']:.3g}; largest single token "
                f"{result['logp_gap_max']['max']:.3g})" if gap else "n/a (no rollout/logp_gap in metrics.jsonl)")
    figures = "\n".join([
        "| figure | value |", "|---|---|",
        f"| time/step (median after warm-up; max) | {step_stats['time_s']['median']:.2f} s; "
        f"{step_stats['time_s']['max']:.2f} s |",
        f"| rollout tokens/s (generated, HF generate) | {result['rollout_tokens_per_s']:.0f} |",
        f"| update tokens/s (prompt + response) | {result['update_tokens_per_s']:.0f} |",
        f"| update MFU ({flops_text}, peak {peak} TFLOP/s) | {pct('update_mfu')} |",
        f"| log-prob MFU ({'+'.join(passes) or 'no'} passes, 2 x params x tokens) | {pct('logprob_mfu')} |",
        f"| peak GPU memory (max_memory_allocated) | {memory} |",
        f"| planner's estimate of that peak (bench/memory.py) | {planned_text} |",
        f"| log-prob gap, HF engine (fp32) vs trainer ({compute}), mean per step (median) | {gap_text} |"])
    report = (f"{sequences} sequences per step ({cfg['rollout_batch_size']} prompts x {cfg['group_size']}), "
              f"{prompt_tokens:.0f} prompt tokens ({image.width}x{image.height} image) + {response:.0f} response "
              f"tokens (max {cfg['max_response_length']}), kl_coef {cfg['kl_coef']}, micro-batches "
              f"{cfg['micro_batch_size']} / {cfg['logprob_micro_batch_size']}, trainer compute {compute}, "
              f"--logp-gap-limit 0 (guard off); "
              f"medians over steps {summary['steps']}\n\n"
              f"{phases.phase_table(summary)}\n\n{figures}\n\n{step_table(steps, step_stats)}\n\n"
              f"{sdpa_table(probe) if not args.no_sdpa_probe else 'sdpa probe: skipped (--no-sdpa-probe)'}\n\n"
              f"Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in wall.items()))
    print(report)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.append or args.section:
        name = ("a Qwen2.5-VL-3B-sized model" if not args.smoke else "the --smoke model") + f" ({args.config})"
        section = (
            f"## GRPO steps of {name} on one device, HF rollout path (bench/gpu_step.py, "
            f"{time.strftime('%Y-%m-%d')})\n\n"
            f"Machine: {phases.machine()}. {phases.versions()}.\nCommand: `python bench/gpu_step.py "
            f"{' '.join(sys.argv[1:])}`; trainer: `{result['trainer_command']}`.\nRandom weights, "
            f"{params / 1e9:.2f}B parameters; {CONFIGS[args.config]['about']}, {trainable / 1e9:.3f}B trained; "
            "rollouts and re-asks through transformers generate (`--engine hf`), "
            f"not vLLM; responses run to the cap (random weights) and re-asks are skipped (no SET tags).\n\n{report}")
        if args.section:
            Path(args.section).write_text(section + "\n")
        if args.append:
            phases.append_section(section)
    bad = [k for k, v in result.items() if isinstance(v, float) and not math.isfinite(v)]
    bad += [f"{k} {w}" for k in ("step_time_s", "logp_gap_mean", "logp_gap_max") if result[k]
            for w, v in result[k].items() if not math.isfinite(v)]
    if bad:
        raise SystemExit(f"non-finite results: {bad}")


if __name__ == "__main__":
    main()
