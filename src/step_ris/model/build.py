"""The one place that reads a ``ModelConfig`` and builds the network from its parts."""

from __future__ import annotations

import torch

from ..config import ModelConfig
from .backbones import build_backbone, freeze
from .co_embedding import CoEmbedding, ConcatConv
from .language_encoder import LanguageEncoder, WordEmbedding
from .match_head import MatchHead
from .refiner import Refiner
from .step import STEPModel
from .textual_attention import TextualAttention
from .visual_encoder import VisualEncoder


def build_model(cfg: ModelConfig, vocab_size: int, *, word_vectors: torch.Tensor | None = None,
                known_words: torch.Tensor | None = None, load_backbone_weights: bool = True) -> STEPModel:
    """Build STEP from a config.

    Args:
        cfg: the model section of an experiment config.
        vocab_size: number of word ids (0 = padding, 1 = unknown).
        word_vectors: ``(vocab_size, word_dim)`` pretrained vectors when ``cfg.word_vectors`` is
            not "learned" (``data.glove.load_word_vectors``); None builds a zero placeholder
            to be filled by a checkpoint.
        known_words: ``(vocab_size,)`` bool, rows of ``word_vectors`` that are real vectors.
        load_backbone_weights: False skips ``cfg.backbone_weights`` (a checkpoint will overwrite them).
    """
    if vocab_size < 3:
        raise ValueError(f"vocab_size={vocab_size}: a vocabulary needs <pad>, <unk> and at least one word")
    backbone = build_backbone(cfg.backbone, cfg.backbone_weights if load_backbone_weights else None)
    if cfg.freeze_backbone:
        freeze(backbone)
    visual = VisualEncoder(backbone=backbone)

    if cfg.word_vectors == "learned":
        words = WordEmbedding(vocab_size=vocab_size, dim=cfg.word_dim)
    else:
        if word_vectors is None:
            word_vectors = torch.zeros(vocab_size, cfg.word_dim)
        words = WordEmbedding(vocab_size=vocab_size, dim=cfg.word_dim, pretrained=word_vectors, known=known_words)
    language = LanguageEncoder(words=words, word_dim=cfg.word_dim, hidden=cfg.lstm_hidden,
                               bidirectional=cfg.text_encoder == "bilstm")

    levels = STEPModel.level_order(cfg.folds, cfg.reverse)
    ltr_levels = STEPModel.ltr_levels(levels, cfg.use_ltr, cfg.first_step)
    attention = None
    if ltr_levels:
        attention = TextualAttention(visual_channels=visual.out_channels, levels=ltr_levels,
                                     text_dim=language.out_dim, dim=cfg.attention_dim,
                                     temperature=cfg.pixel_temperature)
    if cfg.fusion == "step":
        fusion = CoEmbedding(visual_channels=visual.out_channels, text_dim=language.out_dim, dim=cfg.embed_dim,
                             kernel=cfg.embed_kernel, dilation=cfg.embed_dilation if cfg.embed_kernel > 1 else 1,
                             norm=cfg.embed_norm, shared_text=cfg.shared_text_embedding, heads=cfg.q_heads)
    else:
        fusion = ConcatConv(visual_channels=visual.out_channels, text_dim=language.out_dim, dim=cfg.embed_dim)
    if cfg.fusion == "step":
        fusion.initialise(cfg.embed_init)
    refiner = Refiner(cell=cfg.cell, filters=cfg.filters, kernel=cfg.kernel, steps=cfg.steps,
                      dilation=cfg.refiner_dilation, text=cfg.refiner_text, text_dim=language.out_dim,
                      context=cfg.refiner_context, heads=cfg.q_heads)
    if cfg.refiner_input_gain != 1.0:
        refiner.scale_input_weights(cfg.refiner_input_gain)
    match = None
    if cfg.match_head:  # the no-target decision, an extension (model/match_head.py)
        match = MatchHead(filters=cfg.filters if refiner.cell is not None else 0, steps=cfg.steps)
    return STEPModel(visual=visual, language=language, attention=attention, fusion=fusion, refiner=refiner,
                     folds=cfg.folds, reverse=cfg.reverse, use_ltr=cfg.use_ltr, first_step=cfg.first_step,
                     q_scale=cfg.q_scale, q_norm=cfg.q_norm, q_leak=cfg.q_leak, feedback_grad=cfg.feedback_grad,
                     match=match)


def count_parameters(model: STEPModel) -> dict[str, dict[str, int]]:
    """Parameters and buffers per paper component, plus a ``"total"`` row.

    Returns ``{component: {"total": n, "trainable": n, "frozen": n, "buffers": n}}`` where
    ``total`` = ``trainable`` + ``frozen`` counts parameters (``requires_grad`` True / False, e.g.
    a frozen backbone) and ``buffers`` counts the elements of the saved, non-learned tensors
    (fixed pretrained word vectors and their ``known`` mask, BatchNorm running statistics).
    """
    parts = {
        "visual encoder (backbone)": model.visual,
        "language encoder": model.language,
        "textual attention (Eq. 1)": model.attention or torch.nn.Identity(),
        "co-embedding (Eqs. 2-4)": model.fusion,
        "refiner (Eqs. 5-9)": model.refiner,
    }
    out = {}
    for name, module in parts.items():
        params = list(module.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        total = sum(p.numel() for p in params)
        out[name] = {"total": total, "trainable": trainable, "frozen": total - trainable,
                     "buffers": _saved_buffer_elements(module)}
    out["total"] = {k: sum(v[k] for v in out.values()) for k in ("total", "trainable", "frozen", "buffers")}
    return out


def _saved_buffer_elements(module: torch.nn.Module) -> int:
    """Elements of the buffers in ``module.state_dict()`` (persistent ones; each tensor once)."""
    seen: set[int] = set()
    n = 0
    for value in module.state_dict(keep_vars=True).values():
        if isinstance(value, torch.nn.Parameter) or id(value) in seen:
            continue
        seen.add(id(value))
        n += value.numel()
    return n
