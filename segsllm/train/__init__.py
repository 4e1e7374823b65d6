"""The generic training loop (:mod:`.loop`), its checkpoints (:mod:`.checkpoint`) and schedule.

Names are imported lazily so that ``import segsllm.train`` does not import torch. The
``train`` settings themselves are :class:`segsllm.config.train.TrainConfig`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "lr_at": "schedule",
    "lr_multiplier": "schedule",
    "BatchSource": "loop",
    "Callback": "loop",
    "SequentialBatches": "segsllm.data.batches",
    "ShuffledBatches": "segsllm.data.batches",
    "TrainResult": "loop",
    "TrainState": "loop",
    "TrainingDivergedError": "loop",
    "evaluate": "loop",
    "maybe_init_distributed": "distributed",
    "move_to": "loop",
    "train": "loop",
    "unwrap_model": "distributed",
    "latest_checkpoint": "checkpoint",
    "list_checkpoints": "checkpoint",
    "load_model_weights": "checkpoint",
    "read_trainer_state": "checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = _EXPORTS[name]
        return getattr(importlib.import_module(module if "." in module else f"{__name__}.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
