"""Loading trained models: from a run's checkpoint (``last.pt``) or a shipped model folder.

A shipped model is a folder of four files:

    model.safetensors   every weight (backbone included), read without running code
    config.json         the resolved ExperimentConfig it was trained with
    vocab.json          the word list (``["<pad>", "<unk>", ...]``; ids are positions)
    scores.json         measured metrics (e.g. the output of ``step-ris eval --json``); ``{}`` if none

``export_pretrained`` writes such a folder from a training checkpoint; ``load_pretrained``
reads a bundled model by name (``shapes-cpu``, under ``step_ris/assets/``), a folder, a run
folder holding ``last.pt``, or a checkpoint file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import ExperimentConfig, read_json
from .engine.checkpoint import load_checkpoint
from .model import STEPModel, build_model
from .text import PAD, UNK, Vocabulary

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_MODEL = "shapes-cpu"
WEIGHTS_FILE, CONFIG_FILE, VOCAB_FILE, SCORES_FILE = "model.safetensors", "config.json", "vocab.json", "scores.json"
FOLDER_FORMAT = "step-ris-model/1"  # stored in the safetensors metadata


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _model_from_parts(cfg: ExperimentConfig, vocab: Vocabulary, state: dict[str, torch.Tensor],
                      source: str) -> STEPModel:
    """Build ``cfg``'s model and load ``state`` into it; a mismatch is a ValueError naming ``source``."""
    model = build_model(cfg.model, len(vocab), load_backbone_weights=False)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        detail = "; ".join(line.strip() for line in str(e).splitlines()[1:4] if line.strip())
        raise ValueError(f"{source}: weights do not match its config ({detail}); the files belong to "
                         "different models") from None
    if missing or unexpected:
        raise ValueError(f"{source}: weights do not match its config (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}); the file belongs to another model")
    return model.eval()


def model_from_checkpoint(ckpt: dict[str, Any], source: str = "checkpoint") -> tuple[STEPModel, ExperimentConfig,
                                                                                      Vocabulary]:
    """Build the model a checkpoint dict describes and load its weights (strict)."""
    try:
        cfg = ExperimentConfig.from_dict(ckpt["config"])
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: its config does not match this version of step-ris ({e})") from None
    vocab_list = ckpt.get("vocab")
    if not isinstance(vocab_list, list) or vocab_list[:2] != ["<pad>", "<unk>"]:
        raise ValueError(f"{source}: missing or malformed vocabulary")
    vocab = Vocabulary(vocab_list[2:])
    model = _model_from_parts(cfg, vocab, ckpt["model"], source)
    return model, cfg, vocab


def load_model_for_eval(path: str | Path, device: str | None = None):
    """(model, config, vocabulary, identity) from a training checkpoint, a run or model folder, or a name."""
    path = Path(path)
    if path.is_dir() and (path / "last.pt").is_file() and not (path / WEIGHTS_FILE).is_file():
        path = path / "last.pt"
    if not path.is_file():  # a shipped model folder or a bundled model name
        loaded = load_pretrained(path, device or "cpu")
        source = Path(loaded.source)
        identity = {"path": str(source), "sha256": file_sha256(source / WEIGHTS_FILE),
                    "step": loaded.scores.get("step")}
        return loaded.model, loaded.config, loaded.vocab, identity
    ckpt = load_checkpoint(path)
    model, cfg, vocab = model_from_checkpoint(ckpt, str(path))
    model.to(device or "cpu")
    identity = {"path": str(path), "sha256": file_sha256(path), "step": ckpt.get("step")}
    return model, cfg, vocab, identity


# ----------------------------------------------------------------------------- shipped model folders


@dataclass
class PretrainedModel:
    """What ``load_pretrained`` returns: the model (eval mode) and what describes it."""

    model: STEPModel
    config: ExperimentConfig
    vocab: Vocabulary
    scores: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the folder or checkpoint file it came from


def bundled_models() -> list[str]:
    """Names of the model folders shipped inside the package (``step_ris/assets/<name>/``)."""
    if not ASSETS.is_dir():
        return []
    return sorted(p.name for p in ASSETS.iterdir() if (p / WEIGHTS_FILE).is_file())


