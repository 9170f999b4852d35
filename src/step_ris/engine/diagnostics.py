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

``write_diagnostics`` and ``log_images`` are the training loop's writers (jsonl and TensorBoard).
"""

from __future__ import annotations

import json
from pathlib import Path

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


def write_diagnostics(out: Path, writer, step: int, stats: dict[str, float]) -> None:
    """Append ``stats`` to ``out/diagnostics.jsonl`` and TensorBoard ``diag/``."""
    with open(out / "diagnostics.jsonl", "a") as f:
        f.write(json.dumps({"step": step, **stats}) + "\n")
    for k, v in stats.items():
        writer.add_scalar(f"diag/{k}", v, step)


def log_images(writer, model: STEPModel, batch: dict, result, step: int) -> None:
    """TensorBoard: target, prediction and every P_t of the first sample of a batch."""
    with torch.no_grad():
        target = batch["mask"][:1].unsqueeze(1).float()  # (1, 1, S, S)
        pred = torch.sigmoid(result.logits[:1].float()).cpu()  # (1, 1, S, S)
        writer.add_images("train/target_prediction", torch.cat([target, pred]), step)
        if result.step_logits is not None:
            steps = torch.sigmoid(result.step_logits[:1].float()).cpu().transpose(0, 1)  # (T, 1, S/4, S/4)
            writer.add_images("train/steps_P_t", steps, step)
        if "image" in batch:
            writer.add_images("train/input", _denormalise(batch["image"][:1]), step)


def _denormalise(images: torch.Tensor) -> torch.Tensor:
    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images * std + mean).clamp(0, 1)
