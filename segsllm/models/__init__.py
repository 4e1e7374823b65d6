"""Models: the SentenceVAE (segment encoder/decoder), the SLLM, backbones, the boundary predictor.

Names are imported lazily so ``import segsllm.models`` does not pull in torch. Their
configs live in :mod:`segsllm.config` (``config.vae``, ``config.sllm``, ``config.backbone``,
``config.splitter``).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "SentenceVAE": "segsllm.models.vae",
    "reconstruction_loss": "segsllm.models.vae",
    "Backbone": "segsllm.models.backbone",
    "load_backbone": "segsllm.models.backbone",
    "body_forward": "segsllm.models.backbone",
    "kv_cache_bytes": "segsllm.models.backbone",
    "freeze_layers": "segsllm.models.backbone",
    "count_parameters": "segsllm.models.backbone",
    "SLLM": "segsllm.models.sllm",
    "save_artifact": "segsllm.models.artifact",
    "read_artifact": "segsllm.models.artifact",
    "load_artifact": "segsllm.models.loading",
    "read_manifest": "segsllm.models.artifact",
    "check_state_dict": "segsllm.models.artifact",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'segsllm.models' has no attribute {name!r}")
