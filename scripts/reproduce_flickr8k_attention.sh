#!/usr/bin/env bash
# Reproduce issue 16's hard-attention studies on Flickr8k (eval/flickr8k/attention-study/: lite2/, lite2-flip-k80/,
# lite2-tune/ and lite2-tune-ema/, each with its README.md): WS-RAM with K = 40 (and K = 20, K = 80) against
# soft attention on EfficientNet-Lite2 grids, with and without flip augmentation, with the backbone frozen
# or its last six blocks trained, three seeds each, on any machine with a CUDA GPU.
#
# usage: bash scripts/reproduce_flickr8k_attention.sh FLICKR8K_ROOT CACHE_DIR OUT_DIR
#   FLICKR8K_ROOT  the Flickr8k release folder (Flicker8k_Dataset/, Flickr8k_text/), see data/README.md
#   CACHE_DIR      where the Lite2 block-20 feature cache goes (int8, about 150 MB; reused if there), its
#                  mirrored twin when a flip arm is asked for, and the block-14 cache (about 190 MB) when a
#                  tune arm is
#   OUT_DIR        the runs (OUT_DIR/runs/ARM-sSEED), their decodes, spreads, pictures and the table
#
# From the repository root, after `pip install -e .`. Steps:
#   1. the feature caches the arms read (`captioner extract`, seconds on a GPU; `--mirror` for a flip arm);
#   2. the trainings (`captioner train`, RUNS_AT_ONCE of them in parallel on the GPU, default 3);
#   3. for each WS-RAM model: the dev and test splits decoded with the argmax, expected and marginal
#      glimpse (research/decoding_study.py), where the prior looks on the first SPREAD_IMAGES test
#      images (research/attention_spread.py), and attention pictures of the first WS-RAM seed-0 model;
#   4. where Java is installed, METEOR and the Java tokenizer (research/score_flickr8k_runs.py);
#   5. the table over seeds (research/seed_table.py) to OUT_DIR/table.md and table.json, and the kinds of
#      words each arm gets right (research/word_classes.py) to OUT_DIR/word_classes.md and .json.
# Arms: soft, k20, k40, k80 (WS-RAM with K samples), softflip, k40flip (data.flip_probability 0.5),
# softtune, k40tune, k40tuneq (blocks 15-20 trained on a block-14 cache, model.encoder.tune_to; k40tuneq
# with the proposal reading sg(F), estimator.proposal_encoder_gradient=false, as its config sets), k40q (the
# frozen grid with the proposal reading sg(F)), and with Polyak averaging of the weights (train.ema_decay
# 0.999, the averaged weights validated, kept and scored): softema, k40qema, softtuneema, k40tuneqema (the
# tune configs now set it: softtuneema and k40tuneqema are those configs as they are, while softtune,
# k40tune and k40tuneq switch it off to redo lite2-tune/'s runs; lite2-tune-ema/README.md).
# Environment: ARMS (default "soft k40 k20"), SEEDS (default "0 1 2"), RUNS_AT_ONCE (3), DEVICE (cuda),
# SPREAD_IMAGES (200), DECODES (yes; "no" skips step 3's decoding study: each run's own test decode stays),
# EXTRA_SETS (KEY=VALUE overrides for every run: lite2-tune-ema-ft03/ is model.encoder.fine_tune_lr_scale=0.3,
# lite2-tune-ema-w4/ is train.ema_warmup=4; model.encoder.glimpse_context=1 widens every glimpse to 3 x 3 cells),
# VARIANTS (several override sets in one job, sharing its feature caches: space-separated NAME:KEY=VALUE[,KEY=VALUE]
# entries, each running every arm and seed as ARM-NAME-sSEED with those overrides after EXTRA_SETS; a bare "-"
# runs the arms as they are, as ARM-sSEED; e.g. VARIANTS="- isd025:model.initial_state_dropout=0.25").
set -euo pipefail
if [ $# -ne 3 ]; then sed -n 2,36p "$0"; exit 2; fi
ROOT=$(cd "$1" && pwd); CACHE=$2; OUT=$3
ARMS=${ARMS:-soft k40 k20}; SEEDS=${SEEDS:-0 1 2}; RUNS_AT_ONCE=${RUNS_AT_ONCE:-3}; DEVICE=${DEVICE:-cuda}
SPREAD_IMAGES=${SPREAD_IMAGES:-200}; DECODES=${DECODES:-yes}
[ -d "$ROOT/Flicker8k_Dataset" ] && [ -d "$ROOT/Flickr8k_text" ] || {
  echo "$ROOT: not a Flickr8k release folder (needs Flicker8k_Dataset/ and Flickr8k_text/)" >&2; exit 2; }
for arm in $ARMS; do
  case $arm in soft|k20|k40|k80|softflip|k40flip|softtune|k40tune|k40tuneq|k40q|softema|k40qema|softtuneema|k40tuneqema) ;;
    *) echo "ARMS: unknown arm '$arm' (soft, k20, k40, k80, softflip, k40flip, softtune, k40tune, k40tuneq, k40q," \
            "softema, k40qema, softtuneema, k40tuneqema)" >&2
       exit 2 ;; esac
