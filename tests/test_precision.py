"""The precision switch: fp32 | bf16 | auto, resolved per device, and what the predictor and CLI do with it."""

from __future__ import annotations

import contextlib
import json
import logging

import numpy as np
import pytest
import torch

from step_ris import precision as P
from step_ris.cli import main
from step_ris.precision import autocast, cpu_bf16_fast, precision_name, resolve_precision
from step_ris.predictor import Predictor
from tiny_model import shared_tiny


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """Each test sees the CPU detection uncached and every notice not yet logged."""
    cpu_bf16_fast.cache_clear()
    monkeypatch.setattr(P, "_told", set())
    yield
    cpu_bf16_fast.cache_clear()


@pytest.fixture
def cpu(monkeypatch):
    """Pretend the CPU does (True) or does not (False) have fast bf16."""
    def set_fast(fast: bool):
        monkeypatch.setattr(P, "cpu_bf16_fast", lambda: fast)
    return set_fast


def test_fp32_and_dtypes_pass_through():
    assert resolve_precision("fp32", "cpu") is None
    assert resolve_precision("fp32", "cuda:3") is None  # no GPU needed to stay in fp32
    assert resolve_precision(None, "cpu") is None
    assert resolve_precision(torch.float32, "cpu") is None
    assert precision_name(None) == "fp32" and precision_name(torch.bfloat16) == "bf16"


@pytest.mark.parametrize("bad", ["fp16", "BF16", "", torch.float16])
def test_unknown_precisions_are_refused(bad):
    with pytest.raises(ValueError, match="choose one of: fp32, bf16, auto"):
        resolve_precision(bad, "cpu")


def test_cpu_with_fast_bf16(cpu, caplog):
    cpu(True)
    with caplog.at_level(logging.INFO, logger="step_ris.precision"):
        assert resolve_precision("auto", "cpu") is torch.bfloat16
        assert resolve_precision("bf16", "cpu") is torch.bfloat16
        assert resolve_precision(torch.bfloat16, "cpu") is torch.bfloat16
    assert not caplog.records


def test_cpu_without_fast_bf16_stays_fp32_with_one_notice(cpu, caplog):
    cpu(False)
    with caplog.at_level(logging.INFO, logger="step_ris.precision"):
        assert resolve_precision("auto", "cpu") is None
        assert resolve_precision("auto", "cpu") is None
    (record,) = caplog.records  # one line, not one per call
    assert record.levelno == logging.INFO and "AMX-bf16 / AVX512-bf16; running in fp32" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="step_ris.precision"):
        assert resolve_precision("bf16", "cpu") is torch.bfloat16  # asked for: honoured, with a warning
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and "emulated" in record.getMessage()


def test_cpu_detection_reads_torch_then_proc_cpuinfo(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": False, "avx512_bf16": True},
                        raising=False)
    assert cpu_bf16_fast()
    cpu_bf16_fast.cache_clear()
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True}, raising=False)
    assert not cpu_bf16_fast()
    # older PyTorch (no get_capabilities): the kernel's flags
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu sse avx2 amx_tile amx_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    monkeypatch.setattr(P, "CPUINFO", info)
    cpu_bf16_fast.cache_clear()
    assert P._cpuinfo_flags(info) >= {"avx2", "amx_bf16"}
    assert cpu_bf16_fast()
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    cpu_bf16_fast.cache_clear()
    assert not cpu_bf16_fast()
    monkeypatch.setattr(P, "CPUINFO", tmp_path / "absent")  # not Linux: no flags, no bf16
    cpu_bf16_fast.cache_clear()
    assert not cpu_bf16_fast()
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)  # no oneDNN: never fast
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True}, raising=False)
    cpu_bf16_fast.cache_clear()
    assert not cpu_bf16_fast()


def _fake_gpu(monkeypatch, *, native: bool, available: bool = True):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Old GPU")


