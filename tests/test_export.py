"""ONNX export: the exported graph run in onnxruntime matches PyTorch (any number of words, batch 1)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from step_ris import cli
from step_ris.config import get_preset
from step_ris.data.transforms import letterbox_image
from step_ris.model import build_model
from step_ris.predictor import Predictor
from step_ris.pretrained import load_pretrained
from step_ris.text import Vocabulary
from tiny_model import shared_tiny

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from step_ris.export import export_onnx, read_metadata, run_onnx  # noqa: E402

ATOL = 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return shared_tiny(tmp_path_factory)


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "step.onnx"
    code = cli.main(["export", "--format", "onnx", "--model", str(tiny["model"]), "--out", str(out)])
    assert code == 0
    return out


def _compare(path, model, image, tokens, valid):
    got = run_onnx(path, image, tokens, valid)
    with torch.no_grad():
        want = model(image, tokens, valid, return_intermediates=True)
    pairs = [("logits", want.logits), ("step_logits", want.step_logits), ("attention", want.attention),
             ("similarity", want.similarity)]
    if want.match_logits is not None:
        pairs.append(("match_logits", want.match_logits))
    assert set(got) == {name for name, _ in pairs}
    for name, ref in pairs:
        assert got[name].shape == tuple(ref.shape), name
        np.testing.assert_allclose(got[name], ref.numpy(), atol=ATOL, err_msg=name)


def test_onnx_matches_pytorch_on_real_inputs(tiny, exported):
    loaded = load_pretrained(tiny["model"])
    meta = read_metadata(exported)
    assert json.loads(meta["step_ris.vocab"]) == loaded.vocab.to_list()
    assert meta["step_ris.image_size"] == "64" and meta["step_ris.max_words"] == "20"
    assert json.loads(meta["step_ris.config"])["name"] == "tiny"
    predictor = Predictor(loaded.model, loaded.vocab, image_size=64)
    rgb = np.asarray(predictor.load(tiny["image"]))[:, :40]  # 64 x 40: padded on the right
    image, (h, w) = letterbox_image(rgb, 64)
    valid = torch.tensor([[h, w]])
    for expression in ("thing", "the big pink hexagon", "zorglub blue", " ".join(["the blue thing"] * 7)):
        tokens = torch.tensor([predictor.prepare(expression).ids])  # 1, 4, 2 and 20 words
        _compare(exported, loaded.model, image.unsqueeze(0), tokens, valid)
    _compare(exported, loaded.model, image.unsqueeze(0), tokens, torch.tensor([[64, 64]]))


@pytest.mark.parametrize("variant", [
    {"cell": "convlstm", "folds": 2, "q_norm": "max", "reverse": True},
    {"fusion": "concat-conv", "first_step": "uniform", "text_encoder": "lstm"},
    {"backbone": "efficientnet_lite0", "image_size": 96, "q_scale": 10.0},  # the shapes-cpu architecture
    {"match_head": True, "q_norm": "minmax", "q_leak": 0.1},  # the bundled model's no-target decision
    {"cell": "convgru", "refiner_context": "directional", "q_norm": "minmax"},  # whole-grid maps into the ConvRNN
    {"cell": "convgru", "q_heads": 2, "refiner_context": "directional+centroid", "q_norm": "minmax"},  # offsets too
    {"cell": "convgru", "q_heads": 4, "refiner_context": "directional", "q_norm": "minmax", "match_head": True},
])
def test_onnx_parity_for_model_variants(tmp_path, variant):
    cfg = dataclasses.replace(get_preset("tiny").model, **variant)
    vocab = Vocabulary(["the", "red", "circle", "left", "of", "square"])
    torch.manual_seed(0)
    model = build_model(cfg, len(vocab), load_backbone_weights=False).eval()
    path = export_onnx(model, tmp_path / "v.onnx", vocab=vocab, image_size=cfg.image_size)
    g = torch.Generator().manual_seed(1)
    image = torch.randn(1, 3, cfg.image_size, cfg.image_size, generator=g)
    _compare(path, model, image, torch.tensor([[2, 3, 4, 1, 7, 5]]), torch.tensor([[cfg.image_size // 2,
                                                                                   cfg.image_size]]))
    _compare(path, model, image, torch.tensor([[4]]), torch.tensor([[cfg.image_size, cfg.image_size]]))


def test_export_errors_leave_no_file(tiny, tmp_path, capsys):
    code = cli.main(["export", "--format", "onnx", "--model", str(tiny["model"]), "--out",
                     str(tmp_path / "missing" / "m.onnx")])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    code = cli.main(["export", "--format", "onnx", "--model", str(tmp_path / "none"), "--out",
                     str(tmp_path / "m.onnx")])
    assert code == 2 and "model not found" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
