"""The web demo end to end: the Gradio app on a free 127.0.0.1 port, driven with gradio_client,
with the bundled shapes-cpu model; and its parts without a server (cache, limits, Figure-4 view)."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from step_ris import demo as demo_module
from step_ris.demo import (
    MAX_EXPRESSION_CHARS,
    MAX_IMAGE_SIDE,
    MAX_UPLOAD,
    MAX_WORD_CHARS,
    QUEUE_SIZE,
    DemoApp,
    LRUCache,
)
from step_ris.predictor import Predictor
from step_ris.visualize import overlay

SCENE = demo_module.DEFAULT_EXAMPLES / "scene_1.png"
EXPRESSIONS = ["the second big diamond from the left", "tiny rhombus", "the blue rhombus furthest to the right"]


@pytest.fixture(scope="module")
def predictor():
    return Predictor.from_pretrained()


@pytest.fixture(scope="module")
def server(predictor):
    pytest.importorskip("gradio")
    client_module = pytest.importorskip("gradio_client")
    app = demo_module.build_demo(predictor)
    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = demo_module.launch(app, port=port, block=False, quiet=True)  # host: the default
    client = client_module.Client(url, verbose=False)
    yield {"demo": app, "url": url, "client": client, "app": app.step_ris_app, "port": port}
    client.close()
    app.close()


def segment(server, image, expression, threshold=0.5):
    from gradio_client import handle_file

    return server["client"].predict(handle_file(str(image)), expression, threshold, api_name="/segment")


def read_png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im)


def test_one_image_three_expressions_match_the_predictor(server, predictor):
    """The API's masks are the CLI path's (Predictor.predict at the same threshold), and the
    image's encoding is made once for the three expressions."""
    threshold = 0.4
    reference = Predictor.from_pretrained(threshold=threshold)
    rgb = reference.load(SCENE)
    before = len(server["app"].images)
    summaries = []
    for expression in EXPRESSIONS:
        overlay_file, mask_file, summary = segment(server, SCENE, expression, threshold)
        expected = reference.predict(SCENE, expression)
        mask = read_png(mask_file)
        assert mask.shape == expected.mask.shape == rgb.shape[:2]
        assert np.array_equal(mask > 0, expected.mask), expression
        assert np.array_equal(read_png(overlay_file), overlay(rgb, expected.mask))
        assert summary["words"] == expected.words and summary["threshold"] == threshold
        assert summary["area"] == pytest.approx(expected.area, abs=1e-6)
        assert summary["score"] == pytest.approx(expected.score, abs=1e-5)
        assert summary["latency_ms"] > 0 and isinstance(summary["encoding_reused"], bool)
        summaries.append(summary)
    assert any(s["area"] > 0 for s in summaries)  # the shipped model finds something
    assert len(server["app"].images) == before + 1  # one cache entry for the one image
    assert summaries[0]["encode_ms"] > 0 and not summaries[0]["encoding_reused"]  # first time: decoded here
    if hasattr(Predictor, "encode"):
        assert [s["encoding_reused"] for s in summaries[1:]] == [True, True]
        assert all(s["encode_ms"] == 0.0 for s in summaries[1:])


@pytest.mark.parametrize("case, message", [
    ("too long", f"at most {MAX_EXPRESSION_CHARS}"),
    ("empty", "expression is empty"),
    ("symbols", "no words the model can read"),
    ("not an image", "not an image"),
    ("too wide", f"at most {MAX_IMAGE_SIDE} pixels per side"),
    ("bad threshold", "threshold must be between 0 and 1"),
])
def test_bad_input_gets_a_clear_error(server, tmp_path, case, message):
    from gradio_client.exceptions import AppError

    image, expression, threshold = SCENE, "the blue thing", 0.5
    if case == "too long":
        expression = "the big blue diamond " * 12  # 252 characters
    elif case == "empty":
        expression = "   "
    elif case == "symbols":
        expression = "?!"
    elif case == "not an image":
        image = tmp_path / "notes.png"
        image.write_bytes(b"hello, not a PNG")
    elif case == "too wide":
        image = tmp_path / "wide.png"
        Image.new("RGB", (MAX_IMAGE_SIDE + 1, 4)).save(image)
    elif case == "bad threshold":
        threshold = 1.5
    with pytest.raises(AppError, match=message) as err:
        segment(server, image, expression, threshold)
    assert "/tmp" not in str(err.value)  # the message names the file, not the server's path


