"""Bundled example scenes: fresh ShapesRef images (a seed no training set uses) + expressions.

    python scripts/make_examples.py --out src/step_ris/assets/examples --images 4 --seed 2026
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from step_ris.data.refer import ReferData
from step_ris.data.shapesref import generate_shapesref


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--size", type=int, default=128)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "sr"
        generate_shapesref(root, images=max(args.images, 8), seed=args.seed, size=args.size, progress=False)
        data = ReferData(root, "shapesref")
        suggestions: dict[str, list[str]] = {}
        for image_id in sorted(data.images)[: args.images]:
            name = f"scene_{len(suggestions)}.png"
            shutil.copyfile(data.image_path(image_id), out / name)
            sentences = [s["raw"] for r in data.refs if r["image_id"] == image_id for s in r["sentences"]]
            suggestions[name] = sentences
    (out / "examples.json").write_text(json.dumps(suggestions, indent=2) + "\n")
    print(json.dumps(suggestions, indent=2))


if __name__ == "__main__":
    main()
