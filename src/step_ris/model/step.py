"""STEP: See-Through-Text Grouping for Referring Image Segmentation.

Ding-Jie Chen, Songhao Jia, Yi-Chen Lo, Hwann-Tzong Chen, Tyng-Luh Liu. ICCV 2019.

This module only composes the paper's components (one module each):

    visual_encoder      F_1..F_5 + spatial coordinates       Sec. 3.1
    language_encoder    word vectors + biLSTM                Sec. 3.2
    textual_attention   LTR                                  Eq. 1
    co_embedding        STEP heatmap Q_t                     Eqs. 2-4
    refiner             ConvGRU / ConvLSTM, P_t              Eqs. 5-9

At step t = 1..T (T = 5K), level l_t cycles F1 -> F5 (or F5 -> F1, "reverse STEP"):
s_t from Eq. 1 with P_{t-1}, Q_t from Eqs. 2-4, P_t from the ConvRNN. The output is the logits of
P_T, upsampled bilinearly to S x S (Eq. 10).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .co_embedding import CoEmbedding, ConcatConv
from .language_encoder import LanguageEncoder, TextFeatures
from .refiner import Refiner
from .textual_attention import TextualAttention
from .visual_encoder import VisualEncoder

LEVELS = 5
Q_PEAK_MIN = 1e-6  # floor of the peak that q_norm=max divides by


@dataclass
class STEPOutput:
    """What the model returns. Intermediates are filled when requested.

    logits: (B, 1, S, S) logits of the upsampled P_T (Eq. 10).
    step_logits: (B, T, S/4, S/4) logits of every P_t on the refiner grid.
    heatmaps: (B, T, S/4, S/4) every STEP heatmap Q_t (after ``q_scale``), on the refiner grid.
    attention: (B, T, L) alpha_t of Eq. 1 (zeros where a step does not use Eq. 1: the first step
        with ``first_step="final-state"``, every step without LTR).
    similarity: (B, T, L) cosine of s_t and h_j (the reading of Figure 4), 0 at padding.
    levels: the level index (0 = F1) used at each step.
    """

    logits: torch.Tensor
    step_logits: torch.Tensor | None = None
    heatmaps: torch.Tensor | None = None
    attention: torch.Tensor | None = None
    similarity: torch.Tensor | None = None
    levels: tuple[int, ...] = ()


def level_masks(valid_hw: torch.Tensor | None, size: int, grids: list[tuple[int, int]], batch: int,
                device) -> list[torch.Tensor]:
    """Valid (unpadded) cells of each level grid: list of (B, h_l, w_l) bool.

    valid_hw: (B, 2) valid extent in pixels of the S x S input, or None (all valid).
    """
    masks = []
    for h, w in grids:
        if valid_hw is None:
            masks.append(torch.ones(batch, h, w, dtype=torch.bool, device=device))
            continue
        vh = torch.ceil(valid_hw[:, 0].float() * h / size).clamp(1, h)  # (B,)
        vw = torch.ceil(valid_hw[:, 1].float() * w / size).clamp(1, w)
        rows = torch.arange(h, device=device).view(1, h, 1) < vh.view(-1, 1, 1).to(device)
        cols = torch.arange(w, device=device).view(1, 1, w) < vw.view(-1, 1, 1).to(device)
        masks.append(rows & cols)  # (B, h, w)
    return masks


class STEPModel(nn.Module):
    """The STEP network. Build it with ``step_ris.model.build_model(config, vocab_size)``.

    Args:
        visual: VisualEncoder (five taps with coordinates).
        language: LanguageEncoder (h_j and the final state).
        attention: TextualAttention (Eq. 1), None without LTR.
        fusion: CoEmbedding (Eqs. 2-4) or ConcatConv (ablation).
        refiner: Refiner (Eqs. 5-9).
        folds: K (T = 5K).
        reverse: visit levels F5 -> F1.
        use_ltr: False for the "no LTR" ablation.
        first_step: "final-state" (s_1 = final biLSTM state) or "uniform" (P_0 uniform).
        q_scale: factor on Q_t before the refiner (1 = literal).
        q_leak: negative slope of Eq. 4's max(0, .) (0 = literal; see CoEmbedding.heatmap).
        q_norm: "none" (literal) or "max": divide Q_t by its maximum over the valid cells, so the
            best-matching region of every image reaches 1 whatever the absolute similarity (a
            global normalisation the paper does not have; it lets the refiner pick "the most
            compatible" region, which superlatives such as "the leftmost" need).
    """

    def __init__(self, *, visual: VisualEncoder, language: LanguageEncoder, attention: TextualAttention | None,
                 fusion: CoEmbedding | ConcatConv, refiner: Refiner, folds: int = 1, reverse: bool = False,
                 use_ltr: bool = True, first_step: str = "final-state", q_scale: float = 1.0,
                 q_norm: str = "none", q_leak: float = 0.0):
        super().__init__()
        if first_step not in ("final-state", "uniform"):
            raise ValueError(f"first_step={first_step!r}; choose 'final-state' or 'uniform'")
        self.visual = visual
        self.language = language
        self.attention = attention
        self.fusion = fusion
        self.refiner = refiner
        self.levels = self.level_order(folds, reverse)  # l_t for t = 1..T
        self.use_ltr = use_ltr
        self.first_step = first_step
        if use_ltr and attention is None:
            raise ValueError("use_ltr=True needs a TextualAttention module")
        self.q_scale = q_scale
        if q_norm not in ("none", "max"):
            raise ValueError(f"q_norm={q_norm!r}; choose 'none' or 'max'")
        self.q_norm = q_norm
        self.q_leak = q_leak

    @staticmethod
    def level_order(folds: int, reverse: bool) -> tuple[int, ...]:
        """l_t for t = 1..5K: F1..F5 repeated K times (F5..F1 for reverse STEP); 0 = F1."""
        order = list(range(LEVELS))[::-1] if reverse else list(range(LEVELS))
        return tuple(order * folds)

    @staticmethod
    def ltr_levels(levels: tuple[int, ...], use_ltr: bool, first_step: str) -> tuple[int, ...]:
        """Levels at which some step computes s_t with Eq. 1."""
        if not use_ltr:
            return ()
        return tuple(sorted({lv for t, lv in enumerate(levels) if t > 0 or first_step == "uniform"}))

    @property
    def steps(self) -> int:
        return len(self.levels)

    def encode_image(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images: (B, 3, S, S) -> the five visual maps v (B, C_l + 8, h_l, w_l).

        Compute once per image and pass as ``features`` to run several expressions.
        """
        return self.visual(images)

    def forward(self, images: torch.Tensor | None, tokens: torch.Tensor, valid_hw: torch.Tensor | None = None, *,
                features: list[torch.Tensor] | None = None, return_intermediates: bool = False) -> STEPOutput:
        """Segment the referent of each expression.

        images: (B, 3, S, S) letterboxed, normalised (or None when ``features`` is given).
        tokens: (B, L) int64 word ids, 0 = padding, at least one word each.
        valid_hw: (B, 2) unpadded extent (h, w) in pixels of each image; None = all valid.
        features: output of ``encode_image`` (B or 1 in the batch dim; 1 is broadcast).
        """
        if features is None:
            if images is None:
                raise ValueError("pass images (B, 3, S, S) or precomputed features")
            features = self.encode_image(images)
        if len(features) != LEVELS:
            raise ValueError(f"expected {LEVELS} visual maps, got {len(features)}")
        batch = tokens.shape[0]
        if features[0].shape[0] not in (1, batch):
            raise ValueError(f"features have batch {features[0].shape[0]} but tokens have batch {batch}")
        shared = features  # batch B, or 1 for one image under B expressions: image-only maps are computed once
        features = [f.expand(batch, -1, -1, -1) for f in features]
        grids = [tuple(f.shape[-2:]) for f in features]
        refine_grid = grids[0]  # stride 4: S/4 x S/4
        size = refine_grid[0] * 4  # S
        if valid_hw is not None and valid_hw.shape != (batch, 2):
            raise ValueError(f"valid_hw must have shape ({batch}, 2), got {tuple(valid_hw.shape)}")

        text: TextFeatures = self.language(tokens)  # states (B, L, D), final (B, D)
        pixel_masks = level_masks(valid_hw, size, grids, batch, tokens.device)
        word_attn: dict[int, torch.Tensor] = {}  # level -> a (B, N, L), Eq. 1
        phis: dict[int, torch.Tensor] = {}  # level -> phi_l(v) (B, E, h, w), Eq. 2

        prev = features[0].new_zeros(batch, 1, *refine_grid)  # P_0 (uniform softmax weights)
        state = None
        step_logits, alphas, sims, qs = [], [], [], []
        for t, level in enumerate(self.levels):
            v = features[level]
            # Eq. 1: the textual representation s_t
            if not self.use_ltr or (t == 0 and self.first_step == "final-state"):
                s = text.final
                alpha = text.final.new_zeros(batch, tokens.shape[1])
            else:
                if level not in word_attn:
                    word_attn[level] = self.attention.word_attention(level, shared[level], text.states, text.mask)
                weights = self.attention.pixel_weights(prev, pixel_masks[level])  # (B, N)
                s, alpha = self.attention.attend(word_attn[level], weights, text.states)
            # Eqs. 2-4: the STEP heatmap Q_t on the level's grid
            if isinstance(self.fusion, CoEmbedding):
                if level not in phis:
                    phis[level] = self.fusion.phi(level, shared[level]).expand(batch, -1, -1, -1)
                q = self.fusion.heatmap(phis[level], self.fusion.psi(level, s), self.q_leak)  # (B, 1, h_l, w_l)
            else:
                q = self.fusion(level, v, s)
            if self.q_norm == "max":
                peak = q.masked_fill(~pixel_masks[level].unsqueeze(1), 0).amax(dim=(2, 3), keepdim=True)  # (B, 1, 1, 1)
                # The peak is floored at Q_PEAK_MIN. With q_leak and no positive cell the peak is 0,
                # and the (negative) leaky values are scaled by 1 / Q_PEAK_MIN: the shipped
                # shapes-cpu model was trained so and relies on it (dividing by 1 instead took its
                # val oIoU from 0.58 to 0.33), so this stays as trained.
                q = q / peak.clamp_min(Q_PEAK_MIN)
            q = q * self.q_scale
            if q.shape[-2:] != refine_grid:
                q = F.interpolate(q, size=refine_grid, mode="bilinear", align_corners=False)  # (B, 1, S/4, S/4)
            # Eqs. 5-9: refine into P_t
            if state is None and t == 0:
                state = self.refiner.start(q)
            logit, state = self.refiner.step(q, state)  # (B, 1, S/4, S/4)
            prev = torch.sigmoid(logit)
            qs.append(q)
            step_logits.append(logit)
            if return_intermediates:
                alphas.append(alpha)
                sims.append(F.cosine_similarity(s.unsqueeze(1), text.states, dim=-1) * text.mask)  # (B, L)
        final = self.refiner.final(step_logits[-1], qs)  # (B, 1, S/4, S/4)
        logits = F.interpolate(final, size=(size, size), mode="bilinear", align_corners=False)  # Eq. 10
        if not return_intermediates:
            return STEPOutput(logits=logits, levels=self.levels)
        return STEPOutput(
            logits=logits,
            step_logits=torch.cat(step_logits, dim=1),  # (B, T, S/4, S/4)
            heatmaps=torch.cat(qs, dim=1),  # (B, T, S/4, S/4)
            attention=torch.stack(alphas, dim=1),  # (B, T, L)
            similarity=torch.stack(sims, dim=1),  # (B, T, L)
            levels=self.levels,
        )
