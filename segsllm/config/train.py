"""The ``train`` section: optimisation settings of the one training loop."""

from __future__ import annotations

from dataclasses import dataclass, field

from segsllm.errors import ConfigError


@dataclass
class TrainConfig:
    """Optimisation settings shared by every stage (VAE, token LM, SLLM, boundary predictor).

    One stage's own values (say, the LM's smaller batches) come from the preset's
    ``pipeline.overrides.<stage>`` list, applied when the stage's config is loaded (see
    :mod:`segsllm.config.pipeline`); a stage only ever reads ``cfg.train``.
    """

    steps: int = 1000  # optimizer steps in total (resume continues up to this number)
    # Training-token budget (the loop's tokens_seen): when set, training ends at the first
    # step whose total reaches it and the cosine decays over the fraction of it seen, so
    # stages whose items hold different numbers of tokens (an SLLM on lines vs on 8-token
    # chunks) train on the same number of tokens; ``steps`` is then only a cap. null: steps.
    tokens: int | None = None
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

    def validate(self) -> TrainConfig:
        """Raise a one-line :class:`ConfigError` naming the bad ``train.*`` key."""
        checks = {  # key -> (valid?, what a valid value is)
            "steps": (self.steps >= 1, ">= 1"),
            "tokens": (self.tokens is None or (isinstance(self.tokens, int) and self.tokens >= 1),
                       "an integer >= 1 or null (a step budget)"),
            "batch_size": (self.batch_size >= 1, ">= 1"),
            "grad_accum": (self.grad_accum >= 1, ">= 1"),
            "lr": (self.lr > 0, "> 0"),
            "weight_decay": (self.weight_decay >= 0, ">= 0"),
            "betas": (len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas),
                      "two values in [0, 1)"),
            "warmup_steps": (self.warmup_steps >= 0, ">= 0"),
            "min_lr_ratio": (0.0 <= self.min_lr_ratio <= 1.0, "in [0, 1]"),
            "log_every": (self.log_every >= 1, ">= 1"),
            "eval_every": (self.eval_every >= 0, ">= 0 (0: only at the end)"),
            "eval_batches": (self.eval_batches is None or self.eval_batches >= 1, ">= 1 or null (all)"),
            "ckpt_every": (self.ckpt_every >= 0, ">= 0 (0: only at the end)"),
        }
        for key, (ok, want) in checks.items():
            if not ok:
                raise ConfigError(f"train.{key} must be {want}, got {getattr(self, key)!r}")
        return self
