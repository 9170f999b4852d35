"""`step-ris predict` (one image and --batch), `step-ris export --format folder`: outputs, errors, resume."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from step_ris import cli
from step_ris.fileio import atomic_write_files
from step_ris.predictor import Predictor
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
        atomic_write_files({good: b"first", tmp_path / "missing" / "b.png": b"second"})
    assert names(tmp_path) == []
    good.write_bytes(b"old")
    atomic_write_files({good: b"new"})
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

    assert [r["id"] for r in records] == ["a", "b", "c/with slash", "4", "50", "e", "7", "g", "h", "i", "ü"]

    # a third run skips what is done, tries the failures again and still reports them
    code, stdout, err = run(capsys, "predict", "--batch", pairs, "--out-dir", out, "--model", tiny["model"],
                            "--quiet")
    summary = json.loads(stdout)
    assert code == 1 and "5 of 11 lines failed" in err
    assert summary["skipped"] == 6 and summary["retried"] == 5 and summary["failed"] == 5 and summary["done"] == 0
    assert len(results.read_text().split("\n")) == 12  # still one line per input and the final newline

    # the missing image appears: the next run fixes that line only
    shutil.copy(images[0], tmp_path / "nowhere.png")
    code, stdout, _ = run(capsys, "predict", "--batch", pairs, "--out-dir", out, "--model", tiny["model"],
                          "--quiet")
    summary = json.loads(stdout)
    assert code == 1 and summary["failed"] == 4 and summary["done"] == 1 and summary["skipped"] == 6
    records = [json.loads(x) for x in results.read_text().split("\n") if x]
    assert len(records) == 11 and "error" not in {r["id"]: r for r in records}["h"]


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


def test_lines_of_one_image_share_one_encoding_and_keep_their_order(tiny, tmp_path, capsys, monkeypatch):
    images = sorted(tiny["images"].glob("*.png"))[:2]
    a, b = (shutil.copy(p, tmp_path / p.name) for p in images)
    lines = [{"id": "1", "image": a.name, "expression": "the blue thing"},
             {"id": "2", "image": b.name, "expression": "the pink thing"},
             {"id": "3", "image": str(a), "expression": "the big hexagon"},  # the same file, named otherwise
             {"id": "4", "image": b.name, "expression": "the thing"},
             {"id": "5", "image": a.name, "expression": "2nd object"}]
    pairs = _pairs(tiny, tmp_path, lines)
    encoded = []
    real = Predictor.encode

    def counting(self, image):
        encoded.append(str(image))
        return real(self, image)

    monkeypatch.setattr(Predictor, "encode", counting)
    code, stdout, _ = run(capsys, "predict", "--batch", pairs, "--out-dir", tmp_path / "o", "--model", tiny["model"],
                          "--quiet")
    assert code == 0 and json.loads(stdout)["done"] == 5
    assert len(encoded) == 2  # one encoding per image, not per run of consecutive lines
    records = [json.loads(x) for x in (tmp_path / "o" / "results.jsonl").read_text().split("\n") if x]
    assert [r["id"] for r in records] == ["1", "2", "3", "4", "5"]  # the input order
    # the same masks as predicting each line alone
    predictor = Predictor.from_pretrained(tiny["model"])
    for line, record in zip(lines, records, strict=True):
        want = predictor.predict(tmp_path / Path(line["image"]).name, line["expression"]).mask
        assert np.array_equal(np.asarray(Image.open(record["mask"])) > 0, want)


def test_batch_results_file_equal_to_the_input_is_refused(tiny, tmp_path, capsys):
    shutil.copy(tiny["image"], tmp_path / "a.png")
    pairs = _pairs(tiny, tmp_path, [{"id": "x", "image": "a.png", "expression": "the blue thing"}])
    before = pairs.read_bytes()
    code, stdout, err = run(capsys, "predict", "--batch", pairs, "--out-dir", tmp_path / "o", "--results", pairs,
                            "--model", tiny["model"])
    assert code == 2 and "is the input file" in err and stdout == ""
    assert pairs.read_bytes() == before and not (tmp_path / "o").exists()
    # the same file through another path
    (tmp_path / "link.jsonl").symlink_to(pairs)
    code, _, err = run(capsys, "predict", "--batch", pairs, "--out-dir", tmp_path / "o", "--results",
                       tmp_path / "link.jsonl", "--model", tiny["model"])
    assert code == 2 and "is the input file" in err and pairs.read_bytes() == before
    # masks that would overwrite an input image
    code, _, err = run(capsys, "predict", "--batch", _pairs(tiny, tmp_path, [{"id": "a", "image": "a.png",
                                                                              "expression": "the blue thing"}]),
                       "--out-dir", tmp_path, "--model", tiny["model"])
    assert code == 2 and "would be written to" in err and "input file" in err
    assert (tmp_path / "a.png").read_bytes() == tiny["image"].read_bytes()


def test_batch_file_with_a_byte_order_mark(tiny, tmp_path, capsys):
    shutil.copy(tiny["image"], tmp_path / "a.png")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "x", "image": "a.png", "expression": "the blue thing"})
                      .encode() + b"\n")
    code, stdout, err = run(capsys, "predict", "--batch", pairs, "--out-dir", tmp_path / "o", "--model",
                            tiny["model"], "--quiet")
    assert code == 0, err
    assert json.loads(stdout)["done"] == 1


def test_a_directory_given_as_the_image_says_so(tiny, tmp_path, capsys):
    folder = tmp_path / "photos.png"
    folder.mkdir()
    code, _, err = run(capsys, "predict", folder, "the blue thing", "--model", tiny["model"])
    assert code == 2 and "is a directory" in err and "not found" not in err
    code, _, err = run(capsys, "predict", "--batch", folder, "--out-dir", tmp_path / "o", "--model", tiny["model"])
    assert code == 2 and "is a directory" in err
    pairs = _pairs(tiny, tmp_path, [{"id": "d", "image": "photos.png", "expression": "the blue thing"}])
    code, _, _ = run(capsys, "predict", "--batch", pairs, "--out-dir", tmp_path / "o", "--model", tiny["model"],
                     "--quiet")
    record = json.loads((tmp_path / "o" / "results.jsonl").read_text())
    assert code == 1 and "is a directory" in record["error"]


def test_predictor_predict_jsonl_is_a_deprecated_alias(tiny, tmp_path):
    from step_ris import batch, predictor

    shutil.copy(tiny["image"], tmp_path / "a.png")
    pairs = _pairs(tiny, tmp_path, [{"id": "x", "image": "a.png", "expression": "the blue thing"}])
    with pytest.warns(DeprecationWarning, match="step_ris.batch"):
        summary = predictor.predict_jsonl(Predictor.from_pretrained(tiny["model"]), pairs, tmp_path / "o")
    assert summary["done"] == 1 and batch.predict_jsonl.__module__ == "step_ris.batch"
