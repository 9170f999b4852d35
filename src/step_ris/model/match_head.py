"""The no-target decision: does anything in the image match the expression? (docs/model.md, "Beyond
the paper: expressions that match nothing").

An extension for generalized referring segmentation (GRES, gRefCOCO), not part of STEP. It adds no
second network: it reads what STEP's grouping already computed, pooled over the valid cells of the
refiner grid,

    z = [ mean(h_T), max(h_T), max(P_T logit), mean(sigmoid(P_T)), peak_1, ..., peak_T ]
    m = w^T z + b                                           (the "match" logit)

where h_T is the ConvRNN's final output (Eqs. 5-9), P_T the final map and peak_t the maximum of
the STEP heatmap Q_t (Eq. 4) over the valid cells of its level, taken before ``q_norm`` and
``q_scale``: how well the best region matches s_t. (After ``q_norm=minmax`` every peak is 1 up to
rounding; a head that read those peaks fitted weights of 1e5 to the rounding, docs/benchmarks.md.)
``sigmoid(m) >= 0.5`` means "something matches"; otherwise the prediction is the empty mask. It is
trained with its own binary cross-entropy against "the expression has a target" (``train.match_weight``).
``model.match_head=false`` (every paper preset) leaves STEP as the paper has it.
"""

from __future__ import annotations

import torch
from torch import nn


def _masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """x: (B, C, H, W), valid: (B, 1, H, W) bool -> (B, C) mean over the valid cells."""
    w = valid.to(x.dtype)
    return (x * w).sum(dim=(2, 3)) / w.sum(dim=(2, 3)).clamp_min(1)


def _masked_max(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """x: (B, C, H, W), valid: (B, 1, H, W) bool -> (B, C) max over the valid cells."""
    return x.masked_fill(~valid, float("-inf")).amax(dim=(2, 3))


class MatchHead(nn.Module):
    """A linear read-out of pooled refiner statistics into one "something matches" logit.

    Args:
        filters: channels of the ConvRNN output h_T (0 for the "conv1x1" refiner, which has none).
        steps: T, the number of heatmaps Q_t.
    """

    def __init__(self, *, filters: int, steps: int):
        super().__init__()
        self.filters = filters
        self.steps = steps
        self.linear = nn.Linear(2 * filters + 2 + steps, 1)

    def features(self, hidden: torch.Tensor | None, logits: torch.Tensor, peaks: torch.Tensor,
                 valid: torch.Tensor) -> torch.Tensor:
        """hidden: (B, F, H, W) or None; logits: (B, 1, H, W) of P_T; peaks: (B, T) peak_t (see the module
        docstring); valid: (B, H, W) bool cells of the refiner grid -> z (B, 2F + 2 + T) in float32."""
        valid = valid.unsqueeze(1)  # (B, 1, H, W)
        parts = []
        if self.filters:
            if hidden is None:
                raise ValueError("MatchHead was built for a ConvRNN output but got none")
            h = hidden.float()
            parts += [_masked_mean(h, valid), _masked_max(h, valid)]
        logit = logits.float()
        parts += [_masked_max(logit, valid), _masked_mean(torch.sigmoid(logit), valid)]
        if peaks.shape != (logit.shape[0], self.steps):
            raise ValueError(f"MatchHead expects peaks of shape ({logit.shape[0]}, {self.steps}), "
                             f"got {tuple(peaks.shape)}")
        parts.append(peaks.float())
        return torch.cat(parts, dim=1)

    def forward(self, hidden: torch.Tensor | None, logits: torch.Tensor, peaks: torch.Tensor,
                valid: torch.Tensor) -> torch.Tensor:
        """The match logit m (B,) (see :meth:`features` for the inputs)."""
        return self.linear(self.features(hidden, logits, peaks, valid).to(self.linear.weight.dtype))[:, 0]

    @staticmethod
    def peak(q: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """q: (B, H, h, w) the heatmaps of Eq. 4, valid: (B, h, w) bool -> (B, 1), their maximum over the
        valid cells (and over the H channels of ``model.q_heads``)."""
        return _masked_max(q, valid.unsqueeze(1)).amax(dim=1, keepdim=True)
