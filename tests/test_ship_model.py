"""scripts/ship_model.py: what a fine-tuned model's card says it started from."""

import importlib.util
from pathlib import Path

import torch

from step_ris.engine.checkpoint import FORMAT

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("ship_model", ROOT / "scripts" / "ship_model.py")
ship_model = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ship_model)


def test_init_summary_reads_the_init_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": FORMAT, "model": {"w": torch.zeros(1)}, "step": 9600, "train_seconds": 5328.0,
                "config": {"train": {"batch_size": 16}}}, run / "last.pt")
    got = ship_model.init_summary(str(run), "shapes-cpu on ShapesRef")
    assert got == {"model": f"{run} (shapes-cpu on ShapesRef)", "steps": 9600, "expressions_seen": 153600,
                   "training_minutes": 88.8}
    assert ship_model.init_summary(str(run / "last.pt")) == {"model": str(run / "last.pt"), "steps": 9600,
                                                            "expressions_seen": 153600, "training_minutes": 88.8}


def test_init_summary_of_an_init_not_at_hand(tmp_path):
    assert ship_model.init_summary("shapes-cpu") == {"model": "shapes-cpu"}
    assert ship_model.init_summary(str(tmp_path / "gone"), "a note") == {"model": f"{tmp_path / 'gone'} (a note)"}


def test_init_summary_of_a_checkpoint_without_training_counters(tmp_path):
    """A model folder written back as a checkpoint has no step or training time: the card names it only."""
    path = tmp_path / "bundled.pt"
    torch.save({"format": FORMAT, "model": {"w": torch.zeros(1)}, "config": {"model": {}}}, path)
    assert ship_model.init_summary(str(path)) == {"model": str(path)}
