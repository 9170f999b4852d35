"""The tap interface every backbone implements: five feature maps F1..F5 (Sec. 3.1).

``forward(images (B, 3, S, S))`` returns a list of five feature maps, level ``l`` of shape
``(B, tap_channels[l], ceil(S / tap_strides[l]), ...)``, with strides ``(4, 4, 8, 8, 8)``.
Images are ImageNet-normalised (``step_ris.constants``), the sample contract of the data layer.

BatchNorm: ``frozen_bn=True`` (default) keeps every BN layer in eval mode (running statistics
are never updated, the usual choice for batch-size-1 segmentation fine-tuning; the BN affine
parameters stay trainable). :func:`freeze` additionally stops all gradients.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TAP_STRIDES", "Backbone", "check_images", "freeze"]

TAP_STRIDES = (4, 4, 8, 8, 8)  # strides of F1..F5 w.r.t. the input image


class Backbone(nn.Module):
    """Base class: five taps ``F1..F5`` at strides ``tap_strides``.

    Attributes:
        tap_channels: channels of the five taps.
        tap_strides: strides of the five taps w.r.t. the input, ``(4, 4, 8, 8, 8)``.
        frozen: set by :func:`freeze`; BN stays in eval mode and no parameter needs grad.
        frozen_bn: BN layers always in eval mode (running stats fixed), parameters trainable.
    """

    tap_channels: tuple[int, ...] = ()
    tap_strides: tuple[int, ...] = TAP_STRIDES

    def __init__(self, *, frozen_bn: bool = True):
        super().__init__()
        self.frozen = False
        self.frozen_bn = bool(frozen_bn)

    def train(self, mode: bool = True) -> Backbone:
        """Like ``nn.Module.train``, but BN layers stay in eval mode if frozen / frozen_bn."""
        super().train(mode)
        if mode and (self.frozen or self.frozen_bn):
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover
        """images: (B, 3, S, S) ImageNet-normalised -> [F1, ..., F5], F_l: (B, tap_channels[l], ...)."""
        raise NotImplementedError


def freeze(backbone: Backbone) -> Backbone:
    """Freeze ``backbone`` in place: no gradients, BN in eval mode even after ``.train()``."""
    for p in backbone.parameters():
        p.requires_grad_(False)
    backbone.frozen = True
    backbone.train(backbone.training)  # re-applies the BN eval rule
    return backbone


def check_images(images: torch.Tensor) -> None:
    """Raise a ValueError unless ``images`` is a (B, 3, S, S) batch."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, S, S), got {tuple(images.shape)}")
