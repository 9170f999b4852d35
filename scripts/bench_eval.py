"""Evaluation speed: grouped by image (one encoding per image) against one image pass per sample.

    python scripts/bench_eval.py --preset paper-1fold --images 20 --size 320 --threads 2
    python scripts/bench_eval.py --preset shapes-cpu --images 40 --size 128 --rounds 4

End to end: generates a ShapesRef set in the REFER layout (``--images`` scenes of ``--size``
pixels, ~5-6 expressions each; or reuses ``--data``), builds ``--preset`` with random weights
(backbone weights none: timing does not depend on them), saves it as a training checkpoint,
loads it back as ``step-ris eval`` does, and scores ``--split`` (default: every split, so
every generated image) both ways with ``engine.evaluate.evaluate(group_by_image=True | False)``.

The two paths run interleaved: the images are dealt into rounds (default: about ``--batch-size``
images each, and at least 2 rounds, so each path batches as it does on a whole split: the
grouped path encodes up to ``--batch-size`` images per call, the per-sample path fills its
batches; ``--rounds`` to choose), and each round's samples are scored with both paths in a
random order, so both meet the same machine load. Smaller rounds cap the grouped path's image
batch and so understate its gain (``--rounds 7`` on 20 images: 3.4x where 2 rounds give 4.2x).
Reported: the summed wall and process-CPU seconds of each path, their ratios, the median
and range of the per-round ratios, and whether both paths gave the same metrics on every round.
One warm-up of each path on the first image is not timed. Prints one JSON object; the numbers
are for this machine as loaded now.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from step_ris.config import apply_overrides, get_preset
from step_ris.data.dataset import ReferDataset, build_vocab
from step_ris.data.errors import DataError
from step_ris.data.registry import parse_dataset_name
from step_ris.data.shapesref import generate_shapesref
from step_ris.engine.checkpoint import FORMAT, atomic_save
from step_ris.engine.evaluate import evaluate, image_groups
from step_ris.model import build_model
from step_ris.pretrained import load_pretrained

METRICS = ("oIoU", "mIoU", "prec@0.5", "prec@0.7", "prec@0.9", "n")


def timed(fn) -> tuple[dict, float, float]:
    """(result, wall seconds, process CPU seconds of all threads) of ``fn()``."""
    start, start_cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - start, time.process_time() - start_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper-1fold", help="config preset, random weights (default paper-1fold)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="preset override, e.g. --set model.image_size=256 (repeatable)")
    parser.add_argument("--images", type=int, default=20, help="ShapesRef scenes to generate (default 20)")
    parser.add_argument("--size", type=int, default=320, help="ShapesRef image side in pixels (default 320)")
    parser.add_argument("--seed", type=int, default=0, help="ShapesRef seed (default 0)")
    parser.add_argument("--data", help="an existing ShapesRef folder to use instead of generating one")
    parser.add_argument("--split", default="all", help="split to score, or all (default: every split)")
    parser.add_argument("--rounds", type=int, default=0,
                        help="interleaved rounds (default 0: rounds of about --batch-size images, at least 2)")
    parser.add_argument("--batch-size", type=int, default=16, help="evaluator batch size (default 16, as eval)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"))
    parser.add_argument("--work", help="folder for the generated data and checkpoint (default: a temporary one)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rounds < 0 or args.images < 1:
        parser.error("--rounds must be >= 0 and --images >= 1")

    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.data:
            root = Path(args.data)
        else:
            root = work / "shapesref"
            generate_shapesref(root, images=args.images, seed=args.seed, size=args.size, progress=False,
                               overwrite=True)
        overrides = dict(o.split("=", 1) for o in args.overrides)
        cfg = apply_overrides(get_preset(args.preset), {"model.backbone_weights": None, **overrides})
        vocab = build_vocab(root, "shapesref", "train")
        torch.manual_seed(0)
        model = build_model(cfg.model, len(vocab), load_backbone_weights=False)
        checkpoint = work / "random.pt"
        atomic_save({"format": FORMAT, "config": cfg.to_dict(), "vocab": vocab.to_list(),
                     "model": model.state_dict(), "step": 0}, checkpoint)
        del model
        loaded = load_pretrained(checkpoint, device=args.device)  # as step-ris eval loads it
        splits = parse_dataset_name("shapesref")[0].all_splits if args.split == "all" else [args.split]
        sets, groups = [], []  # groups: (dataset, its sample indices of one image)
        for split in splits:
            try:
                data = ReferDataset(root, "shapesref", split, loaded.vocab, cfg.model.image_size,
                                    max_words=cfg.model.max_words)
            except DataError:  # a split without sentences in a small set
                continue
            sets.append(data)
            groups += [(data, g) for g in image_groups(data, list(range(len(data))))]
        common = dict(batch_size=args.batch_size, device=args.device, precision=args.precision, progress=False)

        def run(grouped: bool, data: ReferDataset, indices: list[int]) -> dict:
            return evaluate(loaded.model, data, group_by_image=grouped, indices=indices, **common)

        for grouped in (True, False):  # warm-up (not timed): first calls allocate and pick kernels
            run(grouped, *groups[0])
        n_rounds = min(len(groups), args.rounds or max(2, round(len(groups) / args.batch_size)))
        rounds = []  # per round: (dataset, indices) pieces, one per dataset
        for r in range(n_rounds):
            pieces: dict[int, tuple[ReferDataset, list[int]]] = {}
            for data, g in groups[r::n_rounds]:
                pieces.setdefault(id(data), (data, []))[1].extend(g)
            if pieces:
                rounds.append([(d, sorted(ix)) for d, ix in pieces.values()])
        order = random.Random(0)
        totals = {"grouped": [0.0, 0.0], "per_sample": [0.0, 0.0]}
        per_round: list[float] = []
        results: dict[tuple, dict[str, dict]] = {}
        for pieces in rounds:
            paths = ["grouped", "per_sample"]
            order.shuffle(paths)
            seconds = {}
            for name in paths:
                seconds[name] = 0.0
                for data, indices in pieces:
                    result, wall, cpu = timed(lambda n=name, d=data, ix=indices: run(n == "grouped", d, ix))
                    totals[name][0] += wall
                    totals[name][1] += cpu
                    seconds[name] += wall
                    results.setdefault((id(data), tuple(indices)), {})[name] = {k: result[k] for k in METRICS}
            per_round.append(seconds["per_sample"] / seconds["grouped"])
        same = all(r["grouped"] == r["per_sample"] for r in results.values())
        g_wall, g_cpu = totals["grouped"]
        s_wall, s_cpu = totals["per_sample"]
        print(json.dumps({
            "model": f"{args.preset} (random weights, backbone_weights=None)", "image_size": cfg.model.image_size,
            "data": str(root), "splits": [d.split for d in sets], "images": len(groups),
            "expressions": sum(len(d) for d in sets),
            "expressions_per_image": round(sum(len(d) for d in sets) / len(groups), 2), "batch_size": args.batch_size,
            "device": args.device, "precision": args.precision, "threads": torch.get_num_threads(),
            "grouped_s": round(g_wall, 2), "per_sample_s": round(s_wall, 2), "ratio": round(s_wall / g_wall, 2),
            "grouped_cpu_s": round(g_cpu, 2), "per_sample_cpu_s": round(s_cpu, 2),
            "cpu_ratio": round(s_cpu / g_cpu, 2), "same_metrics": same, "rounds": len(per_round),
            "round_ratio_median": round(statistics.median(per_round), 2),
            "round_ratio_range": [round(min(per_round), 2), round(max(per_round), 2)],
            "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        }, indent=2))


if __name__ == "__main__":
    main()
