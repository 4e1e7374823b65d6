"""The ``lm`` section: how the token-level baseline (``train-lm``) windows and scores documents.

The model itself is described by the ``backbone`` section and the optimisation by
``train`` (the LM's own values, e.g. smaller batches of long windows, come from
``pipeline.overrides.lm``); this section says how documents become windows and how they
are evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass

from segsllm.errors import ConfigError


@dataclass
class LMConfig:
    """How ``train-lm`` cuts documents into windows and evaluates them.

    A document is the stream ``BOS doc EOS``. Training sees per-document windows of at most
    ``context_len`` input tokens (``BOS`` only at the document start; a window never spans
    two documents). Evaluation scores every document token and the final EOS exactly once:
    with ``eval_stride=None`` (= ``context_len``) in consecutive non-overlapping chunks, each
    later chunk conditioned only on its own tokens (the same windows as training); with a
    smaller ``eval_stride`` as a sliding window, each chunk scoring ``eval_stride`` new
    tokens with up to ``context_len - eval_stride`` earlier tokens as context (better NLL,
    about ``context_len / eval_stride`` times the cost).
    """

    context_len: int = 256  # input tokens per window (the document's BOS included)
    eval_stride: int | None = None  # None: context_len (non-overlapping chunks)
    eval_batch_size: int | None = None  # windows per eval batch; None: train.batch_size
    # UTF-8 bytes of whole validation documents evaluated per domain, evenly spread over the
    # split (None: every document). Chosen by bytes so every tokenizer sees the same
    # documents; train.eval_batches does not apply to train-lm.
    eval_bytes: int | None = None
    # Fine-tune only the first/last k transformer blocks (0, 0: everything), as the SLLM can.
    train_first_layers: int = 0
    train_last_layers: int = 0

    @property
    def stride(self) -> int:
        """Tokens newly scored by each later evaluation window."""
        return self.context_len if self.eval_stride is None else self.eval_stride

    def validate(self) -> LMConfig:
        """Raise a one-line :class:`ConfigError` naming the bad ``lm.*`` key."""
        if self.context_len < 2:
            raise ConfigError(f"lm.context_len must be >= 2, got {self.context_len}")
        if self.eval_stride is not None and not 1 <= self.eval_stride <= self.context_len:
            raise ConfigError(
                f"lm.eval_stride must be in [1, lm.context_len={self.context_len}], got {self.eval_stride}"
            )
        if self.eval_bytes is not None and self.eval_bytes < 1:
            raise ConfigError(f"lm.eval_bytes must be >= 1 (or null: all), got {self.eval_bytes}")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ConfigError(f"lm.eval_batch_size must be >= 1, got {self.eval_batch_size}")
        for key in ("train_first_layers", "train_last_layers"):
            if getattr(self, key) < 0:
                raise ConfigError(f"lm.{key} must be >= 0, got {getattr(self, key)}")
        return self
