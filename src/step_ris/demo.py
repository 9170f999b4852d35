"""The web demo, on Gradio (``pip install 'step-ris[demo]'``).

    step-ris demo                      # http://127.0.0.1:7860
    step-ris demo --model runs/a/last.pt --port 8000

The page lets a user upload an image or pick a bundled example, type an expression, set the
threshold and see the overlay, the mask, a JSON summary with the latency, and the Figure-4
view (word attention alpha_t of Eq. 1 or the cosine of s_t and h_j, and every step's P_t).

One API endpoint, ``/segment``: (image, expression, threshold) -> (overlay, mask, summary);
call it with ``gradio_client`` (docs/demo.md). A second expression on the same image reuses its
encoding: encoded images are kept in a small LRU cache keyed by a hash of the image bytes.

Everything a request carries is bounded: the upload's size (``MAX_UPLOAD``), the decoded
image's side (``MAX_IMAGE_SIDE``, checked on the header before any pixel is decoded, on top of
``Predictor.max_pixels``), the expression's length (``MAX_EXPRESSION_CHARS``, before
tokenising), the words drawn in the Figure-4 view (``MAX_WORD_CHARS``), the requests run at once
(``CONCURRENCY``) and waiting (``QUEUE_SIZE``). It binds 127.0.0.1 by default and never opens a
public share link: it has no authentication, so bind another address only on a network you trust.

Gradio is imported only when the demo is built: ``import step_ris`` and ``step-ris predict``
do not need it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ._extras import require
from .data.image_io import ImageError
from .demo_limits import (  # noqa: F401 - the limits are part of the demo's public names
    CACHE_SIZE,
    CONCURRENCY,
    MAX_EXPRESSION_CHARS,
    MAX_IMAGE_SIDE,
    MAX_UPLOAD,
    MAX_WORD_CHARS,
    QUEUE_SIZE,
    RESULT_CACHE_SIZE,
    LRUCache,
    check_image_side,
    check_threshold,
    clip_word,
    upload_bytes,
)
from .predictor import Prediction, Predictor, expression_words
from .visualize import VIEWS, explain_figure, mask_image, overlay

if TYPE_CHECKING:
    import gradio

log = logging.getLogger(__name__)

EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DEFAULT_EXAMPLES = Path(__file__).resolve().parent / "assets" / "examples"
CSS = """
.step-ris-picture img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }
"""  # small images (ShapesRef scenes are 128 px) shown large, without blur


def require_gradio():
    """The ``gradio`` module, or an ``ImportError`` (``MissingExtraError``) naming the install command."""
    return require("gradio", extra="demo", purpose="the web demo (step-ris demo)")


# ----------------------------------------------------------------------------- the demo without the web


@dataclass
class _Image:
    """A decoded image and, when the predictor can encode separately, its visual features."""

    rgb: np.ndarray  # (H, W, 3) uint8
    encoded: Any  # what Predictor.encode returned, or None
    encode_ms: float  # decoding + encoding, when it was done


@dataclass
class Segmented:
    """One answer of the demo.

    prediction: the ``Prediction``, its mask at the requested threshold.
    rgb: the decoded image, (H, W, 3) uint8.
    latency_ms: the expression's time: tokenising, language encoder, STEP and the refiner over
        the image's features (with a predictor without ``encode``: the image's encoding too).
    encode_ms: decoding and encoding the image; 0.0 when they were reused.
    reused: True when the image's encoding came from the cache.
    """

    prediction: Prediction
    rgb: np.ndarray
    latency_ms: float
    encode_ms: float
    reused: bool

    def summary(self) -> dict[str, Any]:
        """The JSON answer: the prediction's summary, the latency and whether the encoding was reused."""
        out = self.prediction.summary()
        matched = getattr(self.prediction, "matched", None)
        if matched is not None:
            out["matched"] = bool(matched)
        return {**out, "latency_ms": round(self.latency_ms, 2), "encode_ms": round(self.encode_ms, 2),
                "encoding_reused": self.reused}

    def latency_text(self) -> str:
        """One line for the page, e.g. '12.3 ms for the expression; image encoding reused'."""
        if self.reused:
            how = "image encoding reused (cached)"
        elif self.encode_ms:
            how = f"image decoded and encoded in {self.encode_ms:.1f} ms"
        else:
            how = "image encoded with the expression"
        line = f"**{self.latency_ms:.1f} ms** for the expression; {how}"
        if not self.prediction.matched:
            line = f"**Nothing in this image matches** (score {self.prediction.score:.2f}). " + line
        return line


