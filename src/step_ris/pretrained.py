"""Trained models: model folders (Hugging Face style), checkpoints, bundled models, the Hub.

A model folder follows the ``huggingface_hub`` convention of weights in safetensors beside a
``config.json``:

    model.safetensors   every weight (backbone included), read without running code
    config.json         the resolved ExperimentConfig it was trained with
    vocab.json          the word list (``["<pad>", "<unk>", ...]``; ids are positions)
    scores.json         measured metrics (e.g. the output of ``step-ris eval --json``); ``{}`` if none
    README.md           the model card: config, training data, scores, intended use, limitations

One loader reads every kind of model, ``load_pretrained(name_or_path)``:

- a bundled model name (``shapes-cpu``, under ``step_ris/assets/``);
- a model folder, a run folder holding ``last.pt``, or a training checkpoint file;
- ``hf-hub:org/name`` (or ``hf-hub:org/name@revision``): a model folder on the Hugging Face
  Hub, fetched with ``huggingface_hub.snapshot_download`` into the standard hub cache
  (``HF_HUB_CACHE`` / ``HF_HOME``); with ``HF_HUB_OFFLINE=1`` only the cache is read.
  Needs ``pip install 'step-ris[hub]'``.

``save_pretrained(model_or_predictor, folder)`` writes a model folder (atomically),
``export_pretrained(checkpoint, folder)`` makes one from a training checkpoint, and
``push_to_hub(model_or_predictor, "org/name")`` uploads one.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._extras import require
from .config import ExperimentConfig, read_json, validate
from .engine.checkpoint import load_checkpoint
from .fileio import atomic_folder
from .model import STEPModel, build_model
from .text import PAD, UNK, Vocabulary

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_MODEL = "shapes-cpu"
WEIGHTS_FILE, CONFIG_FILE, VOCAB_FILE, SCORES_FILE = "model.safetensors", "config.json", "vocab.json", "scores.json"
CARD_FILE = "README.md"
FOLDER_FILES = (WEIGHTS_FILE, CONFIG_FILE, VOCAB_FILE, SCORES_FILE, CARD_FILE)
FOLDER_FORMAT = "step-ris-model/1"  # stored in the safetensors metadata
HUB_PREFIX = "hf-hub:"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _checked_config(data: Any, source: str) -> ExperimentConfig:
    """``ExperimentConfig.from_dict`` + ``config.validate``; any problem is a ValueError naming ``source``."""
    try:
        return validate(ExperimentConfig.from_dict(data))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: not a valid step-ris config for this version ({e})") from None


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
    cfg = _checked_config(ckpt["config"], source)
    vocab_list = ckpt.get("vocab")
    if not isinstance(vocab_list, list) or vocab_list[:2] != [PAD, UNK] or not all(isinstance(w, str)
                                                                                  for w in vocab_list):
        raise ValueError(f"{source}: missing or malformed vocabulary (a list of words starting with {PAD!r}, "
                         f"{UNK!r})")
    vocab = Vocabulary(vocab_list[2:])
    model = _model_from_parts(cfg, vocab, ckpt["model"], source)
    return model, cfg, vocab


# ----------------------------------------------------------------------------- loading


@dataclass
class PretrainedModel:
    """What ``load_pretrained`` returns: the model (eval mode) and what describes it."""

    model: STEPModel
    config: ExperimentConfig
    vocab: Vocabulary
    scores: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the folder or checkpoint file it came from
    step: int | None = None  # the training step of the weights, when known
    weights_file: str = ""  # the file the weights were read from (hashed by ``identity``)

    @functools.cached_property
    def identity(self) -> dict[str, Any]:
        """``{"path", "sha256", "step"}``: which weights these are (the hash is computed on first use)."""
        return {"path": self.source, "sha256": file_sha256(self.weights_file) if self.weights_file else None,
                "step": self.step}


def bundled_models() -> list[str]:
    """Names of the model folders shipped inside the package (``step_ris/assets/<name>/``)."""
    if not ASSETS.is_dir():
        return []
    return sorted(p.name for p in ASSETS.iterdir() if (p / WEIGHTS_FILE).is_file())


def _hub_folder(name: str) -> Path:
    """``hf-hub:org/name[@revision]`` -> the local snapshot folder (``huggingface_hub.snapshot_download``)."""
    spec = name[len(HUB_PREFIX):]
    repo_id, _, revision = spec.partition("@")
    if not _REPO_ID.match(repo_id):
        raise ValueError(f"{name!r}: a Hub model is named hf-hub:ORG/NAME (optionally @REVISION), e.g. "
                         "hf-hub:my-org/step-shapes")
    hub = require("huggingface_hub", extra="hub", purpose=f"loading {name}")
    try:
        errors = importlib.import_module("huggingface_hub.errors")
    except ImportError:  # huggingface_hub < 0.23 keeps them in utils
        errors = importlib.import_module("huggingface_hub.utils")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        folder = hub.snapshot_download(repo_id=repo_id, revision=revision or None, allow_patterns=list(FOLDER_FILES))
    except getattr(errors, "LocalEntryNotFoundError", ()) as e:
        where = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "the default hub cache"
        why = "HF_HUB_OFFLINE is set" if offline else f"it could not be downloaded ({e})"
        raise ValueError(f"{name}: not in the local hub cache ({where}) and {why}; download it once with "
                         "network access, or pass a local model folder") from None
    except getattr(errors, "RevisionNotFoundError", ()) as e:
        raise ValueError(f"{name}: revision {revision!r} not found ({e})") from None
    except getattr(errors, "RepositoryNotFoundError", ()) as e:
        raise ValueError(f"{name}: no such model repository on the Hub, or it is private ({e})") from None
    except (OSError, getattr(errors, "HfHubHTTPError", OSError)) as e:
        raise ValueError(f"{name}: could not fetch the model from the Hub ({e})") from None
    return Path(folder)


def _resolve(name_or_path: str | os.PathLike) -> Path:
    name = str(name_or_path)
    if name.startswith(HUB_PREFIX):
        return _hub_folder(name)
    path = Path(name_or_path)
    if path.exists():
        return path
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
        raise ValueError(f"no model named {name!r} (bundled models: {known}; a Hub model is hf-hub:ORG/NAME) "
                         f"and no file or folder {path}")
    raise ValueError(f"model not found: {path} (expected a model folder, a run folder or a .pt checkpoint)")


def _read_json(path: Path, what: str) -> Any:
    return read_json(path, what, f"a model folder holds {WEIGHTS_FILE}, {CONFIG_FILE}, {VOCAB_FILE} and {SCORES_FILE}")


def _load_folder(folder: Path) -> tuple[STEPModel, ExperimentConfig, Vocabulary, dict[str, Any], int | None]:
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ValueError(f"{weights}: missing weights file; {folder} is not a step-ris model folder "
                         f"(it needs {WEIGHTS_FILE}, {CONFIG_FILE}, {VOCAB_FILE})")
    cfg = _checked_config(_read_json(folder / CONFIG_FILE, "model config"), str(folder / CONFIG_FILE))
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

    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
        with safe_open(str(weights), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{weights}: corrupt or truncated weights file ({e}); re-export or re-download "
                         "the model") from None
    model = _model_from_parts(cfg, vocab, state, f"{weights} (with {folder / CONFIG_FILE}, {folder / VOCAB_FILE})")
    step = scores.get("step")
    if step is None and str(metadata.get("step", "")).isdigit():
        step = int(metadata["step"])
    return model, cfg, vocab, scores, step


def load_pretrained(name_or_path: str | os.PathLike = DEFAULT_MODEL, device: str | torch.device | None = "cpu"
                    ) -> PretrainedModel:
    """Load a model for inference or evaluation (eval mode, on ``device``): the one loader.

    ``name_or_path``: a bundled model name (``"shapes-cpu"``), a model folder (see the module
    docstring), a run folder holding ``last.pt``, a training checkpoint file, or
    ``hf-hub:org/name[@revision]``. Nothing is unpickled beyond plain tensors and containers
    (``torch.load(weights_only=True)``, safetensors). Missing or corrupt files, invalid config
    values and weights that do not fit the config raise a ``ValueError`` naming the file.
    ``.identity`` of the result says which weights were loaded (path, sha256, step).
    """
    path = _resolve(name_or_path)
    if path.is_dir():
        if (path / WEIGHTS_FILE).is_file() or not (path / "last.pt").is_file():
            model, cfg, vocab, scores, step = _load_folder(path)
            loaded = PretrainedModel(model=model, config=cfg, vocab=vocab, scores=scores, source=str(path),
                                     step=step, weights_file=str(path / WEIGHTS_FILE))
            return _to(loaded, device)
        path = path / "last.pt"
    if path.suffix in (".safetensors", ".json") or path.name == CARD_FILE:
        raise ValueError(f"{path}: pass the model folder ({path.parent}), not one of its files")
    try:
        ckpt = load_checkpoint(path)
    except FileNotFoundError as e:
        raise ValueError(str(e)) from None
    model, cfg, vocab = model_from_checkpoint(ckpt, str(path))
    step = ckpt.get("step") if isinstance(ckpt.get("step"), int) else None
    return _to(PretrainedModel(model=model, config=cfg, vocab=vocab, scores={}, source=str(path), step=step,
                               weights_file=str(path)), device)


def _to(loaded: PretrainedModel, device: str | torch.device | None) -> PretrainedModel:
    loaded.model.to(device or "cpu")
    return loaded


def load_model_for_eval(path: str | Path, device: str | None = None):
    """Deprecated: use ``load_pretrained(path, device)`` (``.model``, ``.config``, ``.vocab``, ``.identity``).

    Returns ``(model, config, vocabulary, identity)`` as before.
    """
    warnings.warn("step_ris.pretrained.load_model_for_eval is deprecated; use load_pretrained(path, device) and "
                  "its .model, .config, .vocab and .identity", DeprecationWarning, stacklevel=2)
    loaded = load_pretrained(path, device)
    return loaded.model, loaded.config, loaded.vocab, loaded.identity


# ----------------------------------------------------------------------------- writing model folders


def _parts(obj: Any, config: ExperimentConfig | None, vocab: Vocabulary | None,
           scores: dict[str, Any] | None) -> tuple[STEPModel, ExperimentConfig, Vocabulary, dict[str, Any]]:
    """(model, config, vocab, scores) of a Predictor, a PretrainedModel or a bare STEPModel."""
    if isinstance(obj, STEPModel):
        model = obj
    elif isinstance(getattr(obj, "model", None), STEPModel):  # Predictor, PretrainedModel
        model = obj.model
        config = config or getattr(obj, "config", None)
        vocab = vocab or getattr(obj, "vocab", None)
        scores = scores if scores is not None else getattr(obj, "scores", None)
    else:
        raise ValueError(f"save_pretrained takes a Predictor, a PretrainedModel or a STEPModel, "
                         f"got {type(obj).__name__}")
    if config is None or vocab is None:
        raise ValueError("a bare STEPModel does not know its config and vocabulary: pass config=ExperimentConfig "
                         "and vocab=Vocabulary (or save a Predictor / load_pretrained result)")
    if not isinstance(config, ExperimentConfig):
        raise ValueError(f"config must be an ExperimentConfig, got {type(config).__name__}")
    validate(config)
    return model, config, vocab, dict(scores or {})


def save_pretrained(model_or_predictor: Any, out_dir: str | os.PathLike, *, config: ExperimentConfig | None = None,
                    vocab: Vocabulary | None = None, scores: dict[str, Any] | None = None, overwrite: bool = False,
                    metadata: dict[str, str] | None = None, card_notes: str = "") -> Path:
    """Write a model folder (see the module docstring) that ``load_pretrained`` reads back.

    model_or_predictor: a ``Predictor``, a ``load_pretrained`` result, or a ``STEPModel`` with
        ``config`` and ``vocab``. scores: measured metrics for scores.json and the model card
        (default: the object's own ``scores``). card_notes: extra Markdown for the card.
    The folder is built beside ``out_dir`` and renamed into place (``fileio.atomic_folder``),
    so ``out_dir`` is absent, its old version, or complete; the weights are checked to load
    into the config's model before anything is moved. An existing non-empty ``out_dir`` is
    replaced only with ``overwrite=True``.
    """
    model, cfg, vocab, scores = _parts(model_or_predictor, config, vocab, scores)
    try:
        scores_text = json.dumps(scores, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"scores cannot be written as JSON ({e})") from None
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder; choose another output path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} already exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    _model_from_parts(cfg, vocab, state, "the model to save")  # the folder will load: same keys and shapes
    meta = {"format": FOLDER_FORMAT, **{str(k): str(v) for k, v in (metadata or {}).items()}}
    card = model_card(cfg, vocab, scores, parameters=sum(v.numel() for v in state.values()), notes=card_notes)

    from safetensors.torch import save_file

    with atomic_folder(out, overwrite=True) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata=meta)
        (tmp / CONFIG_FILE).write_text(cfg.to_json() + "\n", encoding="utf-8")
        (tmp / VOCAB_FILE).write_text(json.dumps(vocab.to_list()) + "\n", encoding="utf-8")
        (tmp / SCORES_FILE).write_text(scores_text + "\n", encoding="utf-8")
        (tmp / CARD_FILE).write_text(card, encoding="utf-8")
    log.info("wrote model folder %s (%d tensors)", out, len(state))
    return out


def export_pretrained(checkpoint_path: str | Path, out_dir: str | Path, scores: dict[str, Any] | None = None, *,
                      overwrite: bool = False) -> Path:
    """Convert a training checkpoint (``last.pt`` or a run folder) into a model folder (``save_pretrained``).

    Optimiser and RNG states are dropped; the training step and the checkpoint's sha256 go
    into the safetensors metadata.
    """
    checkpoint_path = Path(checkpoint_path)
    if checkpoint_path.is_dir():
        checkpoint_path = checkpoint_path / "last.pt"
    if scores is not None and not isinstance(scores, dict):
        raise ValueError(f"scores must be a dict of metrics, got {type(scores).__name__}")
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
    metadata = {"step": str(ckpt.get("step", "")), "checkpoint_sha256": file_sha256(checkpoint_path)}
    return save_pretrained(model, out, config=cfg, vocab=vocab, scores=scores or {}, overwrite=overwrite,
                           metadata=metadata)


def push_to_hub(model_or_predictor: Any, repo_id: str, *, private: bool = False, token: str | None = None,
                commit_message: str = "Upload step-ris model", **save_kwargs: Any) -> str:
    """Save a model folder and upload it to the Hugging Face Hub as ``repo_id`` ("org/name").

    The repository is created when missing (``HfApi.create_repo(exist_ok=True)``) and the
    folder uploaded in one commit (``HfApi.upload_folder``); afterwards anyone loads it with
    ``Predictor.from_pretrained("hf-hub:org/name")``. Needs ``pip install 'step-ris[hub]'``
    and a token (``token=`` or ``huggingface-cli login``). Returns the commit URL.
    """
    if not _REPO_ID.match(repo_id):
        raise ValueError(f"repo_id {repo_id!r} must look like ORG/NAME")
    hub = require("huggingface_hub", extra="hub", purpose="push_to_hub")
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(model_or_predictor, Path(tmp) / "model", **save_kwargs)
        api = hub.HfApi(token=token)
        api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder),
                                 commit_message=commit_message)
    return str(getattr(info, "commit_url", info))


from .model_card import model_card  # noqa: E402,F401 - written into every model folder

__all__ = [
    "DEFAULT_MODEL",
    "HUB_PREFIX",
    "PretrainedModel",
    "bundled_models",
    "export_pretrained",
    "file_sha256",
    "load_model_for_eval",
    "load_pretrained",
    "model_card",
    "model_from_checkpoint",
    "push_to_hub",
    "save_pretrained",
]
