"""Training diagnostics for Eq. 4: is the STEP heatmap alive, and does gradient reach its inputs?

Logged every ``train.log_every`` steps when ``train.diagnostics`` is on (``diagnostics.jsonl`` in
the run folder and TensorBoard ``diag/``). Per step t of the ConvRNN:

- ``dead_t``: share of valid cells where Q_t = 0, i.e. <phi, psi> <= 0 (no gradient passes max(0, .));
- ``cos_mean_t``, ``cos_std_t``: mean and spread of <phi, psi> over the valid cells;
- ``q_max_t``: the largest Q_t (averaged over the batch).

And the gradient norms reaching W_v (Eq. 2), W_s (Eq. 3), the ConvRNN input weights W^* (Eqs. 5-8)
and the biLSTM (Sec. 3.2). docs/recipes.md reads them.
"""

from __future__ import annotations

import torch

from ..model import STEPModel, STEPOutput


def heatmap_stats(out: STEPOutput) -> dict[str, float]:
    """Per-step statistics of the cosine of Eq. 4 over valid cells (needs ``return_intermediates``)."""
    stats: dict[str, float] = {}
    if out.cosines is None or out.masks is None:
        return stats
    for t, (cos, mask) in enumerate(zip(out.cosines, out.masks, strict=True), start=1):
        valid = mask.unsqueeze(1).expand_as(cos)  # (B, 1, h, w)
        values = cos.detach().float()[valid]
        stats[f"dead_{t}"] = float((values <= 0).float().mean())
        stats[f"cos_mean_{t}"] = float(values.mean())
        stats[f"cos_std_{t}"] = float(values.std()) if values.numel() > 1 else 0.0
        peak = cos.detach().float().clamp_min(0).masked_fill(~valid, 0).amax(dim=(1, 2, 3))  # (B,)
        stats[f"q_max_{t}"] = float(peak.mean())
    return stats


def _norm(params) -> float:
    grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


def gradient_norms(model: STEPModel) -> dict[str, float]:
    """L2 norms of the gradients (after backward) reaching the inputs of Eq. 4 and the ConvRNN."""
    out = {}
    fusion = model.fusion
    if hasattr(fusion, "visual") and hasattr(fusion, "text"):
        out["grad_W_v"] = _norm(fusion.visual.parameters())
        out["grad_W_s"] = _norm(fusion.text.parameters())
    cell = getattr(model.refiner, "cell", None)
    if cell is not None:
        out["grad_rnn_input"] = _norm(cell.input_gates.parameters())
    out["grad_bilstm"] = _norm(model.language.lstm.parameters())
    return out
