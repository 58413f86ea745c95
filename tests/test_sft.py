"""sft.py (Cold-Start-Emo) and the demo's story: cold start, then EMO-R3 GRPO that visibly learns."""

import json

from test_train import read_jsonl, torchrun


def test_cold_start_then_grpo_learns(tiny_model_dir, tmp_path):
    """sft.py would not train, its checkpoint would not start train_grpo.py, or the demo would not learn.

    A shortened demo: the tiny model, the 4-class demo data, a 60-step cold start, 40 GRPO steps.
    """
    import tiny
    demo = tiny.make_demo_dataset(tmp_path / "demo", num_train=128, num_test=16, seed=0)
    sft_out, grpo_out = tmp_path / "cold-start", tmp_path / "grpo"
    torchrun("sft.py", "--demo", "--model", tiny_model_dir, "--train-files", demo / "train.jsonl",
             "--output-dir", sft_out, "--max-steps", "60")
    losses = [m["loss"] for m in read_jsonl(sft_out / "metrics.jsonl")]
    assert len(losses) == 60 and sum(losses[-5:]) / 5 < 0.25 * sum(losses[:5]) / 5, losses
    checkpoint = sft_out / "checkpoints" / "step_60"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["config"]["model"] == str(tiny_model_dir)

    torchrun("train_grpo.py", "--demo", "--model", tiny_model_dir, "--train-files", demo / "train.jsonl",
             "--val-files", "", "--init-from", checkpoint, "--output-dir", grpo_out, "--max-steps", "40",
             "--save-freq", "0")
    metrics = read_jsonl(grpo_out / "metrics.jsonl")
    accuracy = [m["reward/accuracy"] for m in metrics]
    fmt = [m["reward/format"] for m in metrics]
    first, last = sum(accuracy[:10]) / 10, sum(accuracy[-10:]) / 10
    # the cold start taught the format (most rollouts are well formed from the first step) ...
    assert sum(fmt[:5]) / 5 > 0.5, fmt
    # ... and GRPO, not the cold start, teaches the emotions: accuracy starts near chance (0.25) and rises
    assert first < 0.35 and last > first + 0.12, accuracy
    assert (grpo_out / "curves.png").exists()
