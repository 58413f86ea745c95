"""Do a demo model's two judges read? The diagnostics behind BENCHMARKS.md's "The demo's cold start" sections.

EMO-R3's reflective reward is only as honest as the policy's answers to its two re-asks. On the demo
(tiny.py: each emotion is a dominant colour; step 1 names a colour, step 2 an emotion) a judge can answer
without reading what it is asked about: the coherence judge can name the emotion of step 1's colour
instead of the one step 2 names, the consistency judge can say "yes" whatever the image. Two measures:

- probe (a model, --model): the re-asks on crafted texts, through the trainer's own request builder
  (rollout.reask_requests) and the HF engine, sampling as the trainer does (0.6, top-p 0.95,
  8 tokens). Coherence: every ordered pair of two different emotions X, Y as "mostly <colour of X>" +
  "would feel Y" (twice): `coherence_reads_step2` is the share answered Y, `coherence_reads_colour` the
  share answered X. Consistency: --images held-out images, each with the step 1 of its own colour and of
  another: `yes_right` / `yes_wrong` are the "yes" rates. A judge that reads: high / low / high / low.
- predictions (--predictions, evaluate.py's predictions.jsonl of a --reflect run): the same questions on
  the model's own rollouts: how often the coherence answer is step 2's emotion, step 1's colour's emotion,
  the boxed answer; how often step 2 and the box are the emotion of step 1's colour; "yes" counts for a
  right and for a wrong colour.

--model takes a Hugging Face folder or a training checkpoint (a run folder or RUN/checkpoints/step_N,
exported to a temporary folder first). Prints one JSON object.

    .venv/bin/python bench/demo_judges.py --model runs/demo-X/cold-start
    .venv/bin/python bench/demo_judges.py --predictions runs/demo-X/eval-cold-start/demo/predictions.jsonl
"""

import argparse
import collections
import json
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tiny  # noqa: E402

EMOTION_OF_COLOUR = {colour: label for label, colour in tiny.DEMO_COLOUR_NAMES.items()}


def read_steps(response):
    """(the emotion of step 1's colour, step 2's emotion word) of a demo response; None where missing."""
    colour = re.search(r"mostly (.*?)\.", response or "")
    step2 = re.search(r"feel (\w+)", response or "")
    return (EMOTION_OF_COLOUR.get(colour.group(1)) if colour else None), (step2.group(1) if step2 else None)


def rate(hits, total):
    return round(hits / total, 3) if total else None


def analyse_predictions(rows):
    """The judges and the reasoning on a model's own rollouts (evaluate.py --reflect prediction rows)."""
    n = len(rows)
    counts = dict.fromkeys(["judge_is_step2", "judge_is_colour", "judge_is_box", "step2_is_colour", "box_is_colour",
                            "colour_is_image"], 0)
    yes = {True: [0, 0], False: [0, 0]}  # colour right?: [yes, asked]
    for r in rows:
        colour, step2 = read_steps(r["response"])
        box, judge = r.get("prediction"), (r.get("reflect_text") or "").strip().lower()
        counts["judge_is_step2"] += step2 is not None and judge == step2
        counts["judge_is_colour"] += colour is not None and judge == colour
        counts["judge_is_box"] += box is not None and judge == box
        counts["step2_is_colour"] += step2 is not None and step2 == colour
        counts["box_is_colour"] += box is not None and box == colour
        right = colour == r["label"]
        counts["colour_is_image"] += right
        yes[right][0] += "yes" in (r.get("reflect_image") or "").lower()
        yes[right][1] += 1
    return {**{k: rate(v, n) for k, v in counts.items()}, "count": n,
            "yes_right": f"{yes[True][0]}/{yes[True][1]}", "yes_wrong": f"{yes[False][0]}/{yes[False][1]}"}


def probe(model, data_file=None, images=32, seed=0):
    """The two judges of `model` (an HF folder) on crafted texts and the images of `data_file` (default: the
    demo's held-out rows, built if missing); see the module docstring."""
    import torch
    from transformers import AutoProcessor

    import data
    import rewards
    from engines import HFEngine
    from rollout import reask_requests

    processor = AutoProcessor.from_pretrained(model)
    tokenizer = processor.tokenizer
    image_pad, video_pad = tokenizer.convert_tokens_to_ids(["<|image_pad|>", "<|video_pad|>"])
    engine = HFEngine(model, processor, torch.device("cpu"), image_pad, video_pad_id=video_pad)
    engine.wake_up(["weights", "kv_cache"])
    labels = list(tiny.DEMO_LABELS)

    def ask(kind, texts, visuals):
        requests = reask_requests(processor, rewards.REASKS[kind], texts, visuals, labels, 512)
        outs = engine.generate(requests, 1, 0.6, 0.95, 8, seed)
        return [tokenizer.decode(o[0][0], skip_special_tokens=True).strip().lower() for o in outs]

    pairs = [(x, y) for x in labels for y in labels if x != y] * 2
    answers = ask("text", [tiny.demo_response(x, feel=y) for x, y in pairs], [[]] * len(pairs))
    dataset = data.PromptDataset(str(data_file or tiny.make_demo_dataset() / "test.jsonl"), processor, min_pixels=56 * 56,
                                 max_pixels=112 * 112, max_prompt_length=512)
    texts, visuals, right = [], [], []
    for k in range(min(images, len(dataset))):
        label = dataset.rows[k].answer
        other = labels[(labels.index(label) + 1 + k % 3) % len(labels)]
        for colour_of, is_right in ((label, True), (other, False)):
            texts.append(tiny.demo_response(colour_of))
            visuals.append((list(dataset[k].images), []))
            right.append(is_right)
    said_yes = ["yes" in a for a in ask("image", texts, visuals)]
    return {"coherence_reads_step2": rate(sum(a == y for a, (x, y) in zip(answers, pairs)), len(pairs)),
            "coherence_reads_colour": rate(sum(a == x for a, (x, y) in zip(answers, pairs)), len(pairs)),
            # per emotion step 2 names: a judge can read three emotions and not the fourth
            "coherence_reads_step2_by_emotion": {e: rate(sum(a == y for a, (x, y) in zip(answers, pairs) if y == e),
                                                         sum(y == e for x, y in pairs)) for e in labels},
            "coherence_answers": dict(sorted(collections.Counter(answers).items())),
            "yes_right": rate(sum(y for y, r in zip(said_yes, right) if r), right.count(True)),
            "yes_wrong": rate(sum(y for y, r in zip(said_yes, right) if not r), right.count(False))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF folder, run folder or RUN/checkpoints/step_N of a demo model")
    parser.add_argument("--predictions", help="evaluate.py predictions.jsonl of a --reflect run on the demo")
    parser.add_argument("--images", type=int, default=32, help="held-out images for the consistency probe")
    parser.add_argument("--data", help="the demo rows whose images the probe shows (default: .cache/demo/test.jsonl)")
    args = parser.parse_args(argv)
    if not (args.model or args.predictions):
        parser.error("give --model, --predictions or both")
    result = {}
    if args.predictions:
        rows = [json.loads(line) for line in Path(args.predictions).read_text().splitlines() if line.strip()]
        result["predictions"] = analyse_predictions(rows)
    if args.model:
        model = Path(args.model)
        if (model / "config.json").exists() and not (model / "checkpoints").exists():
            result["probe"] = probe(str(model), args.data, args.images)
        else:  # a training checkpoint: export it first
            from checkpoint import export_hf_folder
            with tempfile.TemporaryDirectory() as tmp:
                hf = export_hf_folder(str(model), Path(tmp) / "hf", None, None, False)
                result["probe"] = probe(str(hf), args.data, args.images)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
