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
