"""Inference on one image: decode, letterbox, run STEP, map back, threshold.

The predictor is not the model (docs/design.md): it owns everything around the network that
a user should not have to repeat, and the CLI and the web demo call only it.

    predictor = Predictor.from_pretrained("shapes-cpu")
    pred = predictor.predict("scene.png", "the red circle left of the square")
    pred.mask             # (H, W) bool at the image's original size
    preds = predictor.predict("scene.png", ["the red circle", "the blue square"])  # image encoded once

Expressions are tokenised like the training data (``text.tokenize``: lower case, accents folded
to ASCII, words of ``[a-z0-9]``) and cut to the model's ``max_words`` (20) with a warning.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from .data.image_io import DEFAULT_MAX_PIXELS, ImageSource, load_image
from .data.transforms import letterbox_image, unletterbox
from .model import STEPModel
from .text import UNK_ID, Vocabulary, tokenize
from .visualize import mask_image

log = logging.getLogger(__name__)

THRESHOLD = 0.5  # the paper's (and the evaluator's) threshold on P


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

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the original image."""
        return tuple(self.mask.shape)  # type: ignore[return-value]

    @property
    def score(self) -> float:
        """Mean probability inside the mask (0.0 for an empty mask): the model's confidence."""
        return float(self.probability[self.mask].mean()) if self.mask.any() else 0.0

    @property
    def area(self) -> float:
        """Fraction of the image the mask covers."""
        return float(self.mask.mean())

    def summary(self) -> dict:
        """A JSON-ready description without the arrays."""
        return {"expression": self.expression, "words": self.words, "unknown_words": self.unknown_words,
                "truncated": self.truncated, "height": self.size[0], "width": self.size[1],
                "threshold": self.threshold, "score": round(self.score, 6), "area": round(self.area, 6)}


@dataclass(frozen=True)
class Query:
    """An expression ready for the model (see ``Predictor.prepare``)."""

    expression: str
    words: list[str]
    ids: list[int]
    unknown_words: list[str]
    truncated: bool


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
    """

    def __init__(self, model: STEPModel, vocab: Vocabulary, *, image_size: int, max_words: int = 20,
                 threshold: float = THRESHOLD, device: str | torch.device = "cpu", batch_size: int = 8,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold={threshold} must be between 0 and 1 (exclusive); the paper uses 0.5")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.vocab = vocab
        self.image_size = image_size
        self.max_words = max_words
        self.threshold = float(threshold)
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.source = ""
        self.scores: dict = {}
        self.config = None

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = "shapes-cpu", device: str | torch.device = "cpu", *,
                        threshold: float = THRESHOLD, batch_size: int = 8,
                        max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Predictor:
        """A predictor for a bundled model name, a model folder, a run folder or a checkpoint.

        See ``pretrained.load_pretrained`` for what ``name_or_path`` may be; the other
        arguments are the constructor's.
        """
        from .pretrained import load_pretrained

        loaded = load_pretrained(name_or_path, device=device)
        m = loaded.config.model
        predictor = cls(loaded.model, loaded.vocab, image_size=m.image_size, max_words=m.max_words, device=device,
                        threshold=threshold, batch_size=batch_size, max_pixels=max_pixels)
        predictor.source, predictor.scores, predictor.config = loaded.source, loaded.scores, loaded.config
        return predictor

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

    # ------------------------------------------------------------------------- inference

    def predict(self, image: ImageSource, expression: str | Sequence[str]) -> Prediction | list[Prediction]:
        """Segment what ``expression`` refers to in ``image``.

        ``expression`` may be one string (returns a ``Prediction``) or a list of strings
        (returns a list, in order): the image is decoded and encoded once and the expressions
        run in batches of ``batch_size`` over the shared visual features.
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
        predictions = self.predict_prepared(self.load(image), queries)
        return predictions[0] if single else predictions

    def predict_prepared(self, rgb: np.ndarray, queries: Sequence[Query]) -> list[Prediction]:
        """``predict`` for a decoded image (``load``) and checked expressions (``prepare``).

        rgb: (H, W, 3) uint8. The image is encoded once for all ``queries``.
        """
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError("predict_prepared needs an (H, W, 3) uint8 array; decode with Predictor.load")
        H, W = rgb.shape[:2]
        size = self.image_size
        tensor, (h, w) = letterbox_image(rgb, size)  # (3, S, S), valid extent
        out: list[Prediction] = []
        with torch.inference_mode():
            features = self.model.encode_image(tensor.unsqueeze(0).to(self.device))  # 5 x (1, C_l + 8, h_l, w_l)
            for start in range(0, len(queries), self.batch_size):
                chunk = queries[start: start + self.batch_size]
                length = max(len(q.ids) for q in chunk)
                tokens = torch.zeros(len(chunk), length, dtype=torch.int64)  # (B, L), 0 = padding
                for row, q in enumerate(chunk):
                    tokens[row, : len(q.ids)] = torch.tensor(q.ids)
                valid = torch.tensor([[h, w]], dtype=torch.int64).expand(len(chunk), 2)  # (B, 2)
                result = self.model(None, tokens.to(self.device), valid.to(self.device), features=features,
                                    return_intermediates=True)
                probs = torch.sigmoid(result.logits.float())[:, 0].cpu()  # (B, S, S)
                prob = unletterbox(probs, (h, w), (H, W)).clamp_(0, 1).numpy()  # (B, H, W)
                steps = F.interpolate(result.step_logits.float(), size=(size, size), mode="bilinear",
                                      align_corners=False)  # (B, T, S, S), as Eq. 10 upsamples P_T
                steps = torch.sigmoid(steps[:, :, :h, :w]).cpu().numpy()  # (B, T, h, w)
                attention = result.attention.float().cpu().numpy()  # (B, T, L)
                similarity = result.similarity.float().cpu().numpy()  # (B, T, L)
                for row, q in enumerate(chunk):
                    n = len(q.ids)
                    p = np.ascontiguousarray(prob[row], dtype=np.float32)
                    out.append(Prediction(
                        expression=q.expression, words=list(q.words), mask=p >= self.threshold, probability=p,
                        steps=np.ascontiguousarray(steps[row]), attention=attention[row, :, :n].copy(),
                        similarity=similarity[row, :, :n].copy(), levels=tuple(result.levels),
                        unknown_words=list(q.unknown_words), truncated=q.truncated, threshold=self.threshold))
        return out


