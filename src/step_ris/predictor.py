"""Inference on one image: decode, letterbox, run STEP, map back, threshold.

The predictor is not the model (docs/design.md): it owns everything around the network that
a user should not have to repeat, and the CLI and the web demo call only it.

    predictor = Predictor.from_pretrained("shapes-cpu")
    pred = predictor.predict("scene.png", "the red circle left of the square")
    pred.mask             # (H, W) bool at the image's original size
    preds = predictor.predict("scene.png", ["the red circle", "the blue square"])  # image encoded once

    encoded = predictor.encode("scene.png")        # the image-only work, done once (stateless:
    predictor.predict(encoded, "the red circle")    # nothing is stored in the predictor)
    predictor.predict(encoded, "the square left of it")

Expressions are tokenised like the training data (``text.tokenize``: lower case, accents folded
to ASCII, words of ``[a-z0-9]``) and cut to the model's ``max_words`` (20) with a warning.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from .constants import MASK_THRESHOLD, MATCH_THRESHOLD
from .data.image_io import DEFAULT_MAX_PIXELS, ImageSource, load_image
from .data.transforms import letterbox_image, unletterbox
from .fileio import atomic_write_files, png_bytes
from .model import STEPModel
from .model.step import ImageEncoding
from .precision import autocast, model_precision, precision_name
from .text import UNK_ID, Vocabulary, tokenize

log = logging.getLogger(__name__)

THRESHOLD = MASK_THRESHOLD  # the paper's (and the evaluator's) threshold on P (constants.py)


def decide_mask(probability: np.ndarray, threshold: float, match_probability: float | None) -> np.ndarray:
    """The mask of a probability map: ``probability >= threshold``, or empty where the no-target
    decision says nothing matches (``match_probability`` below ``constants.MATCH_THRESHOLD``)."""
    if match_probability is not None and match_probability < MATCH_THRESHOLD:
        return np.zeros(probability.shape, dtype=bool)
    return probability >= threshold


@dataclass
class Prediction:
    """The result for one expression.

    mask: (H, W) bool, ``probability >= threshold``, at the image's original size.
    probability: (H, W) float32, sigmoid of the output logits (Eq. 10) mapped back to H x W.
    steps: (T, h, w) float32, every refined map P_t (Eq. 9). To keep T maps of a large photo
        small they are at the model's input resolution, not the original one: the image's
        aspect ratio with its longer side = S (``h, w = data.transforms.valid_extent((H, W), S)``).
    attention: (T, L) alpha_t of Eq. 1 over the L words used (a row of zeros where a step does
        not use Eq. 1: step 1 when s_1 is the final biLSTM state, every step without LTR).
    similarity: (T, L) cosine of s_t and h_j, the reading of the paper's Figure 4.
    levels: the visual level (0 = F1) each step reads.
    words: the tokens the model saw (after folding, lower-casing and truncation).
    unknown_words: the distinct words of ``words`` outside the vocabulary (read as ``<unk>``).
    truncated: True when the expression had more than ``max_words`` words.
    match_probability: sigmoid of the no-target decision (models with ``match_head``; None
        without one). Below 0.5 the model says nothing matches and ``mask`` is empty.
    """

    expression: str
    words: list[str]
    mask: np.ndarray
    probability: np.ndarray
    steps: np.ndarray
    attention: np.ndarray
    similarity: np.ndarray
    levels: tuple[int, ...] = ()
    unknown_words: list[str] = field(default_factory=list)
    truncated: bool = False
    threshold: float = THRESHOLD
    match_probability: float | None = None

    def with_threshold(self, threshold: float) -> Prediction:
        """This prediction with its mask re-thresholded at ``threshold`` (the no-target decision kept)."""
        return replace(self, mask=decide_mask(self.probability, threshold, self.match_probability),
                                   threshold=threshold)

    @property
    def matched(self) -> bool:
        """Whether anything in the image matches the expression (the mask is not empty)."""
        return bool(self.mask.any())

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the original image."""
        return tuple(self.mask.shape)  # type: ignore[return-value]

    @property
    def score(self) -> float:
        """The model's confidence that something matches: ``match_probability`` with a no-target
        decision; otherwise the mean probability inside the mask (0.0 for an empty mask)."""
        if self.match_probability is not None:
            return float(self.match_probability)
        return float(self.probability[self.mask].mean()) if self.mask.any() else 0.0

    @property
    def area(self) -> float:
        """Fraction of the image the mask covers."""
        return float(self.mask.mean())

    def summary(self) -> dict:
        """A JSON-ready description without the arrays."""
        return {"expression": self.expression, "words": self.words, "unknown_words": self.unknown_words,
                "truncated": self.truncated, "height": self.size[0], "width": self.size[1],
                "threshold": self.threshold, "matched": self.matched, "score": round(self.score, 6),
                "area": round(self.area, 6)}


