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
from .match_head import MatchHead
from .refiner import Refiner
from .textual_attention import TextualAttention
from .visual_encoder import VisualEncoder

LEVELS = 5
Q_PEAK_MIN = 1e-6  # floor of the peak that q_norm=max divides by
Q_NORM_EPS = 1e-6  # keeps q_norm=minmax defined on a flat map


def _q_identity(q: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return q


def _q_peak(q: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Divide by the maximum over the valid cells, floored at Q_PEAK_MIN (the bundled model's form).

    With ``q_leak`` and no positive cell the peak is 0, so the (negative) leaky values are scaled
    by 1 / Q_PEAK_MIN: the shipped shapes-cpu model was trained so and relies on it.
    """
    peak = q.masked_fill(~valid, 0).amax(dim=(2, 3), keepdim=True)  # (B, 1, 1, 1)
    return q / peak.clamp_min(Q_PEAK_MIN)


def _q_minmax(q: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Map the valid cells to [0, 1]: (q - min) / (max - min + eps). Defined for every input."""
    low = q.masked_fill(~valid, float("inf")).amin(dim=(2, 3), keepdim=True)  # (B, 1, 1, 1)
    high = q.masked_fill(~valid, float("-inf")).amax(dim=(2, 3), keepdim=True)
    return ((q - low) / (high - low + Q_NORM_EPS)).masked_fill(~valid, 0)


# Normalisations of Q_t before the refiner (``model.q_norm``). "none" is the literal Eq. 4.
Q_NORMS = {"none": _q_identity, "max": _q_peak, "minmax": _q_minmax}


@dataclass
class ImageEncoding:
    """Everything STEP computes from the image alone, for any number of expressions.

    maps: the five visual maps v (B, C_l + 8, h_l, w_l) (taps with coordinates, Sec. 3.1).
    phi: level -> phi_l(v) (B, E, h_l, w_l), Eq. 2, for every level the model visits.
    keys: level -> v~ (B, h_l * w_l, A), the image side of Eq. 1, for every level with LTR.
    A batch of 1 is broadcast to any number of expressions.
    """

    maps: list[torch.Tensor]
    phi: dict[int, torch.Tensor]
    keys: dict[int, torch.Tensor]

    @property
    def batch(self) -> int:
        return self.maps[0].shape[0]

    def index(self, rows: torch.Tensor) -> ImageEncoding:
        """The encoding of images ``rows`` (B',) of this batch, e.g. one image per expression."""
        return ImageEncoding(maps=[m[rows] for m in self.maps], phi={k: v[rows] for k, v in self.phi.items()},
                             keys={k: v[rows] for k, v in self.keys.items()})


@dataclass
class STEPOutput:
    """What the model returns. Intermediates are filled when requested.

    logits: (B, 1, S, S) logits of the upsampled P_T (Eq. 10).
    step_logits: (B, T, S/4, S/4) logits of every P_t on the refiner grid.
    heatmaps: (B, T, S/4, S/4) every STEP heatmap Q_t (after ``q_scale``), on the refiner grid; with
        ``model.q_heads`` > 1, the most over Q_t's channels.
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
    cosines: list[torch.Tensor] | None = None  # per step: <phi, psi> of Eq. 4 before max(0, .), (B, H, h_l, w_l)
    masks: list[torch.Tensor] | None = None  # per step: the valid cells of level l_t, (B, h_l, w_l)
    match_logits: torch.Tensor | None = None  # (B,) "something matches" logit (model.match_head), else None


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
            compatible" region, which superlatives such as "the leftmost" need); "minmax": map
            the valid cells to [0, 1] (defined for every input, also with ``q_leak``).
        feedback_grad: False detaches P_{t-1} where it enters Eq. 1 (a diagnostic switch; the
            paper trains end to end, True).
        match: MatchHead, the no-target decision (an extension beyond the paper; None = STEP as
            the paper has it): fills ``STEPOutput.match_logits``.
    """

    def __init__(self, *, visual: VisualEncoder, language: LanguageEncoder, attention: TextualAttention | None,
                 fusion: CoEmbedding | ConcatConv, refiner: Refiner, folds: int = 1, reverse: bool = False,
                 use_ltr: bool = True, first_step: str = "final-state", q_scale: float = 1.0,
                 q_norm: str = "none", q_leak: float = 0.0, feedback_grad: bool = True,
                 match: MatchHead | None = None):
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
        if q_norm not in Q_NORMS:
            raise ValueError(f"q_norm={q_norm!r}; choose one of: {', '.join(Q_NORMS)}")
        self.q_norm = q_norm
        self.q_leak = q_leak
        self.feedback_grad = feedback_grad
        self.match = match

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
        """images: (B, 3, S, S) -> the five visual maps v (B, C_l + 8, h_l, w_l)."""
        return self.visual(images)

    def encode(self, images: torch.Tensor | None = None, *, maps: list[torch.Tensor] | None = None) -> ImageEncoding:
        """All image-only work: the visual maps, phi of Eq. 2 and the image side of Eq. 1.

        images: (B, 3, S, S), or ``maps`` from ``encode_image`` (e.g. cached taps with coordinates).
        Pass the result as ``features`` to run any number of expressions on it.
        """
        if maps is None:
            if images is None:
                raise ValueError("pass images (B, 3, S, S) or the visual maps")
            maps = self.encode_image(images)
        if len(maps) != LEVELS:
            raise ValueError(f"expected {LEVELS} visual maps, got {len(maps)}")
        visited = sorted(set(self.levels))
        phi = {lv: self.fusion.phi(lv, maps[lv]) for lv in visited} if isinstance(self.fusion, CoEmbedding) else {}
        keys = {}
        if self.attention is not None:
            for lv in self.ltr_levels(self.levels, self.use_ltr, self.first_step):
                keys[lv] = self.attention.project_image(lv, maps[lv])
        return ImageEncoding(maps=list(maps), phi=phi, keys=keys)

    def forward(self, images: torch.Tensor | None, tokens: torch.Tensor, valid_hw: torch.Tensor | None = None, *,
                features: list[torch.Tensor] | ImageEncoding | None = None,
                return_intermediates: bool = False) -> STEPOutput:
        """Segment the referent of each expression.

        images: (B, 3, S, S) letterboxed, normalised (or None when ``features`` is given).
        tokens: (B, L) int64 word ids, 0 = padding, at least one word each.
        valid_hw: (B, 2) unpadded extent (h, w) in pixels of each image; None = all valid.
        features: ``encode(...)`` (or the visual maps of ``encode_image``), batch B or 1 (broadcast).
        """
        if features is None:
            if images is None:
                raise ValueError("pass images (B, 3, S, S) or precomputed features")
            enc = self.encode(images)
        batch = tokens.shape[0]
        if features is not None:
            got = features.batch if isinstance(features, ImageEncoding) else features[0].shape[0]
            if got not in (1, batch):
                raise ValueError(f"features have batch {got} but tokens have batch {batch}")
        if isinstance(features, ImageEncoding):
            enc = features
        elif features is not None:
            enc = self.encode(maps=features)
        grids = [tuple(f.shape[-2:]) for f in enc.maps]
        refine_grid = grids[0]  # stride 4: S/4 x S/4
        size = refine_grid[0] * 4  # S
        if valid_hw is not None and valid_hw.shape != (batch, 2):
            raise ValueError(f"valid_hw must have shape ({batch}, 2), got {tuple(valid_hw.shape)}")

        text: TextFeatures = self.language(tokens)  # states (B, L, D), final (B, D)
        pixel_masks = level_masks(valid_hw, size, grids, batch, tokens.device)
        word_attn: dict[int, torch.Tensor] = {}  # level -> a (B, N, L), Eq. 1

        prev = enc.maps[0].new_zeros(batch, 1, *refine_grid)  # P_0 (uniform softmax weights)
        state = None
        step_logits, alphas, sims, qs, cosines, peaks = [], [], [], [], [], []
        for t, level in enumerate(self.levels):
            # Eq. 1: the textual representation s_t
            if not self.use_ltr or (t == 0 and self.first_step == "final-state"):
                s = text.final
                alpha = text.final.new_zeros(batch, tokens.shape[1])
            else:
                if level not in word_attn:
                    word_attn[level] = self.attention.word_attention_from(enc.keys[level], text.states, text.mask)
                weights = self.attention.pixel_weights(prev, pixel_masks[level])  # (B, N)
                s, alpha = self.attention.attend(word_attn[level], weights, text.states)
            # Eqs. 2-4: the STEP heatmap Q_t on the level's grid
            if isinstance(self.fusion, CoEmbedding):
                phi = enc.phi[level].expand(batch, -1, -1, -1)  # (B, E, h_l, w_l)
                cos = self.fusion.cosine(phi, self.fusion.psi(level, s), self.fusion.heads)  # (B, H, h_l, w_l)
                q = self.fusion.rectify(cos, self.q_leak)  # Eq. 4
                if return_intermediates:
                    cosines.append(cos)
            else:
                q = self.fusion(level, enc.maps[level].expand(batch, -1, -1, -1), s)
            if self.match is not None:  # the no-target decision reads Eq. 4's peak before q_norm / q_scale
                peaks.append(self.match.peak(q, pixel_masks[level]))
            q = Q_NORMS[self.q_norm](q, pixel_masks[level].unsqueeze(1))
            q = q * self.q_scale
            if q.shape[-2:] != refine_grid:
                q = F.interpolate(q, size=refine_grid, mode="bilinear", align_corners=False)  # (B, 1, S/4, S/4)
            # Eqs. 5-9: refine into P_t
            if state is None and t == 0:
                state = self.refiner.start(q)
            logit, state = self.refiner.step(q, state, s)  # (B, 1, S/4, S/4); s_t only read with refiner_text=film
            prev = torch.sigmoid(logit) if self.feedback_grad else torch.sigmoid(logit).detach()
            qs.append(q)
            step_logits.append(logit)
            if return_intermediates:
                alphas.append(alpha)
                sims.append(F.cosine_similarity(s.unsqueeze(1), text.states, dim=-1) * text.mask)  # (B, L)
        final = self.refiner.final(step_logits[-1], qs)  # (B, 1, S/4, S/4)
        logits = F.interpolate(final, size=(size, size), mode="bilinear", align_corners=False)  # Eq. 10
        match = None
        if self.match is not None:
            match = self.match(self.refiner.output(state), final, torch.cat(peaks, dim=1), pixel_masks[0])
        if not return_intermediates:
            return STEPOutput(logits=logits, levels=self.levels, match_logits=match)
        return STEPOutput(
            logits=logits,
            step_logits=torch.cat(step_logits, dim=1),  # (B, T, S/4, S/4)
            heatmaps=torch.stack([q.amax(dim=1) for q in qs], dim=1),  # (B, T, S/4, S/4), most over heads
            attention=torch.stack(alphas, dim=1),  # (B, T, L)
            similarity=torch.stack(sims, dim=1),  # (B, T, L)
            levels=self.levels,
            cosines=cosines or None,
            masks=[pixel_masks[lv] for lv in self.levels],
            match_logits=match,
        )
