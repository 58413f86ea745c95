#!/usr/bin/env bash
# The CPU demo, the README's main job: the whole EMO-R3 story on the tiny model in a few minutes.
#   1. build the tiny Qwen2.5-VL and the demo data (images whose emotion is their dominant colour)
#   2. Cold-Start-Emo (sft.py): a format-only warm-up, so the model writes the SET structure
#      (<step1>..<step3>, \boxed{}) and answers the reflection questions, but guesses the emotion
#   3. evaluate: format rate high, accuracy near chance
#   4. EMO-R3 GRPO with the reflective reward (train_grpo.py), starting from the cold start
#   5. evaluate again: accuracy well above chance
# Everything lands in $OUT (default runs/demo-DATE-TIME). Extra arguments go to train_grpo.py.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/demo-$(date +%Y%m%d-%H%M%S)}
TORCHRUN="$PY -m torch.distributed.run --nproc_per_node 2"
export OMP_NUM_THREADS=1 VLLM_LOGGING_LEVEL=ERROR VLLM_NO_USAGE_STATS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
EVAL="--allow-cpu --data .cache/demo/test.jsonl --names demo --min-pixels 3136 --max-pixels 12544 --max-response-length 64 --reflect"

echo "== 1/5 tiny model and demo data"
$PY tiny.py
$PY tiny.py demo
echo "== 2/5 cold start (sft.py)"
$TORCHRUN sft.py --demo --output-dir "$OUT/cold-start"
echo "== 3/5 evaluate the cold start"
$PY evaluate.py --model "$OUT/cold-start" $EVAL --out "$OUT/eval-cold-start" --method cold-start
echo "== 4/5 EMO-R3 GRPO (train_grpo.py)"
$TORCHRUN train_grpo.py --demo --init-from "$OUT/cold-start" --output-dir "$OUT/grpo" "$@"
echo "== 5/5 evaluate after GRPO"
$PY evaluate.py --model "$OUT/grpo" $EVAL --out "$OUT/eval-grpo" --method emo-r3

$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
labels = (Path(".cache/demo/labels.txt").read_text().split("\n"))
chance = 1 / len([l for l in labels if l])
print(f"\nEMO-R3 demo summary (held-out demo test set, chance = {chance:.2f})")
for stage in ("cold-start", "grpo"):
    m = json.loads((out / f"eval-{stage}" / "demo" / "metrics.json").read_text())
    print(f"  after {stage:10s}  accuracy {m['accuracy']:.3f}  format {m['format_rate']:.3f}  "
          f"coherence {m.get('reflect_text_matches_label', 0):.3f}  consistency yes {m.get('reflect_image_yes', 0):.3f}")
print(f"\n  curves:   {out / 'grpo' / 'curves.png'}")
print(f"  samples:  {out / 'grpo' / 'samples.jsonl'}")
print(f"  reports:  {out / 'eval-cold-start' / 'demo' / 'report.md'}, {out / 'eval-grpo' / 'demo' / 'report.md'}")
PY
