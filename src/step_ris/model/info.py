"""Model size and cost: parameters per component and forward FLOPs (``step-ris info``)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..config import ExperimentConfig
from .build import build_model, count_parameters

INFO_VOCAB = 10_000  # vocabulary size assumed when none is given (RefCOCO has ~10k words)
INFO_WORDS = 20  # expression length assumed for FLOPs (the paper's maximum)


def model_info(cfg: ExperimentConfig, vocab_size: int = INFO_VOCAB, words: int = INFO_WORDS) -> dict:
    """Parameters per component and forward FLOPs at the preset's input size (batch 1)."""
    model = build_model(cfg.model, vocab_size, load_backbone_weights=False).eval()
    size = cfg.model.image_size
    images = torch.zeros(1, 3, size, size)
    tokens = torch.randint(2, vocab_size, (1, min(words, cfg.model.max_words)))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images, tokens)
    flops = counter.get_total_flops()
    return {
        "preset": cfg.name,
        "image_size": size,
        "steps": model.steps,
        "vocab_size": vocab_size,
        "words": tokens.shape[1],
        "parameters": count_parameters(model),
        "forward_gflops": flops / 1e9,
    }


def format_info(info: dict) -> str:
    lines = [
        f"preset {info['preset']}: S={info['image_size']}, T={info['steps']} steps, "
        f"vocabulary {info['vocab_size']:,} words",
        f"{'component':32s} {'parameters':>14s} {'trainable':>14s}",
    ]
    for name, n in info["parameters"].items():
        lines.append(f"{name:32s} {n['total']:>14,} {n['trainable']:>14,}")
    lines.append(f"forward FLOPs (batch 1, {info['words']} words): {info['forward_gflops']:.2f} GFLOPs "
                 "(multiply-add = 2 FLOPs)")
    return "\n".join(lines)
