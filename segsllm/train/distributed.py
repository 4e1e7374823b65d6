"""torch.distributed helpers for the training loop: process group, collectives, unwrapping.

Everything degrades to a single process when ``WORLD_SIZE`` is 1 (no process group).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from segsllm.errors import SegsllmError
from segsllm.runtime import dist_info


def maybe_init_distributed() -> tuple[int, int, int]:
    """Initialise torch.distributed from the torchrun environment when WORLD_SIZE > 1.

    NCCL on CUDA (and binds this process to GPU ``LOCAL_RANK``), gloo otherwise. Idempotent;
    returns (rank, local_rank, world_size), (0, 0, 1) for a plain single process.
    """
    _, local_rank, world = dist_info()
    if world > 1 and not (dist.is_available() and dist.is_initialized()):
        if not dist.is_available():
            raise SegsllmError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), local_rank, dist.get_world_size()
    return 0, 0, 1


def all_gather(obj: Any) -> list[Any]:
    """One small picklable object per rank (in memory only; nothing is read from disk)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def resolve_device(device: str | torch.device | None, model: nn.Module, local_rank: int, world: int) -> torch.device:
    """The device this rank trains on: ``device``, else the model's, one GPU per rank under DDP."""
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", local_rank)  # one GPU per rank
    return device


__all__ = ["all_gather", "barrier", "maybe_init_distributed", "resolve_device", "unwrap_model"]
