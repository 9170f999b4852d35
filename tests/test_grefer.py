"""The gRefCOCO layout (``grefs(unc).json`` + ``instances.json``): reading no-target and multi-target refs,
their masks (union, empty), the torch dataset's ``target_count``, and ``data check`` on malformed files."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from step_ris.cli import main
from step_ris.data.dataset import ReferDataset, collate
from step_ris.data.grefer import RefError, parse_grefs, read_grefs_file, ref_target_count
from step_ris.data.refer import DataError, ReferData, decode_segmentation
from step_ris.data.registry import get_spec
from step_ris.data.shapesref import generate_shapesref
from step_ris.text import Vocabulary

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


# --- a gRefCOCO folder made from the generated REFER photos ---------------------------------------------
GREFS = [  # the forms of the public files and of their loader: lists, [-1], a bare id, a missing flag
    {"ref_id": 0, "image_id": 9, "split": "train", "ann_id": [101], "category_id": [8], "no_target": False},
    {"ref_id": 1, "image_id": 9, "split": "train", "ann_id": [102, 103], "category_id": [19, 19], "no_target": False},
    {"ref_id": 2, "image_id": 9, "split": "val", "ann_id": [-1], "category_id": [-1], "no_target": True},
    {"ref_id": 3, "image_id": 25, "split": "val", "ann_id": 201, "category_id": 1},
    {"ref_id": 4, "image_id": 25, "split": "testA", "ann_id": [201, 204, 205], "category_id": [1, 1, 1],
     "no_target": False},  # 205 is a crowd region: left out of the union, as the official loader does
    {"ref_id": 5, "image_id": 25, "split": "testB", "ann_id": [], "category_id": [], "no_target": True},
    {"ref_id": 6, "image_id": 25, "split": "testB", "ann_id": [-1], "category_id": [-1]},
]


def _with_sentences(refs: list[dict]) -> list[dict]:
    out = []
    for ref in refs:
        k = ref["ref_id"]
        sents = [{"sent_id": 10 * k + j, "sent": f"expression {k} {j}", "raw": f"Expression {k} {j}.",
                  "tokens": ["expression", str(k), str(j)]} for j in range(2)]
        out.append({**ref, "sentences": sents, "sent_ids": [s["sent_id"] for s in sents],
                    "file_name": f"COCO_train2014_{ref['image_id']:012d}_{k}.jpg"})
    return out


@pytest.fixture
def groot(tmp_path: Path, generated_refer: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(generated_refer / "images", root / "images")
    (root / "grefcoco").mkdir()
    shutil.copyfile(generated_refer / "refcoco" / "instances.json", root / "grefcoco" / "instances.json")
    (root / "grefcoco" / "grefs(unc).json").write_text(json.dumps(_with_sentences(GREFS)))
    return root


def _ann_mask(data: ReferData, ann_id: int) -> np.ndarray:
    ann = data.anns[ann_id]
    im = data.images[ann["image_id"]]
    return decode_segmentation(ann["segmentation"], im["height"], im["width"])


def test_reads_the_grefcoco_forms(groot: Path) -> None:
    data = ReferData(groot, "grefcoco")
    refs = {r["ref_id"]: r for r in data.refs}
    assert len(refs) == len(GREFS)
    assert [(refs[k]["ann_ids"], refs[k]["target_count"], refs[k]["no_target"]) for k in range(7)] == [
        ([101], 1, False), ([102, 103], 2, False), ([], 0, True), ([201], 1, False), ([201, 204, 205], 3, False),
        ([], 0, True), ([], 0, True)]
    assert refs[0]["ann_id"] == 101 and refs[3]["ann_id"] == 201
    assert refs[0]["category_id"] == [8]  # the file's list is kept
    for k in (1, 2, 4, 5, 6):
        assert refs[k]["ann_id"] < 0 and refs[k]["ann_id"] in data.virtual_anns and data.has_ann(refs[k]["ann_id"])
    assert refs[5]["ann_id"] == refs[6]["ann_id"] != refs[2]["ann_id"]  # one empty target per image
    assert set(data.virtual_anns).isdisjoint(data.anns)


def test_masks_union_and_empty(groot: Path) -> None:
    data = ReferData(groot, "grefcoco")
    refs = {r["ref_id"]: r for r in data.refs}
    np.testing.assert_array_equal(data.mask(refs[0]["ann_id"]), _ann_mask(data, 101))
    two = data.mask(refs[1]["ann_id"])
    np.testing.assert_array_equal(two, np.maximum(_ann_mask(data, 102), _ann_mask(data, 103)))
    assert two.sum() > _ann_mask(data, 102).sum() > 0
    crowd_out = data.mask(refs[4]["ann_id"])
    np.testing.assert_array_equal(crowd_out, np.maximum(_ann_mask(data, 201), _ann_mask(data, 204)))
    assert (crowd_out & _ann_mask(data, 205)).sum() < _ann_mask(data, 205).sum()
    for k, hw in ((2, (360, 640)), (5, (427, 640))):
        empty = data.mask(refs[k]["ann_id"])
        assert empty.shape == hw and empty.dtype == np.uint8 and empty.sum() == 0


def test_dataset_samples_carry_target_count(groot: Path) -> None:
    vocab = Vocabulary.from_sentences(["expression 0 1 2 3 4 5 6"])
    expected = {"train": [1, 1, 2, 2], "val": [0, 0, 1, 1], "testA": [3, 3], "testB": [0, 0, 0, 0]}
    for split, counts in expected.items():
        ds = ReferDataset(groot, "grefcoco", split, vocab, image_size=64)
        samples = [ds[i] for i in range(len(ds))]
        assert [s["target_count"] for s in samples] == counts
        assert [ds.meta(i)["target_count"] for i in range(len(ds))] == counts
        for s in samples:
            assert (s["mask"].sum() == 0) == (s["target_count"] == 0)
        assert collate(samples)["target_count"].tolist() == counts


def test_data_check_counts_targets(groot: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "check", "grefcoco", "--root", str(groot)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["problems"] == [] and report["invalid_refs"] == {"count": 0, "errors": []}
    assert report["target_counts"] == {"train": {"0": 0, "1": 2, "2+": 2}, "val": {"0": 2, "1": 2, "2+": 0},
                                       "testA": {"0": 0, "1": 0, "2+": 2}, "testB": {"0": 4, "1": 0, "2+": 0}}
    assert report["total"] == {"refs": 7, "sentences": 14, "images": 2}


def test_target_count_of_other_layouts() -> None:
    assert ref_target_count({"ann_id": 3}) == 1  # REFER
    assert ref_target_count({"ann_id": -2, "ann_ids": [4, 5]}) == 2  # a jsonl union line
    assert ref_target_count({"ann_id": -1, "ann_ids": [], "target_count": 0}) == 0


# --- malformed refs: every one named by file, ref index and field -------------------------------------
def _edit(root: Path, edit: Callable[[list], None]) -> Path:
    path = root / "grefcoco" / "grefs(unc).json"
    refs = json.loads(path.read_text())
    edit(refs)
    path.write_text(json.dumps(refs))
    return path


@pytest.mark.parametrize("edit, index, field, needle", [
    (lambda r: r[1].update(ann_id="102"), 1, "ann_id", "must be a list of annotation ids"),
    (lambda r: r[1].update(ann_id=[-1, 102]), 1, "ann_id", "mixes -1"),
    (lambda r: r[0].update(ann_id=[999]), 0, "ann_id", "999 is not the id of an annotation"),
    (lambda r: r[0].update(ann_id=[201]), 0, "ann_id", "belongs to image 25, not to image 9"),
    (lambda r: r[1].update(ann_id=[102, 102]), 1, "ann_id", "twice"),
    (lambda r: r[2].update(no_target=False), 2, "no_target", "make them agree"),
    (lambda r: r[0].update(no_target=True), 0, "no_target", "make them agree"),
    (lambda r: r[0].update(no_target="no"), 0, "no_target", "true or false"),
    (lambda r: r[3].update(ref_id=0), 3, "ref_id", "duplicate"),
    (lambda r: r[3].update(image_id=77), 3, "image_id", "77 is not the id of an image"),
    (lambda r: r[4].update(sentences=[]), 4, "sentences", "non-empty list"),
    (lambda r: r[4]["sentences"][1].update(sent="", raw="", tokens=[]), 4, "sentences[1]", "has no text"),
    (lambda r: r[4]["sentences"][0].update(sent_id=0), 4, "sentences[0].sent_id", "duplicate"),
    (lambda r: r[5].update(split=3), 5, "split", "split name"),
    (lambda r: r[6].pop("ann_id"), 6, "ann_id", "missing"),
    (lambda r: r[6].update(category_id="person"), 6, "category_id", "list of category ids"),
    (lambda r: r.__setitem__(6, [1, 2]), 6, "", "must be a JSON object"),
])
def test_bad_refs_are_named(groot: Path, capsys: pytest.CaptureFixture, edit, index: int, field: str,
                            needle: str) -> None:
    path = _edit(groot, edit)
    assert main(["data", "check", "grefcoco", "--root", str(groot)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and report["invalid_refs"]["count"] == 1
    err = report["invalid_refs"]["errors"][0]
    assert (err["index"], err["field"]) == (index, field) and needle in err["message"], err
    problems = report["problems"]  # (a split left without refs is a problem of its own)
    head = problems.index(f"1 ref(s) of {path} cannot be used and are left out:")
    assert f"{path}: ref #{index}" in problems[head + 1] and needle in problems[head + 1]
    assert report["total"]["refs"] == len(GREFS) - 1  # the bad ref is left out, the others are read
    with pytest.raises(DataError, match=rf"ref #{index}.*{re.escape(field or 'JSON object')}"):
        ReferData(groot, "grefcoco")  # without a list of errors, a bad ref stops the reader


@pytest.mark.parametrize("content, needle", [
    ("[{", "not valid JSON"), ('{"refs": []}', "a JSON list of ref objects, got dict"), (b"\xff\xfe", "UTF-8")])
def test_unusable_file(groot: Path, capsys: pytest.CaptureFixture, content, needle: str) -> None:  # noqa: ANN001
    path = groot / "grefcoco" / "grefs(unc).json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["data", "check", "grefcoco", "--root", str(groot)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(path) in err and needle in err and "Traceback" not in err


def test_utf8_bom_is_fine(groot: Path) -> None:
    path = groot / "grefcoco" / "grefs(unc).json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert len(read_grefs_file(path)) == len(GREFS)


def test_ref_error_format() -> None:
    e = RefError(3, 17, "ann_id", "is wrong")
    assert e.format("f.json") == "f.json: ref #3 (ref_id 17): ann_id: is wrong"
    assert RefError(0, None, "", "not a ref").format("f.json") == "f.json: ref #0: not a ref"


def test_parse_never_raises_for_bad_refs(tmp_path: Path) -> None:
    path = tmp_path / "grefs.json"
    path.write_text(json.dumps([{"ref_id": 1}, 5]))
    parsed = parse_grefs(path, {}, {})
    assert parsed.refs == [] and [e.index for e in parsed.errors] == [0, 1]


# --- ShapesRef-g through the same reader ------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes_g(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("grefer_shapes") / "data"
    generate_shapesref(out, 30, 0, 64, progress=False, generalized=True)
    return out


def test_shapesref_g_registry() -> None:
    spec = get_spec("shapesref-g")
    assert spec.layout == "grefer" and spec.refs_file == "grefs(unc).json" and spec.image_dir == "images/shapesref"
    assert get_spec("GRefCOCO-unc").name == "grefcoco" and get_spec("grefcoco").layout == "grefer"
    assert spec.refs_path("/r") == Path("/r/shapesref-g/grefs(unc).json")


def test_shapesref_g_check_and_masks(shapes_g: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "check", "shapesref-g", "--root", str(shapes_g)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["problems"] == []
    counts = report["target_counts"]
    assert all(counts[s]["0"] > 0 for s in ("train", "val", "testB")) and counts["train"]["2+"] > 0
    data = ReferData(shapes_g, "shapesref-g")
    raw = json.loads((shapes_g / "shapesref-g" / "grefs(unc).json").read_text())
    assert len(data.refs) == len(raw) and report["total"]["sentences"] == sum(len(r["sentences"]) for r in raw)
    for ref in data.refs:
        m = data.mask(ref["ann_id"])
        union = np.zeros_like(m)
        for a in ref["ann_ids"]:
            union = np.maximum(union, _ann_mask(data, a))
        np.testing.assert_array_equal(m, union)  # the union of the referents; all zeros for no target
        assert (m.sum() == 0) == ref["no_target"]


def test_plain_shapesref_output_has_no_shapesref_g(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "plain"
    generate_shapesref(out, 2, 0, 64, progress=False)
    assert main(["data", "check", "shapesref-g", "--root", str(out)]) == 2
    err = capsys.readouterr().err
    assert "grefs(unc).json" in err and "--generalized" in err
