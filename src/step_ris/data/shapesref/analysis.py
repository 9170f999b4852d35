"""Reading a generated ShapesRef set back, how biased its referents are, and how many ordinals need counting."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np

from ..refer import load_refs
from .generalized import G_DATASET
from .logic import Filter, evaluate
from .plan import DATASETS, SPLITS
from .writer import GREFS_FILE, INSTANCES, REFS_FILE


def load_shapesref(root: Path | str, dataset: str = "shapesref") -> tuple[dict, list[dict]]:
    """``(instances, refs)`` of a generated dataset (``shapesref``, ``shapesref+`` or ``shapesref-g``).

    ``shapesref-g`` refs are returned as stored (the gRefCOCO form: ``ann_id`` a list, ``no_target``).
    """
    if dataset not in (*DATASETS, G_DATASET):
        raise ValueError(f"dataset must be one of {(*DATASETS, G_DATASET)}, got {dataset!r}")
    base = Path(root) / dataset
    refs_file = GREFS_FILE if dataset == G_DATASET else REFS_FILE
    if not (base / INSTANCES).is_file() or not (base / refs_file).is_file():
        hint = " made with generalized=True (--generalized)" if dataset == G_DATASET else ""
        raise ValueError(f"{base} does not hold {INSTANCES} and {refs_file}; is {root} a ShapesRef output{hint}?")
    instances = json.loads((base / INSTANCES).read_text())
    if dataset == G_DATASET:
        return instances, json.loads((base / refs_file).read_text())
    return instances, load_refs(base / REFS_FILE)  # the restricted unpickler of the REFER reader


def _objects_by_image(instances: dict) -> dict[int, list[dict]]:
    """Annotations per image, in draw order."""
    per: dict[int, list[dict]] = {}
    for ann in instances["annotations"]:
        per.setdefault(ann["image_id"], []).append(ann)
    return {k: sorted(v, key=lambda a: a["attributes"]["draw_order"]) for k, v in per.items()}


def _argbest(values: list[float]) -> int:
    return int(np.argmax(values))


def referent_bias_report(root: Path | str, dataset: str = "shapesref") -> dict[str, float]:
    """How often the referent is the largest (visible area), leftmost, most central, first-drawn or
    last-drawn object of its image, next to ``chance`` = mean over refs of 1 / objects in the image."""
    instances, refs = load_shapesref(root, dataset)
    anns = _objects_by_image(instances)
    hits: Counter = Counter()
    chance = 0.0
    for ref in refs:
        objs = anns[ref["image_id"]]
        k = [a["id"] for a in objs].index(ref["ann_id"])
        pos = [a["attributes"]["position"] for a in objs]
        hits["largest"] += k == _argbest([a["area"] for a in objs])
        hits["leftmost"] += k == _argbest([-p[0] for p in pos])
        hits["most_central"] += k == _argbest([-math.hypot(p[0] - 0.5, p[1] - 0.5) for p in pos])
        hits["first_drawn"] += k == 0
        hits["last_drawn"] += k == len(objs) - 1
        chance += 1 / len(objs)
    n = max(len(refs), 1)
    report: dict[str, float] = {"refs": len(refs), "chance": chance / n}
    report.update({key: hits[key] / n for key in ("largest", "leftmost", "most_central", "first_drawn", "last_drawn")})
    return report


def ordinal_report(root: Path | str, dataset: str = "shapesref") -> dict[str, dict[str, int]]:
    """Per split, ordinal sentences that need counting (their head fits more objects than the index:
    "the second of three circles") and those whose index-th object is also the last one counted
    ("the second of two circles" is the other extreme): ``{split: {"counting": n, "last_counted": n}}``.

    docs/shapesref.md, "Ordinals that need counting"; ``--counting-ordinals`` moves train's mix."""
    instances, refs = load_shapesref(root, dataset)
    objects = {k: [a["attributes"] for a in v] for k, v in _objects_by_image(instances).items()}
    report = {split: {"counting": 0, "last_counted": 0} for split in SPLITS}
    for ref in refs:
        for sentence in ref["sentences"]:
            form = sentence.get("logical_form") or {}
            if form.get("op") != "ordinal":
                continue
            of = form["of"]
            fits = len(evaluate(Filter(of.get("shape"), of.get("colour"), of.get("size")), objects[ref["image_id"]]))
            report[ref["split"]]["counting" if fits > form["index"] else "last_counted"] += 1
    return report