done
VARIANTS=${VARIANTS:--}
unset "${!VSETS_@}"  # none from the caller's environment
NAMES=""  # the variants' names, in order; each one's --set overrides are in the exported VSETS_NAME (VSETS__ for -)
for entry in $VARIANTS; do
  name=${entry%%:*}; sets=${entry#*:}; var=VSETS_${name/-/_}
  if [ -n "${!var+x}" ]; then
    echo "VARIANTS: '$entry' names a variant given before (each name once)" >&2; exit 2
  elif [ "$entry" = - ]; then
    export VSETS__=""; NAMES="$NAMES -"; continue
  elif [ "$name" = "$entry" ] || ! [[ $name =~ ^[A-Za-z0-9]+$ ]] || [ -z "$sets" ]; then
    echo "VARIANTS: '$entry' is not NAME:KEY=VALUE[,KEY=VALUE] (NAME letters and digits), or '-'" >&2; exit 2
  fi
  overrides=""
  IFS=, read -ra pairs <<< "$sets"
  for pair in "${pairs[@]}"; do
    [[ $pair == *=* ]] || { echo "VARIANTS: '$pair' in '$entry' is not KEY=VALUE" >&2; exit 2; }
    overrides="$overrides --set $pair"
  done
  export "$var=$overrides"; NAMES="$NAMES $name"
done
run_name() { if [ "$2" = - ]; then echo "$1"; else echo "$1-$2"; fi; }  # arm, variant -> the run's name without -sSEED
sets_of() { local var=VSETS_${1/-/_}; echo "${!var}"; }  # variant -> its --set overrides
export -f run_name sets_of
BASE="--set data.root=$ROOT --set train.device=$DEVICE"
for extra in ${EXTRA_SETS:-}; do BASE="$BASE --set $extra"; done
SETS="--set data.features=$CACHE/lite2-block20 $BASE"
TUNE="--set data.features=$CACHE/lite2-block14 $BASE"
FLIP="--set data.flip_probability=0.5 --set data.mirrored_features=$CACHE/lite2-block20-mirror"
EMA="--set train.ema_decay=0.999"
NOEMA="--set train.ema_decay=0"  # the tune configs average the weights since lite2-tune-ema/; lite2-tune/'s runs did not
SGF="--set estimator.proposal_encoder_gradient=false"
args() {  # arm -> the config and its overrides
  case $1 in
    soft) echo "--config eval/flickr8k/soft-lite2.yaml $SETS" ;;
    k40) echo "--config eval/flickr8k/wsram-lite2-k40.yaml $SETS" ;;
    k20) echo "--config eval/flickr8k/wsram-lite2-k40.yaml $SETS --set estimator.samples=20" ;;
    k80) echo "--config eval/flickr8k/wsram-lite2-k40.yaml $SETS --set estimator.samples=80" ;;
    softflip) echo "--config eval/flickr8k/soft-lite2.yaml $SETS $FLIP" ;;
    k40flip) echo "--config eval/flickr8k/wsram-lite2-k40.yaml $SETS $FLIP" ;;
    softtune) echo "--config eval/flickr8k/soft-lite2-tune.yaml $TUNE $NOEMA" ;;
    k40tune) echo "--config eval/flickr8k/wsram-lite2-k40-tune.yaml $TUNE $NOEMA --set estimator.proposal_encoder_gradient=true" ;;
    k40tuneq) echo "--config eval/flickr8k/wsram-lite2-k40-tune.yaml $TUNE $NOEMA" ;;
    k40q) echo "--config eval/flickr8k/wsram-lite2-k40.yaml $SETS $SGF" ;;
    softema) echo "--config eval/flickr8k/soft-lite2.yaml $SETS $EMA" ;;
    k40qema) echo "--config eval/flickr8k/wsram-lite2-k40.yaml $SETS $SGF $EMA" ;;
    softtuneema) echo "--config eval/flickr8k/soft-lite2-tune.yaml $TUNE $EMA" ;;
    k40tuneqema) echo "--config eval/flickr8k/wsram-lite2-k40-tune.yaml $TUNE $EMA" ;;
  esac
}
export -f args; export SETS TUNE FLIP EMA NOEMA SGF OUT
for variant in $NAMES; do for arm in $ARMS; do  # every run's settings, checked before anything is written
  name=$(run_name "$arm" "$variant")
  captioner train $(args "$arm") $(sets_of "$variant") --out "$OUT/runs/$name-s0" --check-config > /dev/null \
    || { echo "VARIANTS: the settings of $name are refused (above)" >&2; exit 2; }
