"""The web demo's bounds: size limits, the encoding cache, and the checks of every input.

Kept apart from ``demo.py`` (the page) so each limit is one named constant a reader finds at once.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

from PIL import Image

MAX_UPLOAD = 10 * 1024 * 1024  # bytes per uploaded file (Gradio's max_file_size)
MAX_IMAGE_SIDE = 4096  # pixels, the longer side of an accepted image (the model reads it at S anyway)
MAX_EXPRESSION_CHARS = 200  # characters of an expression, checked before tokenising
MAX_WORD_CHARS = 16  # characters of a word as drawn in the Figure-4 view (longer ones are cut)
CACHE_SIZE = 4  # encoded images kept for further expressions
RESULT_CACHE_SIZE = 16  # recent results kept for redrawing the Figure-4 view
CONCURRENCY = 1  # requests that run at once (one model, one CPU pool)
QUEUE_SIZE = 16  # requests that may wait; more are refused with "queue full"


class LRUCache:
    """A thread-safe mapping that keeps the ``capacity`` most recently used entries."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity={capacity} must be >= 1")
        self.capacity = capacity
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Any | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def check_threshold(value: Any, default: float) -> float:
    if value is None or value == "":
        return default
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number between 0 and 1, got {value!r}") from None
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be between 0 and 1 (exclusive), got {threshold}")
    return threshold


def upload_bytes(image: str | os.PathLike | bytes | None) -> tuple[bytes, str]:
    """The encoded bytes of ``image`` and a name for messages (the file's name, not its server path)."""
    if image is None or image == b"" or image == "":
        raise ValueError("no image: upload one, or pick an example below")
    if isinstance(image, (bytes, bytearray, memoryview)):
        data, name = bytes(image), "the image"
    else:
        path = Path(image)
        name = path.name
        try:
            size = path.stat().st_size
            if size > MAX_UPLOAD:
                raise ValueError(f"the image file is {size:,} bytes, more than the demo's limit of {MAX_UPLOAD:,}; "
                                 "upload a smaller file")
            data = path.read_bytes()
        except OSError as e:
            raise ValueError(f"cannot read the uploaded image ({e.strerror or e}); upload it again") from None
    if len(data) > MAX_UPLOAD:
        raise ValueError(f"the image is {len(data):,} bytes, more than the demo's limit of {MAX_UPLOAD:,}; "
                         "upload a smaller file")
    return data, name


def check_image_side(data: bytes) -> None:
    """Refuse an image whose header claims a side over ``MAX_IMAGE_SIDE`` before decoding it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
    except Exception:  # noqa: BLE001 - not an image, a bomb Pillow refuses...: load_image says which
        return
    if max(width, height) > MAX_IMAGE_SIDE:
        raise ValueError(f"the image is {width} x {height} pixels; the demo accepts at most {MAX_IMAGE_SIDE} "
                         "pixels per side: shrink it first")


def clip_word(word: str) -> str:
    return word if len(word) <= MAX_WORD_CHARS else word[: MAX_WORD_CHARS - 1] + "…"


__all__ = ["CACHE_SIZE", "CONCURRENCY", "MAX_EXPRESSION_CHARS", "MAX_IMAGE_SIDE", "MAX_UPLOAD", "MAX_WORD_CHARS",
           "QUEUE_SIZE", "RESULT_CACHE_SIZE", "LRUCache", "check_image_side", "check_threshold", "clip_word",
           "upload_bytes"]