class DemoApp:
    """What the demo does, apart from the web page: examples, input checks, caching, pictures.

    Args:
        predictor: the ``Predictor`` to call.
        examples: folder of example images (None: the bundled ones), with suggested expressions
            from an optional ``examples.json`` there (``{"file.png": ["expression", ...]}``).
        cache_size: encoded images kept for further expressions on the same image.
    """

    def __init__(self, predictor: Predictor, examples: str | os.PathLike | None = None, *,
                 cache_size: int = CACHE_SIZE):
        self.predictor = predictor
        self.images = LRUCache(cache_size)
        self.results = LRUCache(RESULT_CACHE_SIZE)
        self._model_lock = threading.Lock()  # one forward pass at a time: bounded memory, no oversubscription
        self.examples, self.suggestions = _read_examples(examples)

    def example_rows(self) -> list[list[str]]:
        """[image path, expression] rows for the page: every suggestion of every example, taking
        the images in turn (the first page shows each image)."""
        lists = [[[str(path), e] for e in self.suggestions.get(name, [""])] for name, path in self.examples.items()]
        return [rows[k] for k in range(max(map(len, lists), default=0)) for rows in lists if k < len(rows)]

    def example_inputs(self, params: dict[str, str]) -> tuple[str, str] | None:
        """(image path, expression) for a link ``/?example=NAME[&expression=TEXT]``; None without one.

        The expression defaults to the example's first suggestion."""
        name = params.get("example")
        if not name:
            return None
        if name not in self.examples:
            raise ValueError(f"unknown example {name[:60]!r}; choose one of: {', '.join(self.examples) or 'none'}")
        expression = params.get("expression") or (self.suggestions.get(name) or [""])[0]
        return str(self.examples[name]), expression  # segment checks its length

    def segment(self, image: str | os.PathLike | bytes | None, expression: Any,
                threshold: Any = None) -> Segmented:
        """Check the inputs, decode and encode the image (or reuse it), run the expression.

        image: a file path or the encoded bytes of an image. Raises ``ValueError`` with a
        message for the user when an input is missing, too large or unreadable.
        """
        if not isinstance(expression, str):
            raise ValueError("missing expression: type what to segment, e.g. 'the red circle on the left'")
        if len(expression) > MAX_EXPRESSION_CHARS:
            raise ValueError(f"the expression is {len(expression)} characters long; the demo reads at most "
                             f"{MAX_EXPRESSION_CHARS} (and the model the first {self.predictor.max_words} words): "
                             "shorten it")
        expression_words(expression)  # empty, or nothing readable: fail before touching the image
        threshold = check_threshold(threshold, self.predictor.threshold)
        data, name = upload_bytes(image)
        key = hashlib.sha256(data).hexdigest()
        cached = self.images.get(key)
        reused = cached is not None
        if cached is None:
            start = time.perf_counter()
            check_image_side(data)
            try:
                rgb = self.predictor.load(data)
            except ImageError as e:  # named "<bytes>" by image_io: say which file it was
                raise ImageError(str(e).replace("<bytes>", name, 1)) from None
            encoded = None
            if hasattr(self.predictor, "encode"):
                with self._model_lock:
                    encoded = self.predictor.encode(rgb)
            cached = _Image(rgb, encoded, (time.perf_counter() - start) * 1000.0)
            self.images.put(key, cached)
        start = time.perf_counter()
        with self._model_lock:
            prediction = self.predictor.predict(cached.encoded if cached.encoded is not None else cached.rgb,
                                                expression)
        latency_ms = (time.perf_counter() - start) * 1000.0
        if threshold != prediction.threshold:
            prediction = prediction.with_threshold(threshold)
        return Segmented(prediction, cached.rgb, latency_ms, 0.0 if reused else cached.encode_ms,
                         reused and cached.encoded is not None)

    def remember(self, result: Segmented) -> str:
        """Keep ``result`` for ``explain`` (bounded); returns its key."""
        key = uuid.uuid4().hex
        self.results.put(key, (*_for_explain(result.prediction, result.rgb), result.latency_text()))
        return key

    def latency_text(self, key: str | None) -> str | None:
        """The latency line of a remembered result (None when it was evicted or never made)."""
        kept = self.results.get(key) if key else None
        return kept[2] if kept is not None else None

    def explain(self, key: str | None, view: str = "attention") -> Image.Image | None:
        """The Figure-4 view of a remembered result (None when it was evicted or never made)."""
        if view not in VIEWS:
            raise ValueError(f"view must be one of {', '.join(VIEWS)}, got {view!r}")
        kept = self.results.get(key) if key else None
        if kept is None:
            return None
        prediction, small, _ = kept
        return explain_figure(prediction, small, view=view)


