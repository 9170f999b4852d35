"""Metrics of the paper's Sec. 4 on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from step_ris.engine.metrics import SegmentationMeter, intersection_union, iou


def _mask(shape: tuple[int, int], *cells: tuple[int, int]) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    for c in cells:
        m[c] = True
    return m


def test_single_sample_cases() -> None:
    empty = np.zeros((4, 4), dtype=bool)
    full = np.ones((4, 4), dtype=bool)
    left = np.zeros((4, 4), dtype=bool)
    left[:, :2] = True
    right = ~left
    assert intersection_union(full, empty) == (0, 16)
    assert iou(full, empty) == 0.0  # empty target, non-empty prediction
    assert iou(empty, left) == 0.0  # empty prediction
    assert iou(empty, empty) == 1.0  # both empty
    assert iou(left, left) == 1.0  # perfect
    assert iou(left, right) == 0.0  # disjoint
    top = np.zeros((4, 4), dtype=bool)
    top[:2] = True
    assert intersection_union(left, top) == (4, 12)
    assert iou(left, top) == pytest.approx(1 / 3)
    half = np.zeros((4, 4), dtype=bool)
    half[:2, :2] = True
    assert iou(half, left) == 0.5  # prediction covers exactly half of the target


def test_accepts_tensors_and_01_integers_refuses_floats() -> None:
    a = torch.tensor([[1, 0], [1, 1]], dtype=torch.uint8)
    b = np.array([[1, 1], [0, 1]], dtype=np.int64)
    assert intersection_union(a, b) == (2, 4)
    with pytest.raises(ValueError, match="threshold"):
        iou(np.array([[0.7]]), np.array([[1]]))
    with pytest.raises(ValueError, match="shape"):
        iou(np.zeros((2, 2), bool), np.zeros((2, 3), bool))


def test_meter_oiou_differs_from_miou() -> None:
    # sample A: I = 90, U = 100 (IoU 0.9); sample B: I = 0, U = 10 (IoU 0)
    a_pred = np.zeros((10, 10), bool)
    a_pred[:9] = True  # 90 px
    a_tgt = np.ones((10, 10), bool)  # 100 px
    b_pred = np.zeros((10, 10), bool)
    b_pred[0, :5] = True
    b_tgt = np.zeros((10, 10), bool)
    b_tgt[9, :5] = True
    m = SegmentationMeter()
    assert m.update(a_pred, a_tgt) == pytest.approx(0.9)
    assert m.update(b_pred, b_tgt) == 0.0
    s = m.summary()
    assert s["n"] == 2
    assert s["oIoU"] == pytest.approx(90 / 110)
    assert s["mIoU"] == pytest.approx(0.45)
    assert s["prec@0.5"] == 0.5 and s["prec@0.9"] == 0.5
    assert "by_family" not in s


def test_meter_precision_thresholds_inclusive() -> None:
    m = SegmentationMeter()
    for i, u in [(5, 10), (6, 10), (7, 10), (8, 10), (9, 10)]:  # IoUs 0.5 .. 0.9
        m.add(i, u)
    s = m.summary()
    assert [s[f"prec@{x}"] for x in (0.5, 0.6, 0.7, 0.8, 0.9)] == [1.0, 0.8, 0.6, 0.4, 0.2]
    assert s["mIoU"] == pytest.approx(0.7) and s["oIoU"] == pytest.approx(35 / 50)


def test_meter_all_empty_and_no_samples() -> None:
    m = SegmentationMeter()
    assert m.summary()["n"] == 0 and math.isnan(m.summary()["oIoU"])
    z = np.zeros((3, 3), bool)
    m.update(z, z)
    m.update(z, z)
    s = m.summary()
    assert s["oIoU"] == 1.0 and s["mIoU"] == 1.0 and s["prec@0.9"] == 1.0


def test_meter_by_family() -> None:
    m = SegmentationMeter()
    m.add(1, 2, family="colour")
    m.add(3, 4, family="colour")
    m.add(0, 5, family="spatial")
    s = m.summary()
    assert s["oIoU"] == pytest.approx(4 / 11)
    fam = s["by_family"]
    assert set(fam) == {"colour", "spatial"}
    assert fam["colour"]["n"] == 2 and fam["colour"]["oIoU"] == pytest.approx(4 / 6)
    assert fam["colour"]["mIoU"] == pytest.approx((0.5 + 0.75) / 2)
    assert fam["spatial"]["mIoU"] == 0.0 and fam["spatial"]["prec@0.5"] == 0.0
    m.reset()
    assert len(m) == 0
    with pytest.raises(ValueError, match="invalid counts"):
        m.add(3, 2)
