"""Writing ShapesRef: arguments, splits, COCO records and the atomic output tree.

Layout written under ``ROOT`` (the REFER layout)::

    ROOT/images/shapesref/<file_name>          PNG images (shared by both datasets)
    ROOT/shapesref/instances.json              COCO instances (+ per-object "attributes")
    ROOT/shapesref/refs(unc).p                 refs, all five expression families
    ROOT/shapesref+/instances.json             same instances (identical bytes)
    ROOT/shapesref+/refs(unc).p                refs without absolute location words
    ROOT/shapesref_manifest.json               generator parameters and counts

With ``generalized=True`` also ShapesRef-g, in the gRefCOCO layout (a ref's ``ann_id`` is a list;
``[-1]`` and ``no_target: true`` when nothing is meant)::

    ROOT/shapesref-g/instances.json            same instances (identical bytes)
    ROOT/shapesref-g/grefs(unc).json           ShapesRef's refs + no-target and multi-target refs

The other files are byte-identical to those of the same call without ``generalized`` (the
generalized expressions come from a random stream of their own); only the manifest differs.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ...fileio import png_bytes
from .generalized import G_DATASET, GeneralizedQuota, PlannedGRef, plan_generalized
from .logic import form_to_dict
from .plan import DATASETS, SPLITS, FamilyBalancer, PlannedRef, plan_refs
from .scene import SHAPES, Scene, make_scene, render_scene, scene_rng, segmentation

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
GENERATOR_NAME = "step-ris shapesref"
MANIFEST = "shapesref_manifest.json"
IMAGE_SUBDIR = Path("images") / "shapesref"
INSTANCES = "instances.json"
REFS_FILE = "refs(unc).p"
GREFS_FILE = "grefs(unc).json"
NO_TARGET_ID = -1  # gRefCOCO: ann_id and category_id of a ref that means nothing are [-1]
PICKLE_PROTOCOL = 2
PNG_COMPRESS_LEVEL = 1  # grain noise barely compresses; level 6 is 2.5x slower for -15% size
DEFAULT_SIZE = 320
MIN_SIZE = 64
MAX_SIZE = 4096
DEFAULT_SPLIT_RATIOS: dict[str, float] = {"train": 0.8, "val": 0.1, "testA": 0.05, "testB": 0.05}
MAX_SCENE_ATTEMPTS = 50
COORD_DECIMALS = 2
OUTPUT_DIR_MODE = 0o755
POSITION_DECIMALS = 4


# --- arguments and splits ---------------------------------------------------------------------------
def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def _check_ratios(ratios: Mapping[str, float] | None) -> dict[str, float]:
    if ratios is None:
        return dict(DEFAULT_SPLIT_RATIOS)
    if set(ratios) != set(SPLITS):
        raise ValueError(f"split_ratios needs exactly the keys {', '.join(SPLITS)}, got {sorted(ratios)}")
    if any(not isinstance(r, (int, float)) or r < 0 or not math.isfinite(r) for r in ratios.values()):
        raise ValueError(f"split ratios must be finite and >= 0, got {dict(ratios)}")
    total = float(sum(ratios.values()))
    if total <= 0:
        raise ValueError("split ratios must not all be 0")
    return {s: float(ratios[s]) / total for s in SPLITS}


def split_counts(images: int, ratios: Mapping[str, float] | None = None) -> dict[str, int]:
    """Images per split: largest remainder, then at least one image in every split with a positive
    ratio while there are enough images (train first, then testA, testB, val)."""
    r = _check_ratios(ratios)
    raw = {s: images * r[s] for s in SPLITS}
    counts = {s: int(math.floor(raw[s])) for s in SPLITS}
    for s in sorted(SPLITS, key=lambda s: (-(raw[s] - counts[s]), SPLITS.index(s)))[: images - sum(counts.values())]:
        counts[s] += 1
    for s in ("train", "testA", "testB", "val"):
        if counts[s] == 0 and r[s] > 0:
            donor = max(SPLITS, key=lambda d: (counts[d], -SPLITS.index(d)))
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[s] += 1
    return counts


def _assign_splits(images: int, seed: int, ratios: Mapping[str, float] | None) -> list[str]:
    counts = split_counts(images, ratios)
    labels = [s for s in SPLITS for _ in range(counts[s])]
    order = np.random.default_rng(np.random.SeedSequence([seed, images, 0x5EED])).permutation(images)
    return [labels[int(k)] for k in order]


def _check_out(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory")
    if not any(out.iterdir()):
        return
    if not is_shapesref_output(out):
        raise ValueError(f"{out} is not empty and is not a ShapesRef output; choose a new or empty directory")
    if not overwrite:
        raise ValueError(f"{out} already holds a ShapesRef dataset; pass overwrite=True to replace it")


def is_shapesref_output(root: Path) -> bool:
    """Whether ``root`` holds a complete ShapesRef output (its manifest is written last)."""
    try:
        manifest = json.loads((Path(root) / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("generator") == GENERATOR_NAME


# --- records ------------------------------------------------------------------------------------------
def _r(v: float, decimals: int = COORD_DECIMALS) -> float:
    return round(float(v), decimals)


def _bbox(bounds: tuple[float, float, float, float]) -> list[float]:
    x0, y0, x1, y1 = bounds
    return [_r(x0), _r(y0), _r(x1 - x0), _r(y1 - y0)]


def image_objects(scene: Scene) -> list[dict]:
    """The per-object ``attributes`` dicts (draw order); what the evaluator reads."""
    out = []
    for obj, vis in zip(scene.objects, scene.visible, strict=True):
        poly = obj.polygon
        cx, cy = obj.center
        out.append({
            "shape": obj.shape, "colour": obj.colour, "size": obj.size, "draw_order": obj.draw_order,
            "centroid": [_r(cx), _r(cy)],
            "position": [_r(cx / scene.size, POSITION_DECIMALS), _r(cy / scene.size, POSITION_DECIMALS)],
            "bbox": _bbox(poly.bounds), "full_area": _r(poly.area),
            "visible_fraction": _r(vis.area / poly.area, POSITION_DECIMALS), "rgb": list(obj.rgb),
        })
    return out


def _png_bytes(rgb: np.ndarray) -> bytes:
    return png_bytes(rgb, compress_level=PNG_COMPRESS_LEVEL, optimize=False)  # the project's one PNG encoder


class _Builder:
    """Accumulates COCO instances and refs for both datasets."""

    def __init__(self) -> None:
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.refs: dict[str, list[dict]] = {d: [] for d in DATASETS}
        self.next_sent_id: dict[str, int] = {d: 1 for d in DATASETS}
        self.grefs: list[dict] = []  # ShapesRef-g; the new refs get their ids in grefs()

    def add_image(self, file_name: str, scene: Scene, split: str, key: dict[str, int],
                  objects: list[dict], planned: list[PlannedRef],
                  generalized: list[PlannedGRef] | None = None) -> None:
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": file_name, "height": scene.size, "width": scene.size,
                            "split": split, "scene_key": key})
        ann_ids = []
        for obj, vis, attrs in zip(scene.objects, scene.visible, objects, strict=True):
            ann_id = len(self.annotations) + 1
            ann_ids.append(ann_id)
            self.annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": SHAPES.index(obj.shape) + 1,
                "segmentation": segmentation(vis), "area": _r(vis.area), "bbox": _bbox(vis.bounds),
                "iscrowd": 0, "attributes": attrs,
            })
        for ref in planned:
            attrs = objects[ref.object_index]
            for dataset in DATASETS:
                if ref.sentences[dataset]:
                    self._add_ref(dataset, ann_ids[ref.object_index], image_id, split,
                                  SHAPES.index(attrs["shape"]) + 1, file_name, ref)
        if generalized is None:
            return
        first = len(self.refs["shapesref"]) - sum(bool(r.sentences["shapesref"]) for r in planned)
        for single in self.refs["shapesref"][first:]:  # ShapesRef's own refs, in the gRefCOCO form
            self.grefs.append({**single, "ann_id": [single["ann_id"]], "category_id": [single["category_id"]],
                               "no_target": False})
        for g in generalized:
            sentences = [{"tokens": list(s.tokens), "raw": s.raw, "sent": " ".join(s.tokens), "sent_id": None,
                          "family": s.family, "logical_form": form_to_dict(s.form)} for s in g.sentences]
            families = [s["family"] for s in sentences]
            self.grefs.append({
                "ref_id": None, "image_id": image_id, "split": split, "file_name": file_name,
                "ann_id": [ann_ids[i] for i in g.object_indices] or [NO_TARGET_ID],
                "category_id": [SHAPES.index(objects[i]["shape"]) + 1 for i in g.object_indices] or [NO_TARGET_ID],
                "no_target": not g.object_indices, "sent_ids": [], "sentences": sentences,
                "family": families[0], "families": sorted(set(families)),
            })

    def _add_ref(self, dataset: str, ann_id: int, image_id: int, split: str, category_id: int,
                 file_name: str, ref: PlannedRef) -> None:
        sentences = []
        for s in ref.sentences[dataset]:
            sentences.append({"tokens": list(s.tokens), "raw": s.raw, "sent": " ".join(s.tokens),
                              "sent_id": self.next_sent_id[dataset], "family": s.family,
                              "logical_form": form_to_dict(s.form)})
            self.next_sent_id[dataset] += 1
        families = [s["family"] for s in sentences]
        self.refs[dataset].append({
            # ref_id = ann_id, so a ref has the same id in shapesref and shapesref+
            "ref_id": ann_id, "ann_id": ann_id, "image_id": image_id, "split": split,
            "category_id": category_id, "file_name": file_name,
            "sent_ids": [s["sent_id"] for s in sentences], "sentences": sentences,
            "family": families[0], "families": sorted(set(families)),
        })

    def final_grefs(self) -> list[dict]:
        """ShapesRef-g refs with ids: ShapesRef's keep theirs (ref_id = ann_id, same sent_ids); the new ones
        follow, ref_id after the last annotation id and sent_id after ShapesRef's last."""
        next_ref, next_sent = len(self.annotations) + 1, self.next_sent_id["shapesref"]
        out = []
        for ref in self.grefs:
            if ref["ref_id"] is None:
                sentences = []
                for sent in ref["sentences"]:
                    sentences.append({**sent, "sent_id": next_sent})
                    next_sent += 1
                ref = {**ref, "ref_id": next_ref, "sentences": sentences, "sent_ids": [x["sent_id"] for x in sentences]}
                next_ref += 1
            out.append(ref)
        return out

    def instances(self, size: int, seed: int) -> dict:
        return {
            "info": {"description": "ShapesRef synthetic referring segmentation", "version": FORMAT_VERSION,
                     "seed": seed, "size": size},
            "images": self.images, "annotations": self.annotations,
            "categories": [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)],
        }


