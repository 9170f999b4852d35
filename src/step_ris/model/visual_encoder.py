"""Visual representation (Sec. 3.1): five backbone taps F1..F5 + 8-d spatial coordinates.

Each tap ``F_l`` of shape ``(B, C_l, h_l, w_l)`` is concatenated with the spatial coordinates
of its cells (Hu et al. 2016; RMI), giving ``v`` with ``C_l + 8`` channels (72, 264, 520, 1032,
2056 for ResNet-101 at S = 320).
"""

from __future__ import annotations

import torch
from torch import nn

COORD_DIM = 8


def spatial_coordinates(h: int, w: int, *, device=None, dtype=None) -> torch.Tensor:
    """8-d coordinates of every cell of an ``h x w`` grid, edges mapped to [-1, 1].

    For cell (x, y): ``[x_min, y_min, x_max, y_max, x_ctr, y_ctr, 1/w, 1/h]``.
    Returns ``(8, h, w)``.
    """
    xs = torch.arange(w, device=device, dtype=torch.float32)
    ys = torch.arange(h, device=device, dtype=torch.float32)
    x_min, x_max = xs / w * 2 - 1, (xs + 1) / w * 2 - 1  # (w,)
    y_min, y_max = ys / h * 2 - 1, (ys + 1) / h * 2 - 1  # (h,)
    grid_x = lambda v: v.view(1, w).expand(h, w)  # noqa: E731
    grid_y = lambda v: v.view(h, 1).expand(h, w)  # noqa: E731
    coords = torch.stack(
        [
            grid_x(x_min),
            grid_y(y_min),
            grid_x(x_max),
            grid_y(y_max),
            grid_x((x_min + x_max) / 2),
            grid_y((y_min + y_max) / 2),
            torch.full((h, w), 1.0 / w, device=device),
            torch.full((h, w), 1.0 / h, device=device),
        ]
    )  # (8, h, w)
    return coords.to(dtype or torch.float32)


class VisualEncoder(nn.Module):
    """Backbone taps with coordinates appended.

    Args:
        backbone: a module returning five feature maps at strides 4, 4, 8, 8, 8 and exposing
            ``tap_channels`` (see ``model.backbones``).
    """

    def __init__(self, *, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.tap_channels = tuple(backbone.tap_channels)
        self.out_channels = tuple(c + COORD_DIM for c in self.tap_channels)

    def add_coordinates(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        """``taps[l]: (B, C_l, h_l, w_l)`` -> ``(B, C_l + 8, h_l, w_l)``."""
        out = []
        for f in taps:
            b, _, h, w = f.shape
            coords = spatial_coordinates(h, w, device=f.device, dtype=f.dtype).expand(b, -1, -1, -1)
            out.append(torch.cat([f, coords], dim=1))
        return out

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images: (B, 3, S, S) -> five maps (B, C_l + 8, h_l, w_l)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (B, 3, S, S), got {tuple(images.shape)}")
        return self.add_coordinates(self.backbone(images))