def test_the_server_binds_loopback_with_bounded_queue_and_uploads(server):
    import inspect

    from step_ris.cli import build_parser

    demo = server["demo"]
    assert demo.server_name == "127.0.0.1" and server["url"].startswith("http://127.0.0.1:")
    assert demo.share is False or demo.share is None
    assert demo._queue.max_size == QUEUE_SIZE and demo._queue.default_concurrency_limit == demo_module.CONCURRENCY
    assert demo.max_file_size == MAX_UPLOAD
    assert inspect.signature(demo_module.launch).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(demo_module.serve).parameters["host"].default == "127.0.0.1"
    args = build_parser().parse_args(["demo"])
    assert (args.host, args.port) == ("127.0.0.1", 7860)
    with pytest.raises(SystemExit):  # there is no public share link option
        build_parser().parse_args(["demo", "--share"])
    # the page is served, and only one endpoint is public
    import urllib.request

    with urllib.request.urlopen(server["url"], timeout=30) as r:
        assert r.status == 200 and b"step-ris demo" in r.read()
    assert list(server["client"].view_api(print_info=False, return_format="dict")["named_endpoints"]) == ["/segment"]


def test_an_upload_over_the_size_limit_is_refused(server, tmp_path):
    import httpx

    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (MAX_UPLOAD + 1))
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # the client reads the limit
        segment(server, big, "the blue thing")
    upload = server["url"] + "gradio_api/upload"  # and the server enforces it for any other client
    answer = httpx.post(upload, files={"files": ("big.png", big.read_bytes(), "image/png")}, timeout=60)
    assert answer.status_code == 413 and "maximum allowed size" in answer.text
    assert httpx.post(upload, files={"files": ("small.png", b"\0" * 100, "image/png")}, timeout=60).status_code == 200


def test_explain_picture_both_views_and_long_words_cut(predictor):
    pytest.importorskip("matplotlib")
    app = DemoApp(predictor)
    long_word = "z" * 60
    result = app.segment(SCENE.read_bytes(), f"the blue {long_word} diamond")
    key = app.remember(result)
    kept_prediction, small, _ = app.results.get(key)
    assert max(map(len, kept_prediction.words)) <= MAX_WORD_CHARS
    assert kept_prediction.words[2].endswith("…") and small.shape[:2] == result.prediction.steps.shape[1:]
    pictures = [app.explain(key, view) for view in ("attention", "similarity")]
    assert all(p is not None and p.width > 600 for p in pictures)
    assert not np.array_equal(np.asarray(pictures[0]), np.asarray(pictures[1]))
    assert app.explain("evicted-or-unknown", "attention") is None
    with pytest.raises(ValueError, match="view must be one of"):
        app.explain(key, "saliency")
    assert app.latency_text(key) == result.latency_text() and app.latency_text(None) is None


def test_a_second_expression_reuses_the_cached_image(predictor, monkeypatch):
    app = DemoApp(predictor, cache_size=2)
    loads = []
    real_load = predictor.load
    # count decodes of encoded files (predict itself may pass its array through load)
    monkeypatch.setattr(predictor, "load", lambda data: (isinstance(data, bytes) and loads.append(1)) or
                        real_load(data))
    first = app.segment(SCENE.read_bytes(), "tiny rhombus")
    second = app.segment(SCENE.read_bytes(), "medium sized thing", 0.3)
    assert len(loads) == 1 and not first.reused and second.encode_ms == 0.0
    assert second.prediction.threshold == 0.3
    assert np.array_equal(second.prediction.mask, second.prediction.probability >= 0.3)
    assert second.reused == hasattr(predictor, "encode")
    assert "ms** for the expression" in second.latency_text()
    # a different image is a different entry; the oldest is evicted past the capacity
    other = io.BytesIO()
    Image.open(demo_module.DEFAULT_EXAMPLES / "scene_2.png").save(other, format="PNG")
    app.segment(other.getvalue(), "the blue object")
    app.segment((demo_module.DEFAULT_EXAMPLES / "scene_3.png").read_bytes(), "big purple star")
    assert len(app.images) == 2 and len(loads) == 3
    app.segment(SCENE.read_bytes(), "tiny rhombus")
    assert len(loads) == 4  # scene_1 had been evicted


