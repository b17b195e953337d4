#!/usr/bin/env bash
# Reproduce the Flickr8k results of the README (issue 16's runs) on any machine with a CUDA GPU.
#
# usage: bash scripts/reproduce_flickr8k.sh FLICKR8K_ROOT CACHE_DIR OUT_DIR
#   FLICKR8K_ROOT  the Flickr8k release folder (Flicker8k_Dataset/, Flickr8k_text/), see data/README.md
#   CACHE_DIR      where the EfficientNet-Lite0 feature cache goes (about 250 MB; reused if there)
#   OUT_DIR        the study's runs, summary, figures and measurements
#
# From the repository root, after `pip install -e .`. Steps (each resumes where it stopped):
#   1. the block-15 feature cache (`captioner extract`, seconds on a GPU);
#   2. the efficiency study's main arms, WS-RAM, VAR and soft attention x 3 seeds
#      (eval/efficiency/flickr8k-main.yaml; `RUNS_AT_ONCE` of them in parallel on the GPU, default 3);
#   3. each estimator's cost per update alone on the GPU (benchmarks/time_training.py);
#   4. where the prior looks on 200 test images (research/attention_spread.py), REINFORCE's signal at
#      the VAR models (research/var_signal.py), attention pictures of WS-RAM seed 0;
#   5. the summary and figures, and, where Java is installed, coco-caption scores with METEOR.
# Environment: RUNS_AT_ONCE (runs sharing the GPU, default 3), DEVICE (default cuda), EXTRA_SETS
# (space-separated KEY=VALUE overrides for every run, e.g. for a quick smoke run), SPREAD_IMAGES (200).
set -euo pipefail
if [ $# -ne 3 ]; then sed -n 2,19p "$0"; exit 2; fi
ROOT=$(cd "$1" && pwd); CACHE=$2; OUT=$3
RUNS_AT_ONCE=${RUNS_AT_ONCE:-3}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu with EXTRA_SETS="train.epochs=1 data.limit_images=24 ..." is a smoke test
[ -d "$ROOT/Flicker8k_Dataset" ] && [ -d "$ROOT/Flickr8k_text" ] || {
  echo "$ROOT: not a Flickr8k release folder (needs Flicker8k_Dataset/ and Flickr8k_text/)" >&2; exit 2; }
mkdir -p "$CACHE" "$OUT/post"
[ "$DEVICE" = cpu ] || python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU: this script trains on a GPU')"
DATA=(--set "data.root=$ROOT" --set "data.features=$CACHE/block15")
for extra in ${EXTRA_SETS:-}; do DATA+=(--set "$extra"); done

captioner extract --config eval/flickr8k/wsram.yaml "${DATA[@]}" --device "$DEVICE" --workers 8

runs=$(python -m research.efficiency_study eval/efficiency/flickr8k-main.yaml --out "$OUT" --list)
echo "$runs" | xargs -P "$RUNS_AT_ONCE" -I {} python -m research.efficiency_study eval/efficiency/flickr8k-main.yaml \
  --out "$OUT" "${DATA[@]}" --device "$DEVICE" --only {} --no-summary --save-models

python -m benchmarks.time_training eval/flickr8k/wsram.yaml eval/flickr8k/var.yaml eval/flickr8k/soft.yaml "${DATA[@]}" \
  --set "train.device=$DEVICE" \
  --updates 40 --work "$OUT/timing" --out "$OUT/timing-alone.jsonl"

head -"${SPREAD_IMAGES:-200}" "$ROOT/Flickr8k_text/Flickr_8k.testImages.txt" | sed "s#^#$ROOT/Flicker8k_Dataset/#" > "$OUT/post/test200.txt"
for name in $runs; do
  case $name in wsram-*|var-*)
    python -m research.attention_spread "$OUT/runs/$name/model" $(cat "$OUT/post/test200.txt") --limit "${SPREAD_IMAGES:-200}" \
      --device "$DEVICE" --out "$OUT/post/spread-$name.json" > /dev/null ;;
  esac
  case $name in var-*|wsram-s0)
    python -m research.var_signal "$OUT/runs/$name/model" "${DATA[@]}" --device "$DEVICE" \
      --out "$OUT/post/var-signal-$name.json" > /dev/null ;;
  esac
done
captioner caption "$OUT/runs/wsram-s0/model" $(head -6 "$OUT/post/test200.txt") --device "$DEVICE" \
  --output "$OUT/post/examples.jsonl" --attention-dir "$OUT/post/attention"

python -m research.efficiency_study eval/efficiency/flickr8k-main.yaml --out "$OUT" --summarise \
  --timing "$OUT/timing-alone.jsonl"
if command -v java > /dev/null; then
  python -m research.score_flickr8k_runs "$OUT"/runs/* --root "$ROOT" --summary "$OUT/test_scores_java.json"
else
  echo "no Java: METEOR left out (score later with python -m research.score_flickr8k_runs $OUT/runs/* --root $ROOT)"
fi
echo "done: $OUT/summary.json, $OUT/*.png, $OUT/post/"
