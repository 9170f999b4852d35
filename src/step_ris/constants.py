"""Numbers shared by several layers, defined once.

``IMAGENET_MEAN`` / ``IMAGENET_STD``: the per-channel RGB normalisation of torchvision's
ImageNet models, applied by the data layer (``data.transforms.letterbox_image``, the sample
contract of docs/design.md) and assumed by the backbones (``model.backbones``).
"""

from __future__ import annotations

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD"]
