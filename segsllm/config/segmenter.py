"""The ``segmenter`` section: which segmenter cuts the token stream."""

from __future__ import annotations

from dataclasses import dataclass

from segsllm.errors import ConfigError


@dataclass
class SegmenterConfig:
    """Which segmenter cuts the token stream (docs/DESIGN.md §4)."""

    spec: str = "punctuation"
    max_len: int = 64

    def validate(self) -> SegmenterConfig:
        """Raise a one-line :class:`ConfigError` for an empty spec or a max_len below 1."""
        if not str(self.spec).strip():
            raise ConfigError("segmenter.spec is empty; see `segsllm segmenters`")
        if self.max_len < 1:
            raise ConfigError(f"segmenter.max_len must be >= 1, got {self.max_len}")
        return self
