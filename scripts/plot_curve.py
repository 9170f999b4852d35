"""Learning curve: val oIoU against training minutes, from runs' metrics.jsonl files.

    python scripts/plot_curve.py --run real=runs/shapes-cpu --run blind=runs/shapes-cpu-blind \
        --out docs/learning_curve.png

The non-learned references (all objects, largest object, random object) of the first run are
drawn as horizontal lines.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True, metavar="LABEL=DIR")
    p.add_argument("--out", required=True)
    p.add_argument("--metric", default="oIoU")
    args = p.parse_args()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120, sharey=True)
    refs = None
    for item in args.run:
        label, folder = item.split("=", 1)
        rows = read(Path(folder))
        ys = [r[args.metric] for r in rows]
        axes[0].plot([r["train_minutes"] for r in rows], ys, marker="o", ms=3, label=label)
        axes[1].plot([r["samples"] / 1000 for r in rows], ys, marker="o", ms=3, label=label)
        refs = refs or next((r["references"] for r in rows if "references" in r), None)
    for ax, xlabel in zip(axes, ("training minutes (2-core CPU)", "training expressions seen (thousands)"),
                          strict=True):
        for (name, value), style in zip((refs or {}).items(), ("--", ":", "-."), strict=False):
            ax.axhline(value, color="grey", linestyle=style, linewidth=1, label=f"{name} ({value:.2f})")
        ax.set_xlabel(xlabel)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"ShapesRef val {args.metric}")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
