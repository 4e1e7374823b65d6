"""Metric definitions shared by every command (docs/DESIGN.md §7).

All quality metrics are computed from *sums* (NLL in nats, tokens, bytes, segments) so they
can be accumulated over batches and all-reduced across ranks before the final division.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def bits_per_byte(nll_sum_nats: float, n_bytes: int) -> float:
    """Total NLL in nats / (ln 2 x UTF-8 bytes of the evaluated text). NaN without bytes."""
    nll = float(nll_sum_nats)
    return nll / (math.log(2) * n_bytes) if n_bytes > 0 else float("nan")


def token_perplexity(nll_sum_nats: float, n_tokens: int) -> float:
    """exp(total NLL / number of tokens); same tokenizer on both sides to compare."""
    if n_tokens <= 0:
        return float("nan")
    return float(math.exp(min(float(nll_sum_nats) / n_tokens, 700.0)))


def paper_style_perplexity(per_segment_mean_ce: Sequence[float]) -> float:
    """The reference implementation's number, *for comparison with the paper only*:
    exp of the mean over segments of each segment's mean CE, first segment excluded."""
    values = list(per_segment_mean_ce)[1:]
    if not values:
        return float("nan")
    return float(math.exp(min(sum(values) / len(values), 700.0)))


def exact_match_count(generated: Sequence[Sequence[int]], references: Sequence[Sequence[int]]) -> int:
    """How many generated segments equal their reference exactly (BOS/EOS stripped)."""
    if len(generated) != len(references):
        raise ValueError(f"{len(generated)} generated vs {len(references)} references")
    return sum(list(g) == list(r) for g, r in zip(generated, references, strict=True))


def length_stats(lengths: Sequence[int] | np.ndarray) -> dict[str, float]:
    """Compression statistics of segment lengths in tokens: mean, p50, p95, max, count."""
    arr = np.asarray(lengths, dtype=np.float64)
    if arr.size == 0:
        return {"segments": 0, "mean": float("nan"), "p50": float("nan"), "p95": float("nan"), "max": 0}
    return {
        "segments": int(arr.size),
        "mean": float(arr.mean()),
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "max": int(arr.max()),
    }
