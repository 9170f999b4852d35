"""Give a trained STEP model the no-target decision, fitted after the fact (engine/match_fit.py).

    python scripts/fit_match_head.py --checkpoint runs/shapes-cpu/last.pt \
        --root data/shapesref-g-cpu --out runs/shapes-cpu-match

The segmentation weights stay as they are; only the match head (model/match_head.py) is fitted,
as a class-balanced logistic regression on the pooled statistics z of --per-class no-target and
--per-class target expressions of the generalized set's --split (--target-acc 0.95 moves the
threshold so that 95 % of the fit set's target expressions are kept). Fit on expressions the model
was not trained on (e.g. `step-ris data shapesref --generalized` with another --seed): on its own
training scenes the model is surer of itself, and the threshold keeps fewer of val's targets than
it promises (docs/benchmarks.md, "The bundled model, session 14"). OUT becomes a run folder
(last.pt, config.json, vocab.json, match_fit.json) to evaluate, predict with, or ship:

    step-ris eval --checkpoint runs/shapes-cpu-match --dataset shapesref-g --root data/shapesref-g-cpu
    python scripts/ship_model.py --run runs/shapes-cpu-match --root data/shapesref-g-cpu \
        --also shapesref=data/shapesref-cpu --out src/step_ris/assets/shapes-cpu
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from step_ris.data.dataset import ReferDataset
from step_ris.engine.checkpoint import atomic_save, atomic_write_text, load_checkpoint
from step_ris.engine.match_fit import fit_match_head
from step_ris.pretrained import model_from_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a training checkpoint (last.pt) or its run folder")
    p.add_argument("--root", required=True, help="root of a generalized set (step-ris data shapesref --generalized)")
    p.add_argument("--dataset", default="shapesref-g")
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True, help="run folder to write (its last.pt must not exist yet)")
    p.add_argument("--per-class", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-acc", type=float, default=None, metavar="SHARE",
                   help="operating point: keep this share of the fit set's target expressions (e.g. 0.95; "
                        "default: the balanced fit's own threshold)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    source = Path(args.checkpoint)
    source = source / "last.pt" if source.is_dir() else source
    out = Path(args.out)
    if (out / "last.pt").exists():
        p.error(f"--out {out}: already holds a last.pt; pick a new folder (nothing was changed)")
    if args.target_acc is not None and not 0 < args.target_acc < 1:
        p.error(f"--target-acc {args.target_acc}: must be a share between 0 and 1, e.g. 0.95")
    if args.per_class <= 0:
        p.error(f"--per-class {args.per_class}: must be a positive number of expressions")
    try:
        ckpt = load_checkpoint(source)
        _model, cfg, vocab = model_from_checkpoint(ckpt, str(source))
        dataset = ReferDataset(args.root, args.dataset, args.split, vocab, cfg.model.image_size,
                               max_words=cfg.model.max_words)
        fitted, report = fit_match_head(ckpt, dataset, per_class=args.per_class, seed=args.seed,
                                        target_acc=args.target_acc, source=str(source), progress=not args.quiet)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    report["checkpoint"] = str(source)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", json.dumps(fitted["config"], indent=2) + "\n")
    atomic_write_text(out / "vocab.json", json.dumps(fitted["vocab"]) + "\n")
    atomic_write_text(out / "match_fit.json", json.dumps(report, indent=2) + "\n")
    atomic_save(fitted, out / "last.pt")  # last: its presence marks a finished folder
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
