"""configs/*.json hold only their differences from their base preset, and every one loads."""

import json
from pathlib import Path

import pytest

from step_ris.config import get_preset

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.json"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_holds_only_its_differences(path):
    raw = json.loads(path.read_text())
    base = get_preset(raw["base"]).to_dict()
    for section in ("model", "data", "train"):
        for key, value in raw.get(section, {}).items():
            assert key in base[section], f"{path.name}: unknown key {section}.{key}"
            assert base[section][key] != value, f"{path.name}: {section}.{key} repeats the base's value {value!r}"
    cfg = get_preset(str(path))
    assert cfg.name == path.stem


def test_there_are_configs():
    assert len(CONFIGS) >= 7


def test_shapes_paper_keeps_every_paper_switch():
    """shapes-paper differs from paper-1fold in scale and in Dice beside BCE (docs/recipes.md), nothing else."""
    import dataclasses

    paper, small = get_preset("paper-1fold"), get_preset("shapes-paper")
    scale = {"backbone", "backbone_weights", "freeze_backbone", "image_size", "lstm_hidden", "attention_dim",
             "embed_dim", "filters", "word_vectors", "word_dim"}
    model_diff = {f.name for f in dataclasses.fields(paper.model)
                  if getattr(paper.model, f.name) != getattr(small.model, f.name)}
    assert model_diff <= scale
    for key in ("embed_norm", "q_scale", "q_leak", "q_norm", "cell", "folds", "match_head", "embed_init"):
        assert getattr(small.model, key) == getattr(paper.model, key)
    t, p = small.train, paper.train
    assert (t.lr, t.weight_decay, t.optimizer, t.poly_power, t.loss_all_steps) == \
        (p.lr, p.weight_decay, p.optimizer, p.poly_power, p.loss_all_steps)
    assert t.dice_weight == 1.0 and p.dice_weight == 0.0


def test_every_preset_supervises_p_t_alone():
    """Eq. 11 reads P_T; shapes-cpu dropped the loss on every P_t (docs/recipes.md, tenth round)."""
    from step_ris.config import PRESETS

    assert not [name for name, cfg in PRESETS.items() if cfg.train.loss_all_steps]
