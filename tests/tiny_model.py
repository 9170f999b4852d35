"""A tiny untrained STEP model folder for the predictor, CLI, demo and export tests.

Made from a 16-image ShapesRef (its vocabulary, its images as inputs) and the ``tiny`` preset
with random weights: saved as a training checkpoint, then exported as a model folder.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import torch

from step_ris.config import get_preset
from step_ris.data.dataset import build_vocab
from step_ris.data.shapesref import generate_shapesref
from step_ris.engine.checkpoint import FORMAT, atomic_save
from step_ris.model import build_model
from step_ris.pretrained import export_pretrained


def make_tiny(root: Path) -> dict[str, Path]:
    """Under ``root``: ``sr/`` (ShapesRef), ``last.pt`` (checkpoint) and ``model/`` (folder)."""
    sr = generate_shapesref(root / "sr", images=16, seed=3, size=64, progress=False)
    vocab = build_vocab(sr["out"], "shapesref", "train")
    cfg = get_preset("tiny")
    torch.manual_seed(0)
    model = build_model(cfg.model, len(vocab))
    checkpoint = root / "last.pt"
    atomic_save({"format": FORMAT, "config": cfg.to_dict(), "vocab": vocab.to_list(), "model": model.state_dict(),
                 "step": 0}, checkpoint)
    folder = export_pretrained(checkpoint, root / "model", scores={"oIoU": 0.0, "note": "untrained"})
    images = sorted((root / "sr" / "images" / "shapesref").glob("*.png"))
    return {"root": root, "checkpoint": checkpoint, "model": folder, "images": images[0].parent,
            "image": images[0]}


def shared_tiny(tmp_path_factory) -> dict[str, Path]:
    """``make_tiny`` once per test session (every module reuses it; tests must not modify it)."""
    root = tmp_path_factory.getbasetemp() / "tiny-step-model"
    if not (root / "model" / "model.safetensors").is_file():
        make_tiny(root)
    images = sorted((root / "sr" / "images" / "shapesref").glob("*.png"))
    return {"root": root, "checkpoint": root / "last.pt", "model": root / "model", "images": images[0].parent,
            "image": images[0]}


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels (no real pixel data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
