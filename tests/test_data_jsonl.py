"""The ``jsonl`` layout (one's own data: COCO instances.json + refs.jsonl + images/): reading, union
masks, data check's line-by-line errors, the ShapesRef converter, and train + eval end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from step_ris.cli import main
from step_ris.data.check import check_dataset
from step_ris.data.dataset import ReferDataset, build_vocab
from step_ris.data.jsonl import convert_refer_to_jsonl, parse_refs_jsonl
from step_ris.data.refer import DataError, ReferData
from step_ris.data.shapesref import generate_shapesref

BOM = b"\xef\xbb\xbf"


def _write_lines(path: Path, lines: list, bom: bool = False) -> Path:
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
    path.write_bytes((BOM if bom else b"") + text.encode("utf-8"))
    return path


@pytest.fixture
def own(tmp_path: Path, generated_refer: Path) -> Path:
    """A jsonl root made by hand from the generated REFER folder's instances (polygons + crowd RLE)."""
    root = tmp_path / "own"
    (root / "images").mkdir(parents=True)
    for p in (generated_refer / "images/mscoco/images/train2014").iterdir():
        shutil.copy(p, root / "images" / p.name)
    shutil.copy(generated_refer / "refcoco" / "instances.json", root / "instances.json")
    _write_lines(root / "refs.jsonl", [
        {"image_id": 9, "ann_id": 101, "sentence": "the red truck", "split": "train"},
        {"file_name": "COCO_train2014_000000000009.jpg", "ann_ids": [102, 103], "sentence": "both horses",
         "split": "train", "family": "plural"},
        "",  # blank lines are skipped
        {"image_id": 25, "file_name": "COCO_train2014_000000000025.jpg", "ann_id": 205,
         "sentence": "the crowd at the bottom", "split": "TRAIN"},  # a crowd region, stored as RLE
        {"image_id": 9, "ann_ids": [103, 102], "sentence": "the two horses", "split": "val"},  # the same union
        {"image_id": 25, "ann_ids": [203], "sentence": "the ball", "split": "val"},  # a list of one
        {"image_id": 25, "ann_id": 202, "sentence": "the jumper", "split": "testA"},
    ], bom=True)  # a byte-order mark, as some Windows editors write
    return root


def test_reads_every_form_of_line(own: Path) -> None:
    data = ReferData(own, "jsonl")
    assert [r["ref_id"] for r in data.refs] == [1, 2, 4, 5, 6, 7]  # line numbers
    assert [r["split"] for r in data.refs] == ["train", "train", "train", "val", "val", "testA"]
    union = data.refs[1]
    assert union["ann_id"] < 0 and union["ann_ids"] == [102, 103] and union["image_id"] == 9
    assert data.refs[3]["ann_id"] == union["ann_id"]  # one union annotation for the same set of objects
    assert set(data.virtual_anns) == {union["ann_id"]} and data.has_ann(union["ann_id"])
    np.testing.assert_array_equal(data.mask(union["ann_id"]), np.maximum(data.mask(102), data.mask(103)))
    assert data.mask(union["ann_id"]).sum() == data.anns[102]["area"] + data.anns[103]["area"]  # apart
    assert data.refs[4]["ann_id"] == 203 and data.refs[4]["ann_ids"] == [203]
    crowd = data.mask(205)
    assert data.anns[205]["iscrowd"] == 1 and crowd.sum() == data.anns[205]["area"]
    assert data.refs[1]["sentences"][0]["family"] == "plural"
    assert data.image_path(25) == own / "images" / "COCO_train2014_000000000025.jpg"
    report = check_dataset(own, "coco-jsonl")
    assert report["ok"] and report["dataset"] == "jsonl" and report["invalid_lines"] == {"count": 0, "errors": []}
    assert report["total"] == {"refs": 6, "sentences": 6, "images": 2}
    assert report["splits"]["train"] == {"refs": 3, "sentences": 3, "images": 2}
    assert report["splits"]["trainval"]["refs"] == 5 and report["problems"] == []


def test_torch_dataset_and_families(own: Path) -> None:
    vocab = build_vocab(own, "jsonl")
    assert {"truck", "horses", "crowd"} <= set(vocab.to_list()) and "ball" not in vocab
    ds = ReferDataset(own, "jsonl", "train", vocab, 32)
    assert len(ds) == 3 and ds.sentence(1) == "both horses"
    assert ds[1]["family"] == "plural" and ds[0]["family"] == ""
    union = ds.original_mask(1)
    assert union.sum() == ds.data.anns[102]["area"] + ds.data.anns[103]["area"]  # both horses
    boxed = ds[1]["mask"]
    assert boxed.shape == (32, 32) and 0 < boxed.sum() < 32 * 32 and boxed.max() == 1.0
    val = ReferDataset(own, "jsonl:val", None, vocab, 32)
    assert val.meta(0)["ann_id"] == ds.meta(1)["ann_id"]  # same target, same cache entry


# ---- data check: every bad line named by number and field ------------------------------------------------

