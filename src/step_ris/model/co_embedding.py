"""See-through-Text Embedding Pixelwise, STEP (Eqs. 2-4), and the concat-conv ablation.

    phi_l(v) = NL2(tanh(W_v,l * v + b_v))      (2)  3x3 atrous conv, rate 3 (Sec. 3.3; docs/model.md, choice 6)
    psi(s)   = NL2(tanh(W_s s + b_s))          (3)
    Q(i)     = max(0, <phi(v_i), psi(s)>)      (4)

``norm="layer"`` inserts a per-sample LayerNorm on the pre-activations (over the channels of
each pixel for ``phi``, over the features for ``psi``): the paper does not say how ``v`` and
``s`` are scaled, and with raw backbone features tanh saturates and Q_t is flat (docs/model.md, choice 7).
``norm="none"`` is the literal form. ``phi`` depends on the level only, so it is computed once
per level and reused by every fold.

Beyond the paper, ``heads`` = H > 1 splits the co-embedding into H groups of ``dim / H`` channels,
each normalised on its own (NL2 per group in Eqs. 2-3), and Eq. 4 gives one cosine per group: Q_t
has H channels, so one step can mark several things at once (the candidates of "the circle left
of the red square" in one channel, its anchor in another) and the refiner reads them side by side
(docs/model.md, choice 21). ``heads=1`` is the paper's Eq. 4 exactly.
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
        heads: H heatmaps per step (1: the paper; see the module docstring); must divide ``dim``.
    """

    def __init__(self, *, visual_channels: tuple[int, ...], text_dim: int, dim: int, kernel: int = 3,
                 dilation: int = 3, norm: str = "none", shared_text: bool = True, heads: int = 1):
        super().__init__()
        if norm not in ("none", "layer"):
            raise ValueError(f"norm={norm!r}; choose 'none' or 'layer'")
        if heads < 1 or dim % heads:
            raise ValueError(f"heads={heads} must be >= 1 and divide the co-embedding size dim={dim}")
        self.heads = heads
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

    def initialise(self, scheme: str = "pytorch") -> None:
        """Initialise W_v, W_s (Eqs. 2-3). "pytorch": the layers' defaults (kept as built);
        "xavier": Glorot-uniform weights, zero biases (TensorFlow-era code); "xavier-positive-bias":
        Glorot weights and biases 0.1."""
        if scheme in ("pytorch", "data"):  # "data": standardise_ once the first batch is at hand
            return
        if scheme not in ("xavier", "xavier-positive-bias"):
            raise ValueError(f"embed_init={scheme!r}; choose pytorch, xavier or xavier-positive-bias")
        bias = 0.1 if scheme == "xavier-positive-bias" else 0.0
        for layer in [*self.visual, *self.text]:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.constant_(layer.bias, bias)

    @torch.no_grad()
    def standardise_(self, maps: list[torch.Tensor], s: torch.Tensor, levels: list[int], gain: float = 1.0) -> None:
        """Data-dependent initialisation of W_v, b_v and W_s, b_s (Eqs. 2-3 unchanged).

        Rescales each output channel of ``W_v,l * v + b_v`` (over the pixels of ``maps[l]``) and of
        ``W_s s + b_s`` (over the sentences ``s``) to mean 0 and standard deviation ``gain``: the
        initialisation of Salimans & Kingma (2016) / LSUV (Mishkin & Matas, 2016). Backbone taps are
        non-negative and large, so with a default initialisation every pixel's pre-activation shares
        one large mean and tanh saturates: phi points the same way at every pixel and Q_t is flat.

        maps: the five visual maps (B, C_l + 8, h, w); s: (B, D) textual representations.
        """
        for level in levels:
            conv = self.visual[level]
            pre = conv(maps[level].float())  # (B, E, h, w)
            mean = pre.mean(dim=(0, 2, 3))
            std = pre.std(dim=(0, 2, 3)).clamp_min(1e-6)
            conv.weight.mul_((gain / std).view(-1, 1, 1, 1))
            conv.bias.sub_(mean).mul_(gain / std)
        for layer in self.text:
            pre = layer(s.float())  # (B, E)
            mean, std = pre.mean(dim=0), pre.std(dim=0).clamp_min(1e-6)
            layer.weight.mul_((gain / std).view(-1, 1))
            layer.bias.sub_(mean).mul_(gain / std)

    def _unit(self, x: torch.Tensor) -> torch.Tensor:
        """NL2 of Eqs. 2-3 over each group of dim / H channels of x (B, dim, ...) (the whole of dim for H = 1)."""
        b, dim = x.shape[:2]
        return F.normalize(x.reshape(b, self.heads, dim // self.heads, *x.shape[2:]), dim=2).reshape(x.shape)

    def phi(self, level: int, v: torch.Tensor) -> torch.Tensor:
        """Eq. 2. v: (B, C_l + 8, h, w) -> (B, dim, h, w), unit norm over dim (over each group of dim / H)."""
        return self._unit(torch.tanh(self.visual_norm[level](self.visual[level](v))))

    def psi(self, level: int, s: torch.Tensor) -> torch.Tensor:
        """Eq. 3. s: (B, D) -> (B, dim), unit norm (each group of dim / H)."""
        k = level if len(self.text) > 1 else 0
        return self._unit(torch.tanh(self.text_norm[k](self.text[k](s))))

    @staticmethod
    def cosine(phi: torch.Tensor, psi: torch.Tensor, heads: int = 1) -> torch.Tensor:
        """The inner product of Eq. 4 (a cosine: both are unit vectors), per group of dim / H channels.

        phi: (B, dim, h, w); psi: (B, dim) -> (B, H, h, w) in [-1, 1].
        """
        b, dim, h, w = phi.shape
        groups = phi.reshape(b, heads, dim // heads, h, w)
        return torch.einsum("bgchw,bgc->bghw", groups, psi.to(phi.dtype).reshape(psi.shape[0], heads, dim // heads))

    @staticmethod
    def rectify(cos: torch.Tensor, leak: float = 0.0) -> torch.Tensor:
        """The max(0, .) of Eq. 4, or a leaky ReLU with slope ``leak`` below 0 (``leak`` > 0).

        With the literal ReLU, a sentence whose psi falls on the negative side of every pixel
        gets no gradient through Q_t (docs/recipes.md measures when that happens).
        """
        return cos.clamp_min(0) if leak == 0 else F.leaky_relu(cos, leak)

    @classmethod
    def heatmap(cls, phi: torch.Tensor, psi: torch.Tensor, leak: float = 0.0, heads: int = 1) -> torch.Tensor:
        """Eq. 4. phi: (B, dim, h, w); psi: (B, dim) -> Q: (B, H, h, w) in [0, 1] (literal)."""
        return cls.rectify(cls.cosine(phi, psi, heads), leak)


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
