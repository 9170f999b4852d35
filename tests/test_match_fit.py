"""Fitting the no-target decision on a frozen model (engine/match_fit.py, scripts/fit_match_head.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from step_ris.config import get_preset
from step_ris.data.dataset import ReferDataset, build_vocab
from step_ris.data.shapesref import generate_shapesref
from step_ris.engine.checkpoint import FORMAT, atomic_save, load_checkpoint
from step_ris.engine.evaluate import evaluate
from step_ris.engine.match_fit import (
    balanced_indices,
    bias_for_target_acc,
    fit_logistic,
    fit_match_head,
    match_features,
    with_match_head,
)
from step_ris.model import build_model
from step_ris.pretrained import load_pretrained

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("fit")
    data = base / "g"
    generate_shapesref(data, 40, 5, 64, progress=False, generalized=True)
    vocab = build_vocab(data, "shapesref-g", "train")
    cfg = get_preset("tiny")  # no match head
    torch.manual_seed(0)
    model = build_model(cfg.model, len(vocab), load_backbone_weights=False)
    ckpt = {"format": FORMAT, "config": cfg.to_dict(), "vocab": vocab.to_list(), "model": model.state_dict(),
            "step": 7, "train_seconds": 1.0, "optimizer": {"state": {}}}
    path = base / "run" / "last.pt"
    atomic_save(ckpt, path)
    train = ReferDataset(data, "shapesref-g", "train", vocab, cfg.model.image_size)
    return {"base": base, "data": data, "ckpt": ckpt, "path": path, "train": train, "vocab": vocab}


def test_logistic_fit_separates_and_balances():
    g = torch.Generator().manual_seed(0)
    # 900 targets and 100 no-targets, separable along feature 2 (scaled by 50: standardisation matters).
    y = torch.cat([torch.ones(900), torch.zeros(100)])
    z = torch.randn(1000, 4, generator=g)
    z[:, 2] = (y * 2 - 1) * (1 + torch.rand(1000, generator=g)) * 50
    w, b = fit_logistic(z, y)
    decided = (z @ w + b >= 0).float()
    assert (decided == y).all()
    effect = (w * z.std(0)).abs()  # in standard units: the separating feature carries the decision
    assert effect[2] > 10 * effect[[0, 1, 3]].max()
    with pytest.raises(ValueError, match="both no-target and target"):
        fit_logistic(z, torch.ones(1000))


def test_logistic_fit_gives_a_constant_feature_no_weight():
    """A feature constant up to rounding (max Q_t under q_norm=minmax) must not get a huge weight:
    the bundled model's first head did, and bf16 rounding flipped its decisions."""
    g = torch.Generator().manual_seed(1)
    y = torch.cat([torch.ones(300), torch.zeros(300)])
    z = torch.randn(600, 3, generator=g)
    z[:, 0] += 2 * y  # informative
    z[:, 1] = 10 + 1e-6 * torch.randn(600, generator=g) + 1e-6 * y  # "constant" 10, noise tied to y
    w, b = fit_logistic(z, y)
    assert w[1] == 0 and w[0] > 0.5
    assert w.abs().max() < 10 and abs(b) < 10
    nudged = z.clone()
    nudged[:, 1] += 0.04  # a bf16 rounding step of 10
    assert torch.equal(nudged @ w + b >= 0, z @ w + b >= 0)


def test_operating_point_keeps_the_asked_share_of_targets():
    scores = torch.arange(100, dtype=torch.float32)  # w^T z of 100 target expressions
    b = bias_for_target_acc(scores, 0.95)
    assert int((scores + b >= 0).sum()) == 95
    with pytest.raises(ValueError, match="target_acc"):
        bias_for_target_acc(scores, 1.0)


def test_balanced_indices_draw_both_classes(setup):
    ds = setup["train"]
    idx = balanced_indices(ds, per_class=5, seed=0)
    counts = [sum(ds.meta(i)["target_count"] == 0 for i in idx), sum(ds.meta(i)["target_count"] > 0 for i in idx)]
    assert counts == [5, 5] and idx == sorted(idx) and idx == balanced_indices(ds, per_class=5, seed=0)


