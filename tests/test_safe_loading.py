"""Safe loading: weights only from safetensors or torch.distributed.checkpoint, no pickled code, no
remote code unless asked for, and a documented warning that --reward-fn runs the user's code."""

import ast
from pathlib import Path

import pytest
import torch

import evaluate
import sft
import rollout
import train_grpo

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for p in REPO.glob("**/*.py") if not {".venv", ".trl-site", ".cache"} & set(p.parts))


def calls(name):
    """(file, line, keywords) of every call to something.`name`(...) in the project's Python files."""
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name:
                keywords = {k.arg: k.value.value for k in node.keywords if isinstance(k.value, ast.Constant)}
                yield f"{path.relative_to(REPO)}:{node.lineno}", ast.unparse(node.func.value), keywords


def test_every_torch_load_is_weights_only():
    """A torch.load without weights_only=True unpickles arbitrary code from a checkpoint file."""
    found = [(where, kw) for where, obj, kw in calls("load") if obj == "torch"]
    assert found  # the scan sees the trainer's RNG-state load
    assert [where for where, kw in found if kw.get("weights_only") is not True] == []


def test_model_weights_load_only_from_safetensors(tiny_model_dir, processor, tmp_path):
    """A model folder holding only a pickled pytorch_model.bin would be unpickled by the trainer."""
    loads = [(where, kw) for where, obj, kw in calls("from_pretrained") if obj == "AutoModelForImageTextToText"
             and not where.startswith("tests/")]
    assert {w.split(":")[0] for w, _ in loads} == {"common.py", "rollout.py", "checkpoint.py"}
    assert [w for w, kw in loads if kw.get("use_safetensors") is not True] == []
    # and for real: the HF engine (the same call as load_model) refuses a .bin-only folder
    import shutil

    from safetensors.torch import load_file
    shutil.copytree(tiny_model_dir, tmp_path / "bin-only", ignore=shutil.ignore_patterns("*.safetensors*"))
    torch.save(load_file(Path(tiny_model_dir) / "model.safetensors"), tmp_path / "bin-only" / "pytorch_model.bin")

    with pytest.raises(OSError, match="safetensors"):
        rollout.HFEngine(str(tmp_path / "bin-only"), processor, torch.device("cpu"), 0)
    rollout.HFEngine(str(tiny_model_dir), processor, torch.device("cpu"), 0)  # the safetensors folder loads


def test_remote_code_is_off_unless_asked_and_reward_fn_is_documented(capsys):
    """Loading a model folder would run Python shipped with it, or --reward-fn would run code unannounced."""
    for config in (train_grpo.Config, sft.Config, evaluate.Config):
        assert config().trust_remote_code is False
    assert train_grpo.parse_config(["--demo", "--trust-remote-code"]).trust_remote_code is True
    with pytest.raises(SystemExit):
        train_grpo.parse_config(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--reward-fn" in help_text and "RUNS that file's code" in help_text
    assert "--trust-remote-code" in help_text
    readme = (REPO / "README.md").read_text()
    assert "`--reward-fn path.py:function` imports and runs that file" in " ".join(readme.split())
