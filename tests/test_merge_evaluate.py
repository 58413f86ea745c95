"""merge.py and evaluate.py on the tiny model: checkpoint -> HF folder -> transformers / vLLM / reports."""

import json
import subprocess
import sys

import torch
from PIL import Image

from export import export_hf_folder
from test_train import REPO, read_jsonl


def test_round_trip_checkpoint_to_hf_folder(demo_run, tiny_model_dir, tmp_path):
    """A merged model would not be the trained policy (wrong names, stale tied weights, lost shards)."""
    # the shared demo (tests/conftest.py): its GRPO run's folder exported (its newest checkpoint, step_40) and
    # compared with step_40 in the FSDP2 policy, by tests/dist_merge_check.py in the same launch
    demo_run.steps.finished("merge")
    merged = demo_run.merged
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "processor_config.json", "chat_template.jinja", "emo_r3_training.json"):
        assert (merged / name).exists(), name
    assert json.loads((merged / "emo_r3_training.json").read_text())["step"] == 40  # the newest checkpoint
    out = torch.load(demo_run.merge_outputs, weights_only=True)
    assert torch.allclose(out["merged_logits"], out["policy_logits"], atol=1e-5)
    assert out["vllm_greedy"] == out["policy_greedy"]
    # and the updates really changed the model, so this compares trained weights, not the ones the run
    # started from: neither the base model nor the cold start it was initialised from
    from safetensors.torch import load_file
    trained = load_file(merged / "model.safetensors")
    cold_start = export_hf_folder(demo_run.cold_start, tmp_path / "cold-start")
    for start in (tiny_model_dir, cold_start):
        weights = load_file(start / "model.safetensors")
        assert set(weights) == set(trained)
        assert any(not torch.equal(weights[k], trained[k]) for k in weights), start


def test_evaluate_writes_every_output(tiny_model_dir, demo_dir, tmp_path, monkeypatch):
    """evaluate.py would not produce the predictions, metrics, report and picture a paper needs."""
    import evaluate
    out = tmp_path / "eval"
    # in this process, a world of one with the vLLM engine (no second import of torch and vLLM); the
    # command line itself is run below, by the re-scoring
    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT="29954").items():
        monkeypatch.setenv(key, value)
    evaluate.main(["--model", str(tiny_model_dir), "--data", str(demo_dir / "test.jsonl"), "--names", "demo",
                   "--out", str(out), "--min-pixels", "3136", "--max-pixels", "12544", "--max-response-length", "32",
                   "--reflect", "--method", "tiny", "--train-domain", "emoset", "--allow-cpu"])
    assert not torch.distributed.is_initialized()  # evaluate() ends its process group
    rows = read_jsonl(out / "demo" / "predictions.jsonl")
    assert len(rows) == 16 and [r["id"] for r in rows] == list(range(16))
    assert {"id", "label", "response", "parsed", "prediction", "format_ok", "reflect_text", "reflect_image"} <= set(rows[0])
    metrics = json.loads((out / "demo" / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "per_class", "confusion_matrix", "format_rate", "unparseable_rate",
                "reflect_text_matches_label", "reflect_image_yes"):
        assert key in metrics, key
    assert sum(map(sum, metrics["confusion_matrix"]["counts"])) == 16
    assert "| accuracy |" in (out / "demo" / "report.md").read_text()
    picture = Image.open(out / "demo" / "confusion.png")
    picture.load()
    assert picture.width > 300 and picture.height > 300
    # 8 x 9 cells are drawn: the picture is far from blank
    assert len(set(picture.convert("RGB").getdata())) > 3
    assert json.loads((out / "run.json").read_text())["method"] == "tiny"
    # re-scoring the saved predictions reproduces the metrics without a model
    rescored = subprocess.run([sys.executable, "evaluate.py", "--predictions", str(out / "demo" / "predictions.jsonl")],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    assert rescored.returncode == 0, rescored.stderr[-2000:]
    again = json.loads((out / "demo" / "metrics.rescored.json").read_text())
    assert again["accuracy"] == metrics["accuracy"] and again["confusion_matrix"] == metrics["confusion_matrix"]
