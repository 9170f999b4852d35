"""ShapesRef generator: layout, masks, grounding of every expression, splits, bias, determinism."""

from __future__ import annotations

import hashlib
import json
import math
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from step_ris.data import shapesref as sr
from step_ris.data.shapesref import (
    evaluate_logical_form,
    generate_shapesref,
    load_shapesref,
    referent_bias_report,
    split_counts,
)
from step_ris.data.shapesref.language import FORBIDDEN_LOCATION_WORDS
from step_ris.data.shapesref.logic import (
    Compare,
    Extreme,
    Filter,
    Ordinal,
    Relate,
    form_from_dict,
    head,
)
from step_ris.data.shapesref.scene import COLOURS, SHAPES, SIZE_EXTENT, SIZE_JITTER, SIZES, make_scene, render_scene
from step_ris.text import tokenize

# pycocotools' decode passes copy=False to a class whose __array__ predates NumPy 2
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

N_IMAGES = 300  # the bias test wants a few hundred images
SIZE = 96  # smallest CPU preset: objects must stay recognisable and masks exact here too
SEED = 7
FAMILY_OPS = {"attribute": "filter", "location": "extreme", "relational": "relate", "ordinal": "ordinal",
              "comparative": "compare"}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapesref") / "data"
    summary = generate_shapesref(out, N_IMAGES, SEED, SIZE, progress=False)
    assert summary["images_per_second"] > 0
    return out


@pytest.fixture(scope="module")
def data(root: Path) -> dict:
    loaded = {d: load_shapesref(root, d) for d in sr.DATASETS}
    instances = loaded["shapesref"][0]
    per_image: dict[int, list[dict]] = {}
    for ann in instances["annotations"]:
        per_image.setdefault(ann["image_id"], []).append(ann)
    for anns in per_image.values():
        anns.sort(key=lambda a: a["attributes"]["draw_order"])
    return {"instances": instances, "refs": {d: loaded[d][1] for d in sr.DATASETS}, "anns": per_image,
            "images": {im["id"]: im for im in instances["images"]}}


def _all_sentences(data: dict, dataset: str):
    for ref in data["refs"][dataset]:
        for sent in ref["sentences"]:
            yield ref, sent


# --- layout --------------------------------------------------------------------------------------------
def test_refer_layout(root: Path, data: dict) -> None:
    inst = data["instances"]
    assert {"images", "annotations", "categories"} <= set(inst)
    assert [c["name"] for c in inst["categories"]] == list(SHAPES) and len(SHAPES) >= 6
    assert len(inst["images"]) == N_IMAGES
    for im in inst["images"]:
        path = root / "images" / "shapesref" / im["file_name"]
        assert path.suffix == ".png" and path.is_file()
        assert (im["height"], im["width"]) == (SIZE, SIZE)
    with Image.open(path) as img:
        assert img.size == (SIZE, SIZE) and img.mode == "RGB"
    for ann in inst["annotations"]:
        assert ann["iscrowd"] == 0 and ann["area"] > 0 and len(ann["bbox"]) == 4
        assert ann["category_id"] == SHAPES.index(ann["attributes"]["shape"]) + 1
        assert all(len(poly) >= 6 and len(poly) % 2 == 0 for poly in ann["segmentation"])
        attrs = ann["attributes"]
        assert {"shape", "colour", "size", "bbox", "centroid", "draw_order", "position"} <= set(attrs)
    for dataset in sr.DATASETS:
        raw = (root / dataset / "refs(unc).p").read_bytes()
        assert raw[:2] == b"\x80\x02"  # pickle protocol 2
        refs = pickle.loads(raw)
        assert refs and all(isinstance(r, dict) for r in refs)
        for ref in refs:
            assert {"ref_id", "ann_id", "image_id", "split", "category_id", "file_name", "sent_ids", "sentences",
                    "family"} <= set(ref)
            assert ref["file_name"] == data["images"][ref["image_id"]]["file_name"]
            assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
            assert ref["family"] == ref["sentences"][0]["family"]
    # both datasets share the instances byte for byte
    assert (root / "shapesref" / "instances.json").read_bytes() == (root / "shapesref+" / "instances.json").read_bytes()


