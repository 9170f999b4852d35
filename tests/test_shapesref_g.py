"""ShapesRef-g (``generate_shapesref(..., generalized=True)``): no-target and multi-target expressions in
the gRefCOCO layout, each with a proof of its referent set; the single-target files stay byte-identical."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from step_ris.cli import main
from step_ris.data import shapesref as sr
from step_ris.data.shapesref import evaluate_logical_form, generate_shapesref, load_shapesref
from step_ris.data.shapesref.generalized import MULTI_FAMILIES, MULTI_TARGET_SHARE, NO_TARGET_SHARE
from step_ris.data.shapesref.logic import (
    All,
    Both,
    Compare,
    Extreme,
    Extremes,
    Filter,
    Ordinal,
    Relate,
    form_from_dict,
    form_to_dict,
    head,
    logical_form_rules_out_all,
    rules_out_all,
)
from step_ris.text import tokenize

N_IMAGES = 160
SIZE = 64
SEED = 5
MULTI_OPS = {"both": "both", "all": "all", "two-extreme": "extremes"}
SINGLE_OPS = {"attribute": "filter", "location": "extreme", "relational": "relate", "ordinal": "ordinal",
              "comparative": "compare"}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapesref_g") / "data"
    summary = generate_shapesref(out, N_IMAGES, SEED, SIZE, progress=False, generalized=True)
    assert summary["generalized"] is True and "shapesref-g" in summary
    return out


@pytest.fixture(scope="module")
def data(root: Path) -> dict:
    instances, grefs = load_shapesref(root, "shapesref-g")
    per_image: dict[int, list[dict]] = {}
    for ann in instances["annotations"]:
        per_image.setdefault(ann["image_id"], []).append(ann)
    for anns in per_image.values():
        anns.sort(key=lambda a: a["attributes"]["draw_order"])
    return {"instances": instances, "grefs": grefs, "anns": per_image,
            "single": load_shapesref(root, "shapesref")[1]}


def _sentences(data: dict):
    for ref in data["grefs"]:
        for sent in ref["sentences"]:
            yield ref, sent


def _referents(data: dict, ref: dict) -> list[int]:
    """Indices (draw order) of the ref's referents in its image; [] for a no-target ref."""
    ids = [a["id"] for a in data["anns"][ref["image_id"]]]
    return [] if ref["no_target"] else sorted(ids.index(a) for a in ref["ann_id"])


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --- layout -------------------------------------------------------------------------------------------
def test_grefcoco_layout(root: Path, data: dict) -> None:
    instances = (root / "shapesref" / "instances.json").read_bytes()
    assert (root / "shapesref-g" / "instances.json").read_bytes() == instances
    grefs = json.loads((root / "shapesref-g" / "grefs(unc).json").read_text())
    assert isinstance(grefs, list) and grefs == data["grefs"]
    images = {im["id"]: im for im in data["instances"]["images"]}
    anns = {a["id"]: a for a in data["instances"]["annotations"]}
    ref_ids, sent_ids = set(), set()
    for ref in grefs:
        assert {"ref_id", "ann_id", "image_id", "split", "category_id", "file_name", "sent_ids", "sentences",
                "no_target", "family", "families"} <= set(ref)
        assert isinstance(ref["ann_id"], list) and isinstance(ref["category_id"], list)
        assert isinstance(ref["no_target"], bool)
        if ref["no_target"]:  # as in gRefCOCO: ann_id and category_id are [-1]
            assert ref["ann_id"] == [-1] and ref["category_id"] == [-1]
        else:
            assert ref["ann_id"] and len(set(ref["ann_id"])) == len(ref["ann_id"])
            assert ref["category_id"] == [anns[a]["category_id"] for a in ref["ann_id"]]
            assert all(anns[a]["image_id"] == ref["image_id"] for a in ref["ann_id"])
        image = images[ref["image_id"]]
        assert ref["file_name"] == image["file_name"] and ref["split"] == image["split"]
        assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]] and 1 <= len(ref["sentences"]) <= 3
        assert ref["family"] == ref["sentences"][0]["family"]
        assert ref["families"] == sorted({s["family"] for s in ref["sentences"]})
        assert ref["ref_id"] not in ref_ids
        ref_ids.add(ref["ref_id"])
        for s in ref["sentences"]:
            assert s["sent_id"] not in sent_ids
            assert {"tokens", "raw", "sent", "sent_id", "family", "logical_form"} <= set(s)
            assert s["tokens"] == tokenize(s["raw"]) and 1 <= len(s["tokens"]) <= 20
            assert s["sent"] == " ".join(s["tokens"])
            sent_ids.add(s["sent_id"])
        assert len({s["raw"] for s in ref["sentences"]}) == len(ref["sentences"])
    # refs are grouped by image (ShapesRef's first, then the new ones), images in order
    order = [r["image_id"] for r in grefs]
    assert order == sorted(order)


