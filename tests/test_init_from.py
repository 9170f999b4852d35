"""Fine-tuning from a trained model (train.init_from, step-ris train --init-from)."""

from __future__ import annotations

import json

import pytest
import torch

from step_ris.cli import main
from step_ris.config import apply_overrides, get_preset
from step_ris.data.shapesref import generate_shapesref
from step_ris.engine.checkpoint import load_checkpoint
from step_ris.engine.train import TrainingError, train
from step_ris.pretrained import load_pretrained
from tiny_model import shared_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return shared_tiny(tmp_path_factory)


@pytest.fixture(scope="module")
def gdata(tmp_path_factory):
    out = tmp_path_factory.mktemp("init") / "g"
    generate_shapesref(out, 24, 4, 64, progress=False, generalized=True)
    return out


def test_fine_tune_keeps_the_init_weights_and_word_ids_and_adds_words_and_a_head(tiny, gdata, tmp_path):
    init = load_pretrained(tiny["model"])
    # A different refiner in the preset: the init's architecture wins (logged), the head is added.
    cfg = apply_overrides(get_preset("tiny"), [
        f"data.root={gdata}", "data.dataset=shapesref-g", "model.match_head=true", "model.cell=convlstm",
        f"train.init_from={tiny['model']}", "train.iters=1", "train.lr=1e-12", "train.eval_samples=4"])
    train(cfg, tmp_path / "ft", progress=False)
    ckpt = load_checkpoint(tmp_path / "ft" / "last.pt")
    saved = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert saved["model"]["cell"] == init.config.model.cell and saved["model"]["match_head"] is True
    vocab = ckpt["vocab"]
    old = init.vocab.itos
    assert vocab[: len(old)] == old and {"both", "all"} <= set(vocab[len(old):])
    assert json.loads((tmp_path / "ft" / "vocab.json").read_text()) == vocab
    theirs = init.model.state_dict()
    for key, value in theirs.items():
        mine = ckpt["model"][key]
        if key.startswith("language.words."):
            mine = mine[: value.shape[0]]
        assert torch.allclose(mine.float(), value.float(), atol=1e-8), key  # lr 1e-12: one step moves nothing
    assert any(k.startswith("match.") for k in ckpt["model"]) and not any(k.startswith("match.") for k in theirs)
    # The result loads and reads the new words as words, not <unk>.
    loaded = load_pretrained(tmp_path / "ft")
    assert loaded.vocab.encode("both red circles")[0] == vocab.index("both")


def test_cli_flag_and_clear_errors(tiny, gdata, tmp_path, capsys):
    base = ["train", "--preset", "tiny", "--dataset", "shapesref-g", "--root", str(gdata), "--iters", "1",
            "--set", "train.eval_samples=4", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "ok"), "--init-from", str(tiny["model"])]) == 0
    assert json.loads((tmp_path / "ok" / "config.json").read_text())["train"]["init_from"] == str(tiny["model"])
    cfg = apply_overrides(get_preset("tiny"), [f"data.root={gdata}", "data.dataset=shapesref-g",
                                               f"train.init_from={tmp_path / 'nothing-here'}", "train.iters=1"])
    with pytest.raises(TrainingError, match="train.init_from=.*nothing-here"):
        train(cfg, tmp_path / "bad", progress=False)
    other = apply_overrides(get_preset("tiny"), [f"data.root={gdata}", "data.dataset=shapesref-g", "train.iters=1",
                                                 "model.filters=4", "train.eval_samples=4"])
    train(other, tmp_path / "small", progress=False)
    cfg = apply_overrides(cfg, [f"train.init_from={tmp_path / 'small'}"])
    train(cfg, tmp_path / "from-small", progress=False)  # adopts the init's 4 filters: no shape clash
    assert json.loads((tmp_path / "from-small" / "config.json").read_text())["model"]["filters"] == 4
