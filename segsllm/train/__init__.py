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
    "SequentialBatches": "loop",
    "ShuffledBatches": "loop",
    "TrainResult": "loop",
    "TrainState": "loop",
    "TrainingDivergedError": "loop",
    "evaluate": "loop",
    "maybe_init_distributed": "loop",
    "move_to": "loop",
    "train": "loop",
    "unwrap_model": "loop",
    "latest_checkpoint": "checkpoint",
    "list_checkpoints": "checkpoint",
    "load_model_weights": "checkpoint",
    "read_trainer_state": "checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
