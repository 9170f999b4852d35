"""``counting_ordinals``: the train split prefers ordinals that need counting; val and test do not move."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from step_ris.cli import main
from step_ris.data.shapesref import generate_shapesref, load_shapesref, ordinal_report
from step_ris.data.shapesref.logic import Filter, Ordinal
from step_ris.data.shapesref.plan import SceneIndex, _candidates

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _counting_share(root: Path) -> tuple[int, int]:
    """(ordinals whose head fits more objects than the index, all ordinals) in the train split."""
    instances, refs = load_shapesref(root)
    objects: dict[int, list[dict]] = {}
    for a in instances["annotations"]:
        objects.setdefault(a["image_id"], []).append(a["attributes"])
    counting = total = 0
    for ref in refs:
        for s in ref["sentences"]:
            if ref["split"] != "train" or s["family"] != "ordinal":
                continue
            form = s["logical_form"]
            fits = sum(all(form["of"][k] is None or o[k] == form["of"][k] for k in ("shape", "colour", "size"))
                       for o in objects[ref["image_id"]])
            counting += fits > form["index"]
            total += 1
    return counting, total


def _held_out(root: Path, dataset: str = "shapesref") -> list[tuple]:
    _, refs = load_shapesref(root, dataset)
    return [(r["image_id"], r.get("ann_id"), r["split"], [(s["raw"], s.get("logical_form")) for s in r["sentences"]])
            for r in refs if r["split"] != "train"]


def test_counting_ordinals_changes_train_alone(tmp_path: Path) -> None:
    plain, counting = tmp_path / "plain", tmp_path / "counting"
    generate_shapesref(plain, 240, 3, 64, progress=False, generalized=True)
    generate_shapesref(counting, 240, 3, 64, progress=False, counting_ordinals=True, generalized=True)
    for dataset in ("shapesref", "shapesref+", "shapesref-g"):  # val / testA / testB: the same refs and sentences
        held_out = _held_out(plain, dataset)
        assert held_out and _held_out(counting, dataset) == held_out, dataset
    for png in (plain / "images" / "shapesref").iterdir():
        assert png.read_bytes() == (counting / "images" / "shapesref" / png.name).read_bytes()
    (a, n_a), (b, n_b) = _counting_share(plain), _counting_share(counting)
    for root, (k, n) in ((plain, (a, n_a)), (counting, (b, n_b))):  # the package's count agrees with this one
        assert ordinal_report(root)["train"] == {"counting": k, "last_counted": n - k}
    assert ordinal_report(counting)["val"] == ordinal_report(plain)["val"]
    assert n_a > 50 and n_b > 50
    assert b / n_b > a / n_a + 0.15  # 0.25 against 0.55 on data/shapesref-cpu-x (docs/shapesref.md)
    assert json.loads((counting / "shapesref_manifest.json").read_text())["counting_ordinals"] is True
    assert "counting_ordinals" not in json.loads((plain / "shapesref_manifest.json").read_text())


def test_counting_ordinals_orders_the_candidates() -> None:
    # three circles in a row and two squares: "the second circle" counts, "the second square" is the last one
    objects = [{"shape": shape, "colour": "red", "size": "big", "position": [x, 0.5], "bbox": [0, 0, 1, 1]}
               for shape, x in (("circle", 0.1), ("circle", 0.4), ("circle", 0.8), ("square", 0.2),
                                ("square", 0.6))]
    idx = SceneIndex(objects)
    forms = _candidates("ordinal", idx, 1, np.random.default_rng(0), False, counting_ordinals=True)
    counts = [len(idx.matches(f.of)) > f.index for f in forms]
    assert True in counts and False in counts
    assert counts == sorted(counts, reverse=True)  # every counting form before every other one
    plain = _candidates("ordinal", idx, 1, np.random.default_rng(0), False)
    assert sorted(map(repr, plain)) == sorted(map(repr, forms))  # the same forms, only reordered
    counting = [f for f in plain if len(idx.matches(f.of)) > f.index]
    assert forms == counting + [f for f in plain if f not in counting]  # the random order kept within each group
    assert Ordinal(Filter("circle", None, None), "left", 2) in forms


def test_ordinal_report_refuses_a_foreign_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is .* a ShapesRef output"):
        ordinal_report(tmp_path)


def test_counting_ordinals_argument(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="counting_ordinals"):
        generate_shapesref(tmp_path / "x", 2, 0, 64, progress=False, counting_ordinals="yes")
    assert not (tmp_path / "x").exists()
    out = tmp_path / "cli"
    assert main(["data", "shapesref", "--out", str(out), "--images", "6", "--size", "64", "--quiet",
                 "--counting-ordinals"]) == 0
    assert json.loads((out / "shapesref_manifest.json").read_text())["counting_ordinals"] is True
