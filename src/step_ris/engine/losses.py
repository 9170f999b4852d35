"""Losses (Eq. 11 and the optional switches of docs/model.md, choice 13). Pure functions of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 11: binary cross-entropy from logits, averaged over pixels and samples.

    logits, target: (B, 1, S, S) or (B, S, S); target in {0, 1}.
    """
    return F.binary_cross_entropy_with_logits(logits.float(), target.float().expand_as(logits))


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per sample, averaged: 1 - (2|P.G| + eps) / (|P| + |G| + eps)."""
    return _soft_dice(torch.sigmoid(logits.float()), target.float().expand_as(logits), eps)


def _soft_dice(p: torch.Tensor, g: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Dice loss of probabilities ``p`` against targets ``g`` (same shape, batch first), per sample, averaged."""
    p, g = p.flatten(1), g.flatten(1)
    return (1 - (2 * (p * g).sum(1) + eps) / (p.sum(1) + g.sum(1) + eps)).mean()


GROUP_EPS = 1e-4  # keeps the group loss's logarithms finite where Q_t is exactly 0 or 1


def group_loss(heatmap: torch.Tensor, group: torch.Tensor, has_group: torch.Tensor, *,
               dice_weight: float = 0.0) -> torch.Tensor:
    """Beyond the paper (``train.group_weight``): BCE (+ Dice) of one step's heatmap Q_t against the group.

    heatmap: (B, h, w) Q_t of step ``train.group_step`` in [0, 1] (before ``q_scale``); group: (B, S, S)
    in {0, 1}, averaged here to the share of each of the h x w cells it covers; has_group: (B,) bool,
    False where the expression has no group (those samples are left out). The group is what that
    step should mark (data/shapesref/grouping.py). A batch without a group has loss 0 (with the graph kept).
    """
    keep = has_group.to(heatmap.device)
    if not bool(keep.any()):
        return heatmap.float().sum() * 0.0
    q = heatmap[keep].float().clamp(GROUP_EPS, 1 - GROUP_EPS)  # (B', h, w)
    g = F.adaptive_avg_pool2d(group.to(heatmap.device)[keep].float().unsqueeze(1), q.shape[-2:]).squeeze(1)
    loss = -(g * q.log() + (1 - g) * (1 - q).log()).mean()
    return loss + dice_weight * _soft_dice(q, g) if dice_weight > 0 else loss


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, *, step_logits: torch.Tensor | None = None,
                      dice_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """BCE (+ Dice) on the output map and, when ``step_logits`` is given, on every P_t.

    logits: (B, 1, S, S); target: (B, S, S); step_logits: (B, T, S/4, S/4) upsampled to S here.
    Returns the loss and its parts (floats, for logging). An empty batch (B = 0: every expression
    left to the match head, ``train.no_target_mask_loss=false``) has loss 0.
    """
    if logits.shape[0] == 0:
        zero = logits.float().sum() * 0.0  # keeps the graph, so backward() still runs
        return zero, {"bce": 0.0, **({"dice": 0.0} if dice_weight > 0 else {}), "loss": 0.0}
    target = target.unsqueeze(1)  # (B, 1, S, S)
    maps = [logits]
    if step_logits is not None:
        up = F.interpolate(step_logits, size=logits.shape[-2:], mode="bilinear", align_corners=False)  # (B, T, S, S)
        maps += list(up[:, :-1].unbind(1))  # P_T is already the output map
        maps = [m if m.dim() == 4 else m.unsqueeze(1) for m in maps]
    bce = sum(bce_loss(m, target) for m in maps) / len(maps)
    total, parts = bce, {"bce": float(bce.detach())}
    if dice_weight > 0:
        dice = sum(dice_loss(m, target) for m in maps) / len(maps)
        total = total + dice_weight * dice
        parts["dice"] = float(dice.detach())
    parts["loss"] = float(total.detach())
    return total, parts


def match_loss(match_logits: torch.Tensor, target_count: torch.Tensor, *, balanced: bool = False) -> torch.Tensor:
    """BCE of the no-target decision (model/match_head.py) against "the expression has a target".

    match_logits: (B,); target_count: (B,) int, the number of objects each expression means.
    balanced: give the no-target and the target expressions of the batch half the loss each (a
    batch holding only one kind falls back to the plain mean), so a minority of no-target
    expressions cannot be ignored by a head that sits at the prior.
    """
    has_target = (target_count > 0).to(torch.float32).to(match_logits.device)
    per_sample = F.binary_cross_entropy_with_logits(match_logits.float(), has_target, reduction="none")
    positives = int(has_target.sum())
    if not balanced or positives in (0, len(has_target)):
        return per_sample.mean()
    weights = torch.where(has_target > 0, 0.5 / positives, 0.5 / (len(has_target) - positives))
    return (per_sample * weights).sum()
