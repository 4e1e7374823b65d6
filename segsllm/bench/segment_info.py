"""What a segment costs the SLLM against what it holds: per-segment excess over the token LM.

For every scored segment, its information is the token LM's NLL of its tokens (nats, same
documents, same context C: :func:`segsllm.bench.quality.score_lm` with ``per_token``) and
its cost the SLLM's NLL of them plus its EOS (:func:`segsllm.bench.quality.score_sllm`'s
``segment_nats``). The excess = cost − information is what cutting there costs beyond
what the text itself holds. Binned by information (quantiles), the excess shows whether a
segmenter's segments are dear because they hold much (a convex cost: equalise information)
or dear at any information (a per-segment price of where the cuts fall).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def segment_information(token_nats: Sequence[np.ndarray], table: Any) -> np.ndarray:
    """(N,) token-LM nats of each segment of ``table`` (its tokens; the documents' EOS is not
    in any segment). ``token_nats[d]`` is document ``d``'s per-token NLL, as ``score_lm``
    gives it with ``per_token`` on the same texts, so without their EOS they line up with
    ``table.ids`` (the documents' tokens, in order)."""
    flat = np.concatenate([np.asarray(t[:-1], dtype=np.float64) for t in token_nats] or [np.zeros(0)])
    if flat.size != len(table.ids):
        raise ValueError(f"{flat.size} LM token scores for {len(table.ids)} segment-table tokens: not the same texts")
    csum = np.concatenate([[0.0], np.cumsum(flat)])  # (T+1,)
    starts = np.asarray(table.starts, dtype=np.int64)
    return csum[starts + np.asarray(table.lengths, dtype=np.int64)] - csum[starts]


def information_profile(cost: np.ndarray, info: np.ndarray, lengths: np.ndarray, bins: int = 5) -> dict[str, Any]:
    """Excess (cost − info, nats per segment) by information quantile bin, with the segments'
    mean length and information, and the least-squares slope of excess on information."""
    cost, info, lengths = (np.asarray(x, dtype=np.float64) for x in (cost, info, lengths))
    excess = cost - info
    edges = np.quantile(info, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, info, side="right") - 1, 0, bins - 1)  # (N,) bin of each segment
    table = []
    for b in range(bins):
        sel = which == b
        if sel.any():
            table.append({"info": float(info[sel].mean()), "excess": float(excess[sel].mean()),
                          "length": float(lengths[sel].mean()), "segments": int(sel.sum())})
    slope = float(np.polyfit(info, excess, 1)[0]) if len(info) > 1 and np.ptp(info) > 0 else float("nan")
    return {"segments": len(cost), "mean_length": float(lengths.mean()), "sd_length": float(lengths.std()),
            "mean_info": float(info.mean()), "sd_info": float(info.std()), "mean_cost": float(cost.mean()),
            "mean_excess": float(excess.mean()), "slope": slope, "bins": table}


__all__ = ["information_profile", "segment_information"]
