"""Safe loading: weights only from safetensors (model folders, and checkpoints through DCP's safetensors
reader), no pickled code, no remote code unless asked for, and a documented warning that --reward-fn runs
the user's code."""

import ast
import json
import pickle
from pathlib import Path

import pytest
import torch

import checkpoint
import export
import evaluate
import sft
import engines
import train_grpo
from test_checkpoint_io import save, trained, world_of_one

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
    assert found  # the scan sees convert_pickle_checkpoint's loads
    assert [where for where, kw in found if kw.get("weights_only") is not True] == []


def test_checkpoints_are_read_only_through_the_safetensors_reader():
    """A dcp.load without storage_reader=HuggingFaceStorageReader picks DCP's FileSystemReader, which
    unpickles the folder's .metadata: code from whoever wrote the checkpoint would run."""
    loads = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and ast.unparse(node.func.value) == "dcp" and not path.match("tests/*")):
                readers = [ast.unparse(k.value) for k in node.keywords if k.arg == "storage_reader"]
                loads.append((f"{path.relative_to(REPO)}:{node.lineno}", readers))
    assert len(loads) == 3, loads  # load_weights, load_checkpoint, load_trained_model
    assert [where for where, readers in loads
            if len(readers) != 1 or not readers[0].startswith("dcp.HuggingFaceStorageReader(")] == []


@pytest.fixture
def world(tmp_path):
    with world_of_one(tmp_path):
        yield


class Bait:
    """Unpickling this creates the file `marker`: what a crafted checkpoint would do, with worse code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_crafted_pickle_in_a_checkpoint_is_never_run(world, tmp_path):
    """A crafted checkpoint folder (DCP's default format keeps a pickle in .metadata) would run its code
    when a run resumes from it, starts from it (--init-from), or merges or evaluates it."""
    marker = tmp_path / "code-ran"
    bait = pickle.dumps(Bait(marker))
    pickle.loads(bait)
    assert marker.exists()  # the bait works when unpickled
    marker.unlink()

    # a folder of the older format, pickle only: every loader refuses it before reading a file
    run = tmp_path / "run"
    crafted = run / "checkpoints" / "step_1"
    crafted.mkdir(parents=True)
    for name in (".metadata", "__0_0.distcp", "rng_rank0.pt"):
        (crafted / name).write_bytes(bait)
    (crafted / "trainer_state.json").write_text(json.dumps({"step": 1, "config": {"model": str(tmp_path)}}))
    model, optimizer, scheduler = trained()
    for load in (lambda: checkpoint.load_weights(model, crafted),
                 lambda: checkpoint.load_checkpoint(model, optimizer, crafted, 0, scheduler),
                 lambda: export.load_trained_model(crafted),
                 lambda: checkpoint.start_or_resume(run, True),
                 lambda: checkpoint.find_checkpoint(run)):
        with pytest.raises(SystemExit, match="pickle that runs code"):
            load()
    assert not marker.exists()

    # a good checkpoint with the bait added as .metadata: it loads, and the bait is never read
    good = save(tmp_path / "good", 2)
    (good / ".metadata").write_bytes(bait)
    checkpoint.load_weights(model, good)
    assert checkpoint.load_checkpoint(model, optimizer, good, 0, scheduler) == 2
    assert not marker.exists()


def test_model_weights_load_only_from_safetensors(tiny_model_dir, processor, tmp_path):
    """A model folder holding only a pickled pytorch_model.bin would be unpickled by the trainer."""
    loads = [(where, kw) for where, obj, kw in calls("from_pretrained") if obj == "AutoModelForImageTextToText"
             and not where.startswith("tests/")]
    assert {w.split(":")[0] for w, _ in loads} == {"model.py", "engines.py", "export.py"}
    assert [w for w, kw in loads if kw.get("use_safetensors") is not True] == []
    # and for real: the HF engine (the same call as load_model) refuses a .bin-only folder
    import shutil

    from safetensors.torch import load_file
    shutil.copytree(tiny_model_dir, tmp_path / "bin-only", ignore=shutil.ignore_patterns("*.safetensors*"))
    torch.save(load_file(Path(tiny_model_dir) / "model.safetensors"), tmp_path / "bin-only" / "pytorch_model.bin")

    with pytest.raises(OSError, match="safetensors"):
        engines.HFEngine(str(tmp_path / "bin-only"), processor, torch.device("cpu"), 0)
    engines.HFEngine(str(tiny_model_dir), processor, torch.device("cpu"), 0)  # the safetensors folder loads


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
