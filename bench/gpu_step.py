"""EMO-R3 GRPO steps of a Qwen2.5-VL-3B-sized model on one GPU: phase times, tokens/s, MFU, memory.

It runs train_grpo.py itself (torchrun, one process) with `--engine hf`: rollouts and re-asks go
through transformers generate (HFEngine), NOT vLLM, which the lent GPU machines lack (flash-attn
too: attention is sdpa). Rollout figures are the HF fallback's; the others are the trainer's own.

The model: Qwen/Qwen2.5-VL-3B-Instruct's architecture (config.json values below, 3.75B parameters),
random weights, built here on the CPU and saved in bf16, with tiny.py's tokenizer and processor (678
ids, all below the 151,936-entry vocabulary; ids it lacks decode to nothing). With random weights
(1) EOS is practically never sampled, so every response runs to --max-response-length (a worst-case
step), and (2) no response has the SET tags, so each re-ask is answered "None" without generating:
time/reflect is about 0, where a trained policy asks two short questions per response. The data:
--prompts square images of --image-side pixels (1024 -> 1036x1036 after Qwen's resize: 1369 image
tokens, 1562-token prompts of EMO-R3's 2048), EmoSet's 8 labels, the SET template.

Kept from EMO-R3: n=8, temperature 1, prompt and response up to 2048 tokens, 512^2..2048^2 pixels,
two optimizer steps per rollout batch (so old log-probs are computed), gradient checkpointing, bf16
compute over fp32 master weights and AdamW, the vision tower trained. Changed to fit one GPU: 2
prompts per step (not 512; the work per sequence is the same), micro-batches of 2 sequences (update)
and 4 (log-probs), not 4 / 16, and the KL term (an fp32 reference model) only where the estimate
fits, else --kl-coef 0. The estimate, GiB for 3.75B parameters: policy 14 + gradients 14 + AdamW 28
+ the HF engine's own fp32 copy 14 (+ reference 14) = 70 (84), held from step 2 on, plus at the
rollout the logits HFEngine keeps for every generated position, (n, 151,936) fp32 each, up to four
copies alive (37 GiB at n=8, T=2048), and at each optimizer step AdamW's foreach temporary (14).
So 107 (121) GiB: an H200 (140 GiB) holds it with KL; an 80 GB H100 cannot, even with --kl-coef 0.
Flags after `--` go to the trainer unchanged (`-- --group-size 4`): state them beside the figures.

Reported, as medians over the steps after the first (warm-up): seconds and share of the step per
phase; rollout tokens/s = generated tokens / time/rollout; update tokens/s = prompt + response tokens
of every sequence / time/update; update MFU = 6 x trainable parameters x those tokens / time/update /
peak; log-prob MFU = 2 x parameters x tokens x passes (old, reference) / time/logprobs / peak; peak
GPU memory = the largest memory/peak_gb (torch.cuda.max_memory_allocated) of any step. Peak = 989
TFLOP/s dense bf16 for an H100 SXM or H200 (NVIDIA's datasheets), else --peak-tflops. 6N per token
ignores attention's T^2 term and the checkpointing recompute (the GPU does about 8N).

    .venv/bin/python bench/gpu_step.py --smoke          # CPU, tiny dims, 2 steps, well under a minute
    python3 bench/gpu_step.py --json $OUT/gpu_step.json --section $OUT/gpu_step.md   # on an H200: minutes
--append would write to the device's copy of BENCHMARKS.md, which does not come back: bring the
section back with --section and append it here. The GPU machine's python3 lacks qwen-vl-utils:
carry its wheel (`pip download --no-deps qwen-vl-utils==0.0.14 -d .whl` here; there `pip install
--no-index --no-deps --target /tmp/site .whl/*.whl` and PYTHONPATH=/tmp/site).
"""

import argparse
import importlib.util
import json
import math
import random
import shutil
import statistics
import sys
import time
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
               max_response_length=2048, group_size=8, prompts=2, steps=2, micro_batch_size=2, logprob_micro_batch_size=4)
SMOKE_RUN = dict(GPU_RUN, image_side=112, min_pixels=56 * 56, max_pixels=112 * 112, max_prompt_length=512,
                 max_response_length=16, group_size=4)