def test_scene_contents(data: dict) -> None:
    counts = [len(anns) for anns in data["anns"].values()]
    assert min(counts) >= 3 and max(counts) <= 8
    attrs = [a["attributes"] for anns in data["anns"].values() for a in anns]
    assert {a["shape"] for a in attrs} == set(SHAPES)
    assert {a["colour"] for a in attrs} == set(COLOURS)
    assert {a["size"] for a in attrs} == set(SIZES)
    assert all(a["visible_fraction"] >= 0.7 for a in attrs)
    assert any(a["visible_fraction"] < 0.99 for a in attrs), "occlusion should happen sometimes"
    # sizes scale with the image and the classes do not overlap (equal-area diameter / side)
    for a in attrs:
        d = math.sqrt(4 * a["full_area"] / math.pi) / SIZE
        nominal = SIZE_EXTENT[a["size"]]
        assert nominal * (1 - SIZE_JITTER) - 0.01 <= d <= nominal * (1 + SIZE_JITTER) + 0.01


def test_colours_distinct() -> None:
    rgb = np.array(list(COLOURS.values()), dtype=float)
    dist = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1) + np.eye(len(rgb)) * 1e9
    assert len(COLOURS) == 8 and dist.min() > 80


# --- masks ---------------------------------------------------------------------------------------------
def test_masks_match_rendered_pixels(root: Path, data: dict) -> None:
    for im in data["instances"]["images"][:80]:
        key = im["scene_key"]
        scene = make_scene(key["seed"], key["index"], key["attempt"], im["width"], True)
        rgb, ids = render_scene(scene)
        with Image.open(root / "images" / "shapesref" / im["file_name"]) as png:
            assert np.array_equal(np.asarray(png), rgb), "the stored scene key must reproduce the image"
        for ann in data["anns"][im["id"]]:
            rle = mask_utils.frPyObjects(ann["segmentation"], im["height"], im["width"])
            m = mask_utils.decode(rle).sum(axis=2) > 0
            drawn = ids == ann["attributes"]["draw_order"] + 1
            iou = (m & drawn).sum() / (m | drawn).sum()
            assert iou >= 0.95, (im["file_name"], ann["id"], iou)


def test_refer_get_mask_works_for_every_ref(data: dict) -> None:
    anns = {a["id"]: a for a in data["instances"]["annotations"]}
    for dataset in sr.DATASETS:
        for ref in data["refs"][dataset]:
            ann, image = anns[ref["ann_id"]], data["images"][ref["image_id"]]
            rle = mask_utils.frPyObjects(ann["segmentation"], image["height"], image["width"])
            m = np.sum(mask_utils.decode(rle), axis=2).astype(np.uint8)  # REFER.getMask
            assert m.shape == (image["height"], image["width"]) and m.max() == 1 and m.sum() > 0


# --- expressions ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", sr.DATASETS)
def test_every_expression_denotes_exactly_its_referent(data: dict, dataset: str) -> None:
    n = 0
    for ref, sent in _all_sentences(data, dataset):
        anns = data["anns"][ref["image_id"]]
        objects = [a["attributes"] for a in anns]
        k = [a["id"] for a in anns].index(ref["ann_id"])
        assert evaluate_logical_form(sent["logical_form"], objects) == [k], sent["raw"]
        json.dumps(sent["logical_form"])  # JSON-serialisable
        assert sent["logical_form"]["op"] == FAMILY_OPS[sent["family"]]
        n += 1
    assert n > 2 * N_IMAGES


@pytest.mark.parametrize("dataset", sr.DATASETS)
def test_no_head_only_shortcut(data: dict, dataset: str) -> None:
    for ref, sent in _all_sentences(data, dataset):
        if sent["family"] == "attribute":
            continue
        objects = [a["attributes"] for a in data["anns"][ref["image_id"]]]
        form = form_from_dict(sent["logical_form"])
        fits = evaluate_logical_form({"op": "filter", **_filter_dict(head(form))}, objects)
        if isinstance(form, Relate):
            fits = [i for i in fits if i not in evaluate_logical_form(
                {"op": "filter", **_filter_dict(form.landmark)}, objects)]
        assert len(fits) >= 2, sent["raw"]


def _filter_dict(f: Filter) -> dict:
    return {"shape": f.shape, "colour": f.colour, "size": f.size}


@pytest.mark.parametrize("dataset", sr.DATASETS)
def test_tokens_and_ids(data: dict, dataset: str) -> None:
    sent_ids, ref_ids = set(), set()
    for _ref, sent in _all_sentences(data, dataset):
        assert sent["tokens"] == tokenize(sent["raw"]) and 1 <= len(sent["tokens"]) <= 20
        assert sent["sent"] == " ".join(sent["tokens"])
        assert sent["sent_id"] not in sent_ids
        sent_ids.add(sent["sent_id"])
    for ref in data["refs"][dataset]:
        assert ref["ref_id"] not in ref_ids and 1 <= len(ref["sentences"]) <= 3
        assert len({s["raw"] for s in ref["sentences"]}) == len(ref["sentences"])
        ref_ids.add(ref["ref_id"])


