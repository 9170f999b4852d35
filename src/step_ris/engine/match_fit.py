"""Fit the no-target decision (model/match_head.py) on a trained, frozen STEP model.

Training the decision jointly with the segmentation (``model.match_head`` + ``train.match_balance``
on ShapesRef-g) slowed the single-target reading down (docs/benchmarks.md, "Expressions that
match nothing"). This fits the same head, ``m = w^T z + b`` on STEP's pooled statistics z,
after the fact: every other weight stays as it is, so the model's masks do not change; only an
expression whose ``sigmoid(m) < 0.5`` gets the empty mask.

The fit is a class-balanced logistic regression (no-target and target expressions weigh half
each) on standardised z, by L-BFGS with a small L2 penalty; the standardisation is folded into
``w`` and ``b``, so the result is an ordinary ``MatchHead``.

    python scripts/fit_match_head.py --checkpoint runs/shapes-cpu/last.pt \\
        --root data/shapesref-g-cpu --out runs/shapes-cpu-match/last.pt
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ExperimentConfig
from ..data.dataset import ReferDataset
from ..model import STEPModel, build_model
from ..pretrained import model_from_checkpoint
from .evaluate import _by_image


def with_match_head(ckpt: dict[str, Any], source: str = "checkpoint") -> tuple[STEPModel, ExperimentConfig]:
    """The checkpoint's model with a fresh match head (eval mode); every other weight is the checkpoint's own."""
    model, cfg, vocab = model_from_checkpoint(ckpt, source)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, match_head=True))
    out = build_model(cfg.model, len(vocab), load_backbone_weights=False)
    missing, unexpected = out.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not k.startswith("match.") for k in missing):  # cannot happen for a valid checkpoint
        raise ValueError(f"{source}: the model does not fit its own config with a match head "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return out.eval(), cfg


@torch.no_grad()
def match_features(model: STEPModel, dataset: ReferDataset, indices: list[int], *, batch_size: int = 16,
                   progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """z (N, D) float32 of the model's match head and "has a target" (N,) for the samples ``indices``
    (in image order); ``model`` must have a match head (``with_match_head``)."""
    if model.match is None:
        raise ValueError("match_features needs a model with a match head (see with_match_head)")
    captured: list[torch.Tensor] = []
    hook = model.match.linear.register_forward_pre_hook(lambda _m, args: captured.append(args[0].float()))
    rows, order = [], []
    try:
        model.eval()
        for batch_indices, _probs, _valid, _families in _by_image(
                model, dataset, indices, batch_size=batch_size, device="cpu", cache=None, dtype=None, workers=0,
                progress=progress, desc="match features"):
            rows.append(captured.pop())
            order += batch_indices
    finally:
        hook.remove()
    labels = torch.tensor([float(dataset.meta(i)["target_count"] > 0) for i in order])
    return torch.cat(rows), labels


MIN_RELATIVE_SPREAD = 1e-3  # below this std / max(|mean|, 1) a feature counts as constant


def fit_logistic(z: torch.Tensor, y: torch.Tensor, *, l2: float = 1e-3, iters: int = 200) -> tuple[torch.Tensor, float]:
    """Class-balanced logistic regression of y (N,) in {0, 1} on z (N, D): (w (D,), b) in z's own units."""
    if not (y == 0).any() or not (y == 1).any():
        raise ValueError("fitting the no-target decision needs both no-target and target expressions; "
                         "use a generalized set (e.g. ShapesRef-g: step-ris data shapesref --generalized)")
    mean, std = z.mean(0), z.std(0)
    # A feature that is constant up to rounding on the fit set (a saturated max(h_T); max Q_t after
    # q_norm=minmax, which the head read until it took Eq. 4's peaks) carries no information:
    # standardised, its rounding got weights of 1e5 and decisions that flipped under bf16
    # (docs/benchmarks.md, "Why the head was refitted"). It gets weight 0.
    informative = std > MIN_RELATIVE_SPREAD * mean.abs().clamp_min(1.0)
    std = torch.where(informative, std, torch.ones_like(std))
    x = torch.where(informative, (z - mean) / std, torch.zeros_like(z))
    weights = torch.where(y > 0, 0.5 / y.sum(), 0.5 / (1 - y).sum())
    w = torch.zeros(z.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (F.binary_cross_entropy_with_logits(x @ w + b, y, reduction="none") * weights).sum() \
            + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w_raw = torch.where(informative, w / std, torch.zeros_like(w)).detach()
    return w_raw, float(b.detach() - (w_raw * mean).sum())


def balanced_indices(dataset: ReferDataset, per_class: int, seed: int = 0) -> list[int]:
    """Up to ``per_class`` no-target and ``per_class`` target samples, drawn by a fixed seed (sorted)."""
    rng = np.random.default_rng(seed)
    classes = [[], []]
    for i in range(len(dataset)):
        classes[int(dataset.meta(i)["target_count"] > 0)].append(i)
    out = []
    for members in classes:
        take = min(per_class, len(members))
        out += rng.choice(members, size=take, replace=False).tolist() if take else []
    return sorted(out)


def bias_for_target_acc(scores: torch.Tensor, target_acc: float) -> float:
    """The bias b that makes ``scores + b >= 0`` for a ``target_acc`` share of ``scores`` (target expressions)."""
    if not 0.0 < target_acc < 1.0:
        raise ValueError(f"target_acc must be in (0, 1), got {target_acc}")
    return -float(torch.quantile(scores.double(), 1.0 - target_acc))


def fit_match_head(ckpt: dict[str, Any], dataset: ReferDataset, *, per_class: int = 2000, seed: int = 0,
                   target_acc: float | None = None, source: str = "checkpoint",
                   progress: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """A copy of checkpoint ``ckpt`` with a match head fitted on ``dataset``, and the fit's report.

    ``dataset`` must hold no-target and target expressions (a generalized set's train split);
    up to ``per_class`` of each are drawn by ``seed``. ``target_acc`` moves the bias to an
    operating point: that share of the fit set's target expressions is kept (None: the balanced
    fit's own bias). The copy's config has ``match_head=true``
    and, when ``dataset`` is another set than the one it was trained on, names it as its data (a
    refit on held-out scenes of its own set keeps the training root; ``report["root"]`` is the
    fit's either way); its optimiser state is dropped
    (it does not cover the head), so it is a model to use or evaluate, not a run to resume.
    """
    fitted, cfg = with_match_head(ckpt, source)
    indices = balanced_indices(dataset, per_class, seed)
    z, y = match_features(fitted, dataset, indices, progress=progress)
    w, b = fit_logistic(z, y)
    if target_acc is not None:
        b = bias_for_target_acc(z[y == 1] @ w, target_acc)
    with torch.no_grad():
        fitted.match.linear.weight.copy_(w.view(1, -1))
        fitted.match.linear.bias.fill_(b)
    decided = (z @ w + b >= 0).float()
    report = {"fitted_on": f"{dataset.dataset_name}:{dataset.split}", "root": str(dataset.data.root),
              "trained_on": cfg.data.dataset, "samples": len(indices), "seed": seed, "target_acc": target_acc,
              "no_target": int((y == 0).sum()), "target": int((y == 1).sum()),
              "N-acc (fit set)": float((decided[y == 0] == 0).float().mean()),
              "T-acc (fit set)": float((decided[y == 1] == 1).float().mean()),
              "constant features (weight 0)": int((w == 0).sum()), "features": int(w.numel())}
    # The decision makes a model of another set one of the generalized set; a refit on held-out scenes of
    # the set it was trained on keeps its training data (the report names the fit's data either way).
    if cfg.data.dataset != dataset.dataset_name:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dataset=dataset.dataset_name,
                                                                root=str(dataset.data.root)))
    out = {k: v for k, v in ckpt.items() if k not in ("optimizer", "scheduler", "scaler")}
    out["config"] = cfg.to_dict()
    out["model"] = {k: v.detach().clone() for k, v in fitted.state_dict().items()}
    out["match_fit"] = report
    return out, report
