"""A small web demo on the standard library's ``http.server`` (no extra install).

    step-ris demo                      # http://127.0.0.1:7860
    step-ris demo --model runs/a/last.pt --port 8000

The page lets a user upload an image or pick a bundled example, type an expression and see
the mask, the overlay and the Figure-4 view (word attention + per-step maps P_t). Endpoints:

    GET  /                  the page
    GET  /api/info          {"model", "image_size", "threshold", "scores", "examples": [{"name", "url", "expressions"}]}
    GET  /examples/NAME     an example image
    POST /api/predict       multipart/form-data or JSON; fields: image (file, or base64 / data URL in JSON)
                            or example (a name from /api/info), expression, view ("attention" or
                            "similarity"), threshold (optional). Answer: the prediction summary and
                            mask_png, overlay_png, explain_png (base64 PNGs; explain_png is null
                            without matplotlib). Bad input: 400 {"error": message}.

It binds 127.0.0.1 by default: it has no authentication, so expose it (``--host 0.0.0.0``)
only on a network you trust. Requests are served in threads; predictions run one at a time.
Examples: the images in ``step_ris/assets/examples/`` (or ``--examples DIR``), with suggested
expressions from an optional ``examples.json`` there (``{"file.png": ["expression", ...]}``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import threading
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from .predictor import Predictor, png_bytes
from .visualize import VIEWS, explain_figure, mask_image, overlay

log = logging.getLogger(__name__)

MAX_UPLOAD = 20 * 1024 * 1024  # bytes per request
EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DEFAULT_EXAMPLES = Path(__file__).resolve().parent / "assets" / "examples"


class BadRequest(ValueError):
    """The request cannot be answered; the message goes back to the user with a 400."""


class DemoApp:
    """What the server does, apart from HTTP: examples and predictions.

    Args:
        predictor: the ``Predictor`` to call.
        examples: folder of example images (None: the bundled ones, if any).
    """

    def __init__(self, predictor: Predictor, examples: str | Path | None = None):
        self.predictor = predictor
        self.lock = threading.Lock()  # one prediction at a time: bounded memory, no thread oversubscription
        folder = Path(examples) if examples is not None else DEFAULT_EXAMPLES
        if examples is not None and not folder.is_dir():
            raise ValueError(f"--examples {folder}: folder not found")
        self.examples: dict[str, Path] = {}
        self.suggestions: dict[str, list[str]] = {}
        if folder.is_dir():
            self.examples = {p.name: p for p in sorted(folder.iterdir())
                             if p.suffix.lower() in EXAMPLE_SUFFIXES and p.is_file()}
            index = folder / "examples.json"
            if index.is_file():
                try:
                    data = json.loads(index.read_text(encoding="utf-8"))
                    self.suggestions = {k: [str(e) for e in v] for k, v in data.items() if isinstance(v, list)}
                except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as e:
                    log.warning("%s: ignored, not a JSON object of lists (%s)", index, e)

    def info(self) -> dict[str, Any]:
        return {"model": self.predictor.source, "image_size": self.predictor.image_size,
                "threshold": self.predictor.threshold, "scores": self.predictor.scores,
                "examples": [{"name": n, "url": f"/examples/{n}", "expressions": self.suggestions.get(n, [])}
                             for n in self.examples]}

    def predict(self, fields: dict[str, Any]) -> dict[str, Any]:
        """fields: image (bytes) or example (name), expression, view, threshold -> JSON-ready answer."""
        expression = fields.get("expression")
        if not isinstance(expression, str):
            raise BadRequest("missing 'expression': type what to segment, e.g. 'the red circle on the left'")
        view = fields.get("view") or "attention"
        if view not in VIEWS:
            raise BadRequest(f"view must be one of {', '.join(VIEWS)}, got {view!r}")
        threshold = fields.get("threshold")
        if threshold in (None, ""):
            threshold = self.predictor.threshold
        try:
            threshold = float(threshold)
        except (TypeError, ValueError):
            raise BadRequest(f"threshold must be a number between 0 and 1, got {threshold!r}") from None
        if not 0.0 < threshold < 1.0:
            raise BadRequest(f"threshold must be between 0 and 1 (exclusive), got {threshold}")
        image = fields.get("image")
        example = fields.get("example")
        if image:
            source: Any = image
        elif example:
            if example not in self.examples:
                raise BadRequest(f"unknown example {example!r}; choose one of: {', '.join(self.examples) or 'none'}")
            source = self.examples[example]
        else:
            raise BadRequest("no image: upload one (field 'image') or pick an example (field 'example')")
        with self.lock:
            rgb = self.predictor.load(source)
            prediction = self.predictor.predict(rgb, expression)
            if threshold != prediction.threshold:
                prediction = dataclasses.replace(prediction, mask=prediction.probability >= threshold,
                                                 threshold=threshold)
            try:
                explain = png_bytes(explain_figure(prediction, rgb, view=view))
            except ImportError as e:
                log.warning("%s", e)
                explain = None
            answer = {**prediction.summary(), "view": view,
                      "mask_png": _b64(png_bytes(mask_image(prediction.mask))),
                      "overlay_png": _b64(png_bytes(overlay(rgb, prediction.mask))),
                      "explain_png": _b64(explain) if explain is not None else None}
        return answer


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _decode_base64_image(text: str) -> bytes:
    if text.startswith("data:"):
        text = text.split(",", 1)[-1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("'image' must be base64 (or a data: URL) in a JSON request") from None


def _parse_multipart(content_type: str, body: bytes) -> dict[str, Any]:
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
                                                  + body)
    if not message.is_multipart():
        raise BadRequest("malformed multipart/form-data body")
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        data = part.get_payload(decode=True) or b""
        if name == "image":
            fields[name] = data
        else:
            fields[name] = data.decode(part.get_content_charset() or "utf-8", errors="replace")
    return fields


def make_handler(app: DemoApp) -> type[BaseHTTPRequestHandler]:
    """The request handler class bound to ``app``."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "step-ris-demo"

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
            log.debug("%s %s", self.address_string(), format % args)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, obj: Any) -> None:
            self._send(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = urlparse(self.path).path
            if path in ("/", "/index.html"):
                self._send(200, PAGE.encode("utf-8"), "text/html; charset=utf-8")
            elif path == "/api/info":
                self._json(200, app.info())
            elif path.startswith("/examples/") and unquote(path[len("/examples/"):]) in app.examples:
                file = app.examples[unquote(path[len("/examples/"):])]
                kind = {".jpg": "jpeg", ".jpeg": "jpeg"}.get(file.suffix.lower(), file.suffix.lower().lstrip("."))
                self._send(200, file.read_bytes(), f"image/{kind}")
            else:
                self._json(404, {"error": f"not found: {path}"})

        def do_POST(self) -> None:  # noqa: N802
            path = urlparse(self.path).path
            if path != "/api/predict":
                self._json(404, {"error": f"not found: {path}"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0:
                self._json(400, {"error": "bad Content-Length"})
                return
            if length > MAX_UPLOAD:
                self.close_connection = True
                self._json(413, {"error": f"request of {length:,} bytes is larger than the limit of "
                                          f"{MAX_UPLOAD:,}; upload a smaller image"})
                return
            body = self.rfile.read(length)
            try:
                fields = self._fields(body)
                answer = app.predict(fields)
            except ValueError as e:  # BadRequest, ImageError, bad expressions
                self._json(400, {"error": str(e)})
                return
            except Exception:  # noqa: BLE001 - a bug must not kill the server; the log has the traceback
                log.exception("prediction failed")
                self._json(500, {"error": "internal error while predicting; see the server log"})
                return
            self._json(200, answer)

        def _fields(self, body: bytes) -> dict[str, Any]:
            content_type = self.headers.get("Content-Type", "")
            if content_type.startswith("multipart/form-data"):
                return _parse_multipart(content_type, body)
            if content_type.startswith("application/json"):
                try:
                    fields = json.loads(body.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    raise BadRequest(f"the body is not valid JSON ({e})") from None
                if not isinstance(fields, dict):
                    raise BadRequest("the JSON body must be an object")
                if isinstance(fields.get("image"), str):
                    fields["image"] = _decode_base64_image(fields["image"])
                elif fields.get("image") is not None:
                    raise BadRequest("'image' must be a base64 string in a JSON request")
                return fields
            raise BadRequest("send multipart/form-data (a form upload) or application/json")

        do_HEAD = do_GET

    return Handler


def make_server(app: DemoApp, host: str = "127.0.0.1", port: int = 7860) -> ThreadingHTTPServer:
    """A ready server (not yet serving); port 0 picks a free port (``server.server_address[1]``)."""
    server = ThreadingHTTPServer((host, port), make_handler(app))
    server.daemon_threads = True
    return server


def serve(model: str = "shapes-cpu", host: str = "127.0.0.1", port: int = 7860, examples: str | None = None,
          device: str = "cpu") -> None:
    """Load ``model`` and serve the demo until Ctrl-C."""
    app = DemoApp(Predictor.from_pretrained(model, device=device), examples)
    try:
        server = make_server(app, host, port)
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port") from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: the demo has no authentication; anyone who can reach this address can use it",
                    host)
    bound_host, bound_port = server.server_address[:2]
    log.info("step-ris demo: http://%s:%d/  (model %s; Ctrl-C to stop)",
             "127.0.0.1" if bound_host == "0.0.0.0" else bound_host, bound_port, app.predictor.source)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>step-ris demo</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222; }
 h1 { font-size: 1.4em; margin-bottom: .2em; } .sub { color: #666; margin-top: 0; }
 form { display: grid; gap: .6em; grid-template-columns: 9em 1fr; align-items: center; max-width: 760px; }
 input[type=text] { font-size: 1.05em; padding: .3em; }
 #examples img { height: 72px; margin: 2px; border: 2px solid transparent; cursor: pointer;
   image-rendering: pixelated; }
 #examples img.picked { border-color: #d22; }
 .suggest { cursor: pointer; color: #06c; margin-right: 1em; font-size: .9em; }
 #error { color: #b00; white-space: pre-wrap; } #meta { color: #444; font-size: .92em; }
 .row { display: flex; gap: 1em; flex-wrap: wrap; align-items: flex-start; margin-top: 1em; }
 .row figure { margin: 0; } .row img { max-width: 360px; max-height: 360px; image-rendering: pixelated; }
 #explain img { max-width: 100%; }
 figcaption { font-size: .85em; color: #555; }
</style></head><body>
<h1>STEP: referring image segmentation</h1>
<p class="sub">See-Through-Text Grouping (Chen et al., ICCV 2019). Model: <code id="model">...</code></p>
<form id="form" method="post" action="/api/predict" enctype="multipart/form-data">
 <label for="image">Upload an image</label><input id="image" name="image" type="file" accept="image/*">
 <span>or pick an example</span><div id="examples"><em>none bundled</em></div>
 <input type="hidden" name="example" id="example">
 <label for="expression">Expression</label>
 <input id="expression" name="expression" type="text" placeholder="the red circle on the left" required>
 <span></span><div id="suggestions"></div>
 <label for="view">Word view</label>
 <select id="view" name="view"><option value="attention">alpha_t of Eq. 1 (word attention)</option>
  <option value="similarity">cosine of s_t and h_j (Figure 4)</option></select>
 <label for="threshold">Threshold</label><input id="threshold" name="threshold" type="number" min="0.01" max="0.99"
  step="0.01" value="0.5">
 <span></span><button type="submit">Segment</button>
</form>
<p id="error"></p><p id="meta"></p>
<div class="row">
 <figure><img id="overlay" alt=""><figcaption>overlay</figcaption></figure>
 <figure><img id="mask" alt=""><figcaption>mask</figcaption></figure>
</div>
<div class="row" id="explain">
 <figure><img id="explainimg" alt=""><figcaption id="explaincap"></figcaption></figure>
</div>
<script>
const $ = (id) => document.getElementById(id);
const esc = (s) => s.replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
fetch("/api/info").then((r) => r.json()).then((info) => {
  $("model").textContent = info.model;
  $("threshold").value = info.threshold;
  if (!info.examples.length) return;
  $("examples").innerHTML = "";
  for (const ex of info.examples) {
    const img = document.createElement("img");
    img.src = ex.url; img.title = ex.name; img.alt = ex.name;
    img.onclick = () => {
      document.querySelectorAll("#examples img").forEach((e) => e.classList.remove("picked"));
      img.classList.add("picked"); $("example").value = ex.name; $("image").value = "";
      $("suggestions").innerHTML = ex.expressions.map((e) => '<span class="suggest">' + esc(e) + "</span>").join("");
      document.querySelectorAll(".suggest").forEach((s) => {
        s.onclick = () => { $("expression").value = s.textContent; };
      });
    };
    $("examples").appendChild(img);
  }
});
$("image").onchange = () => { $("example").value = "";
  document.querySelectorAll("#examples img").forEach((e) => e.classList.remove("picked")); };
$("form").onsubmit = async (ev) => {
  ev.preventDefault();
  $("error").textContent = ""; $("meta").textContent = "segmenting...";
  const r = await fetch("/api/predict", {method: "POST", body: new FormData($("form"))});
  const a = await r.json();
  if (!r.ok) { $("error").textContent = a.error; $("meta").textContent = ""; return; }
  $("overlay").src = "data:image/png;base64," + a.overlay_png;
  $("mask").src = "data:image/png;base64," + a.mask_png;
  $("explainimg").src = a.explain_png ? "data:image/png;base64," + a.explain_png : "";
  $("explaincap").textContent = a.explain_png ? "Figure-4 view" : "install matplotlib for the Figure-4 view";
  let meta = "words read: " + a.words.join(" ") + "  |  score " + a.score.toFixed(3) + "  |  area " +
    (100 * a.area).toFixed(1) + "%  |  " + a.width + " x " + a.height;
  if (a.unknown_words.length) meta += "  |  unknown words (read as <unk>): " + a.unknown_words.join(", ");
  if (a.truncated) meta += "  |  only the first " + a.words.length + " words are read";
  $("meta").textContent = meta;
};
</script></body></html>
"""

__all__ = ["DemoApp", "MAX_UPLOAD", "make_handler", "make_server", "serve"]
