"""The training device and torchrun's process group (DistributedDataParallel on GPUs or CPUs)."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

DIST_TIMEOUT = timedelta(hours=2)  # rank 0 evaluates while the others wait in a collective


def resolve_device(device: str | None) -> torch.device:
    """The training device; under torchrun on GPUs, this process's own GPU (LOCAL_RANK)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return device


def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world) — initialises the process group under torchrun (NCCL on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=DIST_TIMEOUT)
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def any_rank(flag: bool, world: int, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on some rank (so all ranks leave the loop together)."""
    if world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


__all__ = ["DIST_TIMEOUT", "any_rank", "init_distributed", "resolve_device"]
