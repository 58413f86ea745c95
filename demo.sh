#!/usr/bin/env bash
# The CPU demo, the README's main job: the whole EMO-R3 story on the tiny model in a few minutes.
#   1. build the tiny Qwen2.5-VL and the demo data (images whose emotion is their dominant colour)
#   2. Cold-Start-Emo (sft.py) in two phases, format-only: the model writes the SET structure
#      (<step1>..<step3>, \boxed{}) and judges step texts by reading them, but guesses the emotion.
#      Phase 1 imitates whole answers given to random rows, and its coherence examples show step 2
#      from another row (--judge-swap), so the judge must read step 2; phase 2 (from phase 1, merged)
#      makes the box a guess of its own (--shuffle-boxes): the reasoning and the answer disagree
#      3 times in 4, which is what the reflective reward has to fix
#   3. evaluate: format rate high, accuracy near chance
#   4. EMO-R3 GRPO with the reflective reward (train_grpo.py), starting from the cold start: 200 steps at a
#      KL of 0.1 (the --demo defaults are 100 and 0.05; at 0.05 the policy, which is also the judge,
#      drifts from the judge it was taught to be)
#   5. evaluate again: accuracy, model-free coherence and the self-judged reflection scores
# `bash demo.sh --ablation` runs step 4-5 for three arms from the same cold start instead (SET without
# reflection, SET + coherence, full EMO-R3) and prints one table and one picture of the three.
# Everything lands in $OUT (default runs/demo-DATE-TIME). Other arguments go to train_grpo.py.
# `bash demo.sh --help` prints this comment.
set -euo pipefail
if [ "${1:-}" = "--help" ]; then awk 'NR > 1 { if (!/^#/) exit; sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; exit 0; fi
cd "$(dirname "${BASH_SOURCE[0]}")"
ABLATION=0
if [ "${1:-}" = "--ablation" ]; then ABLATION=1; shift; fi
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/demo-$(date +%Y%m%d-%H%M%S)}
TORCHRUN="$PY -m torch.distributed.run --nproc_per_node 2"
export OMP_NUM_THREADS=1 VLLM_LOGGING_LEVEL=ERROR VLLM_NO_USAGE_STATS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
EVAL="--allow-cpu --data .cache/demo/test.jsonl --names demo --min-pixels 3136 --max-pixels 12544 --max-response-length 64 --reflect"
if [ $ABLATION = 1 ]; then  # name:reward variant; the re-ask runs in every arm, so every arm's judge is measured
    ARMS="set-no-reflection:set set-coherence:coherence emo-r3:code"
else
    ARMS="grpo:code"
fi

echo "== 1/5 tiny model and demo data"
$PY tiny.py
$PY tiny.py demo
echo "== 2/5 cold start (sft.py), phase 1: whole answers, a judge that reads step 2"
$TORCHRUN sft.py --demo --judge-swap 1.0 --output-dir "$OUT/cold-start-1"
$PY merge.py "$OUT/cold-start-1" --out "$OUT/cold-start-1-hf"
echo "== 2/5 cold start (sft.py), phase 2: the box a guess of its own"
$TORCHRUN sft.py --demo --model "$OUT/cold-start-1-hf" --judge-swap 1.0 --shuffle-boxes 1.0 --max-steps 100 \
    --output-dir "$OUT/cold-start"
echo "== 3/5 evaluate the cold start"
$PY evaluate.py --model "$OUT/cold-start" $EVAL --out "$OUT/eval-cold-start" --method cold-start
for arm in $ARMS; do
    name=${arm%%:*}
    echo "== 4/5 GRPO: $name (train_grpo.py --reward ${arm#*:})"
    $TORCHRUN train_grpo.py --demo --init-from "$OUT/cold-start" --output-dir "$OUT/$name" --reward "${arm#*:}" \
        --max-steps 200 --kl-coef 0.1 "$@"
    echo "== 5/5 evaluate $name"
    $PY evaluate.py --model "$OUT/$name" $EVAL --out "$OUT/eval-$name" --method "$name"
done

$PY - "$OUT" $ARMS <<'PY'
import json, sys
from pathlib import Path
import plots
out, arms = Path(sys.argv[1]), [a.split(":")[0] for a in sys.argv[2:]]
labels = [l for l in Path(".cache/demo/labels.txt").read_text().split("\n") if l]
print(f"\nEMO-R3 demo summary (64 held-out demo images, chance accuracy = {1 / len(labels):.2f})")
print("| after | accuracy | format | coherence, model-free | coherence, self-judged | consistency, self-judged yes |")
print("|---|---|---|---|---|---|")
for stage in ["cold-start"] + arms:
    m = json.loads((out / f"eval-{stage}" / "demo" / "metrics.json").read_text())
    print(f"| {stage} | {m['accuracy']:.3f} | {m['format_rate']:.3f} | {m.get('reasoning_coherent_rate', 0):.3f} | "
          f"{m.get('reflect_text_matches_answer', 0):.3f} | {m.get('reflect_image_yes', 0):.3f} |")
print("\nmodel-free coherence: the share of responses whose step 1-2 text names exactly one emotion, the boxed one;\n"
      "self-judged: the policy's own re-ask answers (coherence: it names the boxed emotion; consistency: it says yes)")
if len(arms) > 1:
    picture = plots.draw_arms({a: out / a / "metrics.jsonl" for a in arms}, out / "ablation.png",
                              title="EMO-R3 demo ablation")
    print(f"\n  picture:  {picture}")
for a in arms:
    print(f"  {a}: curves {out / a / 'curves.png'}, samples {out / a / 'samples.jsonl'}")
print(f"  reports:  {out}/eval-*/demo/report.md")
PY