def test_single_target_refs_are_shapesrefs(data: dict) -> None:
    single = [r for r in data["grefs"] if not r["no_target"] and len(r["ann_id"]) == 1
              and all(s["family"] in SINGLE_OPS and s["logical_form"]["op"] in SINGLE_OPS.values()
                      for s in r["sentences"])]
    assert len(single) == len(data["single"])
    for g, ref in zip(single, data["single"], strict=True):
        assert g["ann_id"] == [ref["ann_id"]] and g["category_id"] == [ref["category_id"]]
        assert not g["no_target"]
        assert {k: v for k, v in g.items() if k not in ("ann_id", "category_id", "no_target")} == {
            k: v for k, v in ref.items() if k not in ("ann_id", "category_id")}


def test_other_files_are_byte_identical_to_a_plain_run(root: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    generate_shapesref(plain, N_IMAGES, SEED, SIZE, progress=False)
    a, b = _hashes(root), _hashes(plain)
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    assert changed == ["shapesref-g/grefs(unc).json", "shapesref-g/instances.json", "shapesref_manifest.json"]
    manifest = json.loads((root / "shapesref_manifest.json").read_text())
    assert manifest["generalized"] is True
    assert "generalized" not in json.loads((plain / "shapesref_manifest.json").read_text())


def test_deterministic(tmp_path: Path) -> None:
    runs = [_hashes(_gen(tmp_path / name, seed)) for name, seed in (("a", 2), ("b", 2), ("c", 3))]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    assert "shapesref-g/grefs(unc).json" in runs[0]


def _gen(out: Path, seed: int) -> Path:
    generate_shapesref(out, 12, seed, 64, progress=False, generalized=True)
    return out


# --- proofs -------------------------------------------------------------------------------------------
def test_every_expression_denotes_exactly_its_referent_set(data: dict) -> None:
    kinds = Counter()
    for ref, sent in _sentences(data):
        objects = [a["attributes"] for a in data["anns"][ref["image_id"]]]
        want = _referents(data, ref)
        assert evaluate_logical_form(sent["logical_form"], objects) == want, sent["raw"]
        if ref["no_target"]:  # clearly nothing, not a near tie of the geometry
            assert logical_form_rules_out_all(sent["logical_form"], objects), sent["raw"]
        else:
            assert not logical_form_rules_out_all(sent["logical_form"], objects), sent["raw"]
        assert form_to_dict(form_from_dict(sent["logical_form"])) == sent["logical_form"]
        kinds["0" if not want else "1" if len(want) == 1 else "2+"] += 1
    assert min(kinds.values()) > 50, kinds


def test_no_target_expressions_are_near_misses(data: dict) -> None:
    """The head noun's shape (and every value the head names) is in the scene; a generic noun ("object")
    is; the expression still means nothing."""
    families = Counter()
    for ref, sent in _sentences(data):
        if not ref["no_target"]:
            continue
        objects = [a["attributes"] for a in data["anns"][ref["image_id"]]]
        h = head(form_from_dict(sent["logical_form"]))
        for key in ("shape", "colour", "size"):
            value = getattr(h, key)
            assert value is None or any(o[key] == value for o in objects), (sent["raw"], key, value)
        families[sent["family"]] += 1
    assert set(families) == set(sr.G_FAMILIES), families  # a near miss can take every family's form


def test_multi_target_forms(data: dict) -> None:
    seen = Counter()
    for ref, sent in _sentences(data):
        if ref["no_target"] or len(ref["ann_id"]) < 2:
            continue
        form = form_from_dict(sent["logical_form"])
        objects = [a["attributes"] for a in data["anns"][ref["image_id"]]]
        fits = evaluate_logical_form(form_to_dict(head(form)), objects)
        referents = _referents(data, ref)
        assert sent["family"] in MULTI_FAMILIES and sent["logical_form"]["op"] == MULTI_OPS[sent["family"]]
        if sent["family"] == "both":
            assert len(fits) == 2 and fits == referents and head(form).n_attributes() >= 1
            assert {"both", "two"} & set(sent["tokens"])
        elif sent["family"] == "all":
            assert len(fits) >= 2 and fits == referents and head(form).n_attributes() >= 1
            assert {"all", "every"} & set(sent["tokens"])
        else:  # the two leftmost X: at least three X, so the head alone does not say which
            assert len(fits) >= 3 and len(referents) == 2 and set(referents) < set(fits) and "two" in sent["tokens"]
        seen[sent["family"]] += 1
    assert set(seen) == set(MULTI_FAMILIES), seen


def test_families_of_the_splits(data: dict) -> None:
    allowed = {"testA": {"attribute", "location", *MULTI_FAMILIES}, "testB": {"relational", "ordinal", "comparative"}}
    for ref, sent in _sentences(data):
        if ref["split"] in allowed:
            assert sent["family"] in allowed[ref["split"]], (ref["split"], sent["family"])


# --- shares and shortcuts -----------------------------------------------------------------------------
def _shares(data: dict, split: str) -> dict[str, float]:
    counts = Counter()
    for ref, _sent in _sentences(data):
        if ref["split"] == split:
            counts["0" if ref["no_target"] else "1" if len(ref["ann_id"]) == 1 else "2+"] += 1
    total = sum(counts.values())
    return {k: counts[k] / total for k in ("0", "1", "2+")}


def test_shares_of_no_target_and_multi_target(root: Path, data: dict) -> None:
    train = _shares(data, "train")
    assert abs(train["0"] - NO_TARGET_SHARE) <= 0.01 and abs(train["2+"] - MULTI_TARGET_SHARE) <= 0.01, train
    val = _shares(data, "val")
    assert abs(val["0"] - NO_TARGET_SHARE) <= 0.03 and abs(val["2+"] - MULTI_TARGET_SHARE) <= 0.03, val
    assert _shares(data, "testB")["2+"] == 0.0  # no several-referent family is about relations
    summary = json.loads((root / "shapesref_manifest.json").read_text())["summary"]["shapesref-g"]
    tc = summary["target_counts"]["train"]
    assert tc["0"] / sum(tc.values()) == pytest.approx(train["0"])
    assert sum(summary["sentences"].values()) == sum(len(r["sentences"]) for r in data["grefs"])


def test_no_target_is_spread_over_the_families(data: dict) -> None:
    """The family alone (the words "leftmost", "both", "nearest", ...) does not say whether anything is
    meant: in train every family has no-target sentences, at a share not far from the overall one."""
    per: dict[str, Counter] = {}
    for ref, sent in _sentences(data):
        if ref["split"] == "train":
            per.setdefault(sent["family"], Counter())[ref["no_target"]] += 1
    for family, c in per.items():
        share = c[True] / (c[True] + c[False])
        assert 0.05 <= share <= 0.35, (family, dict(c))


def test_no_target_keeps_the_relation_words_of_the_targets(data: dict) -> None:
    """Distance relations ("nearest", "farthest") always have a winner, so their no-target sentences come
    from an attribute ruling every candidate out; they still exist."""
    relations = Counter()
    for ref, sent in _sentences(data):
        if ref["no_target"] and sent["logical_form"]["op"] == "relate":
            relations[sent["logical_form"]["relation"]] += 1
    assert relations["nearest"] + relations["farthest"] > 0 and len(relations) >= 6, relations


# --- the evaluator's new forms, hand-made scenes ------------------------------------------------------
def _obj(shape: str, colour: str, size: str, x: float, y: float) -> dict:
    return {"shape": shape, "colour": colour, "size": size, "position": [x, y]}


def _ev(form) -> list[int]:  # noqa: ANN001
    return evaluate_logical_form(form_to_dict(form), SCENE)


SCENE = [_obj("circle", "red", "small", 0.10, 0.5), _obj("circle", "blue", "big", 0.30, 0.5),
         _obj("circle", "red", "medium", 0.70, 0.2), _obj("star", "green", "medium", 0.50, 0.8),
         _obj("square", "red", "big", 0.90, 0.9)]


def test_several_referent_forms() -> None:
    circle, red = Filter(shape="circle"), Filter(colour="red")
    assert _ev(Both(Filter(shape="circle", colour="red"))) == [0, 2]
    assert _ev(Both(circle)) == []  # three circles: not "both"
    assert _ev(All(circle)) == [0, 1, 2] and _ev(All(red)) == [0, 2, 4]
    assert _ev(All(Filter(shape="star"))) == []  # one star: not "all"
    assert _ev(Extremes(circle, "left")) == [0, 1]
    assert _ev(Extremes(circle, "top")) == []  # 0.5 vs 0.5: no clear gap between the second and the third
    assert _ev(Extremes(Filter(shape="circle", colour="red"), "left")) == []  # two candidates, not three
    near = SCENE + [_obj("circle", "white", "small", 0.35, 0.1)]  # 0.30 vs 0.35: too close for a gap
    assert evaluate_logical_form(form_to_dict(Extremes(circle, "left")), near) == []


@pytest.mark.parametrize("form, expected", [
    (Filter("circle", "green"), True),  # circles, green things, no green circle
    (Filter("circle", "red", "big"), True),
    (Filter("circle", "purple"), False),  # purple is nowhere: a word alone would tell
    (Filter("hexagon", "red"), False),  # no hexagon at all
    (Filter("circle", "red"), False),  # there are red circles
    (Filter(colour="green", size="big"), True),  # generic noun: green and big things, none both
    (Filter(colour="green"), False),  # one attribute: that is not a near miss
    (Extreme(Filter("star", "red"), "left"), True),  # an attribute rules every candidate out
    (Both(Filter("square", "blue")), True),
    (Relate(Filter("circle"), "directly_below", Filter("star")), True),  # every circle is above the star
    (Relate(Filter("circle"), "directly_left_of", Filter("star")), False),  # circle 0: neither in nor out of the cone
    (Relate(Filter("circle"), "below", Filter("star")), True),  # every circle clearly above the star
    (Relate(Filter("circle"), "above", Filter("star")), False),  # there are circles above it
    (Relate(Filter("circle"), "nearest", Filter("star")), False),  # a nearest one always exists
    (Relate(Filter("circle", "green"), "nearest", Filter("star")), True),  # ruled out by the attribute
    (Relate(Filter("star", "red"), "left_of", Filter("circle")), False),  # the landmark is not one object
    (Ordinal(Filter("circle", "red"), "left", 3), True),  # two red circles, not three
    (Ordinal(Filter("circle"), "left", 3), False),  # the third circle exists
    (Ordinal(Filter("star"), "smallest", 2), True),
    (Compare(Filter("star"), "bigger"), False),
])
def test_rules_out_all(form, expected: bool) -> None:  # noqa: ANN001
    assert rules_out_all(form, SCENE) is expected
    if expected:
        assert _ev(form) == []


def test_a_near_tie_is_not_a_no_target_proof() -> None:
    # the circle is 0.05 below the star's level: too close for "below" to be a clear no
    objs = [_obj("circle", "red", "small", 0.2, 0.55), _obj("star", "green", "big", 0.6, 0.5),
            _obj("circle", "blue", "small", 0.8, 0.1)]
    form = Relate(Filter("circle"), "below", Filter("star"))
    assert evaluate_logical_form(form_to_dict(form), objs) == [] and not rules_out_all(form, objs)


# --- API and CLI --------------------------------------------------------------------------------------
def test_load_shapesref_names_the_flag(tmp_path: Path) -> None:
    out = tmp_path / "plain"
    generate_shapesref(out, 2, 0, 64, progress=False)
    with pytest.raises(ValueError, match="--generalized"):
        load_shapesref(out, "shapesref-g")
    with pytest.raises(ValueError, match="generalized must be True or False"):
        generate_shapesref(tmp_path / "x", 2, 0, 64, progress=False, generalized="yes")


def test_cli_generalized(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    assert main(["data", "shapesref", "--out", str(out), "--images", "6", "--seed", "1", "--size", "64",
                 "--generalized", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["generalized"] is True and set(summary["shapesref-g"]["target_counts"]["train"]) == {"0", "1", "2+"}
    assert (out / "shapesref-g" / "grefs(unc).json").is_file()
