"""Tables 1 and 2 of the paper on ShapesRef: one resumable command for the whole sweep.

    python scripts/ablation.py --base shapes-paper --expressions 60000 --seeds 0 1 2 --out runs/ablation
    python scripts/ablation.py ... --rows ours-1fold no-ltr      # a subset of rows
    python scripts/ablation.py ... --shard 0/2 & python scripts/ablation.py ... --shard 1/2   # two processes
    python scripts/ablation.py ... --report docs/ablation-table.md   # only tabulate what has finished

Every (row, seed) is one ``step-ris train`` run in ``OUT/ROW/seed-S`` with the same budget in
expressions seen (``train.iters = expressions / batch``); ``train.seed`` changes the
initialisation and the data order, and every run is scored on the same fixed val expressions
(``train.eval_seed``). A finished run (its last.pt at train.iters) is skipped, an interrupted one
resumed, so an interrupted sweep continues where it stopped. The report gives, per row, the mean
and spread (sample standard deviation) over seeds of the final val oIoU, overall and per family.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from step_ris.config import apply_overrides, get_preset
from step_ris.engine.checkpoint import load_checkpoint
from step_ris.engine.train import train

# Table 1 (each a change of "Ours (1-fold)") and Table 2 (K folds, ConvGRU as the paper uses for K > 1).
ROWS: dict[str, list[str]] = {
    "ours-1fold": [],
    "no-glove-bilstm": ["model.word_vectors=learned", "model.text_encoder=lstm"],
    "no-ltr": ["model.use_ltr=false"],
    "convgru": ["model.cell=convgru"],
    "1x1-conv": ["model.cell=conv1x1"],
    "concat-conv": ["model.fusion=concat-conv"],
    "ini-ltr-uniform": ["model.first_step=uniform"],
    "reverse-step": ["model.reverse=true"],
    "1-fold-gru": ["model.cell=convgru", "model.folds=1"],
    "2-fold-gru": ["model.cell=convgru", "model.folds=2"],
    "3-fold-gru": ["model.cell=convgru", "model.folds=3"],
}
# Table 2's 1-fold row is Table 1's ConvGRU row (the paper reports 55.97 for both): one set of runs.
SAME_AS = {"1-fold-gru": "convgru"}
# The paper's UNC val numbers (oIoU), Table 1 and Table 2.
PAPER = {"ours-1fold": 56.68, "no-glove-bilstm": 55.11, "no-ltr": 54.40, "convgru": 55.97, "1x1-conv": 48.71,
         "concat-conv": 48.08, "ini-ltr-uniform": 56.74, "reverse-step": 57.01, "1-fold-gru": 55.97,
         "2-fold-gru": 57.23, "3-fold-gru": None}


def run_folder(out: Path, row: str, seed: int) -> Path:
    return out / SAME_AS.get(row, row) / f"seed-{seed}"


def config_for(base: str, row: str, seed: int, expressions: int, extra: list[str]):
    # The extra overrides first: one of them may change the batch size the budget is divided by.
    cfg = apply_overrides(get_preset(base), [*extra, *ROWS[row], f"train.seed={seed}"])
    iters = max(1, expressions // cfg.train.batch_size)
    return apply_overrides(cfg, [f"train.iters={iters}", f"train.eval_every={max(1, iters // 6)}"])


def state(folder: Path, iters: int) -> str:
    if not (folder / "last.pt").is_file():
        return "new"
    return "done" if load_checkpoint(folder / "last.pt")["step"] >= iters else "partial"


def final_record(folder: Path) -> dict | None:
    lines = (folder / "metrics.jsonl").read_text().splitlines() if (folder / "metrics.jsonl").is_file() else []
    return json.loads(lines[-1]) if lines else None


def report(out: Path, rows: list[str], seeds: list[int]) -> str:
    lines = ["| row | seeds done | val oIoU (mean +- sd) | " + " | ".join(
        ["attribute", "location", "comparative", "ordinal", "relational"]) + " | paper (UNC val) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        recs = [r for s in seeds if (r := final_record(run_folder(out, row, s))) is not None]
        if not recs:
            lines.append(f"| {row} | 0 | | | | | | | {PAPER.get(row) or '-'} |")
            continue

        def cell(values):
            if len(values) == 1:
                return f"{values[0]:.3f}"
            return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"
        fams = ["attribute", "location", "comparative", "ordinal", "relational"]
        fam_cells = [cell([r["by_family"].get(f, 0.0) for r in recs]) for f in fams]
        lines.append(f"| {row} | {len(recs)} | {cell([r['oIoU'] for r in recs])} | " + " | ".join(fam_cells)
                     + f" | {PAPER.get(row) or '-'} |")
    return "\n".join(lines) + "\n"


def parse_shard(text: str) -> tuple[int, int]:
    """"I/N" -> (I, N), with 0 <= I < N."""
    try:
        shard, shards = (int(x) for x in text.split("/"))
    except ValueError:
        shard, shards = -1, 0
    if not 0 <= shard < shards:
        raise SystemExit(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/2 and 1/2 for two processes")
    return shard, shards


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="shapes-paper", help="preset or config file of the base recipe")
    ap.add_argument("--expressions", type=int, default=60_000, help="budget per run, in expressions seen")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--out", default="runs/ablation")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config override for every run (e.g. train.threads=1)")
    ap.add_argument("--shard", default="0/1", metavar="I/N",
                    help="run only every N-th (row, seed), starting at the I-th: two processes with 0/2 and "
                         "1/2 share a 2-core machine (each with train.threads=1)")
    ap.add_argument("--report", help="write the markdown table here (and print it); runs nothing")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    shard, shards = parse_shard(args.shard)
    if args.report is None:
        # Seed by seed, so a sweep cut short has whole tables for its first seeds; each config once.
        runs = [(row, seed) for seed in args.seeds for row in dict.fromkeys(SAME_AS.get(r, r) for r in args.rows)]
        for row, seed in runs[shard::shards]:
            cfg = config_for(args.base, row, seed, args.expressions, args.overrides)
            folder = run_folder(out, row, seed)
            now = state(folder, cfg.train.iters)
            print(f"{row} seed {seed}: {now}", flush=True)
            if now == "done":
                continue
            train(cfg, folder, resume=now == "partial", progress=not args.quiet)
    table = report(out, args.rows, args.seeds)
    if args.report:
        Path(args.report).write_text(table)
    print(table)


if __name__ == "__main__":
    main()
