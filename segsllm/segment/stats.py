"""Segment statistics shared by ``segsllm segment``, the bench and the learned segmenter.

Compression (docs/DESIGN.md §7) is the mean number of tokens per segment: the factor by which
an SLLM calls its backbone less often than the token-level LM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from segsllm.segment.base import segment_lengths


@dataclass(frozen=True)
class SegmentStats:
    """Statistics of one segmentation run over ``documents`` documents."""

    documents: int
    tokens: int
    segments: int
    bytes: int
    mean_tokens_per_segment: float
    p50_tokens_per_segment: float
    p95_tokens_per_segment: float
    max_tokens_per_segment: int
    bytes_per_segment: float
    compression_ratio: float  # tokens per segment (= mean): backbone calls saved
    segmenter_tokens_per_s: float | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def segment_stats(
    ends: Sequence[np.ndarray],
    *,
    n_bytes: int = 0,
    seconds: float | None = None,
) -> SegmentStats:
    """Statistics of per-document end offsets; ``seconds`` is the time the segmenter took."""
    lengths = (
        np.concatenate([segment_lengths(e) for e in ends]) if len(ends) else np.zeros(0, np.int64)
    )
    tokens = int(lengths.sum())
    segments = int(lengths.size)
    mean = tokens / segments if segments else 0.0
    if segments:
        p50, p95 = (float(x) for x in np.percentile(lengths, [50, 95]))
    else:
        p50 = p95 = 0.0
    speed = tokens / seconds if seconds and seconds > 0 else None
    return SegmentStats(
        documents=len(ends),
        tokens=tokens,
        segments=segments,
        bytes=int(n_bytes),
        mean_tokens_per_segment=round(mean, 4),
        p50_tokens_per_segment=p50,
        p95_tokens_per_segment=p95,
        max_tokens_per_segment=int(lengths.max()) if segments else 0,
        bytes_per_segment=round(n_bytes / segments, 4) if segments else 0.0,
        compression_ratio=round(mean, 4),
        segmenter_tokens_per_s=round(speed, 1) if speed is not None else None,
    )
