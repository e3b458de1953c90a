#!/usr/bin/env bash
# CPSample in the paper's regime on one CUDA GPU, offline: for Fashion-MNIST and MNIST-5k, a general
# model, a fine-tune on the first 200 images until ≥ 5 % of samples copy one (copy-rate stop rule),
# the CPSample classifier, and 1,000 paired plain/CPSample samples → copy rate (Wilson 95 %) and
# FID/KID (bootstrap 95 %). Every stage is cached and resumable: rerun the script after an
# interruption and it continues. Results (both datasets) in one JSON.
#   scripts/gpu-cpsample.sh [--out runs/cpsample_regime] [--results cpsample-regime.json] [--device cuda]
#   scripts/gpu-cpsample.sh --smoke --device cpu      # the same code path, tiny sizes, about a minute per dataset
#
# Sizes (experiments/cpsample_regime.py defaults), U-Net preset fmnist-1m (1.1 M parameters, 28 px):
#   general   Fashion-MNIST train[1000:] 6,000 steps × batch 128; MNIST-5k [500:] 3,000 steps × batch 128
#   finetune  first 200 images, ≤ 4,000 steps × batch 32 at lr 1e-3, a copy check every 50 steps
#             (200 DDIM-25 samples from the EMA weights), stop at ≥ 5 %
#   classifier privdiff protect train: ≤ 3,000 steps × batch 128, stop rule α = 0.001, 1,000 calibration images
#   evaluate  1,000 samples per mode, DDIM 50, 200 bootstrap replicates
# GPU budget: about 10 minutes for both datasets on one H200 is the design target; it is an estimate
# (the session that wrote this had no GPU): ~15–25 ms per training step at these widths, where a
# 1.1 M-parameter U-Net is launch-bound, puts the general models at ~2–4 min together and the rest at
# ~1–2 min per dataset. Lower --finetune-steps / --general-steps if a first run shows otherwise.
# CPU cost, measured (one thread of a busy 2-core machine, fmnist-1m, forward + backward + AdamW):
#   1.0 s per batch-32 step, 3.5 s per batch-128 step, 0.93 s per 100-image forward pass (a DDIM step).
#   So Fashion-MNIST alone is ~6 h of general training + up to ~2 h of fine-tuning with its checks +
#   ~0.5 h of sampling: ~9 h; MNIST-5k ~5.5 h; not a CPU job (use --smoke on a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && PY=.venv/bin/python
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

OUT=runs/cpsample_regime
RESULTS=cpsample-regime.json
DEVICE=cuda
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --results) RESULTS="$2"; shift 2 ;;
    --device) DEVICE="$2"; shift 2 ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done
for dataset in fashion-mnist mnist5k; do
  "$PY" experiments/cpsample_regime.py --dataset "$dataset" --device "$DEVICE" --out "$OUT" \
    --results "$RESULTS" ${EXTRA[@]+"${EXTRA[@]}"}
done
echo "results: $RESULTS"