# ----------------------------------------------------------------------------- files


def write_files_atomically(files: dict[str | os.PathLike, bytes]) -> None:
    """Write every ``path: content`` to a temporary file beside it, then rename them all.

    Nothing is renamed until every temporary file is complete, so an error (full disk, missing
    folder, Ctrl-C) leaves no partial output file, old files untouched.
    """
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            staged.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        raise


def png_bytes(image: Image.Image | np.ndarray) -> bytes:
    """Encode a PIL image or a uint8 array as PNG."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- batch mode (JSONL)


@dataclass
class _Item:
    line: int
    id: str
    image: str = ""
    expression: str = ""
    error: str = ""


def _read_pairs(pairs: Path) -> list[_Item]:
    if not pairs.is_file():
        raise ValueError(f"{pairs}: input file not found (expected JSON lines: "
                         '{"image": PATH, "expression": TEXT, "id": OPTIONAL})')
    items: list[_Item] = []
    seen: dict[str, int] = {}
    try:
        lines = pairs.read_text(encoding="utf-8").split("\n")  # not splitlines(): JSON strings may hold U+2028
    except UnicodeDecodeError:
        raise ValueError(f"{pairs}: not a UTF-8 text file (expected JSON lines)") from None
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        item = _Item(line=n, id=str(n))
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            item.error = f"line {n} is not valid JSON ({e.msg})"
            obj = None
        if obj is not None and not isinstance(obj, dict):
            item.error, obj = f"line {n} is not a JSON object", None
        if obj is not None:
            if "id" in obj:
                if not isinstance(obj["id"], (str, int)) or isinstance(obj["id"], bool) or str(obj["id"]) == "":
                    raise ValueError(f"{pairs}:{n}: 'id' must be a non-empty string or an integer")
                item.id = str(obj["id"])
            image, expression = obj.get("image"), obj.get("expression")
            item.image = image if isinstance(image, str) else ""
            item.expression = expression if isinstance(expression, str) else ""
            if not isinstance(image, str) or not image:
                item.error = f"line {n}: 'image' must be a path (a non-empty string)"
            elif not isinstance(expression, str):
                item.error = f"line {n}: 'expression' must be a string"
        if item.id in seen:
            raise ValueError(f"{pairs}: id {item.id!r} is used on lines {seen[item.id]} and {n}; ids must be "
                             "unique (results are matched to inputs by id)")
        seen[item.id] = n
        items.append(item)
    return items


def _done_ids(results: Path) -> set[str]:
    """Ids already in ``results``; a last line cut by an interruption is removed first."""
    if not results.is_file():
        return set()
    data = results.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        log.warning("%s: removing an incomplete last line (the previous run was interrupted)", results)
        with open(results, "r+b") as f:
            f.truncate(keep)
        data = data[:keep]
    done = set()
    for n, raw in enumerate(data.decode("utf-8", errors="replace").split("\n"), 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
            done.add(str(record["id"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning("%s:%d: not a result line, ignored", results, n)
    return done


def _mask_names(ids: list[str]) -> dict[str, str]:
    """A distinct, file-system safe PNG name per id."""
    safe = {i: (re.sub(r"[^A-Za-z0-9._-]", "_", i)[:100].lstrip(".") or "id") for i in ids}
    counts: dict[str, int] = {}
    for name in safe.values():
        counts[name.lower()] = counts.get(name.lower(), 0) + 1
    return {i: (f"{n}-{hashlib.sha1(i.encode()).hexdigest()[:8]}" if counts[n.lower()] > 1 or n != i else n) + ".png"
            for i, n in safe.items()}


def predict_jsonl(predictor: Predictor, pairs: str | os.PathLike, out_dir: str | os.PathLike,
                  results: str | os.PathLike | None = None, *, progress: bool = False) -> dict:
    """Batch mode: one mask per line of ``pairs``, one result line per input, resumable.

    Each input line is ``{"image": path, "expression": text, "id": optional}`` (the id defaults to
    the line number; relative image paths are relative to the folder of ``pairs``). For each
    line, ``<out_dir>/<id>.png`` (0/255 mask at the image's size, written atomically) and a line of
    ``results`` (default ``<out_dir>/results.jsonl``, appended and flushed line by line):
    ``{"id", "image", "expression", "mask", "score", "area", "words", "unknown_words", "truncated",
    "height", "width"}``, or ``{"id", "image", "expression", "error"}`` when that line failed.
    Ids already in ``results`` are skipped, so running the same command again after an
    interruption finishes the job. Consecutive lines with the same image share one encoding.

    Returns ``{"total", "done", "skipped", "failed", "results", "out_dir"}``.
    """
    pairs, out_dir = Path(pairs), Path(out_dir)
    items = _read_pairs(pairs)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = Path(results) if results is not None else out_dir / "results.jsonl"
    done = _done_ids(results)
    names = _mask_names([it.id for it in items])
    todo = [it for it in items if it.id not in done]
    counts = {"total": len(items), "done": 0, "skipped": len(items) - len(todo), "failed": 0}
    if counts["skipped"]:
        log.info("%s: %d of %d lines already done, skipped", results, counts["skipped"], len(items))

    def resolve(image: str) -> Path:
        p = Path(image).expanduser()
        return p if p.is_absolute() else pairs.parent / p

    with open(results, "a", encoding="utf-8") as sink, \
            tqdm(total=len(todo), desc="predict", unit="line", disable=not progress) as bar:

        def emit(item: _Item, record: dict) -> None:
            base = {"id": item.id, "image": item.image, "expression": item.expression}
            sink.write(json.dumps({**base, **record}, ensure_ascii=False) + "\n")
            sink.flush()
            os.fsync(sink.fileno())
            counts["failed" if "error" in record else "done"] += 1
            bar.update(1)

        k = 0
        while k < len(todo):
            item = todo[k]
            if item.error:
                emit(item, {"error": item.error})
                k += 1
                continue
            group = [item]  # consecutive lines on the same image
            while k + len(group) < len(todo) and not todo[k + len(group)].error \
                    and todo[k + len(group)].image == item.image:
                group.append(todo[k + len(group)])
            k += len(group)
            try:
                rgb = predictor.load(resolve(item.image))
            except ValueError as e:
                for it in group:
                    emit(it, {"error": str(e)})
                continue
            ready: list[tuple[_Item, Query]] = []
            for it in group:
                try:
                    ready.append((it, predictor.prepare(it.expression)))
                except ValueError as e:
                    emit(it, {"error": str(e)})
            for start in range(0, len(ready), predictor.batch_size):
                chunk = ready[start: start + predictor.batch_size]
                predictions = predictor.predict_prepared(rgb, [q for _, q in chunk])
                for (it, _), pred in zip(chunk, predictions, strict=True):
                    mask_path = out_dir / names[it.id]
                    write_files_atomically({mask_path: png_bytes(mask_image(pred.mask))})
                    summary = pred.summary()
                    emit(it, {"mask": str(mask_path), **{key: summary[key] for key in (
                        "score", "area", "words", "unknown_words", "truncated", "height", "width")}})
    return {**counts, "results": str(results), "out_dir": str(out_dir)}


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = ["THRESHOLD", "Prediction", "Predictor", "Query", "expression_words", "png_bytes", "predict_jsonl",
           "write_files_atomically"]
