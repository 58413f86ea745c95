"""A training checkpoint -> the model it holds, in memory (`load_trained_model`) or as a Hugging Face folder
that transformers and vLLM load (`export_hf_folder`), in one process on the CPU, from any world size. A LoRA
checkpoint (an adapter) is put on its base and folded in. Used by merge.py and evaluate.py. Not here: the
checkpoint format itself (checkpoint.py).
"""

import json
import shutil
import warnings
from pathlib import Path

import torch

import lora
from checkpoint import DTYPES, find_checkpoint, require_loadable, saved_part


def read_into(model, checkpoint, names):
    """Fill `model`'s weights named by `names` (of saved_part) from `checkpoint`, in one process."""
    import torch.distributed.checkpoint as dcp
    model_state = model.state_dict()
    with warnings.catch_warnings():  # "torch.distributed is ... uninitialized": single-process on purpose
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load({"model": {k: v for k, v in model_state.items() if k in names}},  # fills the tensors in place
                 storage_reader=dcp.HuggingFaceStorageReader(str(checkpoint)), no_dist=True)
    model.load_state_dict(model_state)


def load_trained_model(checkpoint, base_model=None, dtype=None, keep_adapter=False):
    """The base model's architecture with the checkpoint's weights, on CPU. Returns (model, base, checkpoint).
    A LoRA checkpoint (an adapter) is put on its base (--model, with --init-from's weights when the run had
    one) and folded in, W + (alpha / r) B A in fp32; with keep_adapter the LoRA layers stay unfolded."""
    from transformers import AutoModelForImageTextToText

    checkpoint = find_checkpoint(checkpoint)
    require_loadable(checkpoint)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    base = base_model or state["config"]["model"]
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32, use_safetensors=True)
    if "lora" in state:
        start = state["lora_base"].get("init_from")
        if start:  # the base the adapter was trained on: the run's starting checkpoint
            read_into(model, Path(start), set(saved_part(model, model.state_dict())))
        lora.apply_lora(model, **state["lora"])
    # The checkpoint holds the model under "model" (and the optimizer, not read here) with the
    # same parameter names as this model's state_dict; DCP reshards from any world size.
    read_into(model, checkpoint, set(saved_part(model, model.state_dict())))
    if "lora" in state and not keep_adapter:
        lora.fold(model)
    if model.config.tie_word_embeddings:
        model.tie_weights()
    config_dtype = getattr(model.config, "dtype", None) or torch.float32
    target = DTYPES[dtype] if dtype else (config_dtype if isinstance(config_dtype, torch.dtype)
                                          else DTYPES[str(config_dtype)])
    return model.to(target), base, checkpoint


def export_hf_folder(checkpoint, out, base_model=None, dtype=None, overwrite=False):
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
        {"checkpoint": str(checkpoint), "step": state["step"], "base_model": base, "config": state["config"]},
        indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
