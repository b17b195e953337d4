#!/usr/bin/env bash
# On the lent GPU machine: the scenes demo of every estimator on CUDA (bf16 autocast), and a
# seed study of the demo configuration (fp32, to match the CPU's arithmetic), results under OUT.
# That machine's Python lacks pycocoevalcap: .device/site carries its BLEU scorer (git-ignored).
# Make it once here, then pass carry=[".device"] to the device call:
#   mkdir -p .device/site/pycocoevalcap && cp -r "$(python -c 'import os, pycocoevalcap.bleu as b;
#     print(os.path.dirname(b.__file__))')" .device/site/pycocoevalcap/
# usage: bash scripts/gpu_smoke.sh OUT_DIR [extra seed_study.py arguments]
set -uo pipefail
out=${1:?usage: gpu_smoke.sh OUT_DIR}; shift
mkdir -p "$out"
export PYTHONPATH="$PWD:$PWD/.device/site:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } | tee "$out/machine.txt"
python3 scripts/seed_study.py --out /tmp/study --device cuda "$@" 2>&1 | tee "$out/study.txt"
tar czf "$out/study.tar.gz" --exclude='*.pt' --exclude='*.safetensors' -C /tmp study
