"""Where a model's ShapesRef answers fail: the right object, another object of the expression's
candidate set (the filter was read, the relation or ordinal was not), an object outside that set,
a mask split over several objects, or a partial or empty mask.

    python scripts/error_breakdown.py --model runs/refiner/D1 --root data/shapesref-cpu --limit 600

The candidate set is the ``of`` filter of the expression's logical form (ShapesRef writes one per
sentence, docs/shapesref.md). Each predicted mask is matched to the object it overlaps best (IoU);
docs/recipes.md ("Fourth round", "Thirteenth round") has the measured tables. A second table splits
each family: ordinals that need counting (the head fits more objects than the index) against
those whose index-th object is also the last one counted, the other extreme ("the second of two
circles from the left"); relations by kind (half-plane, cone, distance).
"""

from __future__ import annotations

import argparse
import collections
import random

import numpy as np

FAMILIES = ("ordinal", "relational")
KINDS = ("right object", "another object of the candidate set", "split over 2+ objects",
         "an object outside the candidate set", "partial or empty")


def candidates(logical_form: dict, attributes: dict[int, dict]) -> set[int]:
    """The objects (ann id -> ShapesRef attributes) that the form's ``of`` filter admits."""
    from step_ris.data.shapesref.grouping import filter_members

    of = logical_form.get("of") or {}
    return set(filter_members(of, attributes)) if of.get("op") == "filter" else set()


def subgroup(logical_form: dict, attributes: dict[int, dict]) -> str:
    """The part of its family an expression belongs to (see the module docstring)."""
    if logical_form.get("op") == "ordinal":
        fits = len(candidates(logical_form, attributes))
        return "ordinal, counting" if fits > logical_form["index"] else "ordinal, last counted"
    from step_ris.data.shapesref.logic import CONE_RELATIONS, DISTANCE_RELATIONS, HALF_PLANE_RELATIONS

    relation = logical_form.get("relation")
    for kind, names in (("half-plane", HALF_PLANE_RELATIONS), ("cone", CONE_RELATIONS),
                        ("distance", DISTANCE_RELATIONS)):
        if relation in names:
            return f"relational, {kind}"
    raise ValueError(f"not an ordinal or a ShapesRef relation: {logical_form}")


def classify(pred: np.ndarray, masks: dict[int, np.ndarray], referent: int, cands: set[int]) -> str:
    """One of :data:`KINDS` for a predicted mask against the image's object masks (all bool)."""
    ious = {i: (pred & m).sum() / max((pred | m).sum(), 1) for i, m in masks.items()}
    best = max(ious, key=ious.get)
    if ious[best] < 0.5:
        covered = sum((pred & m).sum() / max(m.sum(), 1) >= 0.3 for m in masks.values())
        return KINDS[2] if covered >= 2 else KINDS[4]
    if best == referent:
        return KINDS[0]
    return KINDS[1] if best in cands else KINDS[3]


def main() -> None:
    from tqdm import tqdm

    from step_ris import Predictor
    from step_ris.data.refer import ReferData

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a run folder, checkpoint or model name")
    p.add_argument("--root", default="data/shapesref-cpu")
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=int, default=600, help="expressions (ordinal and relational together)")
    args = p.parse_args()
    if args.limit < 1:
        p.error(f"--limit {args.limit}: give at least 1 expression")
    data = ReferData(args.root, "shapesref")
    predictor = Predictor.from_pretrained(args.model)
    samples = [s for s in data.samples(args.split) if s.sentence.get("family") in FAMILIES]
    if not samples or any("logical_form" not in s.sentence for s in samples):
        raise SystemExit(f"{args.root}: no {args.split} expressions with a family and logical form; "
                         "this needs ShapesRef data made by `step-ris data shapesref`")
    random.Random(0).shuffle(samples)
    by_image = collections.defaultdict(list)
    for s in samples:
        by_image[s.ref["image_id"]].append(s)
    anns_of = collections.defaultdict(list)
    for a in data.anns.values():
        anns_of[a["image_id"]].append(a)
    counts = {f: collections.Counter() for f in FAMILIES}
    parts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    done = 0
    with tqdm(total=min(args.limit, len(samples)), unit="expr") as bar:
        for image_id, group in by_image.items():
            if done >= args.limit:
                break
            group = group[:args.limit - done]
            anns = anns_of[image_id]
            masks = {a["id"]: data.mask(a) > 0 for a in anns}
            attributes = {a["id"]: a["attributes"] for a in anns}
            for s, out in zip(group, predictor.predict(data.image_path(image_id), [s.sentence["sent"] for s in group]),
                              strict=True):
                form = s.sentence["logical_form"]
                kind = classify(out.mask, masks, s.ref["ann_id"], candidates(form, attributes))
                counts[s.sentence["family"]][kind] += 1
                parts[subgroup(form, attributes)][kind] += 1
            done += len(group)
            bar.update(len(group))
    for title, table in (("family", counts), ("part of the family", dict(sorted(parts.items())))):
        print(f"| {title} | n | " + " | ".join(KINDS) + " |")
        print("|---|---|" + "---|" * len(KINDS))
        for name, c in table.items():
            n = sum(c.values())
            print(f"| {name} | {n} | " + " | ".join(f"{c[k] / max(n, 1):.3f}" for k in KINDS) + " |")
        print()


if __name__ == "__main__":
    main()
