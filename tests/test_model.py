"""The composed STEP network: shapes, every Table 1 variant, determinism, batching, bad input."""

import dataclasses

import pytest
import torch

from step_ris.config import ModelConfig, apply_overrides, get_preset
from step_ris.model import build_model
from step_ris.model.step import level_masks

VOCAB = 30
TINY = get_preset("tiny").model

# Every row of Table 1 plus the K-fold schedule, as config switches on the one code path.
VARIANTS = {
    "ours-1fold": {},
    "no-glove-bilstm": {"text_encoder": "lstm", "word_vectors": "learned"},
    "no-ltr": {"use_ltr": False},
    "1x1-conv": {"cell": "conv1x1"},
    "convgru": {"cell": "convgru"},
    "convlstm": {"cell": "convlstm"},
    "concat-conv": {"fusion": "concat-conv"},
    "ini-ltr-uniform": {"first_step": "uniform"},
    "reverse-step": {"reverse": True},
    "2-fold": {"folds": 2},
    "4-fold": {"folds": 4},
    "5-fold": {"folds": 5, "cell": "convgru"},
    "1x1-embedding": {"embed_kernel": 1},
    "literal-norm": {"embed_norm": "none"},
    "per-level-psi": {"shared_text_embedding": False},
    "q-max-norm": {"q_norm": "max"},
    "q-leak": {"q_leak": 0.1},
    "pretrained-words": {"word_vectors": "glove-6b-50d"},
}


def tokens_batch():
    # two expressions, the second padded; id 1 (unknown word) included
    return torch.tensor([[5, 6, 1, 7], [8, 9, 0, 0]])


def images_batch(size=64, b=2):
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, 3, size, size, generator=g)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_forward_backward_reaches_every_parameter(name):
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, **VARIANTS[name])
    vectors = torch.randn(VOCAB, cfg.word_dim) if cfg.word_vectors != "learned" else None
    model = build_model(cfg, VOCAB, word_vectors=vectors).train()
    out = model(images_batch(), tokens_batch(), torch.tensor([[64, 40], [50, 64]]), return_intermediates=True)
    t = cfg.steps
    assert out.logits.shape == (2, 1, 64, 64)
    assert out.step_logits.shape == (2, t, 16, 16)
    assert out.heatmaps.shape == (2, t, 16, 16)
    assert out.attention.shape == (2, t, 4) and out.similarity.shape == (2, t, 4)
    loss = out.logits.sigmoid().mean() + out.step_logits.mean()
    loss.backward()
    # Every trainable parameter is on the gradient path (a ReLU of Eq. 4 that is off everywhere
    # for one random init may still give an exact zero, so zeros are counted, not forbidden).
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reaches: {missing}"
    zero = [n for n, p in model.named_parameters() if p.requires_grad and p.grad.abs().sum() == 0]
    assert len(zero) <= 6, zero
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad


def test_attention_rows_are_distributions_where_eq1_is_used():
    model = build_model(TINY, VOCAB).eval()
    out = model(images_batch(), tokens_batch(), return_intermediates=True)
    mask = tokens_batch() != 0
    assert torch.allclose(out.attention[:, 0], torch.zeros(2, 4))  # s_1 = final state: no Eq. 1
    assert torch.allclose(out.attention[:, 1:].sum(-1), torch.ones(2, 4), atol=1e-5)
    assert (out.attention[:, :, :][~mask.unsqueeze(1).expand(-1, 5, -1)] == 0).all()
    assert out.levels == (0, 1, 2, 3, 4)
    assert build_model(dataclasses.replace(TINY, reverse=True, folds=2), VOCAB).levels == (4, 3, 2, 1, 0) * 2


@pytest.mark.parametrize("folds", [1, 2, 4, 5])
def test_k_fold_schedule(folds):
    model = build_model(dataclasses.replace(TINY, folds=folds), VOCAB).eval()
    out = model(images_batch(b=1), tokens_batch()[:1], return_intermediates=True)
    assert model.steps == 5 * folds and out.step_logits.shape[1] == 5 * folds


def test_paper_preset_taps_at_320():
    cfg = get_preset("paper-1fold").model
    model = build_model(cfg, VOCAB, load_backbone_weights=False).eval()
    with torch.no_grad():
        feats = model.encode_image(torch.zeros(1, 3, 320, 320))
    assert [tuple(f.shape[1:]) for f in feats] == [
        (72, 80, 80), (264, 80, 80), (520, 40, 40), (1032, 40, 40), (2056, 40, 40)]
    assert cfg.word_dim == 300 and cfg.lstm_hidden == 1000 and cfg.attention_dim == 400
    assert cfg.embed_dim == 1000 and cfg.filters == 32 and cfg.cell == "convlstm" and cfg.folds == 1
    five = get_preset("paper-5fold").model
    assert five.cell == "convgru" and five.steps == 25 and five.image_size == 320


