"""Metrics of generalized referring segmentation (GRES: Liu, Ding and Jiang, CVPR 2023; gRefCOCO), where an
expression may mean one object, several (the target is their union) or none (the target is empty).

Per expression, with ``I`` / ``U`` the pixel counts of ``pred & target`` / ``pred | target``:

- ``gIoU``: the mean over expressions of the expression's IoU, where a **no-target** expression counts
  1 when the prediction is empty and 0 otherwise (a target expression: ``I / U``);
- ``cIoU``: cumulative IoU, ``sum(I) / sum(U)`` over all expressions (a no-target expression adds
  nothing to ``sum(I)`` and its predicted area to ``sum(U)``); 1.0 when every union is empty;
- ``N-acc``: the share of no-target expressions predicted empty;
- ``T-acc``: the share of target expressions predicted non-empty.

"Predicted empty" means no positive pixel, so a model with a separate no-target decision passes an
all-zero mask when that decision fires. A number that has no expression to be computed on (``N-acc``
without no-target expressions, anything of an empty group) is ``None``. Masks are boolean or 0/1
integer arrays (numpy or torch) of one shape, at the image's original size, as for ``metrics.py``.

:class:`GresMeter` accumulates expressions (``update`` with masks, ``add`` with counts) and gives
``result()``: ``gIoU``, ``cIoU``, ``N-acc``, ``T-acc``, ``n``, ``n_no_target``, ``n_target``,
``by_family`` and ``by_target_count`` (``"0"``, ``"1"``, ``"2+"``), each group with the same five
numbers. :func:`reference_masks` gives the two non-learned references of an image from its
annotations: ``always empty`` and ``all objects`` (the union of the annotated objects).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from .metrics import MaskLike, _as_bool, intersection_union, iou_from_counts

TARGET_COUNT_KEYS: tuple[str, ...] = ("0", "1", "2+")
"""The ``by_target_count`` groups: no target, one, two or more."""
REFERENCES: tuple[str, ...] = ("always empty", "all objects")
"""The non-learned references of :func:`reference_masks`."""


def target_count_key(target_count: int) -> str:
    """The ``by_target_count`` key of a referent count: "0", "1" or "2+"."""
    if isinstance(target_count, bool) or not isinstance(target_count, (int, np.integer)) or target_count < 0:
        raise ValueError(f"target_count must be an integer >= 0 (how many objects the expression means), got "
                         f"{target_count!r}")
    return "2+" if target_count >= 2 else str(int(target_count))


class GresRecord(NamedTuple):
    """What one expression contributes: its pixel counts, whether anything was predicted, its groups."""

    intersection: int
    union: int
    pred_empty: bool
    target_count: int
    family: str

    @property
    def no_target(self) -> bool:
        return self.target_count == 0

    @property
    def giou(self) -> float:
        """The expression's term of gIoU: 1/0 for a no-target expression predicted empty / not, else I / U."""
        if self.no_target:
            return 1.0 if self.pred_empty else 0.0
        return iou_from_counts(self.intersection, self.union)


def gres_record(pred: MaskLike, target: MaskLike, family: str = "", target_count: int | None = None) -> GresRecord:
    """The :class:`GresRecord` of one expression from its masks.

    ``target_count`` None: 0 when ``target`` is empty, else 1. A ``target_count`` of 0 with a non-empty
    target is refused (the annotations disagree); a positive count with an empty target (a referent that
    vanished, e.g. a degenerate polygon) is scored as a target expression.
    """
    inter, union = intersection_union(pred, target)
    target_area = int(np.count_nonzero(_as_bool(target, "target")))
    if target_count is None:
        target_count = 0 if target_area == 0 else 1
    target_count_key(target_count)  # validates
    if target_count == 0 and target_area:
        raise ValueError(f"target_count is 0 (no target) but the target mask has {target_area} pixels; pass the "
                         "expression's real referent count, or an empty mask for a no-target expression")
    pred_area = union - target_area + inter  # |p| = |p | t| - |t| + |p & t|
    return GresRecord(inter, union, pred_area == 0, int(target_count), str(family or ""))


def _ratio(hits: int, n: int) -> float | None:
    return hits / n if n else None


def gres_summary(records: Sequence[GresRecord]) -> dict[str, Any]:
    """``gIoU``, ``cIoU``, ``N-acc``, ``T-acc``, ``n``, ``n_no_target``, ``n_target`` of some expressions
    (None where a number has no expression to be computed on)."""
    n = len(records)
    no_target = [r for r in records if r.no_target]
    target = [r for r in records if not r.no_target]
    total_u = sum(r.union for r in records)
    return {
        "gIoU": float(np.mean([r.giou for r in records])) if n else None,
        "cIoU": (sum(r.intersection for r in records) / total_u if total_u else 1.0) if n else None,
        "N-acc": _ratio(sum(r.pred_empty for r in no_target), len(no_target)),
        "T-acc": _ratio(sum(not r.pred_empty for r in target), len(target)),
        "n": n,
        "n_no_target": len(no_target),
        "n_target": len(target),
    }


