"""How well each step's heatmap Q_t marks the expression's group, per family (ShapesRef).

    python scripts/group_report.py --model runs/s16/LG-group --root data/shapesref-cpu-x --limit 600

The group is what a first grouping step should mark (``data/shapesref/grouping.py``; docs/model.md,
choice 23): a plain filter's referents, a relation's landmark, otherwise the head's candidates.
For each step t it prints, per family, the mean IoU of the cells where Q_t >= 0.5 (Q_t in [0, 1],
before ``q_scale``) with the cells that the group covers at least half, and the share of valid
cells where Q_t >= 0.5 (how broad the heatmap is). A model trained with ``train.group_weight``
should mark the group at step 1; docs/recipes.md (fourteenth round) has the measured tables.
"""

from __future__ import annotations

import argparse
import collections
import random

import numpy as np
import torch
import torch.nn.functional as F


def cell_shares(mask: np.ndarray, size: int, cells: int) -> torch.Tensor:
    """The share of each of ``cells`` x ``cells`` cells that an (H, W) mask covers once letterboxed to S."""
    from step_ris.data.transforms import letterbox_mask

    boxed = letterbox_mask(mask, size)[None, None]  # (1, 1, S, S)
    return F.adaptive_avg_pool2d(boxed, cells)[0, 0]


def step_scores(q: torch.Tensor, group: torch.Tensor, valid: torch.Tensor) -> tuple[float, float]:
    """(IoU of q >= 0.5 with group >= 0.5, share of valid cells with q >= 0.5) over the valid cells."""
    marked, wanted = (q >= 0.5) & valid, (group >= 0.5) & valid
    union = int((marked | wanted).sum())
    return int((marked & wanted).sum()) / max(union, 1), int(marked.sum()) / max(int(valid.sum()), 1)


def main() -> None:
    from tqdm import tqdm

    from step_ris import Predictor
    from step_ris.data.refer import ReferData
    from step_ris.data.shapesref.grouping import group_members
    from step_ris.data.transforms import valid_extent
    from step_ris.model.step import level_masks

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a run folder, checkpoint or model name")
    p.add_argument("--root", default="data/shapesref-cpu")
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=int, default=600, help="expressions")
    args = p.parse_args()
    if args.limit < 1:
        p.error(f"--limit {args.limit}: give at least 1 expression")
    data = ReferData(args.root, "shapesref")
    predictor = Predictor.from_pretrained(args.model)
    model, size = predictor.model, predictor.image_size
    samples = data.samples(args.split)
    if not samples or any("logical_form" not in s.sentence for s in samples):
        raise SystemExit(f"{args.root}: {args.split} has no expressions with a logical form; this needs "
                         "ShapesRef data made by `step-ris data shapesref`")
    random.Random(0).shuffle(samples)
    samples = samples[:args.limit]
    by_image = collections.defaultdict(list)
    for s in samples:
        by_image[s.ref["image_id"]].append(s)
    objects = collections.defaultdict(dict)
    for a in data.anns.values():
        objects[a["image_id"]][a["id"]] = a["attributes"]
    iou = collections.defaultdict(lambda: np.zeros(model.steps))
    broad = collections.defaultdict(lambda: np.zeros(model.steps))
    count = collections.Counter()
    with tqdm(total=len(samples), unit="expr") as bar, torch.inference_mode():
        for image_id, group in by_image.items():
            encoded = predictor.encode(predictor.load(data.image_path(image_id)))
            h, w = valid_extent(encoded.size, size)
            queries = [predictor.prepare(s.sentence["sent"]) for s in group]
            tokens = torch.zeros(len(queries), max(len(q.ids) for q in queries), dtype=torch.int64)
            for row, q in enumerate(queries):
                tokens[row, :len(q.ids)] = torch.tensor(q.ids)
            valid_hw = torch.tensor([[h, w]]).expand(len(queries), 2)
            out = model(None, tokens, valid_hw, features=encoded.encoding, return_intermediates=True)
            heat = out.heatmaps.float() / model.q_scale  # (B, T, g, g)
            cells = heat.shape[-1]
            valid = level_masks(valid_hw[:1], size, [(cells, cells)], 1, "cpu")[0][0]  # (g, g)
            for row, s in enumerate(group):
                members = group_members(s.sentence["logical_form"], objects[image_id])
                union = np.maximum.reduce([data.mask(a) for a in members]) if members else None
                if union is None:
                    continue
                target = cell_shares(union, size, cells)
                family = s.sentence["family"]
                for t in range(model.steps):
                    a, b = step_scores(heat[row, t], target, valid)
                    iou[family][t] += a
                    broad[family][t] += b
                count[family] += 1
            bar.update(len(group))
    steps = " | ".join(f"step {t + 1}" for t in range(model.steps))
    for title, table in (("IoU of Q_t >= 0.5 with the group", iou), ("share of cells with Q_t >= 0.5", broad)):
        print(f"| {title} | n | {steps} |")
        print("|---|---|" + "---|" * model.steps)
        for family in sorted(table):
            values = table[family] / count[family]
            print(f"| {family} | {count[family]} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
        print()


if __name__ == "__main__":
    main()
