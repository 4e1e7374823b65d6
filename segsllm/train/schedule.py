"""Training hyper-parameters and the learning-rate schedule.

This module is torch-free on purpose: :mod:`segsllm.config` imports :class:`TrainConfig`
as the ``train`` section of the root config, and ``segsllm --help`` must not import torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class TrainConfig:
    """Optimisation settings shared by every stage (VAE, token LM, SLLM, boundary predictor)."""

    steps: int = 1000  # optimizer steps in total (resume continues up to this number)
    batch_size: int = 32  # items per micro-batch; the stage decides what an item is
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 3e-4  # peak learning rate, reached at the end of warm-up
    weight_decay: float = 0.1  # AdamW decay on matrices only (not biases, norms, embeddings)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 100  # linear warm-up from lr/warmup_steps to lr
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at the last step
    grad_clip: float = 1.0  # max global grad norm; <= 0 disables clipping (norm still reported)
    eval_every: int = 200  # optimizer steps between evaluations; 0: only at the end
    eval_batches: int | None = 50  # cap per eval source; None: the whole source
    eval_at_start: bool = True  # evaluate before the first step (skipped on resume)
    log_every: int = 10  # optimizer steps between tracker logs
    ckpt_every: int = 500  # optimizer steps between checkpoints; 0: only at the end
    keep_last: int = 2  # checkpoints kept on disk; <= 0 keeps all
    bf16: bool = True  # bf16 autocast; only has an effect on CUDA
    compile: bool = False  # torch.compile the model
    ddp_find_unused_parameters: bool = False  # for models whose forward skips some params


def lr_multiplier(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr for the update with 0-based index ``step``.

    Linear warm-up over ``warmup_steps`` updates (the first update already uses
    ``1/warmup_steps``, never 0), then a half cosine that reaches ``min_lr_ratio`` exactly at
    the last update (``total_steps - 1``). A pure function of the step, so resuming needs no
    scheduler state beyond the step counter.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = total_steps - 1 - warmup_steps
    if decay_steps <= 0:
        return 1.0
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay_steps))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
    return min_lr_ratio + (1.0 - min_lr_ratio) * cosine


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate of the update with 0-based index ``step`` under ``cfg``."""
    return cfg.lr * lr_multiplier(
        step, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps, min_lr_ratio=cfg.min_lr_ratio
    )