class GresMeter:
    """Accumulates expressions for the GRES metrics; ``result()`` gives them overall and per group.

    Usage by an evaluator, one expression at a time (masks at the original resolution)::

        meter = GresMeter()
        meter.update(pred_mask, target_mask, family=sample["family"], target_count=sample["target_count"])
        meter.result()["gIoU"]
    """

    def __init__(self) -> None:
        self.records: list[GresRecord] = []

    def __len__(self) -> int:
        return len(self.records)

    def update(self, pred_mask: MaskLike, target_mask: MaskLike, family: str = "",
               target_count: int | None = None) -> float:
        """Score one expression (see :func:`gres_record`); returns its gIoU term."""
        record = gres_record(pred_mask, target_mask, family, target_count)
        self.records.append(record)
        return record.giou

    def add(self, intersection: int, union: int, pred_area: int, target_count: int, family: str = "") -> float:
        """Record one expression from precomputed pixel counts (``pred_area``: the predicted pixels);
        returns its gIoU term."""
        iou_from_counts(intersection, union)  # validates the counts
        target_count_key(target_count)
        if pred_area < intersection or pred_area > union:
            raise ValueError(f"pred_area={pred_area} must lie between intersection={intersection} and "
                             f"union={union}")
        if target_count == 0 and union != pred_area:
            raise ValueError(f"target_count is 0 but union={union} exceeds pred_area={pred_area}: the target is "
                             "not empty")
        record = GresRecord(int(intersection), int(union), pred_area == 0, int(target_count), str(family or ""))
        self.records.append(record)
        return record.giou

    def merge(self, other: GresMeter) -> GresMeter:
        """Add the expressions of ``other`` (e.g. of another worker); returns self."""
        self.records.extend(other.records)
        return self

    def reset(self) -> None:
        self.records.clear()

    def result(self) -> dict[str, Any]:
        """``gIoU``, ``cIoU``, ``N-acc``, ``T-acc`` (floats in [0, 1], or None), ``n``, ``n_no_target``,
        ``n_target``, ``by_family`` (``{family: the same seven}``, families sorted, ``""`` for expressions
        without one) and ``by_target_count`` (``{"0", "1", "2+": the same seven}``, every key present)."""
        out = gres_summary(self.records)
        families: dict[str, list[GresRecord]] = {}
        for r in self.records:
            families.setdefault(r.family, []).append(r)
        out["by_family"] = {f: gres_summary(families[f]) for f in sorted(families)}
        out["by_target_count"] = {k: gres_summary([r for r in self.records if target_count_key(r.target_count) == k])
                                  for k in TARGET_COUNT_KEYS}
        return out

    summary = result  # the name SegmentationMeter uses


def reference_masks(object_masks: Iterable[MaskLike], height: int, width: int) -> dict[str, np.ndarray]:
    """The non-learned references of one image, from its annotated objects' masks (crowd regions left
    out by the caller): ``always empty`` (predicts nothing: N-acc 1, T-acc 0) and ``all objects`` (the
    union of every object: never empty when the image has one). Bool ``(height, width)`` masks."""
    union = np.zeros((int(height), int(width)), dtype=bool)
    for k, m in enumerate(object_masks):
        m = _as_bool(m, f"object mask {k}")
        if m.shape != union.shape:
            raise ValueError(f"object mask {k} has shape {m.shape}, the image is {union.shape}")
        union |= m
    return {"always empty": np.zeros_like(union), "all objects": union}


class GresReferences:
    """A :class:`GresMeter` per non-learned reference (:data:`REFERENCES`), fed from the annotations."""

    def __init__(self) -> None:
        self.meters: dict[str, GresMeter] = {name: GresMeter() for name in REFERENCES}

    def update(self, target_mask: MaskLike, object_masks: Iterable[MaskLike], family: str = "",
               target_count: int | None = None) -> None:
        """Score both references on one expression of an image whose annotated objects are ``object_masks``."""
        target = _as_bool(target_mask, "target")
        masks = reference_masks(object_masks, *target.shape)
        for name, meter in self.meters.items():
            meter.update(masks[name], target, family, target_count)

    def result(self) -> dict[str, dict[str, Any]]:
        return {name: meter.result() for name, meter in self.meters.items()}
