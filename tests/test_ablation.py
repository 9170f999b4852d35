"""scripts/ablation.py: every row builds, finished runs are skipped, interrupted ones resumed, the report tabulates."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from step_ris.data.shapesref import generate_shapesref
from step_ris.engine.checkpoint import load_checkpoint
from step_ris.model import build_model

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("ablation", ROOT / "scripts" / "ablation.py")
ablation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ablation)


@pytest.mark.parametrize("row", sorted(ablation.ROWS))
def test_every_row_is_a_valid_variant_of_the_base(row):
    cfg = ablation.config_for("shapes-paper", row, seed=1, expressions=160, extra=[])
    assert cfg.train.seed == 1 and cfg.train.iters == 160 // cfg.train.batch_size and cfg.train.eval_seed == 0
    # A --set of the batch size divides the same budget in expressions.
    cfg8 = ablation.config_for("shapes-paper", row, seed=1, expressions=160, extra=["train.batch_size=8"])
    assert cfg8.train.batch_size == 8 and cfg8.train.iters == 20
    tiny = ablation.config_for("tiny", row, seed=0, expressions=8, extra=[])
    build_model(tiny.model, 40)  # builds


def test_sweep_skips_done_resumes_partial_and_reports(tmp_path, monkeypatch):
    data = tmp_path / "sr"
    generate_shapesref(data, images=16, seed=2, size=64, progress=False)
    out = tmp_path / "ab"
    args = ["ablation.py", "--base", "tiny", "--expressions", "8", "--seeds", "0", "1", "--rows", "ours-1fold",
            "no-ltr", "--out", str(out), "--quiet", "--set", f"data.root={data}", "--set", "train.threads=1"]
    monkeypatch.setattr(sys, "argv", args)
    ablation.main()
    for row in ("ours-1fold", "no-ltr"):
        for seed in (0, 1):
            assert load_checkpoint(out / row / f"seed-{seed}" / "last.pt")["step"] == 4
    done = out / "no-ltr" / "seed-1" / "last.pt"
    stamp = done.stat().st_mtime_ns
    calls = []
    real = ablation.train
    monkeypatch.setattr(ablation, "train",
                        lambda cfg, folder, **kw: calls.append((folder, kw)) or real(cfg, folder, **kw))
    ablation.main()
    assert calls == [] and done.stat().st_mtime_ns == stamp  # nothing reran
    (out / "ours-1fold" / "seed-0" / "last.pt").unlink()  # as if that run never saved
    ablation.main()
    assert [c[0].name for c in calls] == ["seed-0"] and calls[0][1]["resume"] is False
    table = ablation.report(out, ["ours-1fold", "no-ltr"], [0, 1])
    assert "| no-ltr | 2 |" in table and "+-" in table
    # Every finished run was scored once more with all of Table 2's Prec@X.
    final = json.loads((out / "no-ltr" / "seed-1" / "final.json").read_text())
    assert set(ablation.PRECS) <= set(final) and final["step"] == 4 and final["n"] > 0
    assert "Table 2" in table and "| ours-1fold | 2 | " in table.split("Table 2")[1]
    assert "66.03 / 55.91 / 44.35 / 27.65 / 7.43 / 56.68" in table  # the paper's Table 2 row beside it


def test_table2_rows_are_the_papers_folds():
    assert [ablation.get_preset("shapes-paper").model.folds] == [1]
    assert {r: dict(o.split("=") for o in ablation.ROWS[r])["model.folds"] for r in ablation.TABLE2[1:]} == \
        {"1-fold-gru": "1", "2-fold-gru": "2", "4-fold-gru": "4"}
    assert ablation.PAPER["4-fold-gru"] == 59.13 and ablation.PAPER["2-fold-gru"] == 57.23
    assert set(ablation.TABLE1 + ablation.TABLE2) == set(ablation.ROWS)


def test_table2_one_fold_row_shares_the_convgru_runs(tmp_path):
    assert ablation.ROWS["1-fold-gru"] != [] and ablation.config_for("shapes-paper", "1-fold-gru", 0, 160, []) \
        == ablation.config_for("shapes-paper", "convgru", 0, 160, [])
    assert ablation.run_folder(tmp_path, "1-fold-gru", 2) == ablation.run_folder(tmp_path, "convgru", 2)


def test_shards_split_the_runs_seed_by_seed(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ablation, "train", lambda cfg, folder, **kw: calls.append((folder.parent.name, cfg.train.seed)))
    monkeypatch.setattr(ablation, "report", lambda *a: "")
    base = ["ablation.py", "--base", "tiny", "--expressions", "8", "--seeds", "0", "1", "--out", str(tmp_path),
            "--rows", "ours-1fold", "convgru", "1-fold-gru", "no-ltr", "--quiet"]
    for shard in ("0/2", "1/2"):
        monkeypatch.setattr(sys, "argv", [*base, "--shard", shard])
        ablation.main()
    assert calls == [("ours-1fold", 0), ("no-ltr", 0), ("convgru", 1),  # shard 0/2
                     ("convgru", 0), ("ours-1fold", 1), ("no-ltr", 1)]  # shard 1/2; 1-fold-gru is convgru
    monkeypatch.setattr(sys, "argv", [*base, "--shard", "2/2"])
    with pytest.raises(SystemExit, match="0 <= I < N"):
        ablation.main()


def test_an_interrupted_run_stops_the_sweep(tmp_path, monkeypatch, capsys):
    # train() saves and returns on Ctrl-C / SIGTERM; the sweep must stop there, not start the next row.
    calls = []
    monkeypatch.setattr(ablation, "train", lambda cfg, folder, **kw: calls.append(folder.parent.name)
                        or {"interrupted": "SIGINT", "step": 2})
    monkeypatch.setattr(sys, "argv", ["ablation.py", "--base", "tiny", "--expressions", "8", "--seeds", "0",
                                      "--out", str(tmp_path), "--rows", "ours-1fold", "no-ltr", "--quiet"])
    with pytest.raises(SystemExit) as stopped:
        ablation.main()
    assert stopped.value.code == 130 and calls == ["ours-1fold"]
    assert "run the same command again" in capsys.readouterr().err