def test_vocabulary_has_phrasing_variety(data: dict) -> None:
    words = Counter(t for _, s in _all_sentences(data, "shapesref") for t in s["tokens"])
    for synonyms in (("big", "large"), ("small", "little"), ("closest", "nearest"), ("leftmost", "left")):
        assert all(words[w] > 0 for w in synonyms), synonyms


def test_refs_per_image_and_sentence_yield(data: dict) -> None:
    per_image = Counter(r["image_id"] for r in data["refs"]["shapesref"])
    assert set(per_image) == set(data["images"]) and max(per_image.values()) <= 4
    assert sum(per_image.values()) / N_IMAGES >= 2.0
    sentences = sum(len(r["sentences"]) for r in data["refs"]["shapesref"])
    assert sentences / N_IMAGES >= 3.0  # ~6k+ sentences for 2000 images


def test_location_free_variant(data: dict) -> None:
    plus = data["refs"]["shapesref+"]
    assert len(plus) > N_IMAGES
    for _ref, sent in _all_sentences(data, "shapesref+"):
        bad = FORBIDDEN_LOCATION_WORDS.intersection(sent["tokens"])
        assert not bad, (sent["raw"], bad)
        assert sent["family"] != "location"
    by_id = {r["ref_id"]: r for r in data["refs"]["shapesref"]}
    for ref in plus:  # same referents, images and splits as ShapesRef
        base = by_id[ref["ref_id"]]
        assert (base["ann_id"], base["image_id"], base["split"]) == (ref["ann_id"], ref["image_id"], ref["split"])
    families = {s["family"] for _, s in _all_sentences(data, "shapesref+")}
    assert families == {"attribute", "relational", "ordinal", "comparative"}


# --- splits --------------------------------------------------------------------------------------------
def test_splits_partition_images_and_families(data: dict) -> None:
    image_split = {im["id"]: im["split"] for im in data["instances"]["images"]}
    counts = Counter(image_split.values())
    assert counts == split_counts(N_IMAGES)
    assert counts["train"] == 240 and counts["val"] == 30 and counts["testA"] == 15 and counts["testB"] == 15
    allowed = {"testA": {"attribute", "location"}, "testB": {"relational", "ordinal", "comparative"}}
    for dataset in sr.DATASETS:
        for ref, sent in _all_sentences(data, dataset):
            assert ref["split"] == image_split[ref["image_id"]]
            if ref["split"] in allowed:
                assert sent["family"] in allowed[ref["split"]]
        assert {r["split"] for r in data["refs"][dataset]} == set(sr.SPLITS)
    train = Counter(s["family"] for r, s in _all_sentences(data, "shapesref") if r["split"] == "train")
    assert set(train) == set(sr.FAMILIES)
    assert min(train.values()) / max(train.values()) >= 0.8, train  # roughly balanced


@pytest.mark.parametrize("n", range(1, 21))
def test_split_counts_small(n: int) -> None:
    counts = split_counts(n)
    assert sum(counts.values()) == n and counts["train"] >= 1
    if n >= 4:
        assert all(c >= 1 for c in counts.values()), counts
    if n >= 20:
        assert counts["train"] >= counts["val"] >= counts["testA"]


# --- bias ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", sr.DATASETS)
def test_referents_are_not_biased(root: Path, dataset: str) -> None:
    report = referent_bias_report(root, dataset)
    assert report["refs"] > N_IMAGES
    for key in ("largest", "leftmost", "most_central", "first_drawn", "last_drawn"):
        assert abs(report[key] - report["chance"]) <= 0.1, (key, report)


# --- determinism and output handling -------------------------------------------------------------------
def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic(tmp_path: Path) -> None:
    a = _hashes(_gen(tmp_path / "a", seed=3))
    b = _hashes(_gen(tmp_path / "b", seed=3))
    c = _hashes(_gen(tmp_path / "c", seed=4))
    assert a == b and len(a) == 8 + 5
    assert a != c


def _gen(out: Path, seed: int = 0, images: int = 8, **kw) -> Path:
    generate_shapesref(out, images, seed, 64, progress=False, **kw)
    return out