def test_same_seed_same_output():
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = build_model(TINY, VOCAB).eval()
        outs.append(model(images_batch(), tokens_batch()).logits)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("cell", ["convgru", "convlstm"])
def test_padded_batch_equals_one_by_one(cell):
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(TINY, cell=cell, first_step="uniform"), VOCAB).eval()
    images, tokens = images_batch(), tokens_batch()
    valid = torch.tensor([[64, 40], [50, 64]])
    with torch.no_grad():
        batched = model(images, tokens, valid, return_intermediates=True)
        for k in range(2):
            n = int((tokens[k] != 0).sum())
            single = model(images[k:k + 1], tokens[k:k + 1, :n], valid[k:k + 1], return_intermediates=True)
            assert torch.allclose(batched.logits[k], single.logits[0], atol=1e-5)
            assert torch.allclose(batched.attention[k, :, :n], single.attention[0], atol=1e-6)


def test_shared_image_features_equal_full_forward():
    model = build_model(TINY, VOCAB).eval()
    image = images_batch(b=1)
    with torch.no_grad():
        feats = model.encode_image(image)
        shared = model(None, tokens_batch(), features=feats).logits
        full = model(image.expand(2, -1, -1, -1), tokens_batch()).logits
    assert torch.allclose(shared, full, atol=1e-5)


def test_level_masks_follow_valid_extent():
    masks = level_masks(torch.tensor([[64, 32]]), 64, [(16, 16), (8, 8)], 1, "cpu")
    assert masks[0][0].sum() == 16 * 8 and masks[1][0].sum() == 8 * 4
    assert masks[0][0, :, :8].all() and not masks[0][0, :, 8:].any()


# ----------------------------------------------------------------------------- bad input


def test_bad_shapes_and_empty_tokens_raise_clear_errors():
    model = build_model(TINY, VOCAB).eval()
    with pytest.raises(ValueError, match=r"images must have shape \(B, 3, S, S\)"):
        model(torch.zeros(1, 64, 64), tokens_batch()[:1])
    with pytest.raises(ValueError, match="tokens must have shape"):
        model(images_batch(b=1), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="empty token sequence at batch index \\[1\\]"):
        model(images_batch(), torch.tensor([[3, 4], [0, 0]]))
    with pytest.raises(ValueError, match="valid_hw must have shape"):
        model(images_batch(), tokens_batch(), torch.tensor([64, 64]))
    with pytest.raises(ValueError, match="features have batch 3"):
        model(None, tokens_batch(), features=[torch.zeros(3, 8, 4, 4)] * 5)


def test_unknown_preset_key_and_values():
    with pytest.raises(ValueError, match="unknown preset 'nope'.*paper-1fold"):
        get_preset("nope")
    cfg = get_preset("tiny")
    with pytest.raises(ValueError, match="unknown config key 'model.foldz'.*folds"):
        apply_overrides(cfg, ["model.foldz=2"])
    with pytest.raises(ValueError, match="model.cell='gru' is not allowed; choose one of: convlstm, convgru"):
        apply_overrides(cfg, ["model.cell=gru"])
    with pytest.raises(ValueError, match="model.folds='two' must be an integer"):
        apply_overrides(cfg, ["model.folds=two"])
    with pytest.raises(ValueError, match="must look like section.key=value"):
        apply_overrides(cfg, ["model.folds"])
    with pytest.raises(ValueError, match="model.folds=0 must be >= 1"):
        apply_overrides(cfg, ["model.folds=0"])
    with pytest.raises(ValueError, match="vocab_size"):
        build_model(TINY, 2)


def test_overrides_and_serialisation_round_trip():
    cfg = apply_overrides(get_preset("paper-1fold"), ["model.folds=4", "model.cell=convgru", "train.lr=1e-4",
                                                      "model.backbone_weights=none", "train.amp=true"])
    assert cfg.model.folds == 4 and cfg.model.cell == "convgru" and cfg.train.lr == 1e-4 and cfg.train.amp
    assert cfg.model.backbone_weights is None
    from step_ris.config import ExperimentConfig

    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    assert get_preset("paper-1fold") != cfg  # presets are not mutated
    with pytest.raises(ValueError, match="unknown config key 'model.bogus'"):
        ExperimentConfig.from_dict({"model": {"bogus": 1}})
    assert isinstance(ModelConfig().steps, int)


def test_info_command_prints_parameters_and_flops(capsys):
    from step_ris.cli import main

    assert main(["info", "--preset", "tiny", "--vocab-size", "50"]) == 0
    out = capsys.readouterr().out
    for part in ("visual encoder (backbone)", "language encoder", "textual attention (Eq. 1)",
                 "co-embedding (Eqs. 2-4)", "refiner (Eqs. 5-9)", "total", "GFLOPs"):
        assert part in out
    assert main(["info", "--preset", "tiny", "--json"]) == 0
    import json

    info = json.loads(capsys.readouterr().out)
    assert info["forward_gflops"] > 0 and info["parameters"]["total"]["total"] > 0
    assert main(["info", "--preset", "nope"]) == 2
