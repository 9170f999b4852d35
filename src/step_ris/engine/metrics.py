"""Segmentation metrics of the paper's Sec. 4 (read in docs/model.md, "Metrics").

- ``oIoU`` (overall IoU) = sum of intersections / sum of unions over all samples. The STEP
  paper calls this number "mIoU"; it is reported here as ``oIoU`` to avoid the ambiguity.
- ``mIoU`` = mean of the per-sample IoUs (what CRIS and later papers call mIoU).
- ``prec@X`` = share of samples with IoU >= X, for X in 0.5 .. 0.9.
- A sample whose prediction and target are both empty has IoU 1; likewise ``oIoU`` is 1 when
  every union is empty.

Inputs are boolean (or 0/1 integer) masks, numpy arrays or torch tensors of equal shape.
Threshold probability maps before calling (``prob >= constants.MASK_THRESHOLD``); floating inputs are refused.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
import torch

MaskLike = np.ndarray | torch.Tensor

PREC_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def _as_bool(x: MaskLike, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype == np.bool_:
        return x
    if np.issubdtype(x.dtype, np.integer):
        return x != 0
    raise ValueError(
        f"{what} must be a boolean or 0/1 integer mask, got dtype {x.dtype}; threshold "
        "probabilities first, e.g. prob >= 0.5"
    )


def intersection_union(pred: MaskLike, target: MaskLike) -> tuple[int, int]:
    """Pixel counts ``(|pred & target|, |pred | target|)``."""
    p, t = _as_bool(pred, "pred"), _as_bool(target, "target")
    if p.shape != t.shape:
        raise ValueError(
            f"prediction shape {p.shape} differs from target shape {t.shape}; map predictions back "
            "to the original resolution (unletterbox) before scoring"
        )
    return int(np.count_nonzero(p & t)), int(np.count_nonzero(p | t))


def iou_from_counts(intersection: int, union: int) -> float:
    """IoU of one sample from its counts; an empty union (both masks empty) gives 1.0."""
    if union < 0 or intersection < 0 or intersection > union:
        raise ValueError(f"invalid counts: intersection={intersection}, union={union}")
    return 1.0 if union == 0 else intersection / union


def iou(pred: MaskLike, target: MaskLike) -> float:
    """Intersection over union of two masks; 1.0 when both are empty."""
    return iou_from_counts(*intersection_union(pred, target))


def _summarise(inter: list[int], union: list[int]) -> dict[str, float | int]:
    n = len(inter)
    out: dict[str, float | int] = {"n": n}
    if n == 0:
        out.update({"oIoU": math.nan, "mIoU": math.nan, **{f"prec@{x}": math.nan for x in PREC_THRESHOLDS}})
        return out
    ious = np.array([iou_from_counts(i, u) for i, u in zip(inter, union, strict=True)], dtype=np.float64)
    total_u = sum(union)
    out["oIoU"] = 1.0 if total_u == 0 else sum(inter) / total_u
    out["mIoU"] = float(ious.mean())
    for x in PREC_THRESHOLDS:
        out[f"prec@{x}"] = float(np.mean(ious >= x))
    return out


class SegmentationMeter:
    """Accumulates per-sample intersections and unions (optionally keyed by family).

    ``summary()`` returns ``oIoU``, ``mIoU``, ``prec@0.5`` .. ``prec@0.9`` and ``n``, plus
    ``by_family`` (the same dict per family) when any sample carried a non-empty family. With
    no samples the means are NaN.
    """

    def __init__(self) -> None:
        self.intersections: list[int] = []
        self.unions: list[int] = []
        self.families: list[str] = []

    def __len__(self) -> int:
        return len(self.intersections)

    def update(self, pred: MaskLike, target: MaskLike, family: str = "") -> float:
        """Score one sample; returns its IoU."""
        i, u = intersection_union(pred, target)
        self.add(i, u, family)
        return iou_from_counts(i, u)

    def add(self, intersection: int, union: int, family: str = "") -> None:
        """Record precomputed counts of one sample."""
        iou_from_counts(intersection, union)  # validates
        self.intersections.append(int(intersection))
        self.unions.append(int(union))
        self.families.append(family or "")

    def reset(self) -> None:
        self.intersections.clear()
        self.unions.clear()
        self.families.clear()

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = _summarise(self.intersections, self.unions)
        if any(self.families):
            groups: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
            for i, u, f in zip(self.intersections, self.unions, self.families, strict=True):
                groups[f][0].append(i)
                groups[f][1].append(u)
            out["by_family"] = {f: _summarise(*groups[f]) for f in sorted(groups)}
        return out