PEAK_BF16_TFLOPS = {"H100 PCIe": 756, "H100": 989, "H200": 989, "A100": 312}  # dense, NVIDIA datasheets; first match wins


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
        text_config=dict(text, bos_token_id=ids["endoftext"], eos_token_id=ids["im_end"], pad_token_id=ids["endoftext"]),
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
    question = data.DEFAULT_QUESTION.replace("{labels}", ", ".join(labels))
    lines = []
    for i in range(rows):
        label, name = labels[i % len(labels)], f"images/{i:03d}_{side}.png"
        tiny.make_demo_image(label, rng).resize((side, side)).save(out_dir / name)
        lines.append(json.dumps({"images": [name], "problem": question, "answer": label}))
    (out_dir / "labels.txt").write_text("\n".join(labels) + "\n")
    (out_dir / "train.jsonl").write_text("\n".join(lines) + "\n")
    return out_dir / "train.jsonl"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU-sized model and lengths, 2 steps: the same code path")
    parser.add_argument("--work-dir", help="model, data and run folder (default: .cache/bench-gpu-step[-smoke])")
    parser.add_argument("--tokenizer-from", help="model folder whose tokenizer/processor to use (default: tiny.py's)")
    for name, kind in (("prompts", int), ("steps", int), ("image-side", int), ("max-response-length", int),
                       ("group-size", int), ("micro-batch-size", int), ("logprob-micro-batch-size", int)):
        parser.add_argument(f"--{name}", type=kind, help=f"default {GPU_RUN[name.replace('-', '_')]} "
                            f"({SMOKE_RUN[name.replace('-', '_')]} with --smoke)")
    parser.add_argument("--kl-coef", type=float, help="default: 0.01 (EMO-R3) where the memory estimate fits, else 0")
    parser.add_argument("--peak-tflops", type=float, help="device peak dense bf16 TFLOP/s for MFU (default: from the GPU's name)")
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
    if importlib.util.find_spec("qwen_vl_utils") is None:
        raise SystemExit("qwen-vl-utils is missing (data.py resizes images with it): carry its wheel, see --help")

    # --- the model, the data and the prompt length they give
    import tiny
    from transformers import AutoProcessor

    import data
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
    print(f"model: {info['params']:,} parameters ({info['vision_params']:,} in the vision tower), random weights; data: "
          f"{run['prompts']} prompts, images {image.width}x{image.height}, {prompt_tokens:.0f} prompt tokens each")
    # memory estimate (GiB): fp32 policy 4 + grads 4 + AdamW 8 + HF engine copy 4 (+ reference 4) bytes per
    # parameter, held from step 2 on, plus generate's logits: (n, V) fp32 per position, up to 4 copies alive
    gib, params = 2**30, info["params"]
    logits = 4 * run["group_size"] * run["max_response_length"] * text["vocab_size"] * 4 / gib
    need = {with_kl: (20 + 4 * with_kl) * params / gib + logits for with_kl in (False, True)}
    kl = args.kl_coef if args.kl_coef is not None else (0.01 if gpu is None or gpu["memory_gib"] > 1.05 * need[True] else 0.0)
    print(f"memory estimate: {need[bool(kl)]:.0f} GiB at the rollout of step 2+ ({logits:.0f} of them generate's "
          f"logits), kl_coef {kl}" + (f"; the GPU has {gpu['memory_gib']:.0f} GiB" if gpu else ""), flush=True)
    if gpu and need[bool(kl)] > gpu["memory_gib"]:
        print("WARNING: the estimate exceeds the GPU's memory: expect an out-of-memory error (see --help)", flush=True)

    # --- the trainer, one process
    out = work / time.strftime("run-%Y%m%d-%H%M%S")
    trainer = ["train_grpo.py", "--model", model_dir, "--train-files", train_file, "--val-files", "", "--val-freq", "0",
               "--engine", "hf", "--rollout-batch-size", run["prompts"], "--mini-batch-size", max(1, run["prompts"] // 2),
               "--group-size", run["group_size"], "--micro-batch-size", run["micro_batch_size"],
               "--logprob-micro-batch-size", run["logprob_micro_batch_size"], "--min-pixels", run["min_pixels"],
               "--max-pixels", run["max_pixels"], "--max-prompt-length", run["max_prompt_length"],
               "--max-response-length", run["max_response_length"], "--kl-coef", kl, "--max-steps", run["steps"],
               "--save-freq", 10**6, "--output-dir", out, *extra]
    env = phases.clean_env()
    if gpu:  # fewer fragmentation OOMs with micro-batches of varying length; safe without vLLM's sleep mode
        env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    if args.smoke:  # one thread: two oversubscribe a shared 2-core machine (seen: 25x slower steps)
        env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", *trainer]
    try:
        metrics = phases.run_trainer(cmd, out, run["steps"], work / "train.log", env=env, stop_after_last=True)
    finally:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # a half-written final checkpoint: not needed
    cfg = json.loads((out / "config.json").read_text())

    # --- figures per measured step, then medians
    summary = phases.phase_summary(metrics)
    measured = [m for m in metrics if m["step"] in summary["steps"]]
    trainable = params - (info["vision_params"] if cfg["freeze_vision"] else 0)
    sequences = cfg["rollout_batch_size"] * cfg["group_size"]
    passes = [name for name, on in (("old", cfg["rollout_batch_size"] // cfg["mini_batch_size"] * cfg["ppo_epochs"] > 1),
                                    ("reference", cfg["kl_coef"] > 0)) if on]

    def med(fn):
        return statistics.median(fn(m) for m in measured)
    response = med(lambda m: m["response_length"])
    tokens = sequences * (prompt_tokens + response)  # every sequence's prompt + response, once
    result = {
        "rollout_path": "HF generate (train_grpo --engine hf), not vLLM", "device": phases.machine(),
        "params": params, "trainable_params": trainable, "sequences_per_step": sequences,
        "prompt_tokens": prompt_tokens, "response_tokens_mean": response, "phases": summary,
        "rollout_tokens_per_s": med(lambda m: sequences * m["response_length"] / m["time/rollout"]),
        "update_tokens_per_s": med(lambda m: tokens * cfg["ppo_epochs"] / m["time/update"]),
        "logprob_passes": passes, "peak_tflops": peak,
        "peak_memory_gib": max((m["memory/peak_gb"] for m in metrics if "memory/peak_gb" in m), default=None),
        "settings": run, "kl_coef": cfg["kl_coef"], "trainer_command": " ".join(["torchrun"] + list(map(str, cmd[3:]))),
    }
    if peak:
        result["update_mfu"] = med(lambda m: 6 * trainable * tokens * cfg["ppo_epochs"] / m["time/update"] / (peak * 1e12))
        if passes:
            result["logprob_mfu"] = med(lambda m: 2 * params * tokens * len(passes) / m["time/logprobs"] / (peak * 1e12))

    # --- report
    def pct(key):
        return f"{100 * result[key]:.1f} %" if key in result else "n/a (no --peak-tflops)"
    memory = f"{result['peak_memory_gib']:.1f} GiB" if result["peak_memory_gib"] is not None else "n/a (no GPU)"
    figures = "\n".join([
        "| figure | value |", "|---|---|",
        f"| rollout tokens/s (generated, HF generate) | {result['rollout_tokens_per_s']:.0f} |",
        f"| update tokens/s (prompt + response) | {result['update_tokens_per_s']:.0f} |",
        f"| update MFU (6 x {trainable / 1e9:.2f}B x tokens, peak {peak} TFLOP/s) | {pct('update_mfu')} |",
        f"| log-prob MFU ({'+'.join(passes) or 'no'} passes, 2 x params x tokens) | {pct('logprob_mfu')} |",
        f"| peak GPU memory (max_memory_allocated) | {memory} |"])
    report = (f"{sequences} sequences per step ({cfg['rollout_batch_size']} prompts x {cfg['group_size']}), "
              f"{prompt_tokens:.0f} prompt tokens ({image.width}x{image.height} image) + {response:.0f} response tokens "
              f"(max {cfg['max_response_length']}), kl_coef {cfg['kl_coef']}, micro-batches {cfg['micro_batch_size']} / "
              f"{cfg['logprob_micro_batch_size']}; medians over steps {summary['steps']}\n\n"
              f"{phases.phase_table(summary)}\n\n{figures}")
    print(report)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.append or args.section:
        name = "a Qwen2.5-VL-3B-sized model" if not args.smoke else "the --smoke model"
        section = (
            f"## GRPO steps of {name} on one device, HF rollout path (bench/gpu_step.py, {time.strftime('%Y-%m-%d')})\n\n"
            f"Machine: {phases.machine()}. {phases.versions()}.\nCommand: `python bench/gpu_step.py "
            f"{' '.join(sys.argv[1:])}`; trainer: `{result['trainer_command']}`.\nRandom weights, "
            f"{params / 1e9:.2f}B parameters; rollouts and re-asks through transformers generate (`--engine hf`), "
            f"not vLLM; responses run to the cap (random weights) and re-asks are skipped (no SET tags).\n\n{report}")
        if args.section:
            Path(args.section).write_text(section + "\n")
        if args.append:
            phases.append_section(section)
    bad = [k for k, v in result.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise SystemExit(f"non-finite results: {bad}")


if __name__ == "__main__":
    main()
