"""``step-ris data check`` (and every reader behind it) on malformed REFER folders: a clear error naming
the file, the record and the field, never a traceback; a UTF-8 byte-order mark is accepted."""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from step_ris.cli import main
from step_ris.data.refer import DataError, ReferData


@pytest.fixture
def root(tmp_path: Path, generated_refer: Path) -> Path:
    """A private copy of the generated REFER folder, to break."""
    out = tmp_path / "data"
    shutil.copytree(generated_refer, out)
    return out


def _instances(root: Path) -> Path:
    return root / "refcoco" / "instances.json"


def _edit_instances(root: Path, edit: Callable[[dict], None]) -> Path:
    path = _instances(root)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def _edit_refs(root: Path, edit: Callable[[list], None]) -> Path:
    path = root / "refcoco" / "refs(unc).p"
    refs = pickle.loads(path.read_bytes())
    edit(refs)
    path.write_bytes(pickle.dumps(refs, protocol=2))
    return path


def _check_fails(root: Path, capsys: pytest.CaptureFixture, *needles: str) -> str:
    """data check exits 2 with one error line holding every needle; ReferData raises the same DataError."""
    rc = main(["data", "check", "refcoco", "--root", str(root)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and err.startswith("error: ")
    for needle in needles:
        assert needle in err, (needle, err)
    with pytest.raises(DataError):
        ReferData(root, "refcoco")
    return err


def _set_images_to_5(d: dict) -> None:
    d["images"] = 5


def _drop_first_image_id(d: dict) -> None:
    del d["images"][0]["id"]


@pytest.mark.parametrize("edit, needles", [
    (_set_images_to_5, ["'images' must be a list", "got int"]),
    (_drop_first_image_id, ["images[0]", "'id'"]),
    (lambda d: d["images"][1].update(height=0), ["images[1]", "'height'", "positive"]),
    (lambda d: d["images"][1].update(file_name=""), ["images[1]", "'file_name'"]),
    (lambda d: d["images"].append(dict(d["images"][0])), ["images[2]", "duplicate", "id 9"]),
    (lambda d: d["annotations"][3].pop("segmentation"), ["annotations[3]", "'segmentation'"]),
    (lambda d: d["annotations"][0].update(id="101"), ["annotations[0]", "'id'", "integer"]),
    (lambda d: d["annotations"].__setitem__(2, [1, 2]), ["annotations[2]", "must be a dict", "got list"]),
    (lambda d: d.update(categories={"id": 1}), ["'categories' must be a list"]),
    (lambda d: d.pop("annotations"), ["'annotations'"]),
])
def test_malformed_instances_are_named(root: Path, capsys: pytest.CaptureFixture, edit, needles: list[str]) -> None:
    path = _edit_instances(root, edit)
    _check_fails(root, capsys, str(path), *needles)


def test_instances_not_a_dict(root: Path, capsys: pytest.CaptureFixture) -> None:
    _instances(root).write_text("[1, 2, 3]")
    _check_fails(root, capsys, str(_instances(root)), "must be a JSON object", "got list")


def test_truncated_instances_name_the_position(root: Path, capsys: pytest.CaptureFixture) -> None:
    text = _instances(root).read_text()
    _instances(root).write_text(text[: len(text) // 2])
    _check_fails(root, capsys, str(_instances(root)), "not valid JSON", "line 1 column")


@pytest.mark.parametrize("field, value, needles", [
    ("split", ["train", "val"], ["'split'", "a string", "got list"]),
    ("split", None, ["'split'", "a string"]),
    ("ann_id", "101", ["'ann_id'", "integer"]),
    ("image_id", 9.5, ["'image_id'", "integer"]),
    ("sentences", "red lorry", ["'sentences'", "list of sentence dicts"]),
])
def test_malformed_refs_are_named(root: Path, capsys: pytest.CaptureFixture, field: str, value,
                                  needles: list[str]) -> None:
    path = _edit_refs(root, lambda refs: refs[2].update({field: value}))
    _check_fails(root, capsys, str(path), "ref #2 (ref_id 2)", *needles)


def test_ref_without_a_field(root: Path, capsys: pytest.CaptureFixture) -> None:
    path = _edit_refs(root, lambda refs: refs[5].pop("image_id"))
    _check_fails(root, capsys, str(path), "ref #5", "lacks image_id")


def test_utf8_byte_order_mark_is_accepted(root: Path, capsys: pytest.CaptureFixture) -> None:
    path = _instances(root)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # what Windows Notepad writes
    assert main(["data", "check", "refcoco", "--root", str(root)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["total"]["refs"] == 8
    assert len(ReferData(root, "refcoco").images) == 2


def test_integral_float_sizes_are_accepted(root: Path) -> None:
    _edit_instances(root, lambda d: d["images"][0].update(height=float(d["images"][0]["height"])))
    data = ReferData(root, "refcoco")
    assert data.refs[0]["image_id"] == data.images[9]["id"] and data.images[9]["height"] == 360.0
    assert data.mask(data.refs[0]["ann_id"]).shape == (360, 640)
