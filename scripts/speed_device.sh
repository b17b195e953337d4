#!/usr/bin/env bash
# The speed measurements of eval/bench/ on the GPU machine (device kind nvidia-h200-x2: the one-GPU
# numbers use its first GPU alone, the scaling numbers both), one stage per device call.
#
# Before the first call, prepare what scripts/flickr8k_device.sh's header says (.device/chunks,
# .device/Flickr8k_text, .whl, .device/site). Then, back to back (the machine keeps /root only while warm):
#   scripts/flickr8k_device.sh unpack N     N = 1..4 (carry .device/chunks/part-0N.tar, and
#                                           .device/Flickr8k_text with N = 1)
#   scripts/speed_device.sh speed           (carry .device/chunks/part-05.tar .whl .device/site) last part,
#                                           packages, Triton kernel check on the GPU, extraction from the
#                                           JPEGs (captioner extract and bench_extract), bench_train
#   scripts/speed_device.sh train           epochs of the real Trainer (bench_epoch), the full WS-RAM run
#                                           of eval/flickr8k/wsram.yaml, captioning the 1,000 test JPEGs
#   scripts/speed_device.sh startup         (carry as for speed) the one-time costs of a fresh extraction
#                                           process (scripts/extract_startup.py), then captioner extract
#   scripts/speed_device.sh quality         (carry as for speed) WS-RAM with length bucketing off (seed 0)
#                                           and on (seed 1), side by side on the one GPU
#   scripts/speed_device.sh scaling         one GPU against two: bench_train (weak scaling) and the real
#                                           Trainer under torchrun (bench_epoch, same global batch)
set -uo pipefail
stage=$1; shift
export PYTHONPATH=/root/site:$PWD PYTHONUNBUFFERED=1
DATA=/root/data/flickr8k
CACHE=/root/cache
OUT=${OUT:-/tmp/out}
ONE="env CUDA_VISIBLE_DEVICES=0"
AK=$(cat /root/attention_kernel 2>/dev/null || echo triton)
SETS=(--set data.root=$DATA --set data.features=$CACHE/block15 --set train.attention_kernel=$AK)
mkdir -p $OUT/extra
elapsed() { python3 -c "import time; print(f'{time.time() - $1:.2f}')"; }

