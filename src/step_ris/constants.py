"""Numbers shared by several layers, defined once.

``IMAGENET_MEAN`` / ``IMAGENET_STD``: the per-channel RGB normalisation of torchvision's
ImageNet models, applied by the data layer (``data.transforms.letterbox_image``, the sample
contract of docs/design.md) and assumed by the backbones (``model.backbones``).
``MASK_THRESHOLD``: a pixel belongs to the mask when its probability is >= this (predictor,
evaluation, export, demo; docs/model.md, choice 16).
``EXPLAIN_VIEWS``: the word views of the Figure-4 picture (alpha_t of Eq. 1, or the cosine of
s_t and h_j that the paper's caption describes).
"""

from __future__ import annotations

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
MASK_THRESHOLD: float = 0.5
# The no-target decision (model/match_head.py): something matches when sigmoid(match logit) >= this.
MATCH_THRESHOLD: float = 0.5
EXPLAIN_VIEWS: tuple[str, ...] = ("attention", "similarity")

__all__ = ["EXPLAIN_VIEWS", "IMAGENET_MEAN", "IMAGENET_STD", "MASK_THRESHOLD", "MATCH_THRESHOLD"]