BAD_LINES = [
    ('{"image_id": 9, "ann_id": 101, "sentence": "ok", "split": "train"', "", "not valid JSON"),
    ('[9, 101, "the truck", "train"]', "", "must be a JSON object"),
    ({"ann_id": 101, "sentence": "x", "split": "train"}, "image_id", "give image_id or file_name"),
    ({"image_id": 77, "ann_id": 101, "sentence": "x", "split": "train"}, "image_id", "77 is not the id of an image"),
    ({"image_id": "9", "ann_id": 101, "sentence": "x", "split": "train"}, "image_id", "must be an integer"),
    ({"file_name": "nope.jpg", "ann_id": 101, "sentence": "x", "split": "train"}, "file_name", "'nope.jpg' is not"),
    ({"image_id": 25, "file_name": "COCO_train2014_000000000009.jpg", "ann_id": 101, "sentence": "x",
      "split": "train"}, "file_name", "but image_id says 25"),
    ({"image_id": 9, "sentence": "x", "split": "train"}, "ann_id", "give ann_id"),
    ({"image_id": 9, "ann_id": 999, "sentence": "x", "split": "train"}, "ann_id", "999 is not the id of an annotation"),
    ({"image_id": 25, "ann_id": 101, "sentence": "x", "split": "train"}, "ann_id",
     "belongs to image 9, not to image 25"),
    ({"image_id": 9, "ann_ids": [], "sentence": "x", "split": "train"}, "ann_ids", "non-empty list"),
    ({"image_id": 9, "ann_ids": [101, 101], "sentence": "x", "split": "train"}, "ann_ids", "twice"),
    ({"image_id": 9, "ann_id": 101, "ann_ids": [102], "sentence": "x", "split": "train"}, "ann_ids", "not both"),
    ({"image_id": 9, "ann_id": 101, "sentence": "  ", "split": "train"}, "sentence", "non-empty string"),
    ({"image_id": 9, "ann_id": 101, "sentance": "x", "split": "train"}, "sentence", "'sentance'"),
    ({"image_id": 9, "ann_id": 101, "sentence": "x", "split": ["train", "val"]}, "split", "got ['train', 'val']"),
    ({"image_id": 9, "ann_id": 101, "sentence": "x", "split": "dev"}, "split", "train, val, test, testA, testB"),
    ({"image_id": 9, "ann_id": 101, "sentence": "x", "split": "train", "family": 3}, "family", "must be a string"),
]


