"""The web demo end to end: a real server on a free 127.0.0.1 port, driven with urllib."""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import shutil
import threading
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
from PIL import Image

from step_ris.demo import DemoApp, make_server
from step_ris.predictor import Predictor
from tiny_model import shared_tiny


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tiny = shared_tiny(tmp_path_factory)
    examples = tmp_path_factory.mktemp("examples")
    for p in sorted(tiny["images"].glob("*.png"))[:3]:
        shutil.copy(p, examples / p.name)
    first = sorted(examples.glob("*.png"))[0].name
    (examples / "examples.json").write_text(json.dumps({first: ["the blue thing", "the pink hexagon"]}))
    app = DemoApp(Predictor.from_pretrained(tiny["model"]), examples)
    srv = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield {"url": f"http://127.0.0.1:{srv.server_address[1]}", "tiny": tiny, "first": first}
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def request(url, data=None, headers=None, method=None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, dict[str, str]]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def png(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def test_page_info_and_examples(server):
    status, kind, body = request(server["url"] + "/")
    assert status == 200 and kind.startswith("text/html") and b"/api/predict" in body
    status, _, body = request(server["url"] + "/api/info")
    info = json.loads(body)
    assert status == 200 and len(info["examples"]) == 3 and info["image_size"] == 64
    assert info["examples"][0]["expressions"] == ["the blue thing", "the pink hexagon"]
    status, kind, body = request(server["url"] + info["examples"][0]["url"])
    assert status == 200 and kind == "image/png" and Image.open(io.BytesIO(body)).size == (64, 64)
    assert request(server["url"] + "/examples/..%2F..%2Fetc%2Fpasswd")[0] == 404
    assert request(server["url"] + "/nothing")[0] == 404


def test_upload_an_image_and_get_the_pictures(server):
    source = Image.open(server["tiny"]["image"]).convert("RGB").resize((96, 54))
    buf = io.BytesIO()
    source.save(buf, format="PNG")
    body, headers = multipart({"expression": "the big pink hexagon", "view": "similarity", "threshold": "0.3"},
                              {"image": ("scene.png", buf.getvalue())})
    status, kind, raw = request(server["url"] + "/api/predict", body, headers)
    assert status == 200 and kind.startswith("application/json"), raw[:300]
    answer = json.loads(raw)
    assert answer["words"] == ["the", "big", "pink", "hexagon"] and answer["view"] == "similarity"
    assert (answer["width"], answer["height"]) == (96, 54) and answer["threshold"] == 0.3
    mask, over, explain = png(answer["mask_png"]), png(answer["overlay_png"]), png(answer["explain_png"])
    assert mask.size == over.size == (96, 54) and mask.mode == "L" and over.mode == "RGB"
    assert set(np.unique(np.asarray(mask))) <= {0, 255} and explain.width > 600
    expected = Predictor.from_pretrained(server["tiny"]["model"], threshold=0.3).predict(source,
                                                                                           "the big pink hexagon")
    assert np.array_equal(np.asarray(mask) > 0, expected.mask)


def test_json_request_with_an_example(server):
    body = json.dumps({"example": server["first"], "expression": "zorglub blue"}).encode()
    status, _, raw = request(server["url"] + "/api/predict", body, {"Content-Type": "application/json"})
    answer = json.loads(raw)
    assert status == 200 and answer["unknown_words"] == ["zorglub"] and answer["view"] == "attention"
    assert png(answer["mask_png"]).size == (64, 64)
    # an uploaded image as a data URL in JSON
    data = base64.b64encode(server["tiny"]["image"].read_bytes()).decode()
    body = json.dumps({"image": "data:image/png;base64," + data, "expression": "the thing"}).encode()
    status, _, raw = request(server["url"] + "/api/predict", body, {"Content-Type": "application/json"})
    assert status == 200 and png(json.loads(raw)["overlay_png"]).size == (64, 64)


@pytest.mark.parametrize("case, message", [
    ("empty expression", "expression is empty"),
    ("no expression", "missing 'expression'"),
    ("symbols", "no words the model can read"),
    ("not an image", "not an image"),
    ("truncated", "truncated|decode|corrupt"),
    ("no image", "no image"),
    ("unknown example", "unknown example"),
    ("bad view", "view must be one of"),
    ("bad threshold", "threshold must be"),
    ("bad json", "not valid JSON"),
    ("bad base64", "base64"),
    ("plain text body", "multipart/form-data"),
])
def test_bad_input_is_a_400_with_a_message(server, case, message):
    image = server["tiny"]["image"].read_bytes()
    fields = {"expression": "the blue thing"}
    files = {"image": ("x.png", image)}
    headers = None
    body = None
    if case == "empty expression":
        fields["expression"] = "  "
    elif case == "no expression":
        del fields["expression"]
    elif case == "symbols":
        fields["expression"] = "?!"
    elif case == "not an image":
        files = {"image": ("x.png", b"hello")}
    elif case == "truncated":
        files = {"image": ("x.png", image[: len(image) // 2])}
    elif case == "no image":
        files = {}
    elif case == "unknown example":
        files, fields["example"] = {}, "nope.png"
    elif case == "bad view":
        fields["view"] = "saliency"
    elif case == "bad threshold":
        fields["threshold"] = "2"
    elif case == "bad json":
        body, headers = b"{oops", {"Content-Type": "application/json"}
    elif case == "bad base64":
        body = json.dumps({"image": "!!notbase64!!", "expression": "x"}).encode()
        headers = {"Content-Type": "application/json"}
    elif case == "plain text body":
        body, headers = b"expression=x", {"Content-Type": "text/plain"}
    if body is None:
        body, headers = multipart(fields, files)
    status, kind, raw = request(server["url"] + "/api/predict", body, headers)
    assert status == 400 and kind.startswith("application/json")
    error = json.loads(raw)["error"]
    assert re.search(message, error), error


def test_a_too_large_upload_is_refused_before_reading_it(server):
    host, port = server["url"].rsplit("/", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("POST", "/api/predict")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(10**9))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and "larger than the limit" in json.loads(response.read())["error"]
    conn.close()


def test_the_server_binds_loopback_by_default():
    import inspect

    from step_ris import demo

    assert inspect.signature(demo.serve).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(demo.make_server).parameters["host"].default == "127.0.0.1"
