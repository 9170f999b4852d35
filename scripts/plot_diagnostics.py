"""Plot the Eq. 4 diagnostics (diagnostics.jsonl) of one or more runs side by side.

    python scripts/plot_diagnostics.py --run "literal=runs/diag/D0-literal" --run "lr 1e-3=runs/diag/D1-lr1e-3" \\
        --out docs/diagnosis.png

Rows: share of dead cells (Q_t = 0), mean cosine <phi, psi> with its spread, gradient norms
(W_v, W_s, ConvRNN input, biLSTM) and, when the run logged them, the norms of those weights
(what Adam's coupled weight decay shrinks). One column per run; one line per step t (per level F_t).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, metavar="LABEL=FOLDER")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    runs = []
    for item in args.run:
        label, _, folder = item.partition("=")
        rows = [json.loads(x) for x in (Path(folder) / "diagnostics.jsonl").read_text().splitlines() if x.strip()]
        runs.append((label, rows))
    n_rows = 4 if any("norm_W_v" in rows[0] for _, rows in runs) else 3
    fig, axes = plt.subplots(n_rows, len(runs), figsize=(4.2 * len(runs), 3 * n_rows), squeeze=False, sharex="col")
    for col, (label, rows) in enumerate(runs):
        steps = [r["step"] for r in rows]
        t_max = max(int(k.split("_")[-1]) for k in rows[0] if k.startswith("dead_"))
        for t in range(1, t_max + 1):
            axes[0, col].plot(steps, [r[f"dead_{t}"] for r in rows], label=f"t={t}")
            mean = [r[f"cos_mean_{t}"] for r in rows]
            std = [r[f"cos_std_{t}"] for r in rows]
            axes[1, col].plot(steps, mean, label=f"t={t}")
            axes[1, col].fill_between(steps, [m - s for m, s in zip(mean, std, strict=True)],
                                      [m + s for m, s in zip(mean, std, strict=True)], alpha=0.12)
        for key in ("grad_W_v", "grad_W_s", "grad_rnn_input", "grad_bilstm"):
            if key in rows[0]:
                axes[2, col].semilogy(steps, [max(r[key], 1e-8) for r in rows], label=key[5:])
        if n_rows == 4:
            for key in ("norm_W_v", "norm_W_s", "norm_rnn_input", "norm_bilstm"):
                if key in rows[0]:
                    axes[3, col].plot(steps, [r[key] for r in rows], label=key[5:])
            axes[3, col].set_ylabel("weight norm")
            axes[3, col].legend(fontsize=7)
        axes[0, col].set_title(label)
        axes[0, col].set_ylabel("share of cells with Q_t = 0")
        axes[0, col].set_ylim(-0.02, 1.02)
        axes[1, col].set_ylabel("cosine <phi, psi> (mean +- sd)")
        axes[1, col].set_ylim(-1, 1)
        axes[2, col].set_ylabel("gradient norm")
        axes[n_rows - 1, col].set_xlabel("training step (batch 16)" if col == 0 else "training step")
        for row in range(n_rows):
            axes[row, col].grid(alpha=0.3)
        axes[0, col].legend(fontsize=7)
        axes[2, col].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
