"""Eq. 4 diagnostics (engine/diagnostics.py) and the weight decay of the optimiser (train.optimizer)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from step_ris.config import TrainConfig, get_preset
from step_ris.engine.diagnostics import gradient_norms, heatmap_stats
from step_ris.engine.train import build_optimizer
from step_ris.model import build_model
from step_ris.model.step import STEPOutput


def test_heatmap_stats_count_only_valid_cells():
    cos = torch.tensor([[[[0.5, -0.2], [9.0, 9.0]]]])  # (1, 1, 2, 2); the bottom row is padding
    mask = torch.tensor([[[True, True], [False, False]]])
    out = STEPOutput(logits=torch.zeros(1, 1, 8, 8), cosines=[cos], masks=[mask])
    stats = heatmap_stats(out)
    assert stats["dead_1"] == pytest.approx(0.5)
    assert stats["cos_mean_1"] == pytest.approx(0.15)
    assert stats["q_max_1"] == pytest.approx(0.5)
    assert heatmap_stats(STEPOutput(logits=torch.zeros(1, 1, 8, 8))) == {}


def test_gradient_and_weight_norms():
    cfg = dataclasses.replace(get_preset("tiny").model, cell="convlstm")
    model = build_model(cfg, 20, load_backbone_weights=False)
    out = model(torch.randn(2, 3, 64, 64), torch.randint(1, 20, (2, 4)))
    out.logits.mean().backward()
    norms = gradient_norms(model)
    for name in ("W_v", "W_s", "rnn_input", "bilstm"):
        assert norms[f"grad_{name}"] > 0
    expected = torch.stack([p.detach().norm() for p in model.fusion.visual.parameters()]).norm()
    assert norms["norm_W_v"] == pytest.approx(float(expected), rel=1e-6)


def _decay_after(optimizer_name: str, steps: int = 200) -> float:
    """|w| after ``steps`` steps of the paper's lr and weight decay when the loss gives it no gradient."""
    w = torch.nn.Parameter(torch.full((1,), 0.05))
    t = TrainConfig(lr=2.5e-4, weight_decay=5e-4, optimizer=optimizer_name)
    opt = build_optimizer([w], t)
    for _ in range(steps):
        opt.zero_grad()
        (0.0 * w).sum().backward()  # no loss gradient: only the weight decay acts
        opt.step()
    return float(w.detach().abs())


def test_coupled_l2_shrinks_a_weakly_driven_weight_by_lr_per_step():
    # Adam + L2 (the paper's reading): the decay term is normalised by Adam, about lr per step
    # (0.75 lr here: the second moment lags), so a weight of 0.05 loses three quarters in 200 steps;
    # AdamW decays it by lr * wd per step.
    assert _decay_after("adam") < 0.0125 * 1.05
    assert _decay_after("adamw") == pytest.approx(0.05 * (1 - 2.5e-4 * 5e-4) ** 200, rel=1e-4)
    assert isinstance(build_optimizer([torch.nn.Parameter(torch.ones(1))], TrainConfig(optimizer="adamw")),
                      torch.optim.AdamW)