def test_extra_train_grows_only_train(tmp_path: Path) -> None:
    """--extra-train appends train scenes; the first scenes, their splits and every val / test ref are
    those of the same call without it (so fixed evaluation subsets do not move)."""
    plain = _gen(tmp_path / "plain", seed=2, images=10)
    grown = _gen(tmp_path / "grown", seed=2, images=10, extra_train=6)
    a_inst, a_refs = load_shapesref(plain)
    b_inst, b_refs = load_shapesref(grown)
    assert b_inst["images"][:10] == a_inst["images"]
    assert [im["split"] for im in b_inst["images"][10:]] == ["train"] * 6
    assert b_inst["annotations"][:len(a_inst["annotations"])] == a_inst["annotations"]
    assert b_refs[:len(a_refs)] == a_refs
    assert all(r["split"] == "train" for r in b_refs[len(a_refs):]) and len(b_refs) > len(a_refs)
    for name in (im["file_name"] for im in a_inst["images"]):
        png = Path("images", "shapesref", name)
        assert (plain / png).read_bytes() == (grown / png).read_bytes()
    manifest = json.loads((grown / "shapesref_manifest.json").read_text())
    assert manifest["extra_train"] == 6 and manifest["summary"]["images"]["train"] == \
        json.loads((plain / "shapesref_manifest.json").read_text())["summary"]["images"]["train"] + 6
    assert "extra_train" not in json.loads((plain / "shapesref_manifest.json").read_text())


def test_extra_train_keeps_the_generalized_refs_up_to_their_ids(tmp_path: Path) -> None:
    plain = _gen(tmp_path / "plain", seed=2, images=10, generalized=True)
    grown = _gen(tmp_path / "grown", seed=2, images=10, extra_train=4, generalized=True)

    def content(root: Path) -> list[tuple]:
        _, grefs = load_shapesref(root, "shapesref-g")
        return [(r["image_id"], r["split"], r["ann_id"], r["no_target"], [x["raw"] for x in r["sentences"]])
                for r in grefs if r["image_id"] <= 10]

    assert content(grown) == content(plain) and any(r[3] for r in content(plain))


def test_default_size_and_no_occlusion(tmp_path: Path) -> None:
    summary = generate_shapesref(tmp_path / "d", 2, 1, progress=False, occlusion=False)
    assert summary["size"] == 320 and sum(summary["images"].values()) == 2
    instances, _ = load_shapesref(tmp_path / "d")
    assert instances["images"][0]["width"] == 320
    assert all(a["attributes"]["visible_fraction"] == 1.0 for a in instances["annotations"])


@pytest.mark.parametrize("kwargs, message", [
    ({"images": 0}, "images"), ({"images": 2.5}, "images"), ({"size": 63}, "size"), ({"seed": -1}, "seed"),
    ({"split_ratios": {"train": 1.0}}, "split_ratios"), ({"extra_train": -1}, "extra_train"),
])
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"out": tmp_path / "x", "images": 2, "seed": 0, "size": 64, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate_shapesref(progress=False, **args)
    assert not (tmp_path / "x").exists()


def test_refuses_foreign_or_existing_output(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a ShapesRef output"):
        generate_shapesref(foreign, 2, 0, 64, progress=False, overwrite=True)
    assert (foreign / "keep.txt").read_text() == "mine"
    out = _gen(tmp_path / "out", images=2)
    with pytest.raises(ValueError, match="overwrite=True"):
        generate_shapesref(out, 2, 0, 64, progress=False)
    first = _hashes(out)
    generate_shapesref(out, 2, 1, 64, progress=False, overwrite=True)
    assert _hashes(out) != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "out"]  # no temp dirs left
    empty = tmp_path / "empty"
    empty.mkdir()
    _gen(empty, images=1)
    assert (empty / "shapesref_manifest.json").is_file()


def test_interrupted_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = sr.render_scene

    def flaky(scene):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(scene)

    monkeypatch.setattr(sr.writer, "render_scene", flaky)  # where generate_shapesref looks it up
    with pytest.raises(KeyboardInterrupt):
        generate_shapesref(tmp_path / "out", 5, 0, 64, progress=False)
    assert list(tmp_path.iterdir()) == []


# --- evaluator -----------------------------------------------------------------------------------------
def _obj(shape: str, colour: str, size: str, x: float, y: float) -> dict:
    return {"shape": shape, "colour": colour, "size": size, "position": [x, y]}