def _dump_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _generate_image(seed: int, index: int, size: int, split: str, occlusion: bool, balancer: FamilyBalancer,
                    counting_ordinals: bool = False) -> tuple[Scene, dict[str, int], list[dict], list[PlannedRef]]:
    for attempt in range(MAX_SCENE_ATTEMPTS):
        scene = make_scene(seed, index, attempt, size, occlusion)
        objects = image_objects(scene)
        planned = plan_refs(objects, split, scene_rng(seed, index, attempt, 1), balancer, counting_ordinals)
        if planned:
            return scene, {"seed": seed, "index": index, "attempt": attempt}, objects, planned
    raise RuntimeError(f"no describable referent in {MAX_SCENE_ATTEMPTS} scenes for image {index}")


def _generalized_refs(key: dict[str, int], objects: list[dict], split: str, planned: list[PlannedRef],
                      balancer: FamilyBalancer, quota: GeneralizedQuota) -> list[PlannedGRef]:
    """The image's no-target and multi-target refs, from its own random stream (stream 2), so the
    ShapesRef / ShapesRef+ files do not change."""
    single = [s for r in planned for s in r.sentences["shapesref"]]
    rng = scene_rng(key["seed"], key["index"], key["attempt"], 2)
    return plan_generalized(objects, split, single, rng, balancer, quota)