prepare() {  # last image part, packages
  mkdir -p $DATA /root/site
  tar xf .device/chunks/part-05.tar -C $DATA
  echo "images: $(ls $DATA/Flicker8k_Dataset | wc -l)"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/site .whl/*.whl
  cp -r .device/site/pycocoevalcap /root/site/
}

extract() {  # captioner extract into $1, timed from process start to end
  start=$(date +%s.%N)
  $ONE python3 -m captioner.cli extract --config eval/flickr8k/wsram.yaml --set data.root=$DATA \
    --out $1 --device cuda --decode gpu --batch-size 256 --workers 16 --quiet 2>&1 | tail -3
  echo "captioner extract into $1 (command, process start to end): $(elapsed $start) s" | tee -a $OUT/extra/extract_command.txt
}

case $stage in
speed)
  prepare
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/extra/gpu.txt
  nproc | tee -a $OUT/extra/gpu.txt
  if $ONE timeout 240 python3 tests/test_attention_kernels.py cuda > $OUT/extra/kernel_check.txt 2>&1; then
    echo triton > /root/attention_kernel
  else
    echo inductor > /root/attention_kernel
  fi
  echo "attention kernel: $(cat /root/attention_kernel)"; tail -5 $OUT/extra/kernel_check.txt
  extract $CACHE/block15
  cp $CACHE/block15/extraction.json $OUT/extra/extraction-block15.json
  $ONE timeout 150 python3 scripts/bench_extract.py --images $DATA/Flicker8k_Dataset --out $OUT/extra/bench_extract.json \
    --device cuda --workers 16 2>&1 | grep -v -i warn | tail -8
  $ONE timeout 330 python3 scripts/bench_train.py --out $OUT/bench --flickr8k $DATA --profile --updates 20 --warmup 6 \
    --variants wsram-fast,wsram-inductor,wsram-stepwise,var,soft \
    2>&1 | grep -v -i warn | tail -16
  ;;
train)
  for spec in "wsram 3" "var 2" "soft 2"; do
    read -r name epochs <<< "$spec"
    $ONE python3 scripts/bench_epoch.py eval/flickr8k/$name.yaml "${SETS[@]}" --epochs $epochs --work /root/be-$name \
      --out $OUT/extra/epoch-$name.json 2>&1 | grep -v -i warn | tail -1 | cut -c1-400
  done
  $ONE python3 scripts/bench_epoch.py eval/flickr8k/wsram.yaml "${SETS[@]}" --set train.attention_kernel=inductor \
    --epochs 2 --work /root/be-inductor --out $OUT/extra/epoch-wsram-inductor.json 2>&1 | grep -v -i warn | tail -1 | cut -c1-300
  mkdir -p /root/runs
  start=$(date +%s.%N)
  $ONE python3 -m captioner.cli train --config eval/flickr8k/wsram.yaml "${SETS[@]}" --out /root/runs/fast-wsram \
    --quiet > /root/runs/fast-wsram.log 2>&1
  echo "captioner train wsram (command, process start to end): $(elapsed $start) s" \
    | tee $OUT/extra/train_command.txt
  grep -v -i warn /root/runs/fast-wsram.log | tail -6
  mkdir -p /root/test_images
  for f in $(cat $DATA/Flickr8k_text/Flickr_8k.testImages.txt); do ln -sf $DATA/Flicker8k_Dataset/$f /root/test_images/$f; done
  $ONE python3 scripts/bench_caption.py /root/runs/fast-wsram/model /root/test_images --device cuda \
    --batch-sizes 32 128 --limit 1000 --beam-size 3 --out $OUT/extra/bench_caption.json 2>&1 | grep -v -i warn | tail -3
  cd /root/runs && tar czf $OUT/fast-wsram.tar.gz --exclude='checkpoints' --exclude='model' fast-wsram fast-wsram.log
  ;;
scaling)
  # Self-contained after the four unpack calls (the machine may have been handed back after `train`).
  if [ ! -f $CACHE/block15/manifest.json ]; then
    prepare
    extract $CACHE/block15
    cp $CACHE/block15/extraction.json $OUT/extra/extraction-block15-first.json
    extract /root/cache-again  # a second process on the same files: how much of the first was start-up
    cp /root/cache-again/extraction.json $OUT/extra/extraction-block15-again.json
  fi
  mkdir -p $OUT/scaling
  for n in 1 2; do
    CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((n - 1))) timeout 200 torchrun --standalone --nproc-per-node $n \
      scripts/bench_train.py --out $OUT/scaling/bench-$n --flickr8k $DATA --variants wsram-fast,var \
      --updates 20 --warmup 6 > $OUT/scaling/bench-$n.log 2>&1
    tail -3 $OUT/scaling/bench-$n.log; cat $OUT/scaling/bench-$n/table.txt
  done
  for n in 1 2; do
    CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((n - 1))) timeout 120 torchrun --standalone --nproc-per-node $n \
      scripts/bench_epoch.py eval/flickr8k/wsram.yaml "${SETS[@]}" --epochs 3 --work /root/scale-$n \
      --out $OUT/scaling/epoch-wsram-$n.json > $OUT/scaling/epoch-wsram-$n.log 2>&1
    grep -v -i warn $OUT/scaling/epoch-wsram-$n.log | tail -4 | cut -c1-300
  done
  ;;
quality)
  # Does the fast path's length bucketing change what WS-RAM learns? Two runs of eval/flickr8k/wsram.yaml
  # side by side on the one GPU: bucketing off (seed 0), and bucketing on with seed 1.
  if [ ! -f $CACHE/block15/manifest.json ]; then prepare; extract $CACHE/block15; fi
  mkdir -p /root/runs
  for spec in "nobucket-seed0 train.length_bucketing=false train.seed=0" "bucket-seed1 train.seed=1"; do
    read -r name a b <<< "$spec"
    ($ONE python3 -m captioner.cli train --config eval/flickr8k/wsram.yaml "${SETS[@]}" --set $a --set $b \
      --out /root/runs/$name --quiet > /root/runs/$name.log 2>&1; echo "exit $? $name" >> /root/runs/$name.log) &
  done
  wait
  for name in nobucket-seed0 bucket-seed1; do grep -v -i warn /root/runs/$name.log | tail -4; done
  cd /root/runs && tar czf $OUT/quality-runs.tar.gz --exclude='checkpoints' --exclude='model' nobucket-seed0 bucket-seed1 *.log
  ;;
startup)
  # Where a fresh extraction process spends its time: each one-time step on its own, then the command.
  prepare
  $ONE python3 scripts/extract_startup.py $DATA/Flicker8k_Dataset --out $OUT/extra/extract_startup.json 2>&1 \
    | grep -v -i warn
  extract $CACHE/block15
  cp $CACHE/block15/extraction.json $OUT/extra/extraction-block15.json
  python3 -c "import json; d = json.load(open('$OUT/extra/extraction-block15.json')); print({k: d[k] for k in \
    ('seconds', 'images_per_second', 'first_batch_seconds', 'images_per_second_after_first_batch')})"
  ;;
*)
  echo "unknown stage $stage"; exit 2
  ;;
esac
# one archive a stage: a device call brings back at most 8 files
cd $OUT && tar czf /tmp/$stage.tar.gz . && rm -rf $OUT/* && mv /tmp/$stage.tar.gz $OUT/