def test_data_check_names_line_and_field(own: Path, capsys: pytest.CaptureFixture) -> None:
    good = {"image_id": 9, "ann_id": 101, "sentence": "the red truck", "split": "train"}
    path = _write_lines(own / "refs.jsonl", [good] + [line for line, _, _ in BAD_LINES] + [good])
    assert main(["data", "check", "jsonl", "--root", str(own)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and report["total"]["refs"] == 2  # the two good lines
    got = report["invalid_lines"]
    assert got["count"] == len(got["errors"]) == len(BAD_LINES)  # one error each
    by_line = {e["line"]: e for e in got["errors"]}
    for number, (_, field, needle) in enumerate(BAD_LINES, start=2):
        assert by_line[number]["field"] == field, (number, by_line[number])
        assert needle in by_line[number]["message"], (number, by_line[number])
    assert report["problems"][0] == f"{len(BAD_LINES)} line(s) of {path} cannot be used and are left out:"
    assert report["problems"][1].startswith(f"  {path}:2: not valid JSON")
    assert f"  {path}:11: ann_id: annotation 101 belongs to image 9, not to image 25; fix the image or the " \
           "annotation id" in report["problems"]
    # training refuses the file, naming the first lines and how to see all of them
    with pytest.raises(DataError, match=rf"{len(BAD_LINES)} line\(s\) of .*refs.jsonl cannot be used: .*:2: not "
                                        r"valid JSON.*step-ris data check jsonl --root"):
        ReferData(own, "jsonl")
    rc = main(["train", "--preset", "tiny", "--dataset", "jsonl", "--root", str(own), "--out",
               str(own.parent / "run"), "--iters", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and f"{path}:3: a line must be a JSON object" in err


def test_missing_files_explained(tmp_path: Path, own: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["data", "check", "jsonl", "--root", str(empty)]) == 2
    err = capsys.readouterr().err
    assert f"not found: {empty / 'refs.jsonl'}" in err and "instances.json" in err and "convert-shapesref" in err
    (own / "images" / "COCO_train2014_000000000009.jpg").unlink()
    assert main(["data", "check", "jsonl", "--root", str(own)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["missing_images"]["count"] == 3 and str(own / "images") in report["problems"][0]


def test_malformed_instances_in_the_jsonl_layout(own: Path, capsys: pytest.CaptureFixture) -> None:
    inst = json.loads((own / "instances.json").read_bytes())
    inst["images"] = 5
    (own / "instances.json").write_bytes(BOM + json.dumps(inst).encode())
    assert main(["data", "check", "jsonl", "--root", str(own)]) == 2
    err = capsys.readouterr().err
    assert f"{own / 'instances.json'}: 'images' must be a list" in err and "Traceback" not in err


def test_byte_order_mark_on_line_1_is_accepted(own: Path) -> None:
    data = ReferData(own, "jsonl")  # the fixture's refs.jsonl starts with a BOM
    assert data.refs[0]["ref_id"] == 1  # line 1 was read, not refused
    raw = (own / "refs.jsonl").read_bytes()
    assert raw.startswith(BOM)
    parsed = parse_refs_jsonl(own / "refs.jsonl", data.images, data.anns)
    assert parsed.errors == [] and len(parsed.refs) == 6


# ---- ShapesRef -> jsonl, then train and evaluate -----------------------------------------------------------


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("jsonl") / "shapesref"
    generate_shapesref(out, images=12, seed=5, size=64, progress=False)
    return out


def test_converted_shapesref_reads_like_the_original(shapes: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "own"
    assert main(["data", "convert-shapesref", "--root", str(shapes), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    original = ReferData(shapes, "shapesref")
    converted = ReferData(out, "jsonl")
    assert summary["images"] == len(original.images) == len(list((out / "images").iterdir()))
    assert (out / "instances.json").read_bytes() == (shapes / "shapesref" / "instances.json").read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == ["own"]  # no partial folder left
    vocab = build_vocab(shapes, "shapesref")
    assert build_vocab(out, "jsonl") == vocab
    for split in ("train", "val", "testA", "testB"):
        a = ReferDataset(shapes, "shapesref", split, vocab, 64)
        b = ReferDataset(out, "jsonl", split, vocab, 64)
        assert len(a) == len(b) == summary["lines"][split]
        for i in range(len(a)):
            assert a.token_ids(i) == b.token_ids(i) and a.meta(i)["family"] == b.meta(i)["family"]
            np.testing.assert_array_equal(a.original_mask(i), b.original_mask(i))
        assert (a[0]["image"] == b[0]["image"]).all()
    assert not check_dataset(out, "jsonl")["problems"]
    assert converted.spec.name == "jsonl"
    # refuses to write into a non-empty folder
    assert main(["data", "convert-shapesref", "--root", str(shapes), "--out", str(out)]) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_convert_is_atomic(shapes: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(shapes, broken)
    next((broken / "images" / "shapesref").iterdir()).unlink()
    with pytest.raises(DataError, match="image file not found"):
        convert_refer_to_jsonl(broken, "shapesref+", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]


def test_train_and_evaluate_on_a_jsonl_folder(shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    own = tmp_path / "own"
    convert_refer_to_jsonl(shapes, "shapesref", own)
    assert main(["data", "check", "jsonl", "--root", str(own)]) == 0
    capsys.readouterr()
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--dataset", "jsonl", "--root", str(own), "--out", str(run),
                 "--iters", "3", "--quiet"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["dataset"] == "jsonl" and config["data"]["root"] == str(own)
    result_file = tmp_path / "r.json"
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--dataset", "jsonl", "--root", str(own),
                 "--split", "testB", "--json", str(result_file), "--quiet"]) == 0
    result = json.loads(result_file.read_text())
    lines = [json.loads(x) for x in (own / "refs.jsonl").read_text().splitlines()]
    assert result["split"] == "jsonl:testB" and result["n"] == sum(x["split"] == "testB" for x in lines)
    assert 0.0 <= result["oIoU"] <= 1.0 and set(result["by_family"]) == {x["family"] for x in lines
                                                                             if x["split"] == "testB"}


def test_registry_entry(tmp_path: Path) -> None:
    from step_ris.data.registry import get_spec, parse_dataset_name

    spec = get_spec("coco-jsonl")
    assert spec.name == "jsonl" and spec.layout == "jsonl"
    assert spec.refs_path(tmp_path) == tmp_path / "refs.jsonl"
    assert spec.instances_path(tmp_path) == tmp_path / "instances.json"
    assert spec.image_root(tmp_path) == tmp_path / "images"
    assert spec.all_splits == ("train", "val", "test", "testA", "testB", "trainval")
    assert parse_dataset_name("JSONL:trainval")[1] == "trainval" and spec.members("trainval") == ("train", "val")
    assert get_spec("refcoco").layout == "refer"


def test_trainval_and_union_ids_avoid_real_ones(own: Path) -> None:
    inst = json.loads((own / "instances.json").read_bytes())
    inst["annotations"][0]["id"] = -1  # a negative id of the user's own
    (own / "instances.json").write_text(json.dumps(inst))
    _write_lines(own / "refs.jsonl", [
        {"image_id": 9, "ann_id": -1, "sentence": "the red truck", "split": "train"},
        {"image_id": 9, "ann_ids": [-1, 102], "sentence": "the truck and the horse", "split": "val"},
    ])
    data = ReferData(own, "jsonl")
    union = data.refs[1]["ann_id"]
    assert union < -1 and union not in data.anns
    np.testing.assert_array_equal(data.mask(union), np.maximum(data.mask(-1), data.mask(102)))
    assert len(data.samples("trainval")) == 2
