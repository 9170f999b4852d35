"""model.refiner_context="directional" (beyond the paper, docs/model.md, choice 20), against loops.

The reference computes each of the eight maps cell by cell with Python loops over the grid; it
shares nothing with the triangular-mask implementation but the definition in the docstring.
"""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch

from step_ris import config
from step_ris.config import ModelConfig, get_preset, validate
from step_ris.model import build_model
from step_ris.model.refiner import CONTEXTS, PROFILE_EPS, Refiner, directional_context


def reference_context(q: torch.Tensor) -> torch.Tensor:
    """q: (1, H, W) -> (8, H, W), every value from its definition."""
    q = q[0].clamp_min(0)
    h, w = q.shape
    out = torch.zeros(8, h, w)
    for first, (length, profile_at) in enumerate(((w, lambda i: max(q[r, i] for r in range(h))),
                                                   (h, lambda i: max(q[i, c] for c in range(w))))):
        p = [float(profile_at(i)) for i in range(length)]
        peak = max(p)
        p = [x / (peak + PROFILE_EPS) for x in p]
        for i in range(length):
            past_end = max(p[i + 1:], default=0.0)  # anything further right (further down)
            past_start = max(p[:i], default=0.0)  # anything further left (further up)
            from_start = sum(max(p[j] - (p[j - 1] if j > 0 else 0.0), 0.0) for j in range(i + 1))
            from_end = sum(max(p[j] - (p[j + 1] if j + 1 < length else 0.0), 0.0) for j in range(i, length))
            values = (past_end, past_start, from_start, from_end)
            for k, v in enumerate(values):
                if first == 0:
                    out[k, :, i] = v  # a column's value, the same in every row
                else:
                    out[4 + k, i, :] = v
    return out


def test_directional_context_equals_its_definition():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 1, 6, 9, generator=g)  # negative cells (q_leak) count as 0
    q[1, :, :, 5:] = 0  # a padded band on the right, as the letterbox leaves it
    q[2] = 0  # a flat map: defined, all zero
    got = directional_context(q)
    assert got.shape == (3, 8, 6, 9)
    for b in range(3):
        torch.testing.assert_close(got[b], reference_context(q[b]), atol=1e-5, rtol=1e-5)
    assert got[2].abs().max() == 0


def test_two_blobs_read_as_relation_and_count():
    """Two objects on one row: the left one has something to its right, the right one is 2nd from the left."""
    q = torch.zeros(1, 1, 4, 10)
    q[0, 0, 1, 1:3] = 1.0
    q[0, 0, 1, 6:8] = 1.0
    c = directional_context(q)[0]
    assert c[0, 0, 1] > 0.99 and c[0, 0, 7] == 0  # something to the right of the left blob, none right of the right one
    assert c[2, 0, 1].round() == 1 and c[2, 0, 7].round() == 2  # counted from the left
    assert c[3, 0, 1].round() == 2 and c[3, 0, 7].round() == 1  # counted from the right


def _reference_centroid(q: torch.Tensor) -> torch.Tensor:
    from test_refiner_centroid import reference_centroid  # tests/ is on the path (pytest rootdir)

    return reference_centroid(q[0])


@pytest.mark.parametrize("cell", ["convgru", "convlstm"])
@pytest.mark.parametrize("context, reference", [("directional", reference_context),
                                                ("centroid", _reference_centroid)])
def test_the_convrnn_reads_q_and_its_context(cell, context, reference):
    """Refiner.step feeds the cell [Q_t, the context's maps]; cutting the maps changes the output."""
    torch.manual_seed(0)
    refiner = Refiner(cell=cell, filters=4, context=context)
    assert refiner.cell.input_gates.in_channels == 1 + CONTEXTS[context]
    q = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        logits, state = refiner.step(q, None)
        x = torch.cat([q, torch.stack([reference(q[b]) for b in range(2)])], dim=1)
        out, _ = refiner.cell(x, None)
        torch.testing.assert_close(logits, refiner.head(out), atol=1e-5, rtol=1e-5)
        blind, _ = refiner.cell(torch.cat([q, torch.zeros_like(x[:, 1:])], dim=1), None)
    assert (refiner.head(blind) - logits).abs().max() > 1e-4


def test_the_paper_refiner_reads_q_alone():
    assert Refiner(cell="convlstm", filters=4).cell.input_gates.in_channels == 1
    assert get_preset("paper-1fold").model.refiner_context == "none"


def test_the_model_trains_through_the_context():
    cfg = dataclasses.replace(get_preset("tiny").model, cell="convgru", refiner_context="directional",
                              q_norm="minmax")
    torch.manual_seed(0)
    model = build_model(cfg, 20, load_backbone_weights=False)
    out = model(torch.randn(2, 3, cfg.image_size, cfg.image_size), torch.tensor([[2, 3, 4], [5, 0, 0]]))
    out.logits.sum().backward()
    grad = model.refiner.cell.input_gates.weight.grad  # (3F, 9, k, k)
    assert grad[:, 1:].abs().sum() > 0  # the context channels get gradient


def test_context_settings_are_checked():
    assert set(typing.get_args(config.RefinerContext)) == set(CONTEXTS)
    assert typing.get_type_hints(ModelConfig)["refiner_context"] is config.RefinerContext
    with pytest.raises(ValueError, match="refiner context='radial'; choose one of: none, directional, centroid, "
                                         "directional\\+centroid"):
        Refiner(cell="convgru", filters=4, context="radial")
    with pytest.raises(ValueError, match="needs a ConvRNN cell"):
        Refiner(cell="conv1x1", filters=4, context="directional")
    cfg = get_preset("tiny")
    bad = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, cell="conv1x1", refiner_context="directional"))
    with pytest.raises(ValueError, match="model.refiner_context=directional needs a ConvRNN: set model.cell=convgru"):
        validate(bad)
