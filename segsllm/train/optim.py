"""The optimiser every stage trains with: AdamW, weight decay on matrices only."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from segsllm.config.train import TrainConfig
from segsllm.errors import ConfigError


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices; none on biases, norm gains and embeddings.

    Embeddings are found by type (``nn.Embedding``/``nn.EmbeddingBag``), so a tied output
    head (the same Parameter) is not decayed either. Frozen parameters are left out.
    """
    embedding_ids = {
        id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
    }
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # shared parameters are listed once
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or id(p) in embedding_ids else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def configure_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    groups = param_groups(model, cfg.weight_decay)
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    beta1, beta2 = cfg.betas
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(beta1, beta2), fused=device.type == "cuda" or None
    )


__all__ = ["configure_optimizer", "param_groups"]
