"""Device choice, seeding and mixed precision shared by every stage."""

from __future__ import annotations

import contextlib
import os
import random
from typing import Any

from segsllm.errors import SegsllmError


class DeviceError(SegsllmError, ValueError):
    """The requested device does not exist on this machine."""


def pick_device(name: str = "auto") -> Any:
    """``auto`` picks cuda > mps > cpu; anything else must be available or it is an error."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} requested but CUDA is not available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) exist")
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise DeviceError("device 'mps' requested but Apple MPS is not available here")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import numpy as np
    import torch

    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(device: Any, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (when supported); a no-op elsewhere."""
    import torch

    if enabled and getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def dist_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the torchrun environment; (0, 0, 1) otherwise."""
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return rank, local_rank, world


def is_rank_zero() -> bool:
    """True in a single process and on rank 0 of a torchrun job."""
    return dist_info()[0] == 0
