"""``train.group_weight``: one step's heatmap Q_t supervised to mark each expression's group (ShapesRef only)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from step_ris.config import apply_overrides, get_preset
from step_ris.data.dataset import ReferDataset, build_vocab, collate
from step_ris.data.errors import DataError
from step_ris.data.refer import ReferData
from step_ris.data.shapesref import generate_shapesref
from step_ris.data.shapesref.grouping import group_filter, group_members
from step_ris.data.transforms import letterbox_mask
from step_ris.engine.checkpoint import load_checkpoint
from step_ris.engine.losses import group_loss
from step_ris.engine.train import train

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("grouping") / "sr"
    generate_shapesref(root, images=40, seed=3, size=64, progress=False)
    return root


def _admits(f: dict, attributes: dict) -> bool:
    return all(f[k] is None or attributes[k] == f[k] for k in ("shape", "colour", "size"))


def test_group_is_the_filter_the_landmark_or_the_head_candidates(shapes: Path) -> None:
    data = ReferData(shapes, "shapesref")
    objects: dict[int, dict[int, dict]] = {}
    for a in data.anns.values():
        objects.setdefault(a["image_id"], {})[a["id"]] = a["attributes"]
    ops = set()
    for ref in data.refs:
        scene = objects[ref["image_id"]]
        for s in ref["sentences"]:
            form = s["logical_form"]
            ops.add(form["op"])
            written = {"filter": form, "relate": form.get("landmark")}.get(form["op"], form.get("of"))
            expected = sorted(i for i, a in scene.items() if _admits(written, a))
            assert group_filter(form) == written
            assert group_members(form, scene) == expected
            if form["op"] == "relate":  # the landmark alone, never the referent
                assert len(expected) == 1 and ref["ann_id"] not in expected
            else:  # the referent is one of its own group
                assert ref["ann_id"] in expected
    assert {"filter", "relate", "ordinal", "extreme"} <= ops
    with pytest.raises(ValueError, match="unknown logical form op 'count'"):
        group_filter({"op": "count", "of": {"op": "filter", "shape": None, "colour": None, "size": None}})


def test_dataset_returns_the_letterboxed_union_of_the_group(shapes: Path) -> None:
    vocab = build_vocab(shapes, "shapesref")
    ds = ReferDataset(shapes, "shapesref", "train", vocab, 64, groups=True)
    plain = ReferDataset(shapes, "shapesref", "train", vocab, 64)
    assert "group" not in plain[0]
    checked = 0
    for i in range(0, len(ds), 7):
        sample = ds.samples[i]
        scene = {a["id"]: a["attributes"] for a in ds.data.anns.values() if a["image_id"] == sample.ref["image_id"]}
        members = group_members(sample.sentence["logical_form"], scene)
        union = np.zeros_like(ds.data.mask(members[0]))
        for a in members:
            union |= ds.data.mask(a)
        item = ds[i]
        assert item["has_group"] is True
        assert torch.equal(item["group"], letterbox_mask(union, 64))
        checked += 1
    assert checked > 10
    ds.samples[1].sentence.pop("logical_form")  # a sentence without a form: no group and no loss, not an error
    item = ds[1]
    assert item["has_group"] is False and not item["group"].any()
    batch = collate([ds[0], ds[1]])
    assert batch["group"].shape == (2, 64, 64) and batch["has_group"].tolist() == [True, False]


def test_group_loss_against_a_loop() -> None:
    torch.manual_seed(0)
    q = torch.rand(3, 4, 4)
    group = (torch.rand(3, 16, 16) > 0.6).float()
    has = torch.tensor([True, False, True])
    total, n = 0.0, 0
    for b in (0, 2):
        for y in range(4):
            for x in range(4):
                g = float(group[b, 4 * y:4 * y + 4, 4 * x:4 * x + 4].mean())  # the cell's covered share
                p = min(max(float(q[b, y, x]), 1e-4), 1 - 1e-4)
                total -= g * math.log(p) + (1 - g) * math.log(1 - p)
                n += 1
    assert float(group_loss(q, group, has)) == pytest.approx(total / n, rel=1e-5)
    dice = 0.0
    for b in (0, 2):
        g = group[b].reshape(4, 4, 4, 4).mean(dim=(1, 3))
        dice += 1 - (2 * float((q[b] * g).sum()) + 1) / (float(q[b].sum()) + float(g.sum()) + 1)
    assert float(group_loss(q, group, has, dice_weight=2.0)) == pytest.approx(total / n + 2.0 * dice / 2, rel=1e-5)
    none = q.clone().requires_grad_(True)
    zero = group_loss(none, group, torch.zeros(3, dtype=torch.bool))
    zero.backward()
    assert float(zero.detach()) == 0.0 and torch.equal(none.grad, torch.zeros_like(q))


@pytest.mark.parametrize(("frozen", "step"), [(True, 1), (False, 3)])
def test_training_with_the_group_loss_reads_the_chosen_heatmap(shapes: Path, tmp_path: Path, monkeypatch,
                                                               frozen: bool, step: int) -> None:
    from step_ris.engine import train as train_module

    seen: list[tuple[float, float]] = []
    real = train_module.group_loss

    def spy(heatmap, group, has_group, *, dice_weight=0.0):
        loss = real(heatmap, group, has_group, dice_weight=dice_weight)
        seen.append((float(loss.detach()), float(real(reference.pop(0), group, has_group, dice_weight=dice_weight))))
        return loss

    reference: list[torch.Tensor] = []
    real_step = train_module.STEPModel.forward

    def forward(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        if out.cosines is not None:  # literal Eq. 4 at level l_t, on the refiner grid, before q_scale
            q = out.cosines[step - 1].detach().clamp_min(0)  # (B, 1, h_l, w_l)
            grid = out.step_logits.shape[-2:]
            reference.append(torch.nn.functional.interpolate(q, size=grid, mode="bilinear").squeeze(1))
        return out

    monkeypatch.setattr(train_module, "group_loss", spy)
    monkeypatch.setattr(train_module.STEPModel, "forward", forward)
    overrides = [f"data.root={shapes}", "train.threads=1", "train.iters=3", "train.group_weight=1.0",
                 "model.embed_norm=none", "model.q_scale=3", f"train.group_step={step}",
                 f"model.freeze_backbone={str(frozen).lower()}"]
    cfg = apply_overrides(get_preset("tiny"), overrides)
    train(cfg, tmp_path / "run", progress=False)
    assert len(seen) == 3
    for got, want in seen:
        assert got == pytest.approx(want, rel=1e-5) and got > 0
    assert load_checkpoint(tmp_path / "run" / "last.pt")["config"]["train"]["group_weight"] == 1.0


def test_bad_group_settings_are_refused() -> None:
    with pytest.raises(ValueError, match=r"train.group_step=6 must be a step of the model, 1..5"):
        apply_overrides(get_preset("tiny"), ["train.group_step=6"])
    with pytest.raises(ValueError, match=r"train.group_weight=-1.0 must be >= 0"):
        apply_overrides(get_preset("tiny"), ["train.group_weight=-1"])
    assert apply_overrides(get_preset("tiny"), ["train.group_step=10", "model.folds=2"]).train.group_step == 10


def test_group_weight_without_logical_forms_is_refused(generated_refer: Path) -> None:
    vocab = build_vocab(generated_refer, "refcoco")
    with pytest.raises(DataError, match="no logical forms .* train.group_weight needs ShapesRef data; set it to 0"):
        ReferDataset(generated_refer, "refcoco", "train", vocab, 64, groups=True)
