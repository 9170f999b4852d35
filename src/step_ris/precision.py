"""Numeric precision of inference (and training): fp32, or bf16 autocast where the hardware has it.

    dtype = resolve_precision("auto", "cuda")   # torch.bfloat16 on an Ampere-or-newer GPU, else None
    with autocast("cuda", dtype):               # also takes the name: autocast("cpu", "bf16")
        out = model(images, tokens, valid_hw)
    probs = torch.sigmoid(out.logits.float())   # outputs are always read in float32

``None`` means float32 (no autocast). "auto" picks bf16 only where it is supported *and* fast:
a CUDA GPU with native bf16 (``torch.cuda.is_bf16_supported(including_emulation=False)``), or a
CPU with AMX-bf16 or AVX512-bf16 instructions. Elsewhere bf16 runs in emulation, usually slower
than fp32, so "auto" stays on fp32 and logs one line saying why. An explicit "bf16" is honoured
on any CPU (with a warning when it will be slow) and refused on a GPU without bf16.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "auto")
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # x86 instructions that make bf16 matmuls / convolutions fast
CPUINFO = Path("/proc/cpuinfo")
_told: set[str] = set()  # notices already logged (one line per process, not one per call)


def _notice(level: int, message: str, *args) -> None:
    text = message % args
    if text not in _told:
        _told.add(text)
        log.log(level, text)


def _cpuinfo_flags(path: Path | None = None) -> set[str]:
    """The ``flags`` of the first processor in ``path`` (/proc/cpuinfo; empty where there is no such file)."""
    try:
        text = (path or CPUINFO).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


@functools.lru_cache(maxsize=1)
def cpu_bf16_fast() -> bool:
    """True when this CPU has AMX-bf16 or AVX512-bf16 and PyTorch's oneDNN can use them."""
    if not torch.backends.mkldnn.is_available():
        return False
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)  # PyTorch >= 2.6
    if get_capabilities is not None:
        try:
            caps = get_capabilities()
            return any(bool(caps.get(flag)) for flag in CPU_BF16_FLAGS)
        except Exception as e:  # noqa: BLE001 - fall back to the kernel's view of the CPU
            log.debug("torch.cpu.get_capabilities() failed (%s); reading %s", e, CPUINFO)
    return any(flag in _cpuinfo_flags() for flag in CPU_BF16_FLAGS)


def resolve_precision(name: str | torch.dtype | None, device: str | torch.device = "cpu") -> torch.dtype | None:
    """The autocast dtype for ``name`` ("fp32" | "bf16" | "auto") on ``device``; None = float32.

    A ``torch.dtype`` (bfloat16 or float32) or None passes through, so callers may resolve once
    and hand the result on. Raises ``ValueError`` for an unknown name, or "bf16" on a CUDA device
    without bf16.
    """
    if name is None or name == torch.float32:
        return None
    if name == torch.bfloat16:
        name = "bf16"
    if isinstance(name, torch.dtype) or name not in PRECISIONS:
        raise ValueError(f"precision={name!r}; choose one of: {', '.join(PRECISIONS)}")
    dev = torch.device(device)
    if name == "fp32":
        return None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"precision={name!r} on {dev}: CUDA is not available; use --device cpu")
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        with torch.cuda.device(index):
            try:
                native = torch.cuda.is_bf16_supported(including_emulation=False)
            except TypeError:  # PyTorch < 2.3 has no emulation switch (and counts only native bf16)
                native = torch.cuda.is_bf16_supported()
        if native:
            return torch.bfloat16
        gpu = torch.cuda.get_device_name(index)
        if name == "auto":
            _notice(logging.INFO, "precision auto: %s has no native bf16; running in fp32", gpu)
            return None
        raise ValueError(f"precision='bf16': {gpu} ({dev}) has no native bf16 support; use --precision fp32 "
                         "(or auto)")
    if dev.type == "cpu":
        if cpu_bf16_fast():
            return torch.bfloat16
        if name == "auto":
            _notice(logging.INFO, "precision auto: this CPU has no AMX-bf16 / AVX512-bf16; running in fp32")
            return None
        _notice(logging.WARNING, "precision bf16: this CPU has no AMX-bf16 / AVX512-bf16, so bf16 is emulated "
                "and likely slower than fp32")
        return torch.bfloat16
    if name == "auto":
        _notice(logging.INFO, "precision auto: bf16 is only chosen on CUDA and on CPUs with AMX / AVX512-bf16; "
                "%s runs in fp32", dev)
        return None
    return torch.bfloat16


def model_precision(name: str | torch.dtype | None, device: str | torch.device = "cpu", *,
                    match_head: bool = False) -> torch.dtype | None:
    """``resolve_precision`` for one model: "auto" keeps a model with a no-target decision
    (``model.match_head``) on fp32, with a one-line notice. Its masks are at parity under bf16,
    its decision is not (the bundled model's val N-acc 0.647 in fp32, 0.507 in bf16;
    docs/benchmarks.md). An explicit "bf16" is honoured."""
    dtype = resolve_precision(name, device)
    if name == "auto" and match_head and dtype is not None:
        _notice(logging.INFO, "precision auto: this model has a no-target decision, which bf16 moves "
                "(docs/benchmarks.md); running in fp32")
        return None
    return dtype


def precision_name(dtype: torch.dtype | None) -> str:
    """The name of what ``resolve_precision`` returned: "bf16" or "fp32" (for logs and results)."""
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def autocast(device: str | torch.device, precision: str | torch.dtype | None):
    """A context manager running the enclosed code in ``precision`` on ``device``.

    ``precision`` is a name ("fp32" | "bf16" | "auto", resolved with ``resolve_precision``), a
    dtype from it, or None (float32: a no-op context).
    """
    dtype = resolve_precision(precision, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


__all__ = ["PRECISIONS", "autocast", "cpu_bf16_fast", "precision_name", "resolve_precision"]
