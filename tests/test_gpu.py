"""CUDA paths (skipped cleanly without a GPU): parity with the CPU, bf16 autocast, channels_last, training."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from step_ris.config import get_preset
from step_ris.model import build_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
ROOT = Path(__file__).resolve().parents[1]


def test_cuda_matches_cpu_and_bf16_is_close():
    torch.manual_seed(0)
    cfg = get_preset("tiny").model
    cpu = build_model(cfg, 30).eval()
    gpu = build_model(cfg, 30).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda().to(memory_format=torch.channels_last)
    images, tokens = torch.randn(2, 3, 64, 64), torch.tensor([[5, 6, 7], [8, 9, 0]])
    with torch.no_grad():
        ref = cpu(images, tokens).logits.sigmoid()
        out = gpu(images.cuda().contiguous(memory_format=torch.channels_last), tokens.cuda()).logits.sigmoid().cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = gpu(images.cuda(), tokens.cuda()).logits.float().sigmoid().cpu()
    assert (out - ref).abs().max() < 1e-4
    assert (half - ref).abs().max() < 5e-2


def test_device_check_script_runs():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "device_check.py"), "--quick", "--repeat", "2"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "max_abs_diff_vs_cpu_fp32" in out.stdout