def test_fit_keeps_every_other_weight_and_the_masks(setup):
    ckpt, ds = setup["ckpt"], setup["train"]
    fitted, report = fit_match_head(ckpt, ds, per_class=20, progress=False)
    assert fitted["config"]["model"]["match_head"] is True and fitted["config"]["data"]["dataset"] == "shapesref-g"
    assert "optimizer" not in fitted and fitted["step"] == 7 and fitted["match_fit"] == report
    for k, v in ckpt["model"].items():
        assert torch.equal(fitted["model"][k], v), k
    new = [k for k in fitted["model"] if k not in ckpt["model"]]
    assert new and all(k.startswith("match.") for k in new)
    assert report["no_target"] == 20 and report["target"] == 20 and report["trained_on"] == "shapesref"
    assert fitted["config"]["data"]["root"] == str(ds.data.root) == report["root"]  # a new set: named as its data
    fitted_cfg = dict(fitted["config"]["data"], root="data/where-it-trained")  # refit on held-out scenes of its set
    refit, refit_report = fit_match_head({**fitted, "config": {**fitted["config"], "data": fitted_cfg}}, ds,
                                         per_class=20, progress=False)
    assert refit["config"]["data"]["root"] == "data/where-it-trained" and refit_report["root"] == str(ds.data.root)
    kept, report_kept = fit_match_head(ckpt, ds, per_class=20, target_acc=0.9, progress=False)
    assert report_kept["T-acc (fit set)"] == pytest.approx(0.9) and report_kept["target_acc"] == 0.9
    # The head decides on the features it was fitted on as the report says.
    model, _ = with_match_head(fitted)
    model.load_state_dict(fitted["model"])
    z, y = match_features(model, ds, balanced_indices(ds, 20, 0), progress=False)
    decided = (z @ model.match.linear.weight[0] + model.match.linear.bias[0] >= 0).float()
    assert float((decided[y == 0] == 0).float().mean()) == pytest.approx(report["N-acc (fit set)"])
    assert float((decided[y == 1] == 1).float().mean()) == pytest.approx(report["T-acc (fit set)"])
    # Evaluating the fitted model gives the generalized metrics.
    loaded = load_pretrained_from(fitted, setup["base"] / "fitted.pt")
    result = evaluate(loaded.model, ds, limit=20, progress=False)
    assert {"gIoU", "N-acc", "T-acc"} <= set(result)


def load_pretrained_from(ckpt, path):
    atomic_save(ckpt, path)
    return load_pretrained(path)


def test_script_writes_a_run_folder_and_refuses_to_overwrite(setup, tmp_path):
    out = tmp_path / "fitted"
    cmd = [sys.executable, str(ROOT / "scripts" / "fit_match_head.py"), "--checkpoint", str(setup["path"].parent),
           "--root", str(setup["data"]), "--out", str(out), "--per-class", "10", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "match_fit.json").read_text())
    assert report["samples"] == 20 and report["checkpoint"].endswith("last.pt")
    assert json.loads((out / "config.json").read_text())["model"]["match_head"] is True
    assert load_checkpoint(out / "last.pt")["match_fit"]["samples"] == 20
    assert load_pretrained(out).model.match is not None
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode != 0 and "already holds a last.pt" in again.stderr
    # A single-target set cannot fit the decision: a clear error, nothing written.
    single = setup["base"] / "single"
    generate_shapesref(single, 8, 1, 64, progress=False)
    bad = subprocess.run([*cmd[:4], "--root", str(single), "--dataset", "shapesref", "--out", str(tmp_path / "x"),
                          "--per-class", "5", "--quiet"], capture_output=True, text=True)
    assert bad.returncode != 0 and "both no-target and target" in bad.stderr
    assert not (tmp_path / "x").exists()


def test_resuming_a_fitted_model_is_a_clear_error(setup, tmp_path):
    from step_ris.config import ExperimentConfig
    from step_ris.engine.train import train

    fitted, _ = fit_match_head(setup["ckpt"], setup["train"], per_class=5, progress=False)
    atomic_save(fitted, tmp_path / "run" / "last.pt")
    cfg = ExperimentConfig.from_dict(fitted["config"])
    with pytest.raises(ValueError, match="without its optimiser state"):
        train(cfg, tmp_path / "run", resume=True, progress=False)
