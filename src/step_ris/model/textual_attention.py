"""Learned textual representation, LTR (Eq. 1).

    a_ij = softmax_j <v~_i, h~_j>            word attention of pixel i (valid words only)
    w_i  = softmax_i P_{t-1}(i) / tau         pixel weights (valid pixels of level l_t only)
    s_t  = sum_i w_i sum_j a_ij h_j = sum_j alpha_j h_j,   alpha_j = sum_i w_i a_ij

``a`` depends on the level only, so it is computed once per level (``word_attention``) and
reused by every step that visits that level (``attend``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TextualAttention(nn.Module):
    """Projections to the attention space and Eq. 1.

    Args:
        visual_channels: ``C_l + 8`` of each level.
        levels: the levels at which Eq. 1 is used (one 1x1 conv each; a level whose only
            visit is a step without Eq. 1 gets none, so every parameter is trained).
        text_dim: size of ``h_j``.
        dim: attention space (400 in the paper).
        temperature: ``tau`` of the pixel softmax (1 = literal Eq. 1).
    """

    def __init__(self, *, visual_channels: tuple[int, ...], levels: tuple[int, ...], text_dim: int, dim: int,
                 temperature: float = 1.0):
        super().__init__()
        self.project_text = nn.Linear(text_dim, dim)  # h_j -> h~_j
        self.project_visual = nn.ModuleDict(
            {str(level): nn.Conv2d(visual_channels[level], dim, 1) for level in sorted(set(levels))}
        )  # v_i -> v~_i
        self.temperature = temperature

    def word_attention(self, level: int, v: torch.Tensor, states: torch.Tensor,
                       word_mask: torch.Tensor) -> torch.Tensor:
        """a_ij for one level.

        v: (B, C, h, w); states: (B, L, D); word_mask: (B, L) -> a: (B, h*w, L).
        """
        return self.word_attention_from(self.project_image(level, v), states, word_mask)

    def project_image(self, level: int, v: torch.Tensor) -> torch.Tensor:
        """The image side of Eq. 1: v: (B, C, h, w) -> v~: (B, h*w, dim). Depends on the image only."""
        return self.project_visual[str(level)](v).flatten(2).transpose(1, 2)  # (B, N, dim)

    def word_attention_from(self, v_tilde: torch.Tensor, states: torch.Tensor,
                            word_mask: torch.Tensor) -> torch.Tensor:
        """a_ij from projected pixels. v_tilde: (B or 1, N, dim); states: (B, L, D) -> a: (B, N, L)."""
        h_tilde = self.project_text(states)  # (B, L, dim)
        logits = v_tilde @ h_tilde.transpose(1, 2)  # (B, N, L)
        logits = logits.masked_fill(~word_mask.unsqueeze(1), torch.finfo(logits.dtype).min)
        return logits.softmax(dim=-1)

    def pixel_weights(self, prev: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
        """w_i = softmax over valid pixels of P_{t-1}.

        prev: (B, 1, H', W') probability map of the previous step (any grid);
        pixel_mask: (B, h, w) True on the level's valid (unpadded) cells -> (B, h*w).
        """
        h, w = pixel_mask.shape[-2:]
        if prev.shape[-2:] != (h, w):
            prev = F.interpolate(prev, size=(h, w), mode="bilinear", align_corners=False)
        logits = (prev.flatten(1) / self.temperature).masked_fill(~pixel_mask.flatten(1), float("-inf"))
        return logits.float().softmax(dim=-1).to(prev.dtype)  # (B, N)

    def attend(self, a: torch.Tensor, weights: torch.Tensor, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 1. a: (B, N, L); weights: (B, N); states: (B, L, D) -> s_t (B, D), alpha (B, L)."""
        alpha = (weights.unsqueeze(1) @ a.to(weights.dtype)).squeeze(1)  # (B, L)
        s = (alpha.unsqueeze(1) @ states.to(alpha.dtype)).squeeze(1)  # (B, D)
        return s, alpha
