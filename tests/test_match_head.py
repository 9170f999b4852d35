"""The no-target decision (model/match_head.py): wiring, loss, evaluation (GRES keys), product fields."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from step_ris.config import PRESETS, get_preset
from step_ris.data.dataset import ReferDataset, build_vocab
from step_ris.data.shapesref import generate_shapesref
from step_ris.engine.evaluate import evaluate
from step_ris.engine.losses import match_loss, segmentation_loss
from step_ris.engine.train import train
from step_ris.model import build_model
from step_ris.model.match_head import MatchHead
from step_ris.predictor import Predictor


def tiny_model(vocab_size: int = 30, **changes):
    cfg = dataclasses.replace(get_preset("tiny").model, match_head=True, **changes)
    torch.manual_seed(0)
    return build_model(cfg, vocab_size, load_backbone_weights=False).eval()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gmatch") / "data"
    generate_shapesref(out, 40, 3, 64, progress=False, generalized=True)
    return out


def test_paper_presets_have_no_head_and_the_switch_adds_one():
    for name in ("paper-1fold", "paper-5fold", "shapes-paper", "shapes-cpu"):
        assert PRESETS[name].model.match_head is False
    plain = build_model(get_preset("tiny").model, 30, load_backbone_weights=False)
    assert plain.match is None
    assert plain(torch.randn(2, 3, 64, 64), torch.randint(1, 30, (2, 4))).match_logits is None
    model = tiny_model()
    out = model(torch.randn(3, 3, 64, 64), torch.randint(1, 30, (3, 4)))
    assert out.match_logits.shape == (3,)
    # the head reads h_T (2F), P_T (2) and every Q_t (T): its input size pins that wiring
    assert model.match.linear.in_features == 2 * 8 + 2 + model.steps
    conv1x1 = tiny_model(cell="conv1x1")
    assert conv1x1.match.linear.in_features == 2 + conv1x1.steps


def test_head_reads_only_valid_cells():
    head = MatchHead(filters=4, steps=2)
    valid = torch.zeros(1, 6, 6, dtype=torch.bool)
    valid[:, :3, :4] = True
    hidden, logits = torch.randn(1, 4, 6, 6), torch.randn(1, 1, 6, 6)
    peaks = torch.rand(1, 2)
    before = head(hidden, logits, peaks, valid)
    hidden2, logits2 = hidden.clone(), logits.clone()
    hidden2[:, :, 3:] = 100.0  # padding changes, valid cells do not
    logits2[:, :, :, 4:] = -100.0
    assert torch.allclose(before, head(hidden2, logits2, peaks, valid))
    z = head.features(hidden, logits, peaks, valid)
    assert torch.allclose(z[0, :4], hidden[0, :, :3, :4].mean(dim=(1, 2)))
    assert torch.allclose(z[0, 4:8], hidden[0, :, :3, :4].amax(dim=(1, 2)))
    assert torch.allclose(z[0, 8], logits[0, 0, :3, :4].max())
    assert torch.equal(z[0, 10:], peaks[0])
    q = torch.rand(1, 1, 6, 6)
    q[0, 0, 5, 5] = 9.0  # padding
    assert torch.equal(MatchHead.peak(q, valid), q[:, 0, :3, :4].amax(dim=(1, 2))[:, None])
    with pytest.raises(ValueError, match="ConvRNN output"):
        head(None, logits, peaks, valid)
    with pytest.raises(ValueError, match=r"peaks of shape \(1, 2\)"):
        head(hidden, logits, torch.rand(1, 3), valid)


@pytest.mark.parametrize("q_norm", ["none", "minmax"])
def test_head_reads_eq4_peaks_before_the_normalisation(q_norm):
    """peak_t = max of Eq. 4's heatmap over the valid cells of level l_t, before q_norm and q_scale
    (after minmax every peak would be 1: no information, only rounding)."""
    model = tiny_model(q_norm=q_norm, q_scale=10.0, q_leak=0.1)
    seen = {}
    model.match.register_forward_hook(lambda m, args, out: seen.update(peaks=args[2]))
    images, tokens = torch.randn(2, 3, 64, 64), torch.randint(1, 30, (2, 4))
    valid = torch.tensor([[64, 40], [50, 64]])
    with torch.no_grad():
        out = model(images, tokens, valid, return_intermediates=True)
    expected = torch.stack([torch.stack([torch.where(c > 0, c, 0.1 * c)[b, 0][m[b]].max() for b in range(2)])
                            for c, m in zip(out.cosines, out.masks, strict=True)], dim=1)  # (B, T)
    torch.testing.assert_close(seen["peaks"], expected)
    assert seen["peaks"].std() > 1e-3  # informative, not a constant


def test_head_uses_the_final_convrnn_output():
    model = tiny_model(cell="convlstm")
    images, tokens = torch.randn(2, 3, 64, 64), torch.randint(1, 30, (2, 4))
    seen = {}
    model.match.register_forward_hook(lambda m, args, out: seen.update(hidden=args[0]))
    model.refiner.head.register_forward_hook(lambda m, args, out: seen.setdefault("outs", []).append(args[0]))
    model(images, tokens)
    assert torch.equal(seen["hidden"], seen["outs"][-1])  # h_T, the input of Eq. 9 at the last step


def test_match_loss_is_bce_against_having_a_target():
    logits = torch.tensor([2.0, -1.0, 0.5])
    counts = torch.tensor([0, 1, 3])
    expected = F.binary_cross_entropy_with_logits(logits, torch.tensor([0.0, 1.0, 1.0]))
    assert torch.allclose(match_loss(logits, counts), expected)


def test_balanced_match_loss_gives_each_kind_half():
    logits = torch.tensor([2.0, -1.0, 0.5, 0.0])
    counts = torch.tensor([0, 1, 3, 2])  # one no-target expression, three with targets
    each = F.binary_cross_entropy_with_logits(logits, torch.tensor([0.0, 1.0, 1.0, 1.0]), reduction="none")
    expected = 0.5 * each[0] + 0.5 * each[1:].mean()
    assert torch.allclose(match_loss(logits, counts, balanced=True), expected)
    assert not torch.allclose(match_loss(logits, counts, balanced=True), match_loss(logits, counts))
    one_kind = torch.tensor([1, 2, 1, 1])  # nothing to balance: the plain mean
    assert torch.allclose(match_loss(logits, one_kind, balanced=True), match_loss(logits, one_kind))


def _force(model, bias: float):
    with torch.no_grad():
        model.match.linear.weight.zero_()
        model.match.linear.bias.fill_(bias)


def test_evaluate_reports_gres_and_the_head_empties_predictions(root):
    vocab = build_vocab(root, "shapesref-g", "train")
    val = ReferDataset(root, "shapesref-g", "val", vocab, 64)
    model = tiny_model(len(vocab))
    _force(model, -20.0)  # never matches: every prediction is empty
    result = evaluate(model, val, batch_size=4, progress=False)
    for key in ("gIoU", "cIoU", "N-acc", "T-acc", "by_target_count", "gres_references"):
        assert key in result
    empty = result["gres_references"]["always empty"]
    assert result["N-acc"] == 1.0 and result["T-acc"] == 0.0
    assert result["gIoU"] == pytest.approx(empty["gIoU"])
    assert result["n_no_target"] > 0 and set(result["by_target_count"]) == {"0", "1", "2+"}
    assert result["oIoU"] == 0.0
    from step_ris.engine.evaluate import format_results

    table = format_results(result)
    assert "GRES (" in table and "always empty" in table and "N-acc" in table
    _force(model, 20.0)  # always matches: the masks are the model's own
    matched = evaluate(model, val, batch_size=4, progress=False)
    model.match = None  # the same network without the gate
    ungated = evaluate(model, val, batch_size=4, progress=False)
    assert matched["oIoU"] == ungated["oIoU"] and matched["gIoU"] == ungated["gIoU"]


def test_prediction_matched_score_and_summary(root):
    vocab = build_vocab(root, "shapesref-g", "train")
    model = tiny_model(len(vocab))
    with torch.no_grad():
        model.refiner.head.weight.zero_()
        model.refiner.head.bias.fill_(20.0)  # P_T = 1 everywhere: a full mask unless the head gates it
    predictor = Predictor(model, vocab, image_size=64)
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    _force(model, -20.0)
    none = predictor.predict(image, "the red circle")
    assert not none.matched and not none.mask.any() and none.score < 1e-6
    assert none.summary()["matched"] is False and none.probability.shape == (64, 64)
    _force(model, 20.0)
    some = predictor.predict(image, "the red circle")
    assert some.matched and some.mask.all() and some.score == pytest.approx(1.0)
    assert some.summary()["matched"] is True


def tiny_generalized_run(root, **train):
    """The tiny preset with a match head, training on the ShapesRef-g fixture (``train``: TrainConfig changes)."""
    base = get_preset("tiny")
    return dataclasses.replace(
        base, model=dataclasses.replace(base.model, match_head=True),
        data=dataclasses.replace(base.data, dataset="shapesref-g", root=str(root)),
        train=dataclasses.replace(base.train, log_every=1, eval_every=0, eval_samples=8, **train))


@pytest.mark.parametrize("balance", [False, True])
def test_training_with_the_head_on_shapesref_g(root, tmp_path, monkeypatch, balance):
    cfg = tiny_generalized_run(root, iters=4, match_balance=balance)
    import step_ris.engine.train as trainer

    seen = []
    monkeypatch.setattr(trainer, "match_loss", lambda *a, **k: seen.append(k["balanced"]) or match_loss(*a, **k))
    torch.manual_seed(cfg.train.seed)
    result = train(cfg, tmp_path / "run", progress=False)
    assert seen == [balance] * 4  # train.match_balance reaches the head's loss on every step
    assert result["N-acc"] is not None and "gIoU" in result and result["n_no_target"] > 0
    import json

    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["N-acc"] == result["N-acc"] and set(record["gIoU_by_target_count"]) == {"0", "1", "2+"}
    trained = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=False)["model"]
    fresh = build_model(cfg.model, len(build_vocab(root, "shapesref-g", "train")), load_backbone_weights=False)
    moved = (trained["match.linear.bias"] - fresh.match.linear.bias.detach()).abs().item()
    assert moved > 1e-6  # the head's own loss reached it (Adam moves a bias by about lr per step)


@pytest.mark.parametrize("mask_loss", [True, False])
def test_no_target_mask_loss_switch_picks_the_rows_the_mask_loss_sees(root, tmp_path, monkeypatch, mask_loss):
    cfg = tiny_generalized_run(root, iters=6, batch_size=8, no_target_mask_loss=mask_loss)
    import step_ris.engine.train as trainer

    seen, counts = [], []
    monkeypatch.setattr(trainer, "segmentation_loss",
                        lambda logits, target, **k: seen.append((logits.shape[0], float(target.sum())))
                        or segmentation_loss(logits, target, **k))
    monkeypatch.setattr(trainer, "match_loss", lambda logits, target_count, **k: counts.append(target_count.clone())
                        or match_loss(logits, target_count, **k))
    torch.manual_seed(cfg.train.seed)
    train(cfg, tmp_path / "run", progress=False)
    assert len(seen) == len(counts) == 6
    with_targets = [int((c > 0).sum()) for c in counts]
    assert any(n < 8 for n in with_targets)  # the fixture's batches do hold no-target expressions
    assert [rows for rows, _ in seen] == ([8] * 6 if mask_loss else with_targets)


def test_segmentation_loss_of_an_empty_batch_is_zero_and_backpropagates():
    logits = torch.zeros(0, 1, 8, 8, requires_grad=True)
    loss, parts = segmentation_loss(logits, torch.zeros(0, 8, 8), dice_weight=1.0)
    loss.backward()
    assert float(loss.detach()) == 0.0 and parts == {"bce": 0.0, "dice": 0.0, "loss": 0.0}
    assert logits.grad is not None and logits.grad.shape == (0, 1, 8, 8)


def test_cli_and_batch_say_when_nothing_matches(root, tmp_path, capsys):
    import json

    from PIL import Image

    from step_ris import cli
    from step_ris.batch import predict_jsonl

    vocab = build_vocab(root, "shapesref-g", "train")
    model = tiny_model(len(vocab))
    _force(model, -20.0)
    cfg = dataclasses.replace(get_preset("tiny"), model=dataclasses.replace(get_preset("tiny").model, match_head=True))
    folder = Predictor(model, vocab, image_size=64).save_pretrained(tmp_path / "model", config=cfg)
    image = tmp_path / "scene.png"
    Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(image)
    assert cli.main(["predict", str(image), "the red circle", "--model", str(folder)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["matched"] is False
    assert "nothing in scene.png matches 'the red circle'" in err
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"image": "scene.png", "expression": "the red circle"}) + "\n")
    predict_jsonl(Predictor.from_pretrained(folder), pairs, tmp_path / "masks")
    record = json.loads((tmp_path / "masks" / "results.jsonl").read_text().splitlines()[0])
    assert record["matched"] is False and record["score"] < 1e-6


def test_rethresholding_keeps_the_no_target_decision():
    """A new mask threshold (the demo's slider) must not bring back a mask the decision emptied."""
    from step_ris.predictor import Prediction, decide_mask

    prob = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    empty = Prediction(expression="x", words=["x"], mask=decide_mask(prob, 0.5, 0.2), probability=prob,
                       steps=np.zeros((5, 4, 4)), attention=np.zeros((5, 1)), similarity=np.zeros((5, 1)),
                       match_probability=0.2)
    assert not empty.matched and not empty.with_threshold(0.1).matched
    kept = dataclasses.replace(empty, match_probability=0.9, mask=decide_mask(prob, 0.5, 0.9))
    assert kept.mask.sum() == 8 and kept.with_threshold(0.1).mask.sum() == int((prob >= 0.1).sum())
    assert kept.with_threshold(0.1).threshold == 0.1
    assert decide_mask(prob, 0.5, None).sum() == 8  # no decision: the threshold alone
