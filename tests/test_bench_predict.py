"""scripts/bench_predict.py runs and reports what it measured, in the precision asked for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_predict.py"


@pytest.mark.parametrize(("precision", "before"), [("fp32", False), ("bf16", True)])
def test_bench_predict_reports_the_session_measures(precision, before):
    out = subprocess.run([sys.executable, str(SCRIPT), "--preset", "tiny", "--repeat", "1", "--session-only",
                          "--threads", "1", "--precision", precision, *(["--zero-state-tensors"] if before else [])],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result["precision"] == precision
    assert result["first_step"].startswith("zero tensors" if before else "skips")
    for key in ("encode_ms", "full_forward_ms", "new_expression_ms", "model_expression_ms"):
        assert result[key] > 0, key
    assert result["new_vs_full"] == pytest.approx(result["new_expression_ms"] / result["full_forward_ms"], rel=0.05)


def test_bench_predict_channels_last_and_profile():
    out = subprocess.run([sys.executable, str(SCRIPT), "--preset", "tiny", "--repeat", "1", "--session-only",
                          "--threads", "1", "--channels-last", "--profile", "2"],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result["channels_last"] is True and result["new_expression_ms"] > 0
    assert "Self CPU" in out.stderr and "aten::" in out.stderr  # the profiler's operator table


def test_bench_predict_times_a_copy_with_bf16_weights():
    base = [sys.executable, str(SCRIPT), "--preset", "tiny", "--repeat", "1", "--session-only", "--threads", "1"]
    result = json.loads(subprocess.run(base + ["--precision", "bf16", "--bf16-weights"], capture_output=True,
                                       text=True, check=True).stdout)
    for what in ("encode_image", "model_expression"):
        ratio = result[f"{what}_ms"] / result[f"{what}_bf16_weights_ms"]
        assert result[f"bf16_weights_speedup_{what}"] == pytest.approx(ratio, rel=0.05)
    refused = subprocess.run(base + ["--bf16-weights"], capture_output=True, text=True)
    assert refused.returncode == 2 and "--bf16-weights needs --precision bf16" in refused.stderr
