"""scripts/bench_cache.py times two feature-cache builds and reports their ratio and tap difference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from step_ris.data.shapesref import generate_shapesref

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_cache.py"


def _run(root: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--root", str(root), "--preset", "tiny", "--images", "6",
                           "--rounds", "2", *extra], capture_output=True, text=True)


def test_bench_cache_reports_both_settings(tmp_path):
    root = tmp_path / "sr"
    generate_shapesref(root, images=12, seed=3, size=64, progress=False)
    out = _run(root, "--compare", "4:nchw", "--candidate", "2:nhwc")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["images"] == 6 and result["baseline"] == "4:nchw" and result["candidate"] == "2:nhwc"
    assert result["baseline_img_s"] > 0 and result["candidate_img_s"] > 0 and len(result["round_speedups"]) == 2
    assert result["speedup"] > 0 and result["max_abs_tap_difference"] < 1e-2  # the same taps, float16-rounded

    bad = _run(root, "--candidate", "8:nhcw")
    assert bad.returncode != 0 and "'8:nhcw' is not BATCH:nchw or BATCH:nhwc" in bad.stderr
