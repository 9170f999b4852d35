"""Loading trained models: from a run's checkpoint (``last.pt``) or a shipped model folder."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


from .config import ExperimentConfig
from .engine.checkpoint import load_checkpoint
from .model import STEPModel, build_model
from .text import Vocabulary


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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
    model = build_model(cfg.model, len(vocab), load_backbone_weights=False)
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    if missing or unexpected:
        raise ValueError(f"{source}: weights do not match its config (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}); the file belongs to another model")
    return model.eval(), cfg, vocab


def load_model_for_eval(path: str | Path, device: str | None = None):
    """(model, config, vocabulary, identity) from a training checkpoint file."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    ckpt = load_checkpoint(path)
    model, cfg, vocab = model_from_checkpoint(ckpt, str(path))
    model.to(device or "cpu")
    identity = {"path": str(path), "sha256": file_sha256(path), "step": ckpt.get("step")}
    return model, cfg, vocab, identity


__all__ = ["file_sha256", "load_model_for_eval", "model_from_checkpoint"]