@dataclass(frozen=True)
class Query:
    """An expression ready for the model (see ``Predictor.prepare``)."""

    expression: str
    words: list[str]
    ids: list[int]
    unknown_words: list[str]
    truncated: bool


@dataclass(frozen=True, eq=False)
class EncodedImage:
    """An image encoded once for any number of expressions (``Predictor.encode``).

    ``Predictor.predict`` accepts it wherever it accepts an image; the results equal those of
    predicting from the image itself. It holds no pixels, only what the model needs.

    size: (H, W) of the decoded image (EXIF orientation applied): the size of every mask.
    valid_hw: (h, w) of the resized image inside the S x S letterbox (the rest is padding).
    image_size: S.
    encoding: the model's ``ImageEncoding`` (batch 1, on the predictor's device): the visual
        maps, phi of Eq. 2 per level and the image side of Eq. 1.
    model_id: ``id`` of the model that made it (an encoding only fits its own model).
    """

    size: tuple[int, int]
    valid_hw: tuple[int, int]
    image_size: int
    encoding: ImageEncoding = field(repr=False)
    model_id: int = field(repr=False, default=0)

    @property
    def scale(self) -> float:
        """Letterbox resize factor: S / max(H, W)."""
        return self.image_size / max(self.size)


def expression_words(expression: str) -> list[str]:
    """The tokens of ``expression`` (``text.tokenize``); ``ValueError`` when there are none."""
    if not isinstance(expression, str):
        raise ValueError(f"expression must be a string, got {type(expression).__name__}")
    if not expression.strip():
        raise ValueError("the expression is empty; type what to segment, e.g. 'the red circle on the left'")
    words = tokenize(expression)
    if not words:
        raise ValueError(
            f"expression {expression!r} has no words the model can read (English letters a-z or digits; "
            "accents are folded); type what to segment, e.g. 'the red circle on the left'")
    return words


