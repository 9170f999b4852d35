"""Training speed of a preset under the speed switches, as ratios measured in one run.

    python scripts/bench_train.py --preset shapes-cpu --steps 30 --rounds 2 --threads 2 --variant "fp32=" \\
        --variant "bf16+cl+k4=train.precision=bf16,train.channels_last=true,train.sentences_per_image=4"

Each variant trains ``--steps`` steps from scratch on the preset's data (its feature cache is
reused), in turn (A, B, A, B, ...), so every variant meets the same machine load. The rate is
expressions per second of training time (``train_seconds`` of the checkpoint: evaluation and
start-up excluded). Prints a JSON line per measure and the median rates and ratios to the first.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

from step_ris.config import apply_overrides, get_preset
from step_ris.engine.checkpoint import load_checkpoint
from step_ris.engine.train import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="shapes-cpu")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variant", action="append", required=True, metavar="NAME=KEY=VALUE,...")
    args = ap.parse_args()
    variants = {}
    for v in args.variant:
        name, _, sets = v.partition("=")
        variants[name] = [x for x in sets.split(",") if x]
    rates: dict[str, list[float]] = {k: [] for k in variants}
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        for r in range(args.rounds):
            for name, sets in variants.items():
                cfg = apply_overrides(get_preset(args.preset), [
                    f"train.iters={args.steps}", f"train.threads={args.threads}", "train.eval_every=0",
                    "train.eval_every_minutes=0", "train.eval_samples=16", "data.workers=0", *sets])
                out = work / f"{name}-{r}"
                if "interrupted" in (train(cfg, out, progress=False) or {}):  # Ctrl-C stops the benchmark
                    raise SystemExit(130)
                ckpt = load_checkpoint(out / "last.pt")
                rate = ckpt["step"] * cfg.train.batch_size / ckpt["train_seconds"]
                rates[name].append(rate)
                print(json.dumps({"round": r, "variant": name, "expressions_per_s": round(rate, 2)}), flush=True)
                shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    first = statistics.median(next(iter(rates.values())))
    for name, values in rates.items():
        med = statistics.median(values)
        print(f"{name:24s} {med:7.2f} expressions/s  x{med / first:.2f}")


if __name__ == "__main__":
    main()
