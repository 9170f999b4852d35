"""One source per name list: the config's allowed values equal the model's registries.

``config.py`` keeps its ``Literal`` types (the config layer imports no torch); these tests fail
as soon as a registry (``BACKBONES``, ``CELLS``, ``Q_NORMS``) and its Literal diverge.
"""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch

from step_ris import config
from step_ris.config import ModelConfig, get_preset, validate
from step_ris.model import step
from step_ris.model.backbones import BACKBONES
from step_ris.model.refiner import CELLS, TEXT_PATHS, Refiner


def test_backbone_literal_equals_registry():
    assert set(typing.get_args(config.Backbone)) == set(BACKBONES)
    assert typing.get_type_hints(ModelConfig)["backbone"] is config.Backbone


def test_cell_literal_equals_registry():
    assert set(typing.get_args(config.Cell)) == set(CELLS)
    assert typing.get_type_hints(ModelConfig)["cell"] is config.Cell


def test_refiner_text_literal_equals_registry():
    assert set(typing.get_args(config.RefinerText)) == set(TEXT_PATHS)
    assert typing.get_type_hints(ModelConfig)["refiner_text"] is config.RefinerText


def test_q_norm_literal_equals_registry():
    if not hasattr(step, "Q_NORMS"):
        pytest.skip("step_ris.model.step.Q_NORMS does not exist yet (the q-norm registry)")
    assert set(typing.get_args(config.QNorm)) == set(step.Q_NORMS)
    assert typing.get_type_hints(ModelConfig)["q_norm"] is config.QNorm


@pytest.mark.parametrize("cell", list(CELLS))
def test_every_registered_cell_runs(cell):
    torch.manual_seed(0)
    refiner = Refiner(cell=cell, filters=4, kernel=3, steps=2)
    q = torch.rand(2, 1, 6, 6)  # (B, 1, H, W)
    state = refiner.start(q)
    logits, state = refiner.step(q, state)
    logits, state = refiner.step(q, state)
    out = refiner.final(logits, [q, q])
    assert logits.shape == out.shape == (2, 1, 6, 6)
    assert (refiner.cell is None) == (CELLS[cell] is None)


def test_unknown_cell_names_the_registry():
    with pytest.raises(ValueError, match="cell='gru'; choose one of: convlstm, convgru, conv1x1"):
        Refiner(cell="gru", filters=4)


@pytest.mark.parametrize(("key", "value"), [("backbone", "vgg16"), ("cell", "gru"), ("q_norm", "l2")])
def test_validate_rejects_a_name_outside_the_registry(key, value):
    """A config built in Python (not parsed from an override) is checked too."""
    cfg = get_preset("tiny")
    bad = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **{key: value}))
    with pytest.raises(ValueError, match=f"model.{key}='{value}' is not allowed; choose one of: "):
        validate(bad)
    assert validate(cfg) is cfg


def test_validate_rejects_film_without_a_convrnn():
    cfg = get_preset("tiny")
    bad = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, cell="conv1x1", refiner_text="film"))
    with pytest.raises(ValueError, match="model.refiner_text=film needs a ConvRNN: set model.cell=convgru"):
        validate(bad)


def test_every_preset_uses_registered_names():
    for name in config.preset_names():
        m = get_preset(name).model
        assert m.backbone in BACKBONES and m.cell in CELLS, name
