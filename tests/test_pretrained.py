"""Model folders (save_pretrained / load_pretrained), the model card, hf-hub: names offline, bad files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from step_ris.config import get_preset
from step_ris.model import build_model
from step_ris.predictor import Predictor
from step_ris.pretrained import (
    file_sha256,
    load_model_for_eval,
    load_pretrained,
    push_to_hub,
    save_pretrained,
)
from step_ris.text import Vocabulary
from tiny_model import shared_tiny

FILES = ["README.md", "config.json", "model.safetensors", "scores.json", "vocab.json"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return shared_tiny(tmp_path_factory)


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- save_pretrained


def test_save_pretrained_round_trip_from_a_predictor_and_a_bare_model(tiny, tmp_path):
    predictor = Predictor.from_pretrained(tiny["model"])
    out = predictor.save_pretrained(tmp_path / "copy", scores={"oIoU": 0.25})
    assert sorted(p.name for p in out.iterdir()) == FILES
    loaded = load_pretrained(out)
    assert same_weights(loaded.model, predictor.model) and loaded.vocab == predictor.vocab
    assert loaded.config == predictor.config and loaded.scores == {"oIoU": 0.25}

    cfg = get_preset("tiny")
    vocab = Vocabulary(["the", "red", "circle"])
    torch.manual_seed(1)
    model = build_model(cfg.model, len(vocab), load_backbone_weights=False)
    with pytest.raises(ValueError, match="pass config=ExperimentConfig and vocab=Vocabulary"):
        save_pretrained(model, tmp_path / "bare")
    save_pretrained(model, tmp_path / "bare", config=cfg, vocab=vocab)
    assert same_weights(load_pretrained(tmp_path / "bare").model, model)
    with pytest.raises(ValueError, match="not empty"):
        save_pretrained(model, tmp_path / "bare", config=cfg, vocab=vocab)
    wrong = Vocabulary(["the", "red"])  # one word less than the embedding has rows
    with pytest.raises(ValueError, match="do not match"):
        save_pretrained(model, tmp_path / "bare", config=cfg, vocab=wrong, overwrite=True)
    assert same_weights(load_pretrained(tmp_path / "bare").model, model)  # the old folder is untouched
    with pytest.raises(ValueError, match="Predictor, a PretrainedModel or a STEPModel"):
        save_pretrained("model.pt", tmp_path / "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare", "copy"]  # no temporary folder left


def test_model_folder_files_are_not_private(tiny, tmp_path):
    umask = os.umask(0o022)
    try:
        out = save_pretrained(load_pretrained(tiny["model"]), tmp_path / "m")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f.name  # readable by the others who load it


def test_model_card(tiny, tmp_path):
    scores = {"dataset": "shapesref", "step": 8000, "train_minutes": 64.5, "limit": 1000,
              "splits": {"val": {"oIoU": 0.701, "mIoU": 0.733, "prec@0.5": 0.83, "prec@0.7": 0.7, "prec@0.9": 0.2,
                                 "n": 1000}}}
    out = save_pretrained(load_pretrained(tiny["model"]), tmp_path / "m", scores=scores)
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: step-ris\n") and "datasets:\n- shapesref" in card
    for section in ("## Config", "## Training data", "## Scores", "## Intended use", "## Limitations"):
        assert section in card
    assert "| preset | `tiny` |" in card and "| input size S | 64 |" in card
    assert "| val | 1000 | 0.701 | 0.733 | 0.830 | 0.700 | 0.200 |" in card
    assert "step-ris eval --checkpoint MODEL_FOLDER --dataset shapesref" in card and "--limit 1000" in card
    assert "trained steps: 8000" in card and "synthetic" in card
    generalized = {"dataset": "shapesref-g", "limit": 1000,
                   "splits": {"val": {"oIoU": 0.6, "mIoU": 0.6, "gIoU": 0.71, "N-acc": 0.85, "T-acc": 0.97, "n": 1000}},
                   "also": {"shapesref": {"val": {"oIoU": 0.62, "mIoU": 0.7, "n": 1000}}}}
    folder_g = save_pretrained(load_pretrained(tiny["model"]), tmp_path / "g", scores=generalized)
    card_g = (folder_g / "README.md").read_text()
    assert "| split | n | oIoU | mIoU | prec@0.5 | prec@0.7 | prec@0.9 | gIoU | N-acc | T-acc |" in card_g
    assert "| val | 1000 | 0.600 | 0.600 | - | - | - | 0.710 | 0.850 | 0.970 |" in card_g
    assert "| shapesref:val | 1000 | 0.620 | 0.700 | - | - | - | - | - | - |" in card_g
    empty = save_pretrained(load_pretrained(tiny["model"]), tmp_path / "e", scores={})
    assert "No measured scores" in (empty / "README.md").read_text()


# ----------------------------------------------------------------------------- one loader


def test_identity_and_the_deprecated_loader(tiny):
    loaded = load_pretrained(tiny["checkpoint"])
    assert loaded.identity == {"path": str(tiny["checkpoint"]), "sha256": file_sha256(tiny["checkpoint"]),
                               "step": 0}
    folder = load_pretrained(tiny["model"])
    assert folder.identity["sha256"] == file_sha256(tiny["model"] / "model.safetensors")
    assert folder.identity["step"] == 0  # from the safetensors metadata
    with pytest.warns(DeprecationWarning, match="load_pretrained"):
        model, cfg, vocab, identity = load_model_for_eval(tiny["checkpoint"])
    assert same_weights(model, loaded.model) and cfg == loaded.config and identity == loaded.identity


@pytest.mark.parametrize("key, value, message", [
    ("image_size", -5, "model.image_size=-5"),
    ("max_words", 0, "model.max_words=0"),
    ("folds", 0, "model.folds=0"),
])
def test_invalid_config_values_are_rejected_at_load(tiny, tmp_path, key, value, message):
    folder = tmp_path / "m"
    shutil.copytree(tiny["model"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model"][key] = value
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=message) as err:
        load_pretrained(folder)
    assert str(folder / "config.json") in str(err.value)

    ckpt = torch.load(tiny["checkpoint"], weights_only=True)
    ckpt["config"]["model"][key] = value
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=message) as err:
        load_pretrained(tmp_path / "bad.pt")
    assert "bad.pt" in str(err.value)


def test_checkpoint_whose_model_is_not_a_dict(tiny, tmp_path):
    ckpt = torch.load(tiny["checkpoint"], weights_only=True)
    for bad, what in ((["not", "a", "dict"], "list"), (torch.zeros(3), "Tensor"), ({"w": [1, 2]}, "entry 'w'")):
        torch.save({**ckpt, "model": bad}, tmp_path / "odd.pt")
        with pytest.raises(ValueError, match="odd.pt.*'model' entry") as err:
            load_pretrained(tmp_path / "odd.pt")
        assert what in str(err.value)


class Payload:
    """A pickled object that would run code when loaded without weights_only."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_checkpoint_that_could_run_code_is_refused_plainly(tiny, tmp_path):
    ckpt = torch.load(tiny["checkpoint"], weights_only=True)
    path = tmp_path / "evil.pt"
    torch.save({**ckpt, "extra": Payload()}, path)
    with pytest.raises(ValueError) as err:
        load_pretrained(path)
    message = str(err.value)
    assert "evil.pt: refused" in message and "could run code" in message
    assert "weights_only" not in message and "trust" not in message  # no advice to load it anyway


