"""The ``segmenter`` section: which segmenter cuts the token stream."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SegmenterConfig:
    """Which segmenter cuts the token stream (docs/DESIGN.md §4)."""

    spec: str = "punctuation"
    max_len: int = 64
