"""The learning-rate schedule: warm-up then cosine, a pure function of the step (and, under a
token budget, of the tokens seen) — torch-free."""

from __future__ import annotations

import math

from segsllm.config.train import TrainConfig


def lr_multiplier(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float,
                  progress: float | None = None) -> float:
    """Multiplier of the peak lr for the update with 0-based index ``step``.

    Linear warm-up over ``warmup_steps`` updates (the first update already uses
    ``1/warmup_steps``, never 0), then a half cosine that reaches ``min_lr_ratio`` exactly at
    the last update (``total_steps - 1``). A pure function of the step, so resuming needs no
    scheduler state beyond the step counter. ``progress`` (in [0, 1]), when given, replaces the
    step-based position in the cosine (a token budget's fraction seen, :func:`lr_at`).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if progress is None:
        decay_steps = total_steps - 1 - warmup_steps
        if decay_steps <= 0:
            return 1.0
        progress = (step - warmup_steps) / decay_steps
    progress = min(1.0, max(0.0, progress))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
    return min_lr_ratio + (1.0 - min_lr_ratio) * cosine


def lr_at(step: int, cfg: TrainConfig, tokens_seen: int = 0) -> float:
    """The learning rate of the update with 0-based index ``step`` under ``cfg``; with a token
    budget (``cfg.tokens``) the cosine's position is the fraction of it seen before the update."""
    progress = None if cfg.tokens is None else tokens_seen / cfg.tokens
    return cfg.lr * lr_multiplier(
        step, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps, min_lr_ratio=cfg.min_lr_ratio, progress=progress
    )


def budget_reached(cfg: TrainConfig, step: int, tokens_seen: int) -> bool:
    """Whether training is over: ``cfg.steps`` done, or a token budget's tokens seen."""
    return step >= cfg.steps or (cfg.tokens is not None and tokens_seen >= cfg.tokens)
