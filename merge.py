"""Turn a training checkpoint into a Hugging Face model folder.

A checkpoint written by train_grpo.py (`RUN/checkpoints/step_N/`: torch.distributed.checkpoint
shards from any number of ranks, plus trainer_state.json naming the base model) becomes a folder
with safetensors weights, config, generation config, tokenizer and processor files. The folder loads
with `from_pretrained` in transformers and with vLLM, and can be pushed to a hub as it is.

    python merge.py runs/NAME/checkpoints/step_80 --out qwen2.5-vl-3b-emor3
    python merge.py runs/NAME --out merged           # the newest complete checkpoint of a run
    python merge.py CKPT --out merged --dtype bfloat16

Runs in one process on CPU (no torchrun): the shards are read with `no_dist=True`. Memory: the
full model once, in the chosen dtype plus fp32 while loading.
"""

import argparse
import json
import shutil
import warnings
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def find_checkpoint(path):
    """A checkpoint folder, or the newest complete one (by step) of a run folder."""
    path = Path(path)
    if (path / "trainer_state.json").exists():
        return path
    import train_grpo  # one definition of "complete checkpoint": the trainer's
    steps = train_grpo.checkpoint_dirs(path)
    if not steps:
        raise SystemExit(f"{path}: neither a checkpoint (no trainer_state.json) nor a run with complete "
                         f"checkpoints under {path / 'checkpoints'}")
    return steps[-1]


def load_trained_model(checkpoint, base_model=None, dtype=None):
    """The base model's architecture with the checkpoint's weights, on CPU. Returns (model, base)."""
    import torch.distributed.checkpoint as dcp
    from transformers import AutoModelForImageTextToText

    checkpoint = find_checkpoint(checkpoint)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    base = base_model or state["config"]["model"]
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32, use_safetensors=True)
    # The checkpoint holds the model under "model" (and the optimizer, not read here) with the
    # same parameter names as this model's state_dict; DCP reshards from any world size.
    model_state = model.state_dict()
    with warnings.catch_warnings():  # "torch.distributed is ... uninitialized": single-process on purpose
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load({"model": model_state}, checkpoint_id=str(checkpoint), no_dist=True)  # fills tensors in place
    model.load_state_dict(model_state)
    if model.config.tie_word_embeddings:
        model.tie_weights()
    config_dtype = getattr(model.config, "dtype", None) or torch.float32
    target = DTYPES[dtype] if dtype else (config_dtype if isinstance(config_dtype, torch.dtype) else DTYPES[str(config_dtype)])
    return model.to(target), base, checkpoint


def merge(checkpoint, out, base_model=None, dtype=None, overwrite=False):
    """Write the Hugging Face folder for `checkpoint` into `out` (atomically: a .tmp folder renamed)."""
    from transformers import AutoProcessor, GenerationConfig

    out = Path(out)
    if out.exists() and not overwrite:
        raise SystemExit(f"{out} exists; pass --overwrite to replace it")
    model, base, checkpoint = load_trained_model(checkpoint, base_model, dtype)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    AutoProcessor.from_pretrained(base).save_pretrained(tmp)  # tokenizer, chat template, processors
    try:
        GenerationConfig.from_pretrained(base).save_pretrained(tmp)
    except OSError:  # a base without generation_config.json: keep the one save_pretrained wrote
        pass
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    (tmp / "emo_r3_training.json").write_text(json.dumps(
        {"checkpoint": str(checkpoint), "step": state["step"], "base_model": base, "config": state["config"]}, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


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
    out = merge(args.checkpoint, args.out, args.base_model, args.dtype, args.overwrite)
    print(f"merged {find_checkpoint(args.checkpoint)} -> {out}")


if __name__ == "__main__":
    main()
