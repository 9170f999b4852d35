"""scripts/error_breakdown.py: the candidate sets and the failure kinds, and a run on generated data."""

import importlib.util
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from step_ris.data.shapesref import generate_shapesref

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("error_breakdown", ROOT / "scripts" / "error_breakdown.py")
eb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(eb)


def box(y0, x0, y1, x1, size=20):
    m = np.zeros((size, size), bool)
    m[y0:y1, x0:x1] = True
    return m


MASKS = {1: box(0, 0, 5, 5), 2: box(0, 10, 5, 15), 3: box(10, 0, 15, 5)}
ATTRS = {1: {"shape": "circle", "colour": "red", "size": "big"},
         2: {"shape": "circle", "colour": "blue", "size": "big"},
         3: {"shape": "square", "colour": "red", "size": "small"}}


def test_candidate_set_is_the_of_filter():
    form = {"op": "ordinal", "of": {"op": "filter", "shape": "circle", "colour": None, "size": None}, "index": 2}
    assert eb.candidates(form, ATTRS) == {1, 2}
    assert eb.candidates({"op": "relate", "of": {"op": "filter", "shape": None, "colour": "red", "size": "small"}},
                         ATTRS) == {3}
    assert eb.candidates({"op": "filter", "shape": "circle"}, ATTRS) == set()  # no "of": no candidate set


def test_subgroups_of_ordinals_and_relations():
    circles = {"op": "filter", "shape": "circle", "colour": None, "size": None}
    assert eb.subgroup({"op": "ordinal", "of": circles, "index": 2}, ATTRS) == "ordinal, last counted"  # 2 circles
    three = {**ATTRS, 4: {"shape": "circle", "colour": "red", "size": "small"}}
    assert eb.subgroup({"op": "ordinal", "of": circles, "index": 2}, three) == "ordinal, counting"
    assert eb.subgroup({"op": "ordinal", "of": circles, "index": 3}, three) == "ordinal, last counted"
    for relation, kind in (("left_of", "half-plane"), ("directly_above", "cone"), ("nearest", "distance"),
                           ("farthest", "distance")):
        assert eb.subgroup({"op": "relate", "of": circles, "relation": relation}, ATTRS) == f"relational, {kind}"
    with pytest.raises(ValueError, match="not an ordinal or a ShapesRef relation"):
        eb.subgroup({"op": "relate", "of": circles, "relation": "inside"}, ATTRS)


def test_each_failure_kind():
    cands = {1, 2}
    assert eb.classify(MASKS[1], MASKS, 1, cands) == "right object"
    assert eb.classify(MASKS[2], MASKS, 1, cands) == "another object of the candidate set"
    assert eb.classify(MASKS[3], MASKS, 1, cands) == "an object outside the candidate set"
    assert eb.classify(MASKS[1] | MASKS[2] | MASKS[3], MASKS, 1, cands) == "split over 2+ objects"
    assert eb.classify(box(0, 0, 2, 2), MASKS, 1, cands) == "partial or empty"
    assert eb.classify(np.zeros((20, 20), bool), MASKS, 1, cands) == "partial or empty"


def test_script_prints_a_row_per_family(tmp_path, monkeypatch, capsys):
    data = tmp_path / "shapes"
    generate_shapesref(data, images=16, seed=3, size=64, progress=False)
    monkeypatch.setattr(sys, "argv", ["error_breakdown.py", "--model", "shapes-cpu", "--root", str(data),
                                      "--limit", "6", "--split", "train"])
    eb.main()
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if line.startswith(("| ordinal |", "| relational |"))]
    parts = [line for line in out if line.startswith(("| ordinal, ", "| relational, "))]
    assert len(rows) == 2 and 1 <= len(parts) <= 5
    assert sum(int(r.strip("|").split("|")[1]) for r in parts) == 6
    shares = [[float(v) for v in r.strip("|").split("|")[2:]] for r in rows]
    counts = [int(r.strip("|").split("|")[1]) for r in rows]
    assert sum(counts) == 6
    for n, row in zip(counts, shares, strict=True):
        assert n == 0 or sum(row) == pytest.approx(1.0, abs=0.01)


def test_data_without_logical_forms_is_a_clear_error(tmp_path, monkeypatch):
    data = tmp_path / "shapes"
    generate_shapesref(data, images=16, seed=3, size=64, progress=False)
    refs_path = data / "shapesref" / "refs(unc).p"
    refs = pickle.loads(refs_path.read_bytes())
    for ref in refs:
        for sentence in ref["sentences"]:
            sentence.pop("logical_form", None)
    refs_path.write_bytes(pickle.dumps(refs))
    monkeypatch.setattr(sys, "argv", ["error_breakdown.py", "--model", "shapes-cpu", "--root", str(data),
                                      "--split", "train"])
    with pytest.raises(SystemExit, match="no train expressions with a family and logical form"):
        eb.main()


def test_missing_data_and_bad_limit_are_clear_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["error_breakdown.py", "--model", "shapes-cpu", "--root", str(tmp_path)])
    with pytest.raises(Exception, match=str(tmp_path)):
        eb.main()
    monkeypatch.setattr(sys, "argv", ["error_breakdown.py", "--model", "shapes-cpu", "--limit", "0"])
    with pytest.raises(SystemExit):
        eb.main()
    assert "--limit 0: give at least 1 expression" in capsys.readouterr().err