done; done
mkdir -p "$CACHE" "$OUT/runs"
[ "$DEVICE" = cpu ] || python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU: this script trains on a GPU')"

case " $ARMS " in *\ soft\ *|*\ k20\ *|*\ k40\ *|*\ k80\ *|*flip\ *|*\ k40q\ *|*\ softema\ *|*\ k40qema\ *)
  captioner extract $(args k40) --device "$DEVICE" --storage int8 --quiet ;; esac
case " $ARMS " in *flip\ *) captioner extract $(args k40flip) --device "$DEVICE" --storage int8 --mirror --quiet ;; esac
case " $ARMS " in *tune*) captioner extract $(args k40tuneq) --device "$DEVICE" --storage int8 --quiet ;; esac

jobs=""
for variant in $NAMES; do for arm in $ARMS; do for seed in $SEEDS; do
  [ -f "$OUT/runs/$(run_name "$arm" "$variant")-s$seed/metrics.json" ] || jobs="$jobs $arm:$variant:$seed"
done; done; done
# shellcheck disable=SC2016
printf '%s\n' $jobs | xargs -r -P "$RUNS_AT_ONCE" -I {} bash -c '
  IFS=: read -r arm variant seed <<< "$1"
  name=$(run_name "$arm" "$variant")-s$seed; run="$OUT/runs/$name"; resume=""
  [ -f "$run/checkpoints/latest.pt" ] && resume=--resume
  captioner train $(args "$arm") $(sets_of "$variant") --set train.seed=$seed --quiet $resume --out "$run" > "$OUT/runs/$name.log" 2>&1 \
    || { echo "$name failed: $OUT/runs/$name.log" >&2; exit 1; }' _ {}

sort "$ROOT/Flickr8k_text/Flickr_8k.testImages.txt" | sed -n "1,${SPREAD_IMAGES}s#^#$ROOT/Flicker8k_Dataset/#p" > "$OUT/test-images.txt"  # sed reads to the end: no SIGPIPE for sort
pictures=""; spreads=""
for variant in $NAMES; do for arm in $ARMS; do for seed in $SEEDS; do
  run="$OUT/runs/$(run_name "$arm" "$variant")-s$seed"
  if [ "${arm#soft}" != "$arm" ]; then
    [ "$DECODES" = no ] && continue
    python -m research.decoding_study "$run/model" $(args "$arm") $(sets_of "$variant") --split val --device "$DEVICE" --settings 3:argmax \
      --captions-dir "$run/decodes-val" --out "$run/decodes-val/study.json" > /dev/null
    continue
  fi
  for split in val test; do
    [ "$DECODES" = no ] && break
    python -m research.decoding_study "$run/model" $(args "$arm") $(sets_of "$variant") --split $split --device "$DEVICE" \
      --settings 3:argmax,3:expected,3:marginal --captions-dir "$run/decodes-$split" \
      --out "$run/decodes-$split/study.json" > /dev/null
  done
  for mode in argmax marginal; do  # in the background; at most RUNS_AT_ONCE runs' spreads at once
    python -m research.attention_spread "$run/model" $(cat "$OUT/test-images.txt") --limit "$SPREAD_IMAGES" \
      --device "$DEVICE" --attention-mode $mode --out "$run/spread-$mode.json" > /dev/null &
    spreads="$spreads $!"
  done
  if [ $(( $(echo $spreads | wc -w) / 2 )) -ge "$RUNS_AT_ONCE" ]; then
    for pid in $spreads; do wait "$pid"; done; spreads=""  # set -e: a failed spread stops the script
  fi
  [ -z "$pictures" ] && [ "$seed" = "$(echo $SEEDS | cut -d' ' -f1)" ] && pictures=$run
done; done; done
for pid in $spreads; do wait "$pid"; done
if [ -n "$pictures" ]; then
  for mode in argmax marginal; do
    captioner caption "$pictures/model" $(head -4 "$OUT/test-images.txt") --device "$DEVICE" --attention-mode $mode \
      --attention-dir "$pictures/pictures/$mode" --output "$pictures/pictures/$mode/captions.jsonl" > /dev/null
  done
fi

if command -v java > /dev/null; then
  python -m research.score_flickr8k_runs "$OUT"/runs/*/ --root "$ROOT" --summary "$OUT/test_scores_java.json"
else
  echo "no Java: METEOR left out (score later with python -m research.score_flickr8k_runs $OUT/runs/* --root $ROOT)"
fi
python -m research.seed_table "$OUT"/runs/*/ --json "$OUT/table.json" > "$OUT/table.md"
python -m research.word_classes "$OUT"/runs/*/ --root "$ROOT" --json "$OUT/word_classes.json" > "$OUT/word_classes.md"
cat "$OUT/table.md"
echo "done: $OUT/table.md, $OUT/table.json, $OUT/word_classes.md, $OUT/runs/"
