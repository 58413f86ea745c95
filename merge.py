"""Turn a training checkpoint into a Hugging Face model folder.

A checkpoint written by train_grpo.py (`RUN/checkpoints/step_N/`: torch.distributed.checkpoint
shards from any number of ranks, plus trainer_state.json naming the base model) becomes a folder
with safetensors weights, config, generation config, tokenizer and processor files. The folder loads
with `from_pretrained` in transformers and with vLLM, and can be pushed to a hub as it is.

    python merge.py runs/NAME/checkpoints/step_80 --out qwen2.5-vl-3b-emor3
    python merge.py runs/NAME --out merged           # the newest complete checkpoint of a run
    python merge.py CKPT --out merged --dtype bfloat16
    python merge.py LORA_RUN --out adapter --adapter-only   # a LoRA run's adapter alone, in PEFT's layout

A LoRA checkpoint holds the adapter only; merge.py puts it on its base (--model, with the --init-from
weights when the run had them) and folds it in, W + (alpha / r) B A computed in fp32, so the folder is
a plain model. --adapter-only writes the adapter as PEFT does instead (for vLLM's --lora-modules).

Runs in one process on CPU (no torchrun): the shards are read with `no_dist=True`. Memory: the
full model once, in the chosen dtype plus fp32 while loading. This file is the command line; the
work (reading a checkpoint, writing the folder) is export.py's `export_hf_folder`, which
evaluate.py also uses to evaluate a checkpoint directly.
"""

import argparse

import json
from pathlib import Path

import lora
from checkpoint import DTYPES, find_checkpoint
from export import export_hf_folder, load_trained_model


def export_adapter(checkpoint, out, overwrite=False):
    """Write a LoRA checkpoint's adapter alone into `out` as PEFT does (adapter_model.safetensors and
    adapter_config.json, fp32), for vLLM's --lora-modules or PEFT on the base it names. Returns (out, note):
    the note says where the base is when it is not --model alone (a run with --init-from)."""
    out = Path(out)
    checkpoint = find_checkpoint(checkpoint)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    if "lora" not in state:
        raise SystemExit(f"{checkpoint} is not a LoRA checkpoint (no adapter to write): drop --adapter-only")
    if out.exists() and not overwrite:
        raise SystemExit(f"{out} exists; pass --overwrite to replace it")
    model, base, checkpoint = load_trained_model(checkpoint, keep_adapter=True, dtype="float32")
    settings = state["lora"]
    lora.save_adapter(out, lora.adapter_weights(model), settings["rank"], settings["alpha"], settings["targets"], base)
    start = state["lora_base"].get("init_from")
    note = (f"its base is {base} with the weights of {start}: merge that first (python merge.py {start} --out "
            f"BASE) and serve the adapter on BASE" if start else "")
    return out, note


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="RUN/checkpoints/step_N, or a run folder (its newest checkpoint)")
    parser.add_argument("--out", required=True, help="the Hugging Face folder to write")
    parser.add_argument("--base-model", default=None,
                        help="architecture, tokenizer and processor source (default: the run's --model)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="weights dtype (default: the base model's, e.g. bfloat16 for Qwen2.5-VL)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--adapter-only", action="store_true",
                        help="a LoRA checkpoint: write its adapter alone (PEFT layout, fp32) instead of a merged model")
    args = parser.parse_args()
    if args.adapter_only:
        out, note = export_adapter(args.checkpoint, args.out, args.overwrite)
        print(f"adapter of {find_checkpoint(args.checkpoint)} -> {out}" + (f"; {note}" if note else ""))
        return
    out = export_hf_folder(args.checkpoint, args.out, args.base_model, args.dtype, args.overwrite)
    print(f"merged {find_checkpoint(args.checkpoint)} -> {out}")


if __name__ == "__main__":
    main()