# ----------------------------------------------------------------------------- hf-hub: names, offline


def hub_cache(root: Path, repo: str, folder: Path, revision: str = "0" * 40) -> Path:
    """A Hugging Face hub cache holding ``folder`` as ``repo``, laid out as huggingface_hub writes it."""
    org, name = repo.split("/")
    base = root / f"models--{org}--{name}"
    snapshot = base / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (base / "blobs").mkdir()
    for f in sorted(folder.iterdir()):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, base / "blobs" / digest)
        (snapshot / f.name).symlink_to(Path("..", "..", "blobs", digest))
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(revision)
    return snapshot


def run_offline(cache: Path, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent / "hf-home"),
           "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_hf_hub_names_resolve_through_the_hub_cache_offline(tiny, tmp_path):
    pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hub"
    hub_cache(cache, "step-org/tiny-step", tiny["model"], revision="a" * 40)
    image = tiny["image"]
    code = f"""
import json, sys
import numpy as np
from step_ris import Predictor
from step_ris.pretrained import load_pretrained
local = Predictor.from_pretrained({str(tiny['model'])!r})
for name in ("hf-hub:step-org/tiny-step", "hf-hub:step-org/tiny-step@main", "hf-hub:step-org/tiny-step@{'a' * 40}"):
    hub = Predictor.from_pretrained(name)
    assert "models--step-org--tiny-step/snapshots/" in hub.source, hub.source
    a = hub.predict({str(image)!r}, "the blue thing").probability
    b = local.predict({str(image)!r}, "the blue thing").probability
    assert np.abs(a - b).max() == 0
errors = []
for name in ("hf-hub:step-org/missing", "hf-hub:step-org/tiny-step@v9", "hf-hub:no-slash"):
    try:
        load_pretrained(name)
    except ValueError as e:
        errors.append(str(e))
print(json.dumps(errors))
"""
    proc = run_offline(cache, code)
    assert proc.returncode == 0, proc.stderr
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "hf-hub:step-org/missing: not in the local hub cache" in errors[0] and "HF_HUB_OFFLINE" in errors[0]
    assert "hf-hub:step-org/tiny-step@v9" in errors[1]
    assert "hf-hub:ORG/NAME" in errors[2]

    # and the command line, with the hub name as --model
    out = tmp_path / "mask.png"
    cli = f"""
import sys
from step_ris.cli import main
sys.exit(main(["predict", {str(image)!r}, "the blue thing", "--model", "hf-hub:step-org/tiny-step",
               "--out", {str(out)!r}]))
"""
    proc = run_offline(cache, cli)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and json.loads(proc.stdout)["model"].endswith("snapshots/" + "a" * 40)


