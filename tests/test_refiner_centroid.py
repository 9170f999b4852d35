"""model.refiner_context="centroid" (beyond the paper, docs/model.md, choice 22), against loops.

The reference computes the centre of mass and every cell's offsets with Python loops over the grid;
it shares nothing with the vectorised implementation but the definition in the docstring.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from step_ris.config import get_preset
from step_ris.model import build_model
from step_ris.model.refiner import (
    CONTEXT_MAPS,
    CONTEXTS,
    DISTANCE_EPS,
    MASS_EPS,
    Refiner,
    centroid_context,
    directional_and_centroid_context,
    directional_context,
)


def reference_centroid(q: torch.Tensor) -> torch.Tensor:
    """q: (H, W) -> (3, H, W), every value from its definition."""
    h, w = q.shape
    xs = [-1 + 2 * i / (w - 1) for i in range(w)]
    ys = [-1 + 2 * j / (h - 1) for j in range(h)]
    mass = sum(max(float(q[j, i]), 0.0) for j in range(h) for i in range(w))
    cx = sum(max(float(q[j, i]), 0.0) * xs[i] for j in range(h) for i in range(w)) / (mass + MASS_EPS)
    cy = sum(max(float(q[j, i]), 0.0) * ys[j] for j in range(h) for i in range(w)) / (mass + MASS_EPS)
    out = torch.zeros(3, h, w)
    for j in range(h):
        for i in range(w):
            dx, dy = xs[i] - cx, ys[j] - cy
            out[:, j, i] = torch.tensor([dx, dy, math.sqrt(dx * dx + dy * dy + DISTANCE_EPS)])
    return out


def test_centroid_context_equals_its_definition():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 2, 5, 7, generator=g)  # negative cells count as 0; two channels (q_heads=2)
    q[2] = 0  # a flat map: the centre of the grid
    got = centroid_context(q)
    assert got.shape == (3, 6, 5, 7)
    for b in range(3):
        for c in range(2):
            torch.testing.assert_close(got[b, 3 * c:3 * c + 3], reference_centroid(q[b, c]), atol=1e-5, rtol=1e-5)


def test_a_marked_landmark_gives_the_distance_to_it():
    """One blob (the landmark): of two other cells, the nearer one reads the smaller distance."""
    q = torch.zeros(1, 1, 9, 9)
    q[0, 0, 1:3, 1:3] = 1.0  # centre of mass at cell (1.5, 1.5): x = y = -1 + 2 * 1.5 / 8 = -0.625
    c = centroid_context(q)[0]
    torch.testing.assert_close(c[0, 0, 4], torch.tensor(-1 + 2 * 4 / 8 + 0.625))  # x offset of column 4
    assert c[2, 3, 3] < c[2, 8, 8]  # near the landmark, then far from it
    assert int(c[2].argmin()) in {10, 11, 19, 20}  # the four cells around the centre of mass


def test_bf16_heatmaps_are_summed_in_float32():
    q = torch.rand(2, 1, 32, 32)
    low = centroid_context(q.to(torch.bfloat16))
    assert low.dtype == torch.bfloat16
    exact = centroid_context(q.to(torch.bfloat16).float())  # the same heatmap, summed in float32
    torch.testing.assert_close(low, exact.to(torch.bfloat16), atol=0, rtol=0)


def test_the_heatmap_gets_gradient_through_its_centre():
    q = torch.rand(1, 1, 6, 6, requires_grad=True)
    centroid_context(q)[:, 2].sum().backward()  # the distance map moves with the centre of mass
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


def test_the_model_trains_through_the_centroid_context():
    cfg = dataclasses.replace(get_preset("tiny").model, cell="convgru", refiner_context="centroid", q_norm="minmax")
    torch.manual_seed(0)
    model = build_model(cfg, 20, load_backbone_weights=False)
    out = model(torch.randn(2, 3, cfg.image_size, cfg.image_size), torch.tensor([[2, 3, 4], [5, 0, 0]]))
    out.logits.sum().backward()
    grad = model.refiner.cell.input_gates.weight.grad  # (3F, 4, k, k)
    assert grad.shape[1] == 4 and grad[:, 1:].abs().sum() > 0


def test_both_contexts_are_the_two_in_turn():
    q = torch.rand(2, 1, 6, 8)
    both = directional_and_centroid_context(q)
    torch.testing.assert_close(both, torch.cat([directional_context(q), centroid_context(q)], dim=1))
    refiner = Refiner(cell="convgru", filters=4, context="directional+centroid")
    assert refiner.cell.input_gates.in_channels == 1 + CONTEXTS["directional+centroid"] == 12
    with torch.no_grad():
        logits, _ = refiner.step(q, None)
        out, _ = refiner.cell(torch.cat([q, both], dim=1), None)
    torch.testing.assert_close(logits, refiner.head(out))


@pytest.mark.parametrize("name", sorted(CONTEXT_MAPS))
def test_each_context_has_the_width_its_table_says(name):
    q = torch.rand(2, 3, 5, 6)  # three heatmap channels (q_heads=3)
    assert CONTEXT_MAPS[name](q).shape == (2, CONTEXTS[name] * 3, 5, 6)
    assert set(CONTEXTS) == set(CONTEXT_MAPS) | {"none"}