def _read_examples(examples: str | os.PathLike | None) -> tuple[dict[str, Path], dict[str, list[str]]]:
    folder = Path(examples) if examples is not None else DEFAULT_EXAMPLES
    if examples is not None and not folder.is_dir():
        raise ValueError(f"--examples {folder}: folder not found")
    found: dict[str, Path] = {}
    suggestions: dict[str, list[str]] = {}
    if not folder.is_dir():
        return found, suggestions
    found = {p.name: p for p in sorted(folder.iterdir()) if p.suffix.lower() in EXAMPLE_SUFFIXES and p.is_file()}
    index = folder / "examples.json"
    if index.is_file():
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
            suggestions = {k: [str(e)[:MAX_EXPRESSION_CHARS] for e in v] for k, v in data.items()
                           if isinstance(v, list) and k in found}
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as e:
            log.warning("%s: ignored, not a JSON object of lists (%s)", index, e)
    return found, suggestions


def _for_explain(prediction: Prediction, rgb: np.ndarray) -> tuple[Prediction, np.ndarray]:
    """What the Figure-4 view needs, small: the per-step maps are at the model's resolution
    (h, w), so the image and the (unused there) mask are kept at that size; long words are cut."""
    h, w = prediction.steps.shape[1:]
    small = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))  # (h, w, 3)
    slim = dataclasses.replace(prediction, mask=np.zeros((h, w), dtype=bool),
                               probability=np.zeros((h, w), dtype=np.float32),
                               words=[clip_word(x) for x in prediction.words],
                               unknown_words=[clip_word(x) for x in prediction.unknown_words])
    return slim, small


# ----------------------------------------------------------------------------- the page


def build_demo(predictor: Predictor, examples: str | os.PathLike | None = None, *,
               app: DemoApp | None = None) -> gradio.Blocks:
    """The Gradio app (not launched): the page and the ``/segment`` API endpoint.

    predictor: the ``Predictor`` to call; examples: folder of example images (None: the bundled
    ones). Launch it with ``launch(demo)`` (bounded queue and upload size, 127.0.0.1).
    """
    gr = require_gradio()
    app = app or DemoApp(predictor, examples)
    model = Path(predictor.source).name if predictor.source else "a STEP model"  # not the server's path

    def segment(image, expression, threshold):
        """Segment what the expression refers to; returns the overlay, the mask and a JSON summary."""
        if isinstance(image, dict):  # the upload as sent (preprocess=False): its own bytes, our own checks
            image = image.get("path")
        try:
            result = app.segment(image, expression, threshold)
        except ValueError as e:  # bad input, ImageError: the message is for the user
            raise gr.Error(str(e), print_exception=False) from None
        return (overlay(result.rgb, result.prediction.mask), mask_image(result.prediction.mask), result.summary(),
                app.remember(result))

    def explain(key, view):
        """The Figure-4 view of the last result, in the chosen word view."""
        try:
            picture = app.explain(key, view)
        except (ImportError, ValueError) as e:  # matplotlib missing, a bad view
            raise gr.Error(str(e), print_exception=False) from None
        return picture if picture is not None else gr.skip()

    def show(key, view):
        """After a segmentation: its latency line and its Figure-4 view."""
        text = app.latency_text(key)
        return (text if text is not None else gr.skip()), explain(key, view)

    def from_query(request):
        """``/?example=scene_1.png&expression=...``: open the page with that example segmented."""
        try:
            inputs = app.example_inputs(dict(request.query_params) if request is not None else {})
        except ValueError as e:
            raise gr.Error(str(e), print_exception=False) from None
        if inputs is None:
            return (gr.skip(),) * 6
        return inputs + segment(*inputs, predictor.threshold)

    from_query.__annotations__["request"] = gr.Request  # Gradio passes the request to a parameter of this type

    with gr.Blocks(title="step-ris demo", analytics_enabled=False) as demo:
        gr.Markdown(f"## STEP: referring image segmentation\nSee-Through-Text Grouping (Chen et al., ICCV 2019). "
                    f"Model: `{model}`. Upload an image or pick an example, type what to segment.")
        with gr.Row():
            with gr.Column(scale=2):
                image = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], label="Image",
                                 height=280, elem_classes="step-ris-picture")
                expression = gr.Textbox(label="Expression", placeholder="the red circle on the left",
                                        max_length=MAX_EXPRESSION_CHARS,
                                        info=f"English, at most {MAX_EXPRESSION_CHARS} characters; Enter segments")
                threshold = gr.Slider(0.01, 0.99, value=predictor.threshold, step=0.01, label="Threshold",
                                      info="probability at which a pixel is in the mask")
                view = gr.Radio([("word attention α_t (Eq. 1)", "attention"),
                                 ("cosine of s_t and h_j (Figure 4)", "similarity")], value="attention",
                                label="Word view of the Figure-4 picture")
                button = gr.Button("Segment", variant="primary")
                if app.examples:
                    gr.Examples(app.example_rows(), inputs=[image, expression],
                                label="Examples: click one, then Segment", examples_per_page=5)
            with gr.Column(scale=3):
                with gr.Row():
                    overlay_out = gr.Image(label="overlay", format="png", interactive=False, height=280,
                                           elem_classes="step-ris-picture")
                    mask_out = gr.Image(label="mask", format="png", interactive=False, height=280,
                                        elem_classes="step-ris-picture")
                latency = gr.Markdown()
                summary = gr.JSON(label="summary", open=True, max_height=300)
        explain_out = gr.Image(label="Figure-4 view: the word matrix per step t, and every step's P_t",
                               format="png", interactive=False)
        key = gr.State(None)  # the remembered result whose Figure-4 view is shown

        outputs = [overlay_out, mask_out, summary, key]
        # preprocess=False: the function reads the uploaded file itself (Gradio has checked that it is an
        # upload), so a file that is not an image gets our message, and the cache hashes the bytes sent
        gr.on([button.click, expression.submit], segment, [image, expression, threshold], outputs,
              api_name="segment", preprocess=False).success(show, [key, view], [latency, explain_out],
                                                            api_visibility="private")
        view.change(explain, [key, view], explain_out, api_visibility="private")
        demo.load(from_query, None, [image, expression, *outputs], api_visibility="private").success(
            show, [key, view], [latency, explain_out], api_visibility="private")
    demo.step_ris_app = app  # for tests and callers that want the cache or the examples
    return demo


