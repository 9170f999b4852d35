"""`step-ris predict` (one image and --batch), `step-ris export --format folder`: outputs, errors, resume."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from step_ris import cli
from step_ris.predictor import Predictor, write_files_atomically
from tiny_model import bomb_png, shared_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return shared_tiny(tmp_path_factory)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_predict_writes_mask_overlay_and_explain(tiny, tmp_path, capsys):
    image = tmp_path / "wide.png"
    Image.open(tiny["image"]).convert("RGB").resize((90, 50)).save(image)
    code, out, _ = run(capsys, "predict", image, "the big pink hexagon", "--model", tiny["model"],
                       "--out", tmp_path / "mask.png", "--overlay", tmp_path / "overlay.jpg",
                       "--explain", tmp_path / "steps.png", "--threshold", "0.3", "--view", "similarity")
    assert code == 0
    summary = json.loads(out)
    assert summary["words"] == ["the", "big", "pink", "hexagon"] and summary["threshold"] == 0.3
    assert summary["files"]["out"] == str(tmp_path / "mask.png")
    mask = np.asarray(Image.open(tmp_path / "mask.png"))
    assert mask.shape == (50, 90) and set(np.unique(mask)) <= {0, 255}
    assert Image.open(tmp_path / "overlay.jpg").size == (90, 50)
    assert Image.open(tmp_path / "steps.png").width > 600
    assert names(tmp_path) == ["mask.png", "overlay.jpg", "steps.png", "wide.png"]
    expected = Predictor.from_pretrained(tiny["model"], threshold=0.3).predict(image, "the big pink hexagon").mask
    assert np.array_equal(mask > 0, expected)


def _inputs(tiny, tmp_path):
    """Bad inputs of every kind, in tmp_path/in/."""
    folder = tmp_path / "in"
    folder.mkdir()
    data = tiny["image"].read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    (folder / "text.png").write_text("not an image")
    (folder / "bomb.png").write_bytes(bomb_png(40_000, 40_000))
    shutil.copy(tiny["image"], folder / "good.png")
    return folder


@pytest.mark.parametrize("case, message", [
    ("cut", "cut.png.*(truncated|decode|corrupt)"),
    ("text", "text.png: not an image"),
    ("bomb", "bomb.png.*decompression bomb"),
    ("missing", "missing.png: image file not found"),
    ("empty-expression", "expression is empty"),
    ("symbols-only", "no words the model can read"),
    ("missing-model", "model not found"),
    ("corrupt-model", "model.safetensors: corrupt or truncated"),
    ("jpeg-mask", "a mask must not be saved lossy"),
    ("no-folder", "does not exist"),
    ("same-file", "is the input image"),
    ("no-expression", "give an image and an expression"),
])
def test_errors_exit_non_zero_and_leave_no_output(tiny, tmp_path, capsys, case, message):
    folder = _inputs(tiny, tmp_path)
    model = tiny["model"]
    if case == "corrupt-model":
        model = tmp_path / "model"
        shutil.copytree(tiny["model"], model)
        weights = model / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    image = folder / {"cut": "cut.png", "text": "text.png", "bomb": "bomb.png", "missing": "missing.png"}.get(
        case, "good.png")
    expression = {"empty-expression": "   ", "symbols-only": "?!?"}.get(case, "the blue thing")
    out = tmp_path / "out"
    out.mkdir()
    mask = {"jpeg-mask": out / "mask.jpg", "no-folder": out / "sub" / "mask.png",
            "same-file": folder / "good.png"}.get(case, out / "mask.png")
    argv = ["predict", image, expression, "--model", tmp_path / "nope" if case == "missing-model" else model,
            "--out", mask, "--overlay", out / "overlay.png", "--explain", out / "explain.png"]
    if case == "no-expression":
        argv.remove(expression)
    before = names(folder)
    code, stdout, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and "Traceback" not in err  # a clear message, no traceback
    assert re.search(message, err), err
    assert names(out) == [] and names(folder) == before and stdout == ""


def test_no_partial_file_when_a_write_fails(tmp_path):
    good = tmp_path / "a.png"
    with pytest.raises(FileNotFoundError):
        write_files_atomically({good: b"first", tmp_path / "missing" / "b.png": b"second"})
    assert names(tmp_path) == []
    good.write_bytes(b"old")
    write_files_atomically({good: b"new"})
    assert good.read_bytes() == b"new" and names(tmp_path) == ["a.png"]


def _pairs(tiny, tmp_path, lines):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(x) if not isinstance(x, str) else x for x in lines) + "\n")
    return pairs


def test_batch_mode_results_errors_and_resume(tiny, tmp_path, capsys, monkeypatch):
    images = sorted(tiny["images"].glob("*.png"))[:4]
    for p in images:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "cut.png").write_bytes(images[0].read_bytes()[:300])
    lines = [
        {"id": "a", "image": images[0].name, "expression": "the blue thing"},  # relative to the JSONL's folder
        {"id": "b", "image": images[0].name, "expression": "the pink hexagon"},  # same image: shared encoding
        {"id": "c/with slash", "image": str(tmp_path / images[1].name), "expression": "zorglub"},
        {"image": images[2].name, "expression": "2nd object from the left"},  # id = line number ("4")
        {"id": 50, "image": "cut.png", "expression": "the thing"},
        {"id": "e", "image": images[3].name, "expression": "   "},
        "{not json",
        {"id": "g", "image": images[3].name},
        {"id": "h", "image": "nowhere.png", "expression": "the thing"},
        {"id": "i", "image": images[3].name, "expression": "the big orange shape"},
        {"id": "ü", "image": images[3].name, "expression": "the blüe\u2028 thing"},  # a line separator inside
    ]
    pairs = _pairs(tiny, tmp_path, lines)
    out = tmp_path / "masks"

    # interrupted after the first group (two lines on one image)
    calls = {"n": 0}
    real = Predictor.predict_prepared

    def flaky(self, rgb, queries):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, rgb, queries)

    monkeypatch.setattr(Predictor, "predict_prepared", flaky)
    code, _, err = run(capsys, "predict", "--batch", pairs, "--out-dir", out, "--model", tiny["model"], "--quiet")
    assert code == 130 and "interrupted" in err
    results = out / "results.jsonl"
    first = [json.loads(x) for x in results.read_text().split("\n") if x]
    assert [r["id"] for r in first] == ["a", "b"]
    # a line cut by a crash while it was written
    with open(results, "a") as f:
        f.write('{"id": "c/with slash", "ima')
    monkeypatch.setattr(Predictor, "predict_prepared", real)

    code, stdout, err = run(capsys, "predict", "--batch", pairs, "--out-dir", out, "--model", tiny["model"],
                            "--quiet")
    assert code == 1 and "5 of 11 lines failed" in err
    summary = json.loads(stdout)
    assert summary["skipped"] == 2 and summary["done"] == 4 and summary["failed"] == 5
    records = [json.loads(x) for x in results.read_text().split("\n") if x]
    by_id = {r["id"]: r for r in records}
    assert len(records) == len(by_id) == 11  # one line per input, no duplicates, no fragment
    for ok in ("a", "b", "c/with slash", "4", "i", "ü"):
        r = by_id[ok]
        assert "error" not in r, r
        mask = np.asarray(Image.open(r["mask"]))
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
        assert 0 <= r["score"] <= 1 and r["words"]
    assert by_id["c/with slash"]["unknown_words"] == ["zorglub"]
    assert by_id["ü"]["words"] == ["the", "blue", "thing"] and by_id["ü"]["expression"] == "the blüe\u2028 thing"
    assert "/" not in by_id["c/with slash"]["mask"].split(str(out))[1].strip("/")
    assert "cut.png" in by_id["50"]["error"]  # an int id is kept as a string
    assert "empty" in by_id["e"]["error"]
    assert "line 7 is not valid JSON" in by_id["7"]["error"]  # no id: the line number
    assert "'expression' must be a string" in by_id["g"]["error"]
    assert "nowhere.png: image file not found" in by_id["h"]["error"]
    assert names(out) == sorted([by_id[i]["mask"].rsplit("/", 1)[1] for i in ("a", "b", "c/with slash", "4", "i", "ü")]
                                + ["results.jsonl"])  # the masks, no temporary file

    # everything done: a third run does nothing
    code, stdout, _ = run(capsys, "predict", "--batch", pairs, "--out-dir", out, "--model", tiny["model"],
                          "--quiet")
    assert code == 0 and json.loads(stdout)["skipped"] == 11
    assert len(results.read_text().split("\n")) == 12  # 11 lines and the final newline


def test_batch_mode_argument_errors(tiny, tmp_path, capsys):
    pairs = _pairs(tiny, tmp_path, [{"id": "x", "image": "a.png", "expression": "e"},
                                    {"id": "x", "image": "b.png", "expression": "f"}])
    code, _, err = run(capsys, "predict", "--batch", pairs, "--out-dir", tmp_path / "o", "--model", tiny["model"])
    assert code == 2 and "id 'x' is used on lines 1 and 2" in err
    code, _, err = run(capsys, "predict", "--batch", pairs, "--model", tiny["model"])
    assert code == 2 and "--out-dir" in err
    code, _, err = run(capsys, "predict", "img.png", "--batch", pairs, "--out-dir", tmp_path / "o")
    assert code == 2 and "drop IMAGE" in err
    code, _, err = run(capsys, "predict", "--batch", tmp_path / "none.jsonl", "--out-dir", tmp_path / "o")
    assert code == 2 and "none.jsonl: file not found" in err


def test_export_folder_command(tiny, tmp_path, capsys):
    scores = tmp_path / "eval.json"
    scores.write_text(json.dumps({"oIoU": 0.42, "config": {"dropped": True}}))
    out = tmp_path / "shipped"
    code, stdout, _ = run(capsys, "export", "--format", "folder", "--model", tiny["checkpoint"], "--out", out,
                          "--scores", scores)
    assert code == 0 and json.loads(stdout)["out"] == str(out)
    assert json.loads((out / "scores.json").read_text()) == {"oIoU": 0.42}
    code, _, err = run(capsys, "export", "--format", "folder", "--model", tiny["checkpoint"], "--out", out)
    assert code == 2 and "--overwrite" in err
    code, _, err = run(capsys, "export", "--format", "folder", "--model", tmp_path / "no.pt", "--out", tmp_path / "x")
    assert code == 2 and "no.pt" in err and not (tmp_path / "x").exists()
