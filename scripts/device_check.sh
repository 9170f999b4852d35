#!/usr/bin/env bash
# GPU figures for docs/benchmarks.md (issue: speed, "ready for a GPU"). Runs in under 5 minutes on
# one NVIDIA GPU: training step speed and peak memory of paper-1fold at S = 320 (fp32, bf16),
# evaluation speed, new-expression latency, and CUDA-vs-CPU parity. Needs a Python with torch
# and torchvision (the project's .venv when present); installs step-ris itself without deps.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
timeout 280 "$PY" scripts/device_check.py --device "${DEVICE:-cuda}" "$@"
