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


def test_cold_start_reflection_examples_answer_what_the_text_says():
    """The cold start would teach the judge answers the text does not support (a label its step 2 does not
    name; "yes" for a step 1 describing another colour than the image's), or tie images to emotions."""
    import random
    from types import SimpleNamespace

    import rewards
    import sft
    import tiny
    labels = ["amusement", "anger", "contentment", "sadness"]
    prompts = [SimpleNamespace(text=f"prompt {i}", images=[f"image {i}"], answer=label, response=tiny.demo_response(label))
               for i, label in enumerate(labels * 3)]
    cfg = sft.Config(reflection_examples=True, shuffle_targets=True)
    examples = sft.build_examples(prompts, labels, cfg, random.Random(0))
    colour = {label: tiny.DEMO_COLOUR_NAMES[label] for label in labels}
    coherence = [e for e in examples if not e.images]
    consistency = [e for e in examples if e.images and "Can the following text describe the image?" in e.text]
    assert len(coherence) == 12 and len(consistency) == 24
    for e in coherence:  # the answer is the emotion its step 2 names
        step2 = e.text[e.text.index("<step2>"):e.text.index("</step2>")]
        named = [label for label in labels if label in step2]
        assert named == [e.target], (e.text, e.target)
    for e in consistency:  # "yes" exactly when step 1 describes this row's image (its colour)
        row = prompts[int(e.images[0].split()[1])]
        step1 = e.text[e.text.index("<step1>"):e.text.index("</step1>")]
        assert e.target == ("yes" if colour[row.answer] in step1 else "no"), (e.text, e.target)
    assert {e.target for e in consistency} == {"yes", "no"}
    # format-only: no example pairs an image with an emotion word as its answer
    assert all(e.target not in labels for e in examples if e.images)
    assert rewards.reflection_prompt("text", "no steps", labels) == "Answer 'None'"
