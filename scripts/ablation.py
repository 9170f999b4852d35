"""Tables 1 and 2 of the paper on ShapesRef: one resumable command for the whole sweep.

    python scripts/ablation.py --base shapes-paper --expressions 60000 --seeds 0 1 2 --out runs/ablation
    python scripts/ablation.py ... --rows ours-1fold no-ltr      # a subset of rows
    python scripts/ablation.py ... --shard 0/2 & python scripts/ablation.py ... --shard 1/2   # two processes
    python scripts/ablation.py ... --report docs/ablation-table.md   # only tabulate what has finished

Every (row, seed) is one ``step-ris train`` run in ``OUT/ROW/seed-S`` with the same budget in
expressions seen (``train.iters = expressions / batch``); ``train.seed`` changes the
initialisation and the data order, and every run is scored on the same fixed val expressions
(``train.eval_seed``). A finished run (its last.pt at train.iters) is skipped, an interrupted one
resumed, so an interrupted sweep continues where it stopped. A finished run is scored once more
on the same val subset with every Prec@X (its final.json). The report gives Table 1 (per row,
the mean and spread, sample standard deviation, over seeds of the final val oIoU, overall and per
family) and Table 2 (Prec@0.5..0.9 and oIoU of 1, 2 and 4 folds), each beside the paper's UNC val.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
from pathlib import Path

from step_ris.config import apply_overrides, get_preset
from step_ris.data.dataset import ReferDataset
from step_ris.engine.checkpoint import atomic_write_text, load_checkpoint
from step_ris.engine.evaluate import evaluate
from step_ris.engine.train import train
from step_ris.pretrained import load_pretrained

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
    "4-fold-gru": ["model.cell=convgru", "model.folds=4"],
}
# The 1-fold ConvGRU of Table 2's fold comparison is Table 1's ConvGRU row: one set of runs.
SAME_AS = {"1-fold-gru": "convgru"}
TABLE1 = ["ours-1fold", "no-glove-bilstm", "no-ltr", "convgru", "1x1-conv", "concat-conv", "ini-ltr-uniform",
          "reverse-step"]
TABLE2 = ["ours-1fold", "1-fold-gru", "2-fold-gru", "4-fold-gru"]
# The paper's UNC val numbers: Table 1 (oIoU, the paper's "mIoU") and Table 2 (Prec@0.5..0.9, oIoU).
# Table 2's "Ours (1-fold)" is Table 1's "Ours" (ConvLSTM, 56.68); it reports no 1-fold ConvGRU.
PAPER = {"ours-1fold": 56.68, "no-glove-bilstm": 55.11, "no-ltr": 54.40, "convgru": 55.97, "1x1-conv": 48.71,
         "concat-conv": 48.08, "ini-ltr-uniform": 56.74, "reverse-step": 57.01, "1-fold-gru": 55.97,
         "2-fold-gru": 57.23, "4-fold-gru": 59.13}
PAPER_PREC = {"ours-1fold": (66.03, 55.91, 44.35, 27.65, 7.43), "2-fold-gru": (67.72, 58.70, 47.03, 30.86, 8.13),
              "4-fold-gru": (70.15, 63.37, 53.15, 36.53, 10.45)}
PRECS = ["prec@0.5", "prec@0.6", "prec@0.7", "prec@0.8", "prec@0.9"]


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
    """The run's final scores: final.json (written by ``score_final``) or the last line of metrics.jsonl."""
    if (folder / "final.json").is_file():
        return json.loads((folder / "final.json").read_text())
    lines = (folder / "metrics.jsonl").read_text().splitlines() if (folder / "metrics.jsonl").is_file() else []
    return json.loads(lines[-1]) if lines else None


