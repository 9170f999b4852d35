"""Feature-cache build speed: the backbone taps of a set's images, two ways, interleaved.

    python scripts/bench_cache.py --root data/shapesref-cpu --images 512 --threads 1
    python scripts/bench_cache.py --root data/shapesref-cpu --compare 32:nchw --candidate 8:nhwc

A frozen backbone's taps are computed once per image (``engine/features.py``) before training;
on 20,400 ShapesRef scenes that step took 17 minutes on one thread (docs/benchmarks.md). This
times ``FeatureCache`` (no file: nothing is written) with a baseline and a candidate setting,
``BATCH:nchw|nhwc`` each (images per backbone call, input memory format). The images of
``--split`` (default train) are dealt into ``--rounds`` rounds and each round runs both settings
in a random order, so both meet the same machine load; reported are the summed seconds, their
ratio, the per-round ratios and the largest difference between the two caches' taps. The
backbone is ``--preset``'s with random weights (the taps' values do not change the time).
Prints one JSON object; the numbers are for this machine as loaded now.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time

import torch

from step_ris.config import apply_overrides, get_preset
from step_ris.data.dataset import ReferDataset, build_vocab
from step_ris.data.errors import DataError
from step_ris.engine.features import FeatureCache
from step_ris.model import build_model


def parse_setting(text: str) -> tuple[int, bool]:
    """``"8:nhwc"`` -> (8, True); a clear error otherwise."""
    batch, _, layout = text.partition(":")
    if not batch.isdigit() or int(batch) < 1 or layout not in ("nchw", "nhwc"):
        raise SystemExit(f"error: setting {text!r} is not BATCH:nchw or BATCH:nhwc (for example 8:nhwc)")
    return int(batch), layout == "nhwc"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/shapesref-cpu", help="a dataset folder (default data/shapesref-cpu)")
    parser.add_argument("--dataset", default="shapesref")
    parser.add_argument("--split", default="train")
    parser.add_argument("--preset", default="shapes-cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--images", type=int, default=512, help="images timed in all (default 512)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--compare", default="32:nchw", help="baseline BATCH:nchw|nhwc (default 32:nchw)")
    parser.add_argument("--candidate", default="8:nhwc", help="candidate BATCH:nchw|nhwc (default 8:nhwc, the default)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings = {"baseline": parse_setting(args.compare), "candidate": parse_setting(args.candidate)}
    torch.set_num_threads(args.threads)
    cfg = apply_overrides(get_preset(args.preset), args.overrides)
    try:
        vocab = build_vocab(args.root, args.dataset)
        data = ReferDataset(args.root, args.dataset, args.split, vocab, cfg.model.image_size)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    model = build_model(cfg.model, len(vocab), load_backbone_weights=False).eval()
    first: dict[int, int] = {}
    for i in range(len(data)):
        first.setdefault(data.meta(i)["image_id"], i)
    samples = list(first.values())[: args.images]
    rounds = [samples[r::args.rounds] for r in range(args.rounds)]
    rng = random.Random(args.seed)

    def build(name: str, indices: list[int]) -> tuple[FeatureCache, float]:
        batch, nhwc = settings[name]
        start = time.perf_counter()
        cache = FeatureCache(model.visual.backbone, data, batch_size=batch, indices=indices, progress=False,
                             channels_last=nhwc)
        return cache, time.perf_counter() - start

    for name in settings:  # warm-up, not timed
        build(name, rounds[0][:2])
    seconds = {"baseline": [], "candidate": []}
    max_diff = 0.0
    for indices in rounds:
        order = ["baseline", "candidate"]
        rng.shuffle(order)
        caches = {}
        for name in order:
            caches[name], s = build(name, indices)
            seconds[name].append(s)
        for a, b in zip(caches["baseline"].levels, caches["candidate"].levels, strict=True):
            max_diff = max(max_diff, (a.float() - b.float()).abs().max().item())
    total = {k: sum(v) for k, v in seconds.items()}
    print(json.dumps({
        "machine": platform.processor() or platform.machine(), "threads": args.threads, "images": len(samples),
        "baseline": args.compare, "candidate": args.candidate,
        "baseline_img_s": round(len(samples) / total["baseline"], 1),
        "candidate_img_s": round(len(samples) / total["candidate"], 1),
        "speedup": round(total["baseline"] / total["candidate"], 2),
        "round_speedups": [round(a / b, 2) for a, b in zip(seconds["baseline"], seconds["candidate"], strict=True)],
        "median_round_speedup": round(statistics.median(
            a / b for a, b in zip(seconds["baseline"], seconds["candidate"], strict=True)), 2),
        "max_abs_tap_difference": max_diff,
    }, indent=2))


if __name__ == "__main__":
    main()
