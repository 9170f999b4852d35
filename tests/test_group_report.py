"""scripts/group_report.py: how well each step's heatmap marks the expression's group."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from step_ris.data.shapesref import generate_shapesref

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("group_report", ROOT / "scripts" / "group_report.py")
gr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gr)


def test_cell_shares_and_step_scores():
    mask = np.zeros((40, 80), np.uint8)  # letterboxed to 16: 8 x 16 valid, padding below
    mask[0:10, 0:20] = 1  # -> rows 0-1, columns 0-3 of the 16-px map, i.e. cell (0, 0) of a 4 x 4 grid
    shares = gr.cell_shares(mask, 16, 4)
    want = torch.zeros(4, 4)
    want[0, 0] = 0.5  # 2 of its 4 rows
    assert torch.allclose(shares, want)
    valid = torch.zeros(4, 4, dtype=torch.bool)
    valid[:2] = True
    group = torch.zeros(4, 4)
    group[0, :2] = 1.0
    q = torch.zeros(4, 4)
    q[0, 1:3] = 0.9
    q[3, 3] = 1.0  # outside the valid cells: not counted
    iou, broad = gr.step_scores(q, group, valid)
    assert iou == pytest.approx(1 / 3) and broad == pytest.approx(2 / 8)
    assert gr.step_scores(torch.zeros(4, 4), torch.zeros(4, 4), valid) == (0.0, 0.0)


def test_script_prints_every_step_per_family(tmp_path, monkeypatch, capsys):
    data = tmp_path / "shapes"
    generate_shapesref(data, images=16, seed=3, size=64, progress=False)
    monkeypatch.setattr(sys, "argv", ["group_report.py", "--model", "shapes-cpu", "--root", str(data),
                                      "--limit", "9", "--split", "train"])
    gr.main()
    out = capsys.readouterr().out.splitlines()
    tables = [i for i, line in enumerate(out) if line.startswith(("| IoU of", "| share of"))]
    assert len(tables) == 2 and "step 5" in out[tables[0]]
    for start in tables:
        rows = []
        for line in out[start + 2:]:
            if not line.startswith("| "):
                break
            rows.append(line.strip("|").split("|"))
        assert sum(int(r[1]) for r in rows) == 9
        assert all(len(r) == 7 and all(0.0 <= float(v) <= 1.0 for v in r[2:]) for r in rows)
