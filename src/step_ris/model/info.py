"""Model size and cost: parameters per component and forward FLOPs (``step-ris info``).

Parameters are split into trainable and frozen ones (``requires_grad`` False, e.g. a frozen
backbone); buffers (saved tensors that are not learned: fixed pretrained word vectors and their
``known`` mask, BatchNorm running statistics) are counted apart. Word vectors are not read: a
model with pretrained vectors (``word_vectors`` = GloVe) gets a zero placeholder of the same
shape, ``(vocab_size, word_dim)``, so the counts hold for the assumed vocabulary size.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..config import ExperimentConfig
from .build import build_model, count_parameters

INFO_VOCAB = 10_000  # vocabulary size assumed when none is given (RefCOCO has ~10k words)
INFO_WORDS = 20  # expression length assumed for FLOPs (the paper's maximum)


def model_info(cfg: ExperimentConfig, vocab_size: int = INFO_VOCAB, words: int = INFO_WORDS) -> dict:
    """Parameters per component and forward FLOPs at the preset's input size (batch 1).

    ``parameters`` is :func:`count_parameters`' table; ``trainable_parameters``,
    ``frozen_parameters`` and ``buffer_elements`` repeat its ``"total"`` row.
    """
    model = build_model(cfg.model, vocab_size, load_backbone_weights=False).eval()
    size = cfg.model.image_size
    images = torch.zeros(1, 3, size, size)
    tokens = torch.randint(2, vocab_size, (1, min(words, cfg.model.max_words)))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images, tokens)
    flops = counter.get_total_flops()
    parameters = count_parameters(model)
    return {
        "preset": cfg.name,
        "image_size": size,
        "steps": model.steps,
        "vocab_size": vocab_size,
        "word_vectors": cfg.model.word_vectors,
        "words": tokens.shape[1],
        "parameters": parameters,
        "trainable_parameters": parameters["total"]["trainable"],
        "frozen_parameters": parameters["total"]["frozen"],
        "buffer_elements": parameters["total"]["buffers"],
        "forward_gflops": flops / 1e9,
    }


def format_info(info: dict) -> str:
    """The table ``step-ris info`` prints."""
    vectors = info.get("word_vectors", "learned")
    words = ("learned word embeddings (trainable)" if vectors == "learned"
             else f"fixed word vectors {vectors} (not read: a zero placeholder of the same shape)")
    lines = [
        f"preset {info['preset']}: S={info['image_size']}, T={info['steps']} steps, "
        f"vocabulary {info['vocab_size']:,} words assumed, {words}",
        f"{'component':32s} {'trainable':>14s} {'frozen':>14s} {'buffers':>14s}",
    ]
    for name, n in info["parameters"].items():
        lines.append(f"{name:32s} {n['trainable']:>14,} {n['frozen']:>14,} {n['buffers']:>14,}")
    total = info["parameters"]["total"]
    lines += [
        f"trainable parameters:             {total['trainable']:>14,}",
        f"non-trainable, frozen parameters: {total['frozen']:>14,}  (requires_grad=False, e.g. a frozen backbone)",
        f"non-trainable, buffer elements:   {total['buffers']:>14,}  (not parameters: fixed word vectors, "
        "known-word mask, BatchNorm statistics)",
        f"forward FLOPs (batch 1, {info['words']} words): {info['forward_gflops']:.2f} GFLOPs "
        "(multiply-add = 2 FLOPs)",
    ]
    return "\n".join(lines)