def target_count_key(n: int) -> str:
    """The breakdown key of a referent count: "0", "1" or "2+"."""
    return "2+" if n >= 2 else str(n)


def _g_summary(grefs: list[dict]) -> dict[str, Any]:
    def count(ref: dict) -> int:
        return 0 if ref["no_target"] else len(ref["ann_id"])

    out: dict[str, Any] = {
        "refs": {s: sum(r["split"] == s for r in grefs) for s in SPLITS},
        "sentences": {s: sum(len(r["sentences"]) for r in grefs if r["split"] == s) for s in SPLITS},
        "families": {s: dict(sorted(Counter(x["family"] for r in grefs if r["split"] == s
                                            for x in r["sentences"]).items())) for s in SPLITS},
        "target_counts": {s: {k: sum(len(r["sentences"]) for r in grefs if r["split"] == s
                                     and target_count_key(count(r)) == k) for k in ("0", "1", "2+")}
                          for s in SPLITS},
    }
    return out


def _summary(builder: _Builder, splits: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {"images": {s: splits.count(s) for s in SPLITS}}
    for dataset in DATASETS:
        refs = builder.refs[dataset]
        summary[dataset] = {
            "refs": {s: sum(r["split"] == s for r in refs) for s in SPLITS},
            "sentences": {s: sum(len(r["sentences"]) for r in refs if r["split"] == s) for s in SPLITS},
            "families": {s: dict(sorted(Counter(x["family"] for r in refs if r["split"] == s
                                                for x in r["sentences"]).items())) for s in SPLITS},
        }
    return summary


def _write_tree(tmp: Path, builder: _Builder, manifest: dict, size: int, seed: int,
                grefs: list[dict] | None = None) -> None:
    instances = _dump_json(builder.instances(size, seed))
    for dataset in DATASETS:
        (tmp / dataset).mkdir()
        (tmp / dataset / INSTANCES).write_bytes(instances)
        (tmp / dataset / REFS_FILE).write_bytes(pickle.dumps(builder.refs[dataset], protocol=PICKLE_PROTOCOL))
    if grefs is not None:
        (tmp / G_DATASET).mkdir()
        (tmp / G_DATASET / INSTANCES).write_bytes(instances)
        (tmp / G_DATASET / GREFS_FILE).write_bytes(_dump_json(grefs))
    (tmp / MANIFEST).write_bytes(_dump_json(manifest))  # last: marks the tree complete


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished tree to ``out``, replacing an earlier output (or an empty directory)."""
    if not out.exists():
        tmp.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    out.rename(old / "tree")
    try:
        tmp.rename(out)
    except BaseException:
        (old / "tree").rename(out)  # put the earlier output back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def generate_shapesref(out: Path | str, images: int, seed: int, size: int = DEFAULT_SIZE, *,
                       progress: bool = True, occlusion: bool = True, overwrite: bool = False,
                       split_ratios: Mapping[str, float] | None = None, generalized: bool = False,
                       extra_train: int = 0, counting_ordinals: bool = False) -> dict[str, Any]:
    """Generate ShapesRef and ShapesRef+ under ``out`` (REFER layout); returns a summary.

    ``extra_train`` appends that many more scenes, all in the train split, after the ``images``
    scenes: the first ``images`` scenes, their splits, ids and sentences (so val, testA and testB
    and the fixed evaluation subsets) are those of the same call without it, and only train grows.
    With ``generalized=True`` the ShapesRef-g refs keep their content and order, but the new
    (no-target and multi-target) refs are numbered after the last annotation and sentence, so
    their ``ref_id`` and ``sent_ids`` move.

    ``counting_ordinals=True`` changes the train split alone: an ordinal whose head fits more objects
    than its index ("the second of three circles") is tried before one whose index-th object is also
    the last one counted, which is the other extreme ("the second of two circles from the left" is
    the rightmost one). Val and test are those of the same call without it (docs/shapesref.md).

    ``generalized=True`` also writes ShapesRef-g (``shapesref-g/``, gRefCOCO layout): ShapesRef's refs
    plus no-target and multi-target ones (``NO_TARGET_SHARE`` and ``MULTI_TARGET_SHARE`` of the
    sentences); the summary and manifest then hold ``generalized`` and a ``shapesref-g`` entry (refs,
    sentences, families and ``target_counts`` "0" / "1" / "2+" per split).

    The same ``(images, seed, size, occlusion, split_ratios)`` give byte-identical files. The tree
    is built in a temporary sibling directory and renamed into place at the end, so an interrupted
    run leaves no ``out`` that looks complete. A non-empty ``out`` is refused unless it is an earlier
    ShapesRef output and ``overwrite`` is True.

    Summary keys: ``out``, ``images`` (per split), ``shapesref`` / ``shapesref+`` (refs, sentences
    and families per split), ``seconds``, ``images_per_second``, plus the arguments.
    """
    images = _check_int("images", images, 1)
    extra_train = _check_int("extra_train", extra_train, 0)
    seed = _check_int("seed", seed, 0)
    size = _check_int("size", size, MIN_SIZE, MAX_SIZE)
    ratios = _check_ratios(split_ratios)
    for name, flag in (("generalized", generalized), ("counting_ordinals", counting_ordinals)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    out = Path(out)
    _check_out(out, overwrite)
    splits = _assign_splits(images, seed, ratios) + ["train"] * extra_train
    total = images + extra_train
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    tmp.chmod(OUTPUT_DIR_MODE)  # mkdtemp makes it private; the dataset is not
    start = time.perf_counter()
    try:
        (tmp / IMAGE_SUBDIR).mkdir(parents=True)
        builder, balancer = _Builder(), FamilyBalancer()
        g_balancer, quota = FamilyBalancer(), GeneralizedQuota()
        width = max(6, len(str(total)))
        for index in tqdm(range(total), total=total, disable=not progress, desc="shapesref", unit="img"):
            scene, key, objects, planned = _generate_image(seed, index, size, splits[index], occlusion, balancer,
                                                           counting_ordinals)
            file_name = f"shapesref_{index:0{width}d}.png"
            (tmp / IMAGE_SUBDIR / file_name).write_bytes(_png_bytes(render_scene(scene)[0]))
            extra = _generalized_refs(key, objects, splits[index], planned, g_balancer, quota) if generalized else None
            builder.add_image(file_name, scene, splits[index], key, objects, planned, extra)
        params = {"images": images, "seed": seed, "size": size, "occlusion": occlusion, "split_ratios": ratios}
        if extra_train:  # only then: the manifest of a run without it stays byte-identical
            params["extra_train"] = extra_train
        if counting_ordinals:  # likewise
            params["counting_ordinals"] = True
        summary = _summary(builder, splits)
        grefs = builder.final_grefs() if generalized else None
        if generalized:  # only then: the manifest of a plain run stays byte-identical
            params["generalized"] = True
            summary[G_DATASET] = _g_summary(grefs)
        manifest = {"generator": GENERATOR_NAME, "format_version": FORMAT_VERSION, **params, "summary": summary}
        _write_tree(tmp, builder, manifest, size, seed, grefs)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - start
    result = {"out": str(out), **params, "generalized": generalized, **summary, "seconds": round(seconds, 3),
              "images_per_second": round(total / seconds, 2) if seconds > 0 else float("inf")}
    log.info("ShapesRef: %d images (%s) at %d px in %.1f s (%.1f images/s) -> %s", total,
             ", ".join(f"{s} {n}" for s, n in summary["images"].items()), size, seconds,
             result["images_per_second"], out)
    return result
