"""Turn a training checkpoint into a Hugging Face model folder.

A checkpoint written by train_grpo.py (`RUN/checkpoints/step_N/`: torch.distributed.checkpoint
shards from any number of ranks, plus trainer_state.json naming the base model) becomes a folder
with safetensors weights, config, generation config, tokenizer and processor files. The folder loads
with `from_pretrained` in transformers and with vLLM, and can be pushed to a hub as it is.

    python merge.py runs/NAME/checkpoints/step_80 --out qwen2.5-vl-3b-emor3
    python merge.py runs/NAME --out merged           # the newest complete checkpoint of a run
    python merge.py CKPT --out merged --dtype bfloat16

Runs in one process on CPU (no torchrun): the shards are read with `no_dist=True`. Memory: the
full model once, in the chosen dtype plus fp32 while loading. This file is the command line; the
work (reading a checkpoint, writing the folder) is checkpoint.py's `export_hf_folder`, which
evaluate.py also uses to evaluate a checkpoint directly.
"""

import argparse

from checkpoint import DTYPES, export_hf_folder, find_checkpoint


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="RUN/checkpoints/step_N, or a run folder (its newest checkpoint)")
    parser.add_argument("--out", required=True, help="the Hugging Face folder to write")
    parser.add_argument("--base-model", default=None,
                        help="architecture, tokenizer and processor source (default: the run's --model)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="weights dtype (default: the base model's, e.g. bfloat16 for Qwen2.5-VL)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args()
    out = export_hf_folder(args.checkpoint, args.out, args.base_model, args.dtype, args.overwrite)
    print(f"merged {find_checkpoint(args.checkpoint)} -> {out}")


if __name__ == "__main__":
    main()
