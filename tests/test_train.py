"""The training engine and the train/eval commands, end to end on a tiny generated ShapesRef."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from step_ris.cli import main
from step_ris.config import apply_overrides, get_preset
from step_ris.data.shapesref import generate_shapesref
from step_ris.engine import train as train_module
from step_ris.engine.checkpoint import load_checkpoint
from step_ris.engine.schedule import poly_lr
from step_ris.engine.train import ImageGroupedBatchSampler, StepBatchSampler, TrainingError, train

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="session")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "sr"
    generate_shapesref(root, images=24, seed=5, size=64, progress=False)
    return root


def tiny(root, *overrides):
    return apply_overrides(get_preset("tiny"), [f"data.root={root}", "train.threads=1", *overrides])


def test_poly_schedule_is_pure():
    assert poly_lr(0, base_lr=1.0, max_steps=10) == 1.0
    assert poly_lr(5, base_lr=1.0, max_steps=10) == pytest.approx(0.5 ** 0.9)
    assert poly_lr(10, base_lr=1.0, max_steps=10) == 0.0
    assert poly_lr(0, base_lr=1.0, max_steps=10, warmup=4) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        poly_lr(-1, base_lr=1.0, max_steps=10)


def test_batch_sampler_is_a_function_of_the_step():
    full = list(StepBatchSampler(10, 4, 0, 6, seed=1))
    resumed = list(StepBatchSampler(10, 4, 3, 6, seed=1))
    assert full[3:] == resumed
    epoch0 = [i for b in full[:5] for i in b][:10]
    assert sorted(epoch0) == list(range(10))  # each epoch is a permutation
    ranks = [list(StepBatchSampler(10, 2, 0, 3, seed=1, world=2, rank=r)) for r in range(2)]
    single = list(StepBatchSampler(10, 4, 0, 3, seed=1))
    assert [a + b for a, b in zip(*ranks, strict=True)] == single  # ranks split the global batch


@pytest.mark.parametrize("frozen", [False, True])
def test_resumed_run_ends_where_an_uninterrupted_one_would(shapes, tmp_path, frozen):
    extra = ["model.freeze_backbone=true"] if frozen else []
    cfg = tiny(shapes, "train.iters=6", "train.checkpoint_every=100", "train.eval_every=2", *extra)
    train(cfg, tmp_path / "straight", progress=False)
    first = train(cfg, tmp_path / "split", progress=False, stop_after=3)
    assert first == {"interrupted": "stop_after", "step": 3}
    assert load_checkpoint(tmp_path / "split" / "last.pt")["step"] == 3
    train(cfg, tmp_path / "split", progress=False, resume=True)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-6), k
    assert a["history"][-1]["oIoU"] == pytest.approx(b["history"][-1]["oIoU"], abs=1e-6)
    assert len(a["history"]) == len(b["history"])  # the resumed run keeps the earlier evaluations


def test_run_folder_contents_and_eval_json(shapes, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--root", str(shapes), "--out", str(out), "--iters", "4",
                 "--set", "train.eval_every=2", "--set", "train.threads=1", "--quiet"]) == 0
    assert {"config.json", "vocab.json", "last.pt", "metrics.jsonl", "tb"} <= {p.name for p in out.iterdir()}
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 4]
    assert set(lines[0]["references"]) == {"all objects", "largest object", "random object"}
    assert not list(out.glob(".*.tmp"))  # no temporary files left
    result = tmp_path / "r.json"
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--dataset", "shapesref", "--root", str(shapes),
                 "--split", "testB", "--json", str(result), "--quiet"]) == 0
    r = json.loads(result.read_text())
    for key in ("oIoU", "mIoU", "prec@0.5", "prec@0.6", "prec@0.7", "prec@0.8", "prec@0.9", "n", "by_family",
                "references", "config", "checkpoint"):
        assert key in r, key
    assert set(r["by_family"]) <= {"relational", "ordinal", "comparative"}  # testB's families
    assert r["checkpoint"]["step"] == 4 and len(r["checkpoint"]["sha256"]) == 64


def _poison_losses(monkeypatch, bad_calls):
    """Make the reported loss of the given segmentation_loss calls (1-based) NaN."""
    real = train_module.segmentation_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        calls["n"] += 1
        if bad_calls(calls["n"]):
            parts["loss"] = float("nan")
        return loss, parts

    monkeypatch.setattr(train_module, "segmentation_loss", poisoned)


def test_a_non_finite_step_is_skipped_and_training_goes_on(shapes, tmp_path, monkeypatch, caplog):
    _poison_losses(monkeypatch, lambda n: n == 3)
    before = {}

    real_step = train_module.train_step

    def watched(run, batch):
        if run.step == 2:
            before.update({k: v.clone() for k, v in run.model.state_dict().items()})
        parts, result = real_step(run, batch)
        if run.step == 3:  # the skipped step left every weight as it was
            assert all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())
        return parts, result

    monkeypatch.setattr(train_module, "train_step", watched)
    with caplog.at_level("WARNING", logger="step_ris.engine.train"):
        result = train(tiny(shapes, "train.iters=6", "train.checkpoint_every=100"), tmp_path / "run", progress=False)
    assert "the loss became nan at step 2; skipped this update (1 in a row" in caplog.text
    assert before, "step 2 was never reached"
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["step"] == 6 and ckpt["history"][-1]["skipped_updates"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert result["n"] > 0


def test_non_finite_steps_in_a_row_stop_with_a_message(shapes, tmp_path, monkeypatch):
    _poison_losses(monkeypatch, lambda n: n >= 3)
    cfg = tiny(shapes, "train.iters=10", "train.checkpoint_every=1", "train.nonfinite_skips=2")
    with pytest.raises(TrainingError, match=r"the loss became nan at step 4 \(3 steps in a row\); the last good"):
        train(cfg, tmp_path / "run", progress=False)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["step"] == 4  # after two skipped updates: still the weights of step 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_a_non_finite_gradient_is_named_as_such(shapes, tmp_path, monkeypatch):
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: real(*a, **k) * float("inf"))
    with pytest.raises(TrainingError, match=r"the gradient norm became inf \(loss \d+\.\d+\) at step 0; "):
        train(tiny(shapes, "train.iters=4", "train.nonfinite_skips=0"), tmp_path / "run", progress=False)


def test_sigterm_saves_and_exits_cleanly(shapes, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "step_ris.cli", "train", "--preset", "tiny", "--root", str(shapes),
                             "--out", str(out), "--iters", "100000", "--set", "train.threads=1",
                             "--set", "train.checkpoint_every=100000", "--quiet"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while not (out / "tb").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, output  # 128 + SIGTERM, as the shell reports a killed process
    assert "SIGTERM: saved" in output
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["step"] > 0
    assert main(["train", "--out", str(out), "--resume", "--iters", str(ckpt["step"] + 2), "--quiet"]) == 0
    assert load_checkpoint(out / "last.pt")["step"] == ckpt["step"] + 2


def test_image_grouped_batches_are_a_function_of_the_step():
    image_of = [0, 0, 0, 1, 1, 2, 3, 3, 3, 3]
    a = ImageGroupedBatchSampler(image_of, 4, 2, 0, 5, seed=1)
    b = ImageGroupedBatchSampler(image_of, 4, 2, 3, 5, seed=1)
    assert [a.indices(s) for s in (3, 4)] == list(b)
    for s in range(5):
        batch = a.indices(s)
        assert len(batch) == 4
        pairs = [batch[:2], batch[2:]]
        for pair in pairs:
            assert len({image_of[i] for i in pair}) == 1  # two sentences of one image
            if image_of.count(image_of[pair[0]]) >= 2:
                assert pair[0] != pair[1]  # drawn without replacement when the image has enough
        assert image_of[pairs[0][0]] != image_of[pairs[1][0]]
    with pytest.raises(ValueError, match="sentences_per_image=3 must be >= 1 and divide"):
        apply_overrides(get_preset("tiny"), ["train.sentences_per_image=3"])


def test_fast_switches_train_and_resume_like_a_straight_run(shapes, tmp_path):
    cfg = tiny(shapes, "model.freeze_backbone=true", "train.batch_size=4", "train.sentences_per_image=2",
               "train.channels_last=true", "train.precision=bf16", "train.iters=4", "train.checkpoint_every=100")
    train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "split", progress=False, stop_after=2)
    train(cfg, tmp_path / "split", progress=False, resume=True)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    assert a["step"] == b["step"] == 4
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-5), k
    assert all(torch.isfinite(v).all() for v in a["model"].values() if v.is_floating_point())


def test_resume_on_a_finished_run_appends_nothing(shapes, tmp_path):
    cfg = tiny(shapes, "train.iters=2", "train.eval_every=0")
    out = tmp_path / "done"
    train(cfg, out, progress=False)
    before = (out / "metrics.jsonl").read_text()
    result = train(cfg, out, progress=False, resume=True)
    assert (out / "metrics.jsonl").read_text() == before  # no second final line
    assert result["step"] == 2 and len(load_checkpoint(out / "last.pt")["history"]) == 1
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0


def test_run_folder_files_are_readable_by_others(shapes, tmp_path):
    out = tmp_path / "modes"
    train(tiny(shapes, "train.iters=1"), out, progress=False)
    for name in ("config.json", "vocab.json", "last.pt", "metrics.jsonl"):
        assert (out / name).stat().st_mode & 0o044 == 0o044, name  # not 0600


def test_bad_input_is_refused_clearly(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", "--preset", "tiny", "--root", str(shapes), "--out", str(out), "--iters", "1", "--quiet"])
    # an existing run is not overwritten
    assert main(["train", "--preset", "tiny", "--root", str(shapes), "--out", str(out), "--iters", "1"]) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    # a missing dataset folder names the expected file
    assert main(["train", "--preset", "tiny", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "r2")]) == 2
    assert "data root not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["train", "--preset", "tiny", "--root", str(tmp_path / "empty"), "--out", str(tmp_path / "r3")]) == 2
    assert "shapesref/refs(unc).p" in capsys.readouterr().err
    assert not (tmp_path / "r3" / "config.json").exists()
    # unknown dataset / split
    assert main(["eval", "--checkpoint", str(out), "--dataset", "imagenet", "--root", str(shapes),
                 "--split", "val"]) == 2
    assert "imagenet" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(out), "--dataset", "shapesref", "--root", str(shapes),
                 "--split", "test"]) == 2
    assert "testA" in capsys.readouterr().err
    # a resume with another model config
    assert main(["train", "--preset", "tiny", "--root", str(shapes), "--out", str(out), "--resume",
                 "--set", "model.folds=2"]) == 2
    assert "another model/data config" in capsys.readouterr().err
    # a corrupt checkpoint
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["eval", "--checkpoint", str(bad), "--dataset", "shapesref", "--root", str(shapes),
                 "--split", "val"]) == 2
    assert "not a readable step-ris checkpoint" in capsys.readouterr().err
    # an unwritable output folder
    if os.geteuid() != 0:  # root can write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        assert main(["train", "--preset", "tiny", "--root", str(shapes), "--out", str(ro / "x")]) == 2
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", "--preset", "tiny", "--root", str(shapes), "--out", str(blocker / "run")]) == 2
    assert "cannot write to the output folder" in capsys.readouterr().err


def test_torchrun_two_cpu_processes(shapes, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not installed")
    out = tmp_path / "ddp"
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "step_ris.cli", "train",
                           "--preset", "tiny", "--root", str(shapes), "--out", str(out), "--iters", "3",
                           "--set", "train.threads=1", "--quiet"],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["step"] == 3
    assert ckpt["history"][-1]["samples"] == 3 * 2 * 2  # 3 steps x batch 2 x 2 processes


def test_compile_with_bf16_on_the_cpu_is_refused_before_anything_is_written(shapes, tmp_path):
    cfg = tiny(shapes, "train.compile=true", "train.precision=bf16", "train.iters=2")
    with pytest.raises(TrainingError, match="train.compile=true with train.precision=bf16 gives NaN gradients"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_no_target_mask_loss_off_without_a_match_head_is_refused(shapes, tmp_path):
    cfg = tiny(shapes, "train.no_target_mask_loss=false", "train.iters=2")
    with pytest.raises(TrainingError, match=r"no_target_mask_loss=false .* add --set model.match_head=true"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