def export_pretrained(checkpoint_path: str | Path, out_dir: str | Path, scores: dict[str, Any] | None = None, *,
                      overwrite: bool = False) -> Path:
    """Convert a training checkpoint (``last.pt`` or a run folder) into a shipped model folder.

    The folder is written to a temporary sibling and renamed into place, so ``out_dir`` is
    either absent, the old folder, or complete. The weights are checked against the config
    (the model is built and loaded) before anything is written. Optimiser and RNG states are
    dropped. An existing non-empty ``out_dir`` is replaced only with ``overwrite=True``.
    """
    checkpoint_path = Path(checkpoint_path)
    if checkpoint_path.is_dir():
        checkpoint_path = checkpoint_path / "last.pt"
    if scores is not None and not isinstance(scores, dict):
        raise ValueError(f"scores must be a dict of metrics, got {type(scores).__name__}")
    try:
        scores_text = json.dumps(scores or {}, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"scores cannot be written as JSON ({e})") from None
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder; choose another output path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} already exists and is not empty; pass overwrite=True (--overwrite) to replace it")

    try:
        ckpt = load_checkpoint(checkpoint_path)
    except FileNotFoundError as e:
        raise ValueError(f"{e}; pass a run's last.pt or its run folder") from None
    model, cfg, vocab = model_from_checkpoint(ckpt, str(checkpoint_path))
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {"format": FOLDER_FORMAT, "step": str(ckpt.get("step", "")),
                "checkpoint_sha256": file_sha256(checkpoint_path)}

    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata=metadata)
        (tmp / CONFIG_FILE).write_text(cfg.to_json() + "\n")
        (tmp / VOCAB_FILE).write_text(json.dumps(vocab.to_list()) + "\n")
        (tmp / SCORES_FILE).write_text(scores_text + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is not
        for file in tmp.iterdir():
            file.chmod(0o644)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote model folder %s (%d tensors, step %s)", out, len(state), metadata["step"] or "?")
    return out


def _resolve(name_or_path: str | os.PathLike) -> Path:
    path = Path(name_or_path)
    if path.exists():
        return path
    name = str(name_or_path)
    if "/" not in name and os.sep not in name and not name.endswith((".pt", ".json", ".safetensors")):
        if (ASSETS / name / WEIGHTS_FILE).is_file():
            return ASSETS / name
        if name == DEFAULT_MODEL:
            raise ValueError(
                f"the bundled model {name!r} is not installed in this copy of step-ris "
                f"({ASSETS / name} has no {WEIGHTS_FILE}); pass a model folder or a training checkpoint "
                "instead (--model PATH), or make one with: step-ris export --format folder --model runs/x/last.pt "
                "--out MODEL_DIR")
        known = ", ".join(bundled_models()) or "none installed"
        raise ValueError(f"no model named {name!r} (bundled models: {known}) and no file or folder {path}")
    raise ValueError(f"model not found: {path} (expected a model folder, a run folder or a .pt checkpoint)")


def _read_json(path: Path, what: str) -> Any:
    return read_json(path, what, f"a model folder holds {WEIGHTS_FILE}, {CONFIG_FILE}, {VOCAB_FILE} and {SCORES_FILE}")


def _load_folder(folder: Path) -> tuple[STEPModel, ExperimentConfig, Vocabulary, dict[str, Any]]:
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ValueError(f"{weights}: missing weights file; {folder} is not a step-ris model folder "
                         f"(it needs {WEIGHTS_FILE}, {CONFIG_FILE}, {VOCAB_FILE})")
    try:
        cfg = ExperimentConfig.from_dict(_read_json(folder / CONFIG_FILE, "model config"))
    except (ValueError, TypeError) as e:
        if str(e).startswith(str(folder)):
            raise
        raise ValueError(f"{folder / CONFIG_FILE}: not a step-ris config for this version ({e})") from None
    itos = _read_json(folder / VOCAB_FILE, "vocabulary")
    if not isinstance(itos, list) or itos[:2] != [PAD, UNK] or not all(isinstance(w, str) for w in itos):
        raise ValueError(f"{folder / VOCAB_FILE}: not a step-ris vocabulary (a JSON list of words starting "
                         f"with {PAD!r}, {UNK!r})")
    try:
        vocab = Vocabulary(itos[2:])
    except ValueError as e:
        raise ValueError(f"{folder / VOCAB_FILE}: {e}") from None
    scores_path = folder / SCORES_FILE
    scores = _read_json(scores_path, "scores") if scores_path.is_file() else {}
    if not isinstance(scores, dict):
        raise ValueError(f"{scores_path}: expected a JSON object of metrics, got {type(scores).__name__}")

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{weights}: corrupt or truncated weights file ({e}); re-export or re-download "
                         "the model") from None
    model = _model_from_parts(cfg, vocab, state, f"{weights} (with {folder / CONFIG_FILE}, {folder / VOCAB_FILE})")
    return model, cfg, vocab, scores


def load_pretrained(name_or_path: str | os.PathLike = DEFAULT_MODEL, device: str | torch.device = "cpu"
                    ) -> PretrainedModel:
    """Load a model for inference (eval mode, on ``device``).

    ``name_or_path``: a bundled model name (``"shapes-cpu"``), a model folder (see the module
    docstring), a run folder holding ``last.pt``, or a training checkpoint file. Nothing is
    unpickled beyond plain tensors and containers (``torch.load(weights_only=True)``,
    safetensors). Missing or corrupt files and weights that do not fit the config raise a
    ``ValueError`` naming the file.
    """
    path = _resolve(name_or_path)
    if path.is_dir():
        if (path / WEIGHTS_FILE).is_file() or not (path / "last.pt").is_file():
            model, cfg, vocab, scores = _load_folder(path)
        else:
            path = path / "last.pt"
    if path.is_file():
        if path.suffix in (".safetensors", ".json"):
            raise ValueError(f"{path}: pass the model folder ({path.parent}), not one of its files")
        try:
            ckpt = load_checkpoint(path)
        except FileNotFoundError as e:
            raise ValueError(str(e)) from None
        model, cfg, vocab = model_from_checkpoint(ckpt, str(path))
        scores = {}
    return PretrainedModel(model=model.to(device), config=cfg, vocab=vocab, scores=scores, source=str(path))


__all__ = [
    "DEFAULT_MODEL",
    "PretrainedModel",
    "bundled_models",
    "export_pretrained",
    "file_sha256",
    "load_model_for_eval",
    "load_pretrained",
    "model_from_checkpoint",
]
