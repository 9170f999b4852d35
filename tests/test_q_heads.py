"""model.q_heads (beyond the paper, docs/model.md, choice 21): several heatmaps per step.

The references normalise each group of channels with explicit per-group loops and sum products
by hand; they share nothing with the reshape-and-einsum of CoEmbedding but the definition.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from step_ris.config import get_preset, validate
from step_ris.model import build_model
from step_ris.model.co_embedding import CoEmbedding
from step_ris.model.match_head import MatchHead
from step_ris.model.refiner import Refiner, directional_context


def reference_heatmaps(phi_pre: torch.Tensor, psi_pre: torch.Tensor, heads: int) -> torch.Tensor:
    """phi_pre: (E, h, w), psi_pre: (E,) pre-NL2 tanh outputs -> (H, h, w): per group, the cosine."""
    dim, h, w = phi_pre.shape
    size = dim // heads
    out = torch.zeros(heads, h, w)
    for g in range(heads):
        s = psi_pre[g * size:(g + 1) * size]
        s = s / s.norm()
        for i in range(h):
            for j in range(w):
                v = phi_pre[g * size:(g + 1) * size, i, j]
                out[g, i, j] = max(float((v / v.norm() * s).sum()), 0.0)
    return out


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_each_head_is_the_cosine_of_its_own_group(heads):
    torch.manual_seed(0)
    emb = CoEmbedding(visual_channels=(5,), text_dim=6, dim=8, heads=heads)
    v, s = torch.randn(2, 5, 4, 3), torch.randn(2, 6)
    with torch.no_grad():
        q = emb.heatmap(emb.phi(0, v), emb.psi(0, s), heads=heads)
        assert q.shape == (2, heads, 4, 3)
        phi_pre = torch.tanh(emb.visual[0](v))
        psi_pre = torch.tanh(emb.text[0](s))
    for b in range(2):
        torch.testing.assert_close(q[b], reference_heatmaps(phi_pre[b], psi_pre[b], heads), atol=1e-5, rtol=1e-5)


def test_one_head_is_the_papers_eq4():
    """heads = 1 normalises the whole co-embedding at once: Eq. 4 as the paper writes it."""
    torch.manual_seed(0)
    emb = CoEmbedding(visual_channels=(5,), text_dim=6, dim=8)
    v, s = torch.randn(1, 5, 4, 3), torch.randn(1, 6)
    with torch.no_grad():
        phi = torch.tanh(emb.visual[0](v))[0]
        psi = torch.tanh(emb.text[0](s))[0]
        literal = torch.einsum("chw,c->hw", phi / phi.norm(dim=0, keepdim=True), psi / psi.norm()).clamp_min(0)
        torch.testing.assert_close(emb.heatmap(emb.phi(0, v), emb.psi(0, s))[0, 0], literal)
    assert get_preset("paper-1fold").model.q_heads == 1 and get_preset("shapes-cpu").model.q_heads == 1


def test_the_refiner_reads_every_head_and_its_context():
    refiner = Refiner(cell="convgru", filters=4, heads=3, context="directional")
    assert refiner.cell.input_gates.in_channels == 3 * 9
    q = torch.rand(2, 3, 6, 7)
    per_channel = torch.cat([directional_context(q[:, c:c + 1]) for c in range(3)], dim=1)
    torch.testing.assert_close(directional_context(q), per_channel)
    assert Refiner(cell="conv1x1", filters=4, heads=3, steps=5).stack.in_channels == 15


def test_every_head_reaches_the_output_and_gets_gradient():
    cfg = dataclasses.replace(get_preset("tiny").model, q_heads=4, q_norm="minmax", q_leak=0.1, cell="convgru",
                              match_head=True)
    torch.manual_seed(0)
    model = build_model(cfg, 20, load_backbone_weights=False)
    images, tokens = torch.randn(2, 3, cfg.image_size, cfg.image_size), torch.tensor([[2, 3, 4], [5, 0, 0]])
    out = model(images, tokens, return_intermediates=True)
    assert out.cosines[0].shape[1] == 4 and out.heatmaps.shape == (2, model.steps, 16, 16)
    assert out.match_logits.shape == (2,)
    (out.logits.sum() + out.match_logits.sum()).backward()
    grad = model.refiner.cell.input_gates.weight.grad  # (3F, 4, k, k)
    assert all(grad[:, g].abs().sum() > 0 for g in range(4))
    text_grad = model.fusion.text[0].weight.grad.view(4, -1)  # W_s rows, one block per head
    assert all(text_grad[g].abs().sum() > 0 for g in range(4))


def test_match_peak_is_the_most_over_heads():
    q = torch.zeros(1, 3, 2, 2)
    q[0, 2, 1, 1] = 0.7
    q[0, 0, 0, 0] = 0.9  # outside the valid cells
    valid = torch.tensor([[[False, True], [True, True]]])
    assert MatchHead.peak(q, valid).tolist() == [[pytest.approx(0.7)]]


def test_heads_are_checked():
    cfg = get_preset("tiny")
    with pytest.raises(ValueError, match=r"model.q_heads=3 must be >= 1 and divide model.embed_dim=16"):
        validate(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, q_heads=3)))
    with pytest.raises(ValueError, match="model.q_heads=2 needs the STEP co-embedding"):
        validate(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, q_heads=2, fusion="concat-conv")))
    with pytest.raises(ValueError, match="heads=3 must be >= 1 and divide the co-embedding size dim=8"):
        CoEmbedding(visual_channels=(5,), text_dim=6, dim=8, heads=3)
    with pytest.raises(ValueError, match="refiner heads=0; Q_t has at least one channel"):
        Refiner(cell="convgru", filters=4, heads=0)