class Predictor:
    """Referring segmentation with a trained STEP model.

    Args:
        model: a ``STEPModel`` (put in eval mode here).
        vocab: the vocabulary it was trained with.
        image_size: S, the letterbox side the model was trained at.
        max_words: words kept per expression (the paper: 20).
        threshold: probability at which a pixel is in the mask.
        device: where the model runs.
        batch_size: expressions per forward pass when several share an image.
        max_pixels: decompression-bomb limit for decoded images.
        precision: "fp32" (default), "bf16" or "auto" (bf16 where the GPU / CPU runs it fast, and
            fp32 for a model with a no-target decision; ``step_ris.precision.model_precision``).
            Outputs are float32 either way.
        compile: run each expression's part of the model (language side, Eqs. 1-10) through
            ``torch.compile``: the first expressions pay compilations (tens of seconds on a CPU; a
            new expression length or batch size can compile once more), later ones run faster
            (paper-1fold: docs/benchmarks.md). For a long-lived predictor (the demo, a server),
            not for one CLI call. Needs a C++ compiler on a CPU.
    """

    def __init__(self, model: STEPModel, vocab: Vocabulary, *, image_size: int, max_words: int = 20,
                 threshold: float = THRESHOLD, device: str | torch.device = "cpu", batch_size: int = 8,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, precision: str = "fp32", compile: bool = False):
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold={threshold} must be between 0 and 1 (exclusive); the paper uses 0.5")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.compiled = bool(compile)
        self._expression_net = torch.compile(self.model) if compile else self.model  # same weights, shared
        self.vocab = vocab
        self.image_size = image_size
        self.max_words = max_words
        self.threshold = float(threshold)
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.dtype = model_precision(precision, self.device, match_head=model.match is not None)  # None = float32
        self.precision = precision_name(self.dtype)
        self.source = ""
        self.scores: dict = {}
        self.config = None

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = "shapes-cpu", device: str | torch.device = "cpu", *,
                        threshold: float = THRESHOLD, batch_size: int = 8,
                        max_pixels: int | None = DEFAULT_MAX_PIXELS, precision: str = "fp32",
                        compile: bool = False) -> Predictor:
        """A predictor for a bundled model name, a model folder, a run folder, a checkpoint or ``hf-hub:org/name``.

        See ``pretrained.load_pretrained`` for what ``name_or_path`` may be; the other
        arguments are the constructor's.
        """
        from .pretrained import load_pretrained

        loaded = load_pretrained(name_or_path, device=device)
        m = loaded.config.model
        predictor = cls(loaded.model, loaded.vocab, image_size=m.image_size, max_words=m.max_words, device=device,
                        threshold=threshold, batch_size=batch_size, max_pixels=max_pixels, precision=precision,
                        compile=compile)
        predictor.source, predictor.scores, predictor.config = loaded.source, loaded.scores, loaded.config
        return predictor

    def save_pretrained(self, out_dir: str | os.PathLike, **kwargs) -> os.PathLike:
        """Write this predictor's model as a model folder (``pretrained.save_pretrained``)."""
        from .pretrained import save_pretrained

        return save_pretrained(self, out_dir, **kwargs)

    # ------------------------------------------------------------------------- inputs

    def prepare(self, expression: str) -> Query:
        """Tokenise and check one expression; raises ``ValueError`` when it has nothing to read."""
        words = expression_words(expression)
        truncated = len(words) > self.max_words
        if truncated:
            log.warning("expression %r has %d words; only the first %d are used", _short(expression), len(words),
                        self.max_words)
            words = words[: self.max_words]
        ids = [self.vocab.stoi.get(w, UNK_ID) for w in words]
        unknown = list(dict.fromkeys(w for w, i in zip(words, ids, strict=True) if i == UNK_ID))  # in order, once each
        if all(i == UNK_ID for i in ids):
            log.warning("none of the words of %r is known to the model (%s); the mask is a guess",
                        _short(expression), ", ".join(unknown))
        elif unknown:
            log.info("words unknown to the model, read as <unk>: %s", ", ".join(unknown))
        return Query(expression=expression, words=words, ids=ids, unknown_words=unknown, truncated=truncated)

    def load(self, image: ImageSource) -> np.ndarray:
        """Decode ``image`` (path, bytes, PIL image or array) to (H, W, 3) uint8 RGB (``data.image_io``)."""
        return load_image(image, max_pixels=self.max_pixels)

    def encode(self, image: ImageSource | EncodedImage) -> EncodedImage:
        """Decode, letterbox and encode ``image`` once; ``predict`` then runs any expression on it.

        Stateless (in the spirit of segment-anything's ``set_image``, but returned, not stored):
        keep the result as long as you need it, for as many images as you like.
        """
        if isinstance(image, EncodedImage):
            self._check_encoded(image)
            return image
        rgb = self.load(image)
        tensor, (h, w) = letterbox_image(rgb, self.image_size)  # (3, S, S), valid extent
        with torch.inference_mode(), autocast(self.device, self.dtype):
            encoding = self.model.encode(tensor.unsqueeze(0).to(self.device))  # batch 1
        return EncodedImage(size=(int(rgb.shape[0]), int(rgb.shape[1])), valid_hw=(h, w),
                            image_size=self.image_size, encoding=encoding, model_id=id(self.model))

    def _check_encoded(self, encoded: EncodedImage) -> None:
        if encoded.model_id != id(self.model) or encoded.image_size != self.image_size:
            raise ValueError("this EncodedImage was made by another predictor's model; encode the image with "
                             "this predictor (predictor.encode(image))")

    # ------------------------------------------------------------------------- inference

    def predict(self, image: ImageSource | EncodedImage, expression: str | Sequence[str]
                ) -> Prediction | list[Prediction]:
        """Segment what ``expression`` refers to in ``image``.

        ``image``: a path, bytes, PIL image, array, or an ``EncodedImage`` from ``encode``.
        ``expression`` may be one string (returns a ``Prediction``) or a list of strings
        (returns a list, in order): the image is decoded and encoded once and the expressions
        run in batches of ``batch_size`` over the shared image encoding.
        """
        single = isinstance(expression, str)
        expressions = [expression] if single else list(expression) if isinstance(expression, Sequence) else None
        if expressions is None:
            raise ValueError(f"expression must be a string or a list of strings, got {type(expression).__name__}")
        if not expressions:
            raise ValueError("no expressions given; pass a string or a non-empty list of strings")
        queries = []
        for k, e in enumerate(expressions):
            try:
                queries.append(self.prepare(e))
            except ValueError as err:
                raise (err if single else ValueError(f"expression {k + 1} of {len(expressions)}: {err}")) from None
        predictions = self.predict_prepared(self.encode(image), queries)
        return predictions[0] if single else predictions

    def predict_prepared(self, image: np.ndarray | EncodedImage, queries: Sequence[Query]) -> list[Prediction]:
        """``predict`` for a decoded image (``load``, (H, W, 3) uint8) or an ``EncodedImage``, and checked
        expressions (``prepare``). The image is encoded once for all ``queries``.
        """
        if not isinstance(image, EncodedImage):
            if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError("predict_prepared needs an (H, W, 3) uint8 array (Predictor.load) or an "
                                 "EncodedImage (Predictor.encode)")
            image = self.encode(image)
        self._check_encoded(image)
        H, W = image.size
        h, w = image.valid_hw
        size = self.image_size
        out: list[Prediction] = []
        with torch.inference_mode():
            for start in range(0, len(queries), self.batch_size):
                chunk = queries[start: start + self.batch_size]
                length = max(len(q.ids) for q in chunk)
                tokens = torch.zeros(len(chunk), length, dtype=torch.int64)  # (B, L), 0 = padding
                for row, q in enumerate(chunk):
                    tokens[row, : len(q.ids)] = torch.tensor(q.ids)
                valid = torch.tensor([[h, w]], dtype=torch.int64).expand(len(chunk), 2)  # (B, 2)
                with autocast(self.device, self.dtype):
                    result = self._expression_net(None, tokens.to(self.device), valid.to(self.device),
                                                  features=image.encoding,
                                                  return_intermediates=True)  # batch 1 broadcast to B
                probs = torch.sigmoid(result.logits.float())[:, 0].cpu()  # (B, S, S)
                prob = unletterbox(probs, (h, w), (H, W)).clamp_(0, 1).numpy()  # (B, H, W)
                steps = F.interpolate(result.step_logits.float(), size=(size, size), mode="bilinear",
                                      align_corners=False)  # (B, T, S, S), as Eq. 10 upsamples P_T
                steps = torch.sigmoid(steps[:, :, :h, :w]).cpu().numpy()  # (B, T, h, w)
                attention = result.attention.float().cpu().numpy()  # (B, T, L)
                similarity = result.similarity.float().cpu().numpy()  # (B, T, L)
                match = (None if result.match_logits is None
                         else torch.sigmoid(result.match_logits.float()).cpu().tolist())  # (B,)
                for row, q in enumerate(chunk):
                    n = len(q.ids)
                    p = np.ascontiguousarray(prob[row], dtype=np.float32)
                    mask = decide_mask(p, self.threshold, None if match is None else match[row])
                    out.append(Prediction(
                        expression=q.expression, words=list(q.words), mask=mask, probability=p,
                        steps=np.ascontiguousarray(steps[row]), attention=attention[row, :, :n].copy(),
                        similarity=similarity[row, :, :n].copy(), levels=tuple(result.levels),
                        unknown_words=list(q.unknown_words), truncated=q.truncated, threshold=self.threshold,
                        match_probability=None if match is None else float(match[row])))
        return out


# ----------------------------------------------------------------------------- moved elsewhere (aliases)

write_files_atomically = atomic_write_files  # the one atomic writer lives in step_ris.fileio


def predict_jsonl(*args, **kwargs) -> dict:
    """Deprecated alias of ``step_ris.batch.predict_jsonl`` (batch mode moved to ``step_ris.batch``)."""
    warnings.warn("step_ris.predictor.predict_jsonl moved to step_ris.batch.predict_jsonl", DeprecationWarning,
                  stacklevel=2)
    from .batch import predict_jsonl as run

    return run(*args, **kwargs)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = ["THRESHOLD", "EncodedImage", "Prediction", "Predictor", "Query", "expression_words", "png_bytes",
           "predict_jsonl", "write_files_atomically"]