def launch(demo: gradio.Blocks, host: str = "127.0.0.1", port: int = 7860, *, block: bool = True,
           quiet: bool = False) -> str:
    """Serve ``demo`` with a bounded queue and upload size; returns the local URL.

    host: the address to bind (127.0.0.1: this machine only); port: 0 picks a free one.
    block: serve until Ctrl-C; False returns at once (``demo.close()`` stops it).
    """
    gr = require_gradio()
    if port == 0:  # Gradio wants a number: take one the system says is free
        port = _free_port(host)
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: the demo has no authentication; anyone who can reach this address can use it",
                    host)
    try:
        _, url, _ = demo.launch(server_name=host, server_port=port, share=False, inbrowser=False,
                                prevent_thread_lock=True, max_file_size=MAX_UPLOAD, quiet=True, ssr_mode=False,
                                pwa=False, mcp_server=False, enable_monitoring=False, show_error=False,
                                footer_links=["api"], css=CSS, theme=gr.themes.Default(
                                    font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]))
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port") from None
    if not quiet:
        log.info("step-ris demo: %s  (Ctrl-C to stop)", url)
    if block:
        try:
            demo.block_thread()
        finally:
            demo.close()
    return url


def _free_port(host: str) -> int:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve(model: str = "shapes-cpu", host: str = "127.0.0.1", port: int = 7860, examples: str | None = None,
          device: str = "cpu", compile: bool = False) -> None:
    """Load ``model`` and serve the demo until Ctrl-C (``compile``: ``Predictor(compile=True)``)."""
    require_gradio()  # before loading the model
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests
    predictor = Predictor.from_pretrained(model, device=device, compile=compile)
    launch(build_demo(predictor, examples), host, port)


__all__ = ["CACHE_SIZE", "CONCURRENCY", "MAX_EXPRESSION_CHARS", "MAX_IMAGE_SIDE", "MAX_UPLOAD", "MAX_WORD_CHARS",
           "QUEUE_SIZE", "DemoApp", "LRUCache", "Segmented", "build_demo", "launch", "require_gradio", "serve"]
