"""Make the bundled model folder from a training run: snapshot, evaluate, export.

    python scripts/ship_model.py --run runs/shapes-cpu --root data/shapesref-cpu \
        --out src/step_ris/assets/shapes-cpu --limit 1000
    python scripts/ship_model.py --run runs/ship/G2-match --root data/shapesref-g-cpu \
        --also shapesref=data/shapesref-cpu --out src/step_ris/assets/shapes-cpu --limit 1000

Evaluates the run's last.pt on val, testA and testB of ShapesRef (a seeded subset of --limit
expressions each; 0 = all), then writes model.safetensors, config.json, vocab.json and
scores.json (the measured metrics, the training step and minutes) with `export_pretrained`.
``--also DATASET=ROOT`` scores the same splits of another set too (under ``scores["also"]``), e.g.
the single-target ShapesRef for a model trained on ShapesRef-g. A fine-tuned run's card names what
it started from: ``train.init_from`` with its steps, expressions and training minutes (read from that
checkpoint when it is at hand) and ``--init-note``, a few words on what that model was.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from step_ris.data.dataset import ReferDataset
from step_ris.engine.checkpoint import load_checkpoint
from step_ris.engine.evaluate import evaluate, format_results
from step_ris.pretrained import export_pretrained, file_sha256, load_pretrained


def init_summary(init_from: str, note: str = "") -> dict:
    """What a fine-tuned model started from, for its card: the init's name (with ``note``) and, when
    the init is a run folder or checkpoint at hand, its steps, expressions seen and training minutes."""
    out: dict = {"model": f"{init_from} ({note})" if note else init_from}
    path = Path(init_from)
    path = path / "last.pt" if path.is_dir() else path
    if path.is_file():
        ckpt = load_checkpoint(path)
        step, batch = ckpt.get("step"), ckpt["config"].get("train", {}).get("batch_size")
        if isinstance(step, int):  # a checkpoint written back from a model folder may carry neither
            out["steps"] = step
            if isinstance(batch, int):
                out["expressions_seen"] = step * batch
        if isinstance(ckpt.get("train_seconds"), (int, float)):
            out["training_minutes"] = round(ckpt["train_seconds"] / 60, 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--also", action="append", default=[], metavar="DATASET=ROOT",
                   help="score val/testA/testB of this set too (repeatable)")
    p.add_argument("--init-note", default="",
                   help="for a fine-tuned run: a few words on the model it started from, shown on the card")
    args = p.parse_args()
    also = []
    for item in args.also:
        dataset, sep, root = item.partition("=")
        if not sep or not dataset or not root:
            p.error(f"--also {item!r}: expected DATASET=ROOT, e.g. shapesref=data/shapesref-cpu")
        also.append((dataset, root))
    if args.threads:
        torch.set_num_threads(args.threads)
    snapshot = Path(args.run) / "shipped.pt"
    shutil.copyfile(Path(args.run) / "last.pt", snapshot)  # last.pt keeps moving while the run trains
    ckpt = load_checkpoint(snapshot)
    loaded = load_pretrained(snapshot)
    model, cfg, vocab = loaded.model, loaded.config, loaded.vocab
    scores = {"dataset": cfg.data.dataset, "step": ckpt["step"],
              "train_minutes": round(ckpt["train_seconds"] / 60, 1),
              "samples_seen": ckpt["step"] * cfg.train.batch_size, "checkpoint_sha256": file_sha256(snapshot),
              "limit": args.limit, "root": args.root, "splits": {}}
    if cfg.train.init_from:  # fine-tuned: the card names what it started from
        scores["init"] = init_summary(cfg.train.init_from, args.init_note)
    if "match_fit" in ckpt:  # a no-target decision fitted after training (scripts/fit_match_head.py)
        scores["match_fit"] = ckpt["match_fit"]

    def score(dataset: str, root: str) -> dict:
        results = {}
        for split in ("val", "testA", "testB"):
            ds = ReferDataset(root, dataset, split, vocab, cfg.model.image_size, max_words=cfg.model.max_words)
            results[split] = evaluate(model, ds, limit=args.limit, progress=False)
            print(f"{dataset} {split}: {format_results(results[split])}")
        return results

    scores["splits"] = score(cfg.data.dataset, args.root)
    if also:
        scores["also"] = {dataset: score(dataset, root) for dataset, root in also}
    export_pretrained(snapshot, args.out, scores, overwrite=True)
    print(json.dumps({k: v for k, v in scores.items() if k != "splits"}, indent=2))


if __name__ == "__main__":
    main()