def test_lru_cache_is_bounded_and_thread_safe():
    cache = LRUCache(3)
    for k in "abc":
        cache.put(k, k.upper())
    assert cache.get("a") == "A"  # a is now the most recent
    cache.put("d", "D")
    assert cache.get("b") is None and cache.get("a") == "A" and len(cache) == 3

    def hammer(offset):
        for i in range(500):
            cache.put(f"{offset}-{i % 7}", i)
            cache.get(f"{offset}-{(i + 3) % 7}")

    threads = [threading.Thread(target=hammer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 3
    with pytest.raises(ValueError, match="capacity"):
        LRUCache(0)


def test_examples_and_the_query_link(predictor, tmp_path):
    app = DemoApp(predictor)
    rows = app.example_rows()
    assert len(rows) >= 4 and all(len(r) == 2 and r[1] for r in rows)
    assert {"scene_1.png"} <= set(app.examples)
    assert app.example_inputs({"example": "scene_1.png"}) == (str(app.examples["scene_1.png"]),
                                                              app.suggestions["scene_1.png"][0])
    assert app.example_inputs({"example": "scene_1.png", "expression": "tiny rhombus"})[1] == "tiny rhombus"
    assert app.example_inputs({}) is None
    with pytest.raises(ValueError, match="unknown example"):
        app.example_inputs({"example": "../../etc/passwd"})
    with pytest.raises(ValueError, match="folder not found"):
        DemoApp(predictor, tmp_path / "nope")
    (tmp_path / "a.png").write_bytes(SCENE.read_bytes())
    (tmp_path / "examples.json").write_text("{not json")
    app = DemoApp(predictor, tmp_path)  # a broken index is ignored with a warning
    assert list(app.examples) == ["a.png"] and app.example_rows() == [[str(tmp_path / "a.png"), ""]]


def test_gradio_is_imported_only_by_the_demo():
    code = ("import sys, step_ris, step_ris.cli, step_ris.demo; from step_ris.cli import build_parser; "
            "build_parser().parse_args(['predict', 'x.png', 'the red circle']); "
            "assert 'gradio' not in sys.modules, 'gradio was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_missing_gradio_is_one_line_naming_the_extra(monkeypatch, capsys):
    from step_ris.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # "import gradio" raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'step-ris\[demo\]'"):
        demo_module.require_gradio()
    assert main(["demo", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: the web demo") and "pip install 'step-ris[demo]'" in err


def test_port_zero_picks_a_free_port_and_a_busy_port_is_a_clear_error(server, predictor):
    second = demo_module.build_demo(predictor)
    with pytest.raises(ValueError, match="choose another --port"):
        demo_module.launch(second, port=server["port"], block=False, quiet=True)
    url = demo_module.launch(second, port=0, block=False, quiet=True)
    try:
        assert url.startswith("http://127.0.0.1:") and int(url.rstrip("/").rsplit(":", 1)[1]) > 0
    finally:
        second.close()


def test_a_predictor_without_encode_still_works(predictor):
    class WithoutEncode:  # a predictor of the image-in API only
        def __init__(self, inner):
            self.inner = inner
            self.threshold, self.max_words = inner.threshold, inner.max_words

        def load(self, image):
            return self.inner.load(image)

        def predict(self, image, expression):
            assert not hasattr(image, "encoding"), "the demo must pass pixels to a predictor without encode"
            return self.inner.predict(image, expression)

    app = DemoApp(WithoutEncode(predictor))
    first = app.segment(SCENE.read_bytes(), "tiny rhombus")
    second = app.segment(SCENE.read_bytes(), "tiny rhombus")
    assert not first.reused and not second.reused and "encoded with the expression" in second.latency_text()
    assert np.array_equal(second.prediction.mask, predictor.predict(SCENE, "tiny rhombus").mask)


def test_demo_compile_flag_reaches_the_predictor(monkeypatch):
    from step_ris.cli import main

    seen = {}
    monkeypatch.setattr(demo_module, "require_gradio", lambda: None)
    monkeypatch.setattr(demo_module, "launch", lambda *a, **k: None)
    monkeypatch.setattr(demo_module.Predictor, "from_pretrained",
                        classmethod(lambda cls, model, **kw: seen.update(kw) or object()))
    monkeypatch.setattr(demo_module, "build_demo", lambda predictor, examples: None)
    assert main(["demo", "--compile"]) == 0 and seen["compile"] is True
    assert main(["demo"]) == 0 and seen["compile"] is False
