"""``step-ris info``: trainable, frozen and buffer counts are reported apart (model/info.py)."""

from __future__ import annotations

import json

from torch import nn

from step_ris.config import apply_overrides, get_preset
from step_ris.model import build_model, count_parameters
from step_ris.model.build import _saved_buffer_elements
from step_ris.model.info import format_info, model_info

VOCAB = 50


def _bn_buffer_elements(module: nn.Module) -> int:
    """running_mean + running_var + num_batches_tracked of every BatchNorm layer."""
    return sum(2 * m.num_features + 1 for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def test_split_counts_with_frozen_backbone_and_fixed_word_vectors():
    cfg = apply_overrides(get_preset("tiny"), ["model.freeze_backbone=true", "model.word_vectors=glove-6b-50d",
                                               "model.word_dim=50"])
    info = model_info(cfg, vocab_size=VOCAB)
    params = info["parameters"]
    model = build_model(cfg.model, VOCAB, load_backbone_weights=False)
    backbone = sum(p.numel() for p in model.visual.parameters())

    assert params["visual encoder (backbone)"] == {"total": backbone, "trainable": 0, "frozen": backbone,
                                                   "buffers": _bn_buffer_elements(model.visual)}
    # fixed GloVe-shaped vectors (VOCAB x 50) and their known-word mask (VOCAB) are buffers, not parameters;
    # only the UNK vector (50) and the biLSTM are trained
    language = params["language encoder"]
    assert language["buffers"] == VOCAB * 50 + VOCAB
    assert language["frozen"] == 0
    assert language["trainable"] == 50 + sum(p.numel() for p in model.language.lstm.parameters())
    total = params["total"]
    assert total["frozen"] == backbone == info["frozen_parameters"]
    assert total["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert total["trainable"] == info["trainable_parameters"]
    assert total["trainable"] + total["frozen"] == total["total"] == sum(p.numel() for p in model.parameters())
    assert total["buffers"] == info["buffer_elements"] == VOCAB * 50 + VOCAB + _bn_buffer_elements(model)

    text = format_info(info)
    assert f"trainable parameters:             {total['trainable']:>14,}" in text
    assert f"non-trainable, frozen parameters: {backbone:>14,}" in text
    assert f"non-trainable, buffer elements:   {total['buffers']:>14,}" in text
    assert "vocabulary 50 words assumed" in text and "glove-6b-50d (not read" in text


def test_learned_words_are_trainable_parameters():
    info = model_info(get_preset("tiny"), vocab_size=VOCAB)
    language = info["parameters"]["language encoder"]
    assert language["buffers"] == 0 and language["frozen"] == 0
    assert info["frozen_parameters"] == 0
    assert "learned word embeddings (trainable)" in format_info(info)


def test_count_parameters_counts_a_shared_buffer_once():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.BatchNorm2d(3)
            self.b = self.a  # the same module under two names

    twice = Twice()
    assert len(twice.state_dict()) == 10  # a.* and b.*: 2 x (weight, bias, 3 buffers)
    assert _saved_buffer_elements(twice) == 3 + 3 + 1  # running_mean, running_var, num_batches_tracked
    assert _saved_buffer_elements(nn.Linear(2, 2)) == 0


def test_info_json_has_the_split(capsys):
    from step_ris.cli import main

    assert main(["info", "--preset", "tiny", "--vocab-size", str(VOCAB), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    for key in ("trainable_parameters", "frozen_parameters", "buffer_elements"):
        assert isinstance(info[key], int)
    assert info["parameters"]["total"]["trainable"] == info["trainable_parameters"] > 0
    assert set(info["parameters"]["total"]) == {"total", "trainable", "frozen", "buffers"}
    assert count_parameters(build_model(get_preset("tiny").model, VOCAB))["total"]["buffers"] > 0
    assert info["forward_gflops"] > 0
