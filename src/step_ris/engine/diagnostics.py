"""Training diagnostics for Eq. 4: is the STEP heatmap alive, and does gradient reach its inputs?

Logged every ``train.log_every`` steps when ``train.diagnostics`` is on (``diagnostics.jsonl`` in
the run folder and TensorBoard ``diag/``). Per step t of the ConvRNN:

- ``dead_t``: share of valid cells where Q_t = 0, i.e. <phi, psi> <= 0 (no gradient passes max(0, .));
- ``cos_mean_t``, ``cos_std_t``: mean and spread of <phi, psi> over the valid cells;
- ``q_max_t``: the largest Q_t (averaged over the batch).

And the gradient norms reaching W_v (Eq. 2), W_s (Eq. 3), the ConvRNN input weights W^* (Eqs. 5-8)
and the biLSTM (Sec. 3.2) (``grad_*``), beside the norms of those weights themselves (``norm_*``):
with Adam's coupled L2 weight decay, a weight whose loss gradient is small shrinks by about lr per
step whatever its size, and ``norm_*`` shows it. docs/recipes.md reads them.
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


def _norm(tensors) -> float:
    norms = [x.detach().float().norm() for x in tensors if x is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


def _groups(model: STEPModel) -> dict[str, list[torch.nn.Parameter]]:
    """The weights the diagnostics watch: W_v, W_s, the ConvRNN input weights, the biLSTM."""
    groups = {}
    fusion = model.fusion
    if hasattr(fusion, "visual") and hasattr(fusion, "text"):
        groups["W_v"] = list(fusion.visual.parameters())
        groups["W_s"] = list(fusion.text.parameters())
    cell = getattr(model.refiner, "cell", None)
    if cell is not None:
        groups["rnn_input"] = list(cell.input_gates.parameters())
    groups["bilstm"] = list(model.language.lstm.parameters())
    return groups


def gradient_norms(model: STEPModel) -> dict[str, float]:
    """L2 norms (after backward) of the gradients reaching the inputs of Eq. 4 and the ConvRNN
    (``grad_*``) and of those weights (``norm_*``)."""
    out = {}
    for name, params in _groups(model).items():
        out[f"grad_{name}"] = _norm(p.grad for p in params)
        out[f"norm_{name}"] = _norm(params)
    return out
