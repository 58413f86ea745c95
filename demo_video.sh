#!/usr/bin/env bash
# The video demo: R1-Omni's recipe and EMO-R3 on clips whose emotion shows only over time, on the tiny
# model, CPU, in about 20 minutes.
#   1. the tiny Qwen2.5-VL and the video demo data (tiny.py video-demo: 8-frame clips, 56x56, whose
#      colour turns from one to another; red then blue is anger, blue then red sadness, ...: one frame
#      leaves two emotions possible, the order decides)
#   2. per arm, a format-only cold start (sft.py: targets given to random rows), then GRPO from it
#      (train_grpo.py) and an evaluation of both on the 64 held-out clips:
#        r1-omni  --recipe r1-omni (its prompt, reward, no re-ask, its trainer's settings), the demo's lr and length
#        emo-r3   the SET template and the reflective reward, the re-asks shown the same clip
#   3. a summary table of the two arms, before and after GRPO
# Everything lands in $OUT (default runs/video-demo-DATE-TIME). Other arguments go to train_grpo.py.
# `bash demo_video.sh --help` prints this comment.
set -euo pipefail
if [ "${1:-}" = "--help" ]; then awk 'NR > 1 { if (!/^#/) exit; sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; exit 0; fi
cd "$(dirname "${BASH_SOURCE[0]}")"
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/video-demo-$(date +%Y%m%d-%H%M%S)}
TORCHRUN="$PY -m torch.distributed.run --nproc_per_node 2"
export OMP_NUM_THREADS=1 VLLM_LOGGING_LEVEL=ERROR VLLM_NO_USAGE_STATS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
DATA=.cache/video-demo
VIDEO="--train-files $DATA/train.jsonl"
EVAL="--allow-cpu --data $DATA/test.jsonl --names video --max-response-length 64 --video-min-pixels 3136 --video-max-pixels 12544 --video-max-frames 16"
# name | sft.py flags | train_grpo.py flags | evaluate.py flags
# Both cold starts imitate the same reasoning, each in its arm's layout (tiny.video_demo_response): the
# colours in order, then the emotion; R1-Omni's is the rows' response_r1_omni column, EMO-R3's their response
# R1-Omni's GRPO is its whole recipe (recipes/r1-omni.flags) with the demo's own sizes on top: the tiny model,
# trained from random weights, needs the demo's lr (1e-3, not 1e-6), and 64-token responses keep the CPU run short
ARM_FLAGS_r1_omni=("--template r1-omni --response-key response_r1_omni" "--recipe r1-omni --lr 1e-3 --max-response-length 64" "--template r1-omni")
ARM_FLAGS_emo_r3=("" "" "--reflect")

echo "== 1/3 tiny model and video demo data"
$PY tiny.py
$PY tiny.py video-demo
for arm in r1-omni emo-r3; do
    flags="ARM_FLAGS_${arm//-/_}[@]"
    flags=("${!flags}")
    echo "== 2/3 $arm: cold start (sft.py ${flags[0]})"
    $TORCHRUN sft.py --demo $VIDEO ${flags[0]} --output-dir "$OUT/cold-start-$arm"
    $PY evaluate.py --model "$OUT/cold-start-$arm" $EVAL ${flags[2]} --out "$OUT/eval-cold-start-$arm" --method "$arm cold start"
    echo "== 2/3 $arm: GRPO (train_grpo.py ${flags[1]})"
    $TORCHRUN train_grpo.py --demo $VIDEO --val-files $DATA/test.jsonl --init-from "$OUT/cold-start-$arm" \
        --output-dir "$OUT/$arm" ${flags[1]} "$@"
    $PY evaluate.py --model "$OUT/$arm" $EVAL ${flags[2]} --out "$OUT/eval-$arm" --method "$arm"
done

echo "== 3/3 summary"
$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
labels = [l for l in Path(".cache/video-demo/labels.txt").read_text().split("\n") if l]
print(f"\nVideo demo summary (64 held-out clips; chance accuracy {1 / len(labels):.2f}, 0.50 from one frame)")
print("| arm | after | accuracy | format | coherence, model-free | coherence, self-judged | consistency, self-judged yes |")
print("|---|---|---|---|---|---|---|")
for arm in ("r1-omni", "emo-r3"):
    for stage, folder in (("cold start", f"eval-cold-start-{arm}"), ("GRPO", f"eval-{arm}")):
        m = json.loads((out / folder / "video" / "metrics.json").read_text())
        extra = " | ".join(f"{m[k]:.3f}" if k in m else "-" for k in
                           ("reasoning_coherent_rate", "reflect_text_matches_answer", "reflect_image_yes"))
        print(f"| {arm} | {stage} | {m['accuracy']:.3f} | {m['format_rate']:.3f} | {extra} |")
print("\nformat: R1-Omni's <think>..</think><answer>..</answer> for r1-omni, the SET layout for emo-r3;"
      "\nthe reflection columns exist only for EMO-R3 (R1-Omni's recipe has no re-ask)")
for arm in ("r1-omni", "emo-r3"):
    print(f"  {arm}: curves {out / arm / 'curves.png'}, samples {out / arm / 'samples.jsonl'}")
PY