def test_hub_names_without_huggingface_hub_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"needs the 'huggingface_hub' package.*pip install 'step-ris\[hub\]'"):
        load_pretrained("hf-hub:org/name")


def test_push_to_hub_uploads_a_model_folder(tiny, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, **kw):
            calls.append(("create_repo", kw))

        def upload_folder(self, **kw):
            files = sorted(p.name for p in Path(kw["folder_path"]).iterdir())
            calls.append(("upload_folder", kw["repo_id"], files))
            return type("Commit", (), {"commit_url": "https://example.invalid/commit/1"})()

    monkeypatch.setattr(hub, "HfApi", FakeApi)
    url = push_to_hub(load_pretrained(tiny["model"]), "step-org/tiny-step", token="t0k", private=True)
    assert url == "https://example.invalid/commit/1"
    assert calls[0] == ("init", "t0k")
    assert calls[1][0] == "create_repo" and calls[1][1]["private"] and calls[1][1]["exist_ok"]
    assert calls[2] == ("upload_folder", "step-org/tiny-step", FILES)
    with pytest.raises(ValueError, match="ORG/NAME"):
        push_to_hub(load_pretrained(tiny["model"]), "no-slash")


def test_predictions_from_a_saved_folder_are_identical(tiny, tmp_path):
    predictor = Predictor.from_pretrained(tiny["checkpoint"])
    again = Predictor.from_pretrained(predictor.save_pretrained(tmp_path / "m"))
    a = predictor.predict(tiny["image"], "the pink hexagon").probability
    b = again.predict(tiny["image"], "the pink hexagon").probability
    assert np.array_equal(a, b)


def test_model_card_of_a_fine_tuned_model_with_a_no_target_decision():
    import dataclasses

    from step_ris.config import get_preset
    from step_ris.model_card import model_card
    from step_ris.text import Vocabulary

    cfg = get_preset("tiny")
    with_head = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, match_head=True))
    scores = {"init": {"model": "runs/a", "steps": 10}, "match_fit": {"fitted_on": "shapesref-g:train",
                                                                      "samples": 40, "target_acc": 0.95}}
    card = model_card(with_head, Vocabulary(["red"]), scores)
    held_out = model_card(with_head, Vocabulary(["red"]), {
        "root": "data/scored-here", "limit": 10, "splits": {"val": {"oIoU": 0.5, "n": 10}},
        "match_fit": {"fitted_on": "shapesref-g:train", "root": "data/held-out", "samples": 40}})
    assert "fitted on `shapesref-g:train` of `data/held-out`: 40" in held_out
    assert "--root data/scored-here --split val" in held_out and f"--root {cfg.data.root} " not in held_out
    assert "- fine-tuned from: runs/a (steps 10)" in card
    assert "no-target decision fitted on `shapesref-g:train`: 40 expressions" in card and "95% of targets" in card
    assert "empties it when nothing matches" in card and "always returns a mask" not in card
    assert "always returns a mask" in model_card(cfg, Vocabulary(["red"]), {})
    scores["match_fit"]["target_acc"] = 0.985  # the bundled model's operating point: not rounded to 98%
    assert "threshold keeping 98.5% of targets" in model_card(with_head, Vocabulary(["red"]), scores)