def test_cuda(monkeypatch, caplog):
    _fake_gpu(monkeypatch, native=True)
    assert resolve_precision("auto", "cuda") is torch.bfloat16
    assert resolve_precision("bf16", "cuda:0") is torch.bfloat16
    _fake_gpu(monkeypatch, native=False)
    with caplog.at_level(logging.INFO, logger="step_ris.precision"):
        assert resolve_precision("auto", "cuda") is None
    assert "Old GPU has no native bf16; running in fp32" in caplog.text
    with pytest.raises(ValueError, match="Old GPU .* has no native bf16 support; use --precision fp32"):
        resolve_precision("bf16", "cuda")
    _fake_gpu(monkeypatch, native=True, available=False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_precision("auto", "cuda")


def test_other_devices():
    assert resolve_precision("auto", "meta") is None  # bf16 is chosen automatically only on CUDA and fast CPUs
    assert resolve_precision("bf16", "meta") is torch.bfloat16


def test_autocast_helper(cpu):
    cpu(True)
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with autocast("cpu", "bf16"):
        assert layer(x).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert layer(x).dtype == torch.float32
    assert isinstance(autocast("cpu", None), contextlib.nullcontext)
    with pytest.raises(ValueError, match="precision='half'"):
        autocast("cpu", "half")


# ---- the predictor and the predict command --------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return shared_tiny(tmp_path_factory)


def test_predictor_in_bf16_returns_float32_close_to_fp32(tiny, cpu):
    cpu(True)
    fp32 = Predictor.from_pretrained(tiny["model"])
    bf16 = Predictor.from_pretrained(tiny["model"], precision="bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16") and bf16.dtype is torch.bfloat16
    a = fp32.predict(tiny["image"], "the big pink hexagon")
    b = bf16.predict(tiny["image"], "the big pink hexagon")
    for field in ("probability", "steps", "attention", "similarity"):
        assert getattr(b, field).dtype == np.float32, field
    assert np.abs(a.probability - b.probability).max() < 0.02
    encoded = bf16.encode(tiny["image"])
    assert encoded.encoding.maps[0].dtype == torch.bfloat16  # the image side ran in bf16 too
    np.testing.assert_array_equal(bf16.predict(encoded, "the big pink hexagon").probability, b.probability)
    with pytest.raises(ValueError, match="choose one of: fp32, bf16, auto"):
        Predictor.from_pretrained(tiny["model"], precision="fp16")


def test_predict_command_takes_precision(tiny, tmp_path, capsys, cpu):
    cpu(True)
    assert main(["predict", str(tiny["image"]), "the big pink hexagon", "--model", str(tiny["model"]),
                 "--precision", "bf16", "--out", str(tmp_path / "m.png")]) == 0
    assert json.loads(capsys.readouterr().out)["files"]["out"] == str(tmp_path / "m.png")
    with pytest.raises(SystemExit):
        main(["predict", str(tiny["image"]), "x", "--precision", "fp16"])


def test_auto_keeps_a_model_with_a_no_target_decision_on_fp32(cpu, caplog):
    """bf16 moves the match head's decision (docs/benchmarks.md), so "auto" stays on fp32 for it."""
    from step_ris.precision import model_precision

    cpu(True)
    with caplog.at_level(logging.INFO, logger="step_ris.precision"):
        assert model_precision("auto", "cpu", match_head=True) is None
        assert model_precision("auto", "cpu", match_head=False) is torch.bfloat16
        assert model_precision("bf16", "cpu", match_head=True) is torch.bfloat16  # asked for: honoured
    assert [r.getMessage() for r in caplog.records] == [
        "precision auto: this model has a no-target decision, which bf16 moves (docs/benchmarks.md); running in fp32"]
    bundled = Predictor.from_pretrained(precision="auto")  # the bundled model has a match head
    assert bundled.config.model.match_head and bundled.dtype is None and bundled.precision == "fp32"


def test_eval_command_auto_keeps_the_bundled_model_on_fp32(tmp_path, cpu):
    from step_ris.data.shapesref import generate_shapesref

    cpu(True)
    root = tmp_path / "sr"
    generate_shapesref(root, images=8, seed=4, size=128, progress=False)
    out = tmp_path / "r.json"
    assert main(["eval", "--checkpoint", "shapes-cpu", "--dataset", "shapesref", "--root", str(root),
                 "--split", "train", "--limit", "4", "--precision", "auto", "--quiet", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["precision"] == "fp32"
