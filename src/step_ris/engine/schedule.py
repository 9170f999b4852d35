"""Learning-rate schedule (Sec. 3.6): polynomial decay, with an optional linear warm-up."""

from __future__ import annotations


def poly_lr(step: int, *, base_lr: float, max_steps: int, power: float = 0.9, warmup: int = 0) -> float:
    """``lr * (1 - step / max_steps) ** power``, ramped linearly over the first ``warmup`` steps."""
    if step < 0 or max_steps <= 0:
        raise ValueError(f"step={step}, max_steps={max_steps}: need step >= 0 and max_steps > 0")
    decay = max(0.0, 1 - min(step, max_steps) / max_steps) ** power
    ramp = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    return base_lr * decay * ramp
