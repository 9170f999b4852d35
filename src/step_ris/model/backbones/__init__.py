"""Backbones with five taps F1..F5 at strides 4, 4, 8, 8, 8 (Sec. 3.1).

Every backbone is a :class:`Backbone` (``base.py``): ``forward(images (B, 3, S, S))`` returns a
list of five feature maps, level ``l`` of shape ``(B, tap_channels[l], ceil(S / tap_strides[l]),
...)``. Images are ImageNet-normalised (mean/std), the sample contract of the data layer.

* :class:`ResNetBackbone` (18 / 50 / 101, ``resnet.py``): torchvision ResNet at output stride 8
  (layer3 dilation 2, layer4 dilation 4). Taps: stem after max-pool, layer1 ... layer4.
* :class:`EfficientNetLite0Backbone` (``efficientnet.py``): EfficientNet-Lite0 made output
  stride 8 by dilation (see its docstring for the taps).

Weights (``weights=``, ``weights.py``): ``None`` (random init), ``'imagenet'``,
``'deeplabv3-coco'`` (ResNet-50 / 101: the backbone of torchvision's COCO-trained DeepLabV3), or
a local file path (state dict in ``.pth`` / ``.pt`` / ``.safetensors``). Named weights are
looked up in the torch hub cache (``torch.hub.get_dir()/checkpoints/<file>``) first, so they
work offline once the file is there; a failed download raises an error naming the URL and the
expected cache path.

:data:`BACKBONES` is the one list of backbone names: a plain dict from name to builder
(``builder(weights=None, *, frozen_bn=True) -> Backbone``). ``config.Backbone`` lists the same
names (tests/test_registries.py checks that they agree).
"""

from __future__ import annotations

from collections.abc import Callable

from .base import Backbone, freeze
from .efficientnet import EfficientNetLite0Backbone, build_efficientnet_lite0
from .resnet import ResNetBackbone, build_resnet18, build_resnet50, build_resnet101
from .weights import load_backbone_state, read_state_dict

__all__ = [
    "BACKBONES",
    "BACKBONE_NAMES",
    "Backbone",
    "EfficientNetLite0Backbone",
    "ResNetBackbone",
    "build_backbone",
    "freeze",
    "load_backbone_state",
    "read_state_dict",
]

# name -> builder(weights: str | None = None, *, frozen_bn: bool = True) -> Backbone
BACKBONES: dict[str, Callable[..., Backbone]] = {
    "resnet101": build_resnet101,
    "resnet50": build_resnet50,
    "resnet18": build_resnet18,
    "efficientnet_lite0": build_efficientnet_lite0,
}

BACKBONE_NAMES: tuple[str, ...] = tuple(BACKBONES)  # kept for callers of the former module


def build_backbone(name: str, weights: str | None = None, *, frozen_bn: bool = True) -> Backbone:
    """The backbone registered as ``name`` in :data:`BACKBONES`.

    Args:
        name: 'resnet101', 'resnet50', 'resnet18' or 'efficientnet_lite0'.
        weights: None, 'imagenet', 'deeplabv3-coco' (ResNet-50 / 101) or a local file path.
        frozen_bn: keep BN layers in eval mode during training (default True).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; allowed: {', '.join(BACKBONES)}")
    return BACKBONES[name](weights, frozen_bn=frozen_bn)
