"""See-through-Text Embedding Pixelwise, STEP (Eqs. 2-4), and the concat-conv ablation.

    phi_l(v) = NL2(tanh(W_v,l * v + b_v))      (2)  3x3 atrous conv, rate 3 (spec section 5)
    psi(s)   = NL2(tanh(W_s s + b_s))          (3)
    Q(i)     = max(0, <phi(v_i), psi(s)>)      (4)

``norm="layer"`` inserts a per-sample LayerNorm on the pre-activations (over the channels of
each pixel for ``phi``, over the features for ``psi``): the paper does not say how ``v`` and
``s`` are scaled, and with raw backbone features tanh saturates and Q_t is flat (spec 5).
``norm="none"`` is the literal form. ``phi`` depends on the level only, so it is computed once
per level and reused by every fold.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of each pixel of a (B, C, H, W) map."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class CoEmbedding(nn.Module):
    """Eqs. 2-4.

    Args:
        visual_channels: ``C_l + 8`` per level (one ``phi_l`` each).
        text_dim: size of ``s_t``.
        dim: co-embedding size (1000 in the paper).
        kernel, dilation: of ``W_v`` (3, 3: atrous 3x3 rate 3; 1, 1: the 1x1 switch).
        norm: "none" (literal) or "layer".
        shared_text: one ``psi`` for all levels (default) or one per level.
    """

    def __init__(self, *, visual_channels: tuple[int, ...], text_dim: int, dim: int, kernel: int = 3,
                 dilation: int = 3, norm: str = "none", shared_text: bool = True):
        super().__init__()
        if norm not in ("none", "layer"):
            raise ValueError(f"norm={norm!r}; choose 'none' or 'layer'")
        pad = dilation * (kernel - 1) // 2
        self.visual = nn.ModuleList(
            nn.Conv2d(c, dim, kernel, padding=pad, dilation=dilation if kernel > 1 else 1) for c in visual_channels
        )
        self.visual_norm = nn.ModuleList(
            ChannelLayerNorm(dim) if norm == "layer" else nn.Identity() for _ in visual_channels
        )
        n_text = 1 if shared_text else len(visual_channels)
        self.text = nn.ModuleList(nn.Linear(text_dim, dim) for _ in range(n_text))
        self.text_norm = nn.ModuleList(nn.LayerNorm(dim) if norm == "layer" else nn.Identity() for _ in range(n_text))

    def phi(self, level: int, v: torch.Tensor) -> torch.Tensor:
        """Eq. 2. v: (B, C_l + 8, h, w) -> (B, dim, h, w), unit norm over dim."""
        return F.normalize(torch.tanh(self.visual_norm[level](self.visual[level](v))), dim=1)

    def psi(self, level: int, s: torch.Tensor) -> torch.Tensor:
        """Eq. 3. s: (B, D) -> (B, dim), unit norm."""
        k = level if len(self.text) > 1 else 0
        return F.normalize(torch.tanh(self.text_norm[k](self.text[k](s))), dim=1)

    @staticmethod
    def heatmap(phi: torch.Tensor, psi: torch.Tensor, leak: float = 0.0) -> torch.Tensor:
        """Eq. 4. phi: (B, dim, h, w); psi: (B, dim) -> Q: (B, 1, h, w) in [0, 1].

        ``leak`` > 0 replaces max(0, c) by a leaky ReLU (c for c > 0, leak * c below): with the
        literal ReLU, a sentence whose psi falls on the negative side of every pixel gets no
        gradient and Q_t stays 0 for good (measured: steps 2..T died in the first minutes of
        training a small STEP on ShapesRef, and the model settled at predicting the prior).
        """
        cos = torch.einsum("bchw,bc->bhw", phi, psi.to(phi.dtype)).unsqueeze(1)
        return cos.clamp_min(0) if leak == 0 else F.leaky_relu(cos, leak)


class ConcatConv(nn.Module):
    """The "concat-conv" ablation: ``[v_i ; s_t]`` -> 1x1-conv MLP -> one channel (ReLU) as Q_t."""

    def __init__(self, *, visual_channels: tuple[int, ...], text_dim: int, dim: int):
        super().__init__()
        self.mlp = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c + text_dim, dim, 1), nn.ReLU(), nn.Conv2d(dim, 1, 1), nn.ReLU())
            for c in visual_channels
        )

    def forward(self, level: int, v: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """v: (B, C, h, w); s: (B, D) -> Q: (B, 1, h, w)."""
        tiled = s[:, :, None, None].to(v.dtype).expand(-1, -1, *v.shape[-2:])  # (B, D, h, w)
        return self.mlp[level](torch.cat([v, tiled], dim=1))