def score_final(folder: Path, progress: bool = False) -> dict:
    """Score a finished run once on its fixed val subset with every Prec@X (Table 2): final.json."""
    if (folder / "final.json").is_file():
        return json.loads((folder / "final.json").read_text())
    loaded = load_pretrained(folder)
    cfg = loaded.config
    val = ReferDataset(cfg.data.root, cfg.data.dataset, cfg.data.val_split, loaded.vocab, cfg.model.image_size,
                       max_words=cfg.model.max_words)
    result = evaluate(loaded.model, val, seed=cfg.train.eval_seed, limit=cfg.train.eval_samples, progress=progress)
    record = {"step": loaded.step, **{k: result[k] for k in ("oIoU", "mIoU", *PRECS, "n")},
              "by_family": {f: r["oIoU"] for f, r in result.get("by_family", {}).items()}}
    atomic_write_text(folder / "final.json", json.dumps(record, indent=2) + "\n")
    return record


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def report(out: Path, rows: list[str], seeds: list[int]) -> str:
    """Table 1 (oIoU and per family) and Table 2 (Prec@X and oIoU) of the rows asked for."""
    fams = ["attribute", "location", "comparative", "ordinal", "relational"]
    lines = ["Table 1: val oIoU (mean +- sd over seeds)", "",
             "| row | seeds done | val oIoU | " + " | ".join(fams) + " | paper (UNC val) |",
             "|---|---|---|---|---|---|---|---|---|"]
    recs_of = {row: [r for s in seeds if (r := final_record(run_folder(out, row, s))) is not None] for row in rows}
    for row in [r for r in TABLE1 if r in rows] + [r for r in rows if r not in TABLE1 + TABLE2]:
        recs = recs_of[row]
        if not recs:
            lines.append(f"| {row} | 0 | | | | | | | {PAPER.get(row) or '-'} |")
            continue
        fam_cells = [_cell([r["by_family"].get(f, 0.0) for r in recs]) for f in fams]
        lines.append(f"| {row} | {len(recs)} | {_cell([r['oIoU'] for r in recs])} | " + " | ".join(fam_cells)
                     + f" | {PAPER.get(row) or '-'} |")
    table2 = [r for r in TABLE2 if r in rows]
    if table2:
        lines += ["", "Table 2: Prec@X and oIoU on val (mean over seeds; paper: UNC val, Prec@0.5..0.9 / oIoU)", "",
                  "| row | seeds done | " + " | ".join(PRECS) + " | oIoU | paper |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in table2:
            recs = [r for r in recs_of[row] if all(k in r for k in PRECS)]
            paper = PAPER_PREC.get(row)
            paper_cell = " / ".join(f"{v:.2f}" for v in paper) + f" / {PAPER[row]:.2f}" if paper else "-"
            if not recs:
                lines.append(f"| {row} | 0 | | | | | | | {paper_cell} |")
                continue
            cells = [f"{statistics.mean(r[k] for r in recs):.3f}" for k in (*PRECS, "oIoU")]
            lines.append(f"| {row} | {len(recs)} | " + " | ".join(cells) + f" | {paper_cell} |")
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
    ap.add_argument("--report", help="write the markdown tables here (and print them); trains nothing (finished "
                    "runs are scored once, into their final.json)")
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
            result = train(cfg, folder, resume=now == "partial", progress=not args.quiet) or {}
            if result.get("interrupted"):  # Ctrl-C / SIGTERM stops the sweep, not just this run
                name = result["interrupted"]
                print(f"{row} seed {seed}: stopped by {name}, saved at step {result.get('step')}; run the same "
                      "command again to continue the sweep", file=sys.stderr, flush=True)
                raise SystemExit(128 + int(getattr(signal.Signals, name, signal.SIGTERM)))
    for row in dict.fromkeys(SAME_AS.get(r, r) for r in args.rows):  # finished runs lacking final.json
        for seed in args.seeds:
            folder = run_folder(out, row, seed)
            if state(folder, config_for(args.base, row, seed, args.expressions, args.overrides).train.iters) == "done":
                score_final(folder, progress=not args.quiet)
    table = report(out, args.rows, args.seeds)
    if args.report:
        atomic_write_text(args.report, table)
    print(table)


if __name__ == "__main__":
    main()