def test_evaluator_semantics() -> None:
    objs = [_obj("circle", "red", "small", 0.2, 0.5), _obj("circle", "blue", "big", 0.5, 0.52),
            _obj("star", "green", "medium", 0.8, 0.5), _obj("circle", "red", "medium", 0.85, 0.9)]
    d = lambda form: _to_dict(form)  # noqa: E731
    circle = Filter(shape="circle")
    assert evaluate_logical_form(d(Filter(colour="red")), objs) == [0, 3]
    assert evaluate_logical_form(d(Filter(shape="circle", size="small")), objs) == [0]
    assert evaluate_logical_form(d(Extreme(circle, "left")), objs) == [0]
    assert evaluate_logical_form(d(Extreme(circle, "bottom")), objs) == [3]
    star = Filter(shape="star")
    assert evaluate_logical_form(d(Relate(circle, "directly_left_of", star)), objs) == [0, 1]
    assert evaluate_logical_form(d(Relate(circle, "nearest", star)), objs) == [1]  # 0.30 vs 0.40
    close = objs + [_obj("circle", "white", "small", 0.8, 0.85)]  # 0.35 from the star: too close to 0.30
    assert evaluate_logical_form(d(Relate(circle, "nearest", star)), close) == []
    assert evaluate_logical_form(d(Relate(circle, "farthest", star)), objs) == [0]
    assert evaluate_logical_form(d(Relate(circle, "below", star)), objs) == []  # circle 1 is borderline
    assert evaluate_logical_form(d(Ordinal(circle, "left", 2)), objs) == [1]
    assert evaluate_logical_form(d(Ordinal(circle, "smallest", 2)), objs) == [3]
    red = Filter(colour="red")
    assert evaluate_logical_form(d(Compare(red, "bigger")), objs) == [3]
    assert evaluate_logical_form(d(Compare(red, "top")), objs) == [0]
    assert evaluate_logical_form(d(Compare(circle, "bigger")), objs) == []  # three circles, not two
    # a near tie for "leftmost" is ambiguous, so the form denotes nothing
    tie = [_obj("square", "red", "small", 0.30, 0.2), _obj("square", "blue", "small", 0.32, 0.8)]
    assert evaluate_logical_form(d(Extreme(Filter(shape="square"), "left")), tie) == []


def _to_dict(form) -> dict:  # noqa: ANN001
    from step_ris.data.shapesref.logic import form_to_dict
    return form_to_dict(form)


@pytest.mark.parametrize("bad", [
    {}, {"op": "nope"}, {"op": "filter", "shape": "blob"}, {"op": "extreme", "of": {"op": "filter"}, "direction": "up"},
    {"op": "ordinal", "of": {"op": "filter"}, "order": "left", "index": 7}, {"op": "relate", "relation": "left_of"},
])
def test_evaluator_rejects_bad_forms(bad: dict) -> None:
    with pytest.raises(ValueError):
        evaluate_logical_form(bad, [_obj("circle", "red", "small", 0.5, 0.5)])


# --- the package layout and the old import paths ----------------------------------------------------------
OLD_PUBLIC_NAMES = (
    "load_refs", "evaluate_logical_form", "form_to_dict", "DATASETS", "FAMILIES", "SPLITS", "FamilyBalancer",
    "PlannedRef", "plan_refs", "SHAPES", "Scene", "make_scene", "render_scene", "scene_rng", "segmentation",
    "FORMAT_VERSION", "GENERATOR_NAME", "MANIFEST", "IMAGE_SUBDIR", "INSTANCES", "REFS_FILE", "PICKLE_PROTOCOL",
    "PNG_COMPRESS_LEVEL", "DEFAULT_SIZE", "MIN_SIZE", "MAX_SIZE", "DEFAULT_SPLIT_RATIOS", "MAX_SCENE_ATTEMPTS",
    "COORD_DECIMALS", "OUTPUT_DIR_MODE", "POSITION_DECIMALS", "split_counts", "is_shapesref_output",
    "image_objects", "generate_shapesref", "load_shapesref", "referent_bias_report",
)


def test_package_keeps_the_names_of_the_single_module() -> None:
    missing = [n for n in OLD_PUBLIC_NAMES if not hasattr(sr, n)]
    assert not missing
    assert sorted(sr.__all__) == sorted(["DEFAULT_SPLIT_RATIOS", "DATASETS", "FAMILIES", "SPLITS",
                                         "evaluate_logical_form", "generate_shapesref", "image_objects",
                                         "load_shapesref", "ordinal_report", "referent_bias_report", "split_counts"])


@pytest.mark.parametrize("part", ["scene", "logic", "language", "plan"])
def test_old_module_paths_are_deprecated_aliases(part: str) -> None:
    import importlib
    import sys

    new = importlib.import_module(f"step_ris.data.shapesref.{part}")
    sys.modules.pop(f"step_ris.data.shapesref_{part}", None)
    with pytest.warns(DeprecationWarning, match=f"step_ris.data.shapesref.{part}"):
        old = importlib.import_module(f"step_ris.data.shapesref_{part}")
    assert old is new  # one module object: patching either patches both
