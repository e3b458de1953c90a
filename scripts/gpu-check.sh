#!/usr/bin/env bash
# DP-RDM on full-size Kandinsky 2.2 and SD-2.1-unCLIP shapes (random weights) on any CUDA machine,
# without network: images/s, peak GPU memory, retrieval + ledger vs denoising time, as JSON.
#   scripts/gpu-check.sh [--out gpu-check.json] [--size 768] [--steps 25] [--train-rdm]
#   scripts/gpu-check.sh --cpu-dry-run      # the same code path, tiny components, CPU, seconds
# Arguments go to scripts/gpu_check.py (see its --help).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && PY=.venv/bin/python
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" scripts/gpu_check.py "$@"
