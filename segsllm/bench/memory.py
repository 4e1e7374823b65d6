"""KV-cache memory vs context length (docs/DESIGN.md §7).

For each context length L the model is prefilled with the first L tokens of a domain's
test text (the SLLM: those tokens cut by its segmenter, one backbone position per segment
plus the start vector) and the bytes of the resulting KV cache are read from the cache
tensors (:func:`segsllm.models.backbone.kv_cache_bytes`). The SLLM's figure adds the
sentence decoder's own per-segment cache at its peak during generation (self-attention K/V
for BOS + max_len tokens and the cross-attention K/V of the memory slots): that much is
held while the next segment is decoded. Each point is the mean over several samples (windows
starting at different test documents, :func:`context_samples`). On CUDA the allocator's
peak during that prefill is recorded too (weights included); on CPU it is absent (None).
The paper's "KB per token" is the slope of a least-squares line through (L, KV bytes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass
class MemoryPoint:
    """KV cache of one model after a prefill of ``context_tokens`` tokens."""

    model: str
    context_tokens: int
    positions: int  # backbone positions (LM: tokens; SLLM: start + segments)
    kv_bytes: float  # backbone + decoder (SLLM) cache bytes, mean over samples
    peak_bytes: int | None = None  # CUDA only
    decoder_kv_bytes: int = 0  # SLLM: the decoder's per-segment cache at its peak (included in kv_bytes)
    samples: int = 1

    @property
    def kv_bytes_per_token(self) -> float:
        return self.kv_bytes / self.context_tokens if self.context_tokens else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kv_bytes_per_token": self.kv_bytes_per_token}


def context_ids(texts: Sequence[str], tokenizer: Any, n_tokens: int) -> list[int]:
    """At least ``n_tokens`` token ids of the texts one after another (fewer if short)."""
    from segsllm.data.tokenizer import encode

    out: list[int] = []
    for t in texts:
        out += encode(tokenizer, t)
        if len(out) >= n_tokens:
            break
    return out[:n_tokens]


def context_samples(texts: Sequence[str], tokenizer: Any, n_tokens: int, n_samples: int) -> list[list[int]]:
    """Up to ``n_samples`` windows of ``n_tokens`` ids, each starting at a different document
    (evenly spread over ``texts``); shorter windows where the texts run out."""
    if not texts:
        return []
    starts = np.unique(np.linspace(0, len(texts) - 1, max(1, min(n_samples, len(texts)))).round().astype(int))
    return [context_ids(list(texts[int(i):]) + list(texts[:int(i)]), tokenizer, n_tokens) for i in starts]


def average_points(samples: Sequence[Sequence[MemoryPoint]]) -> list[MemoryPoint]:
    """Mean over samples of the points at each context length (lengths a sample lacks skipped)."""
    by_len: dict[int, list[MemoryPoint]] = {}
    for pts in samples:
        for p in pts:
            by_len.setdefault(p.context_tokens, []).append(p)
    out = []
    for L in sorted(by_len):
        ps = by_len[L]
        peaks = [p.peak_bytes for p in ps if p.peak_bytes is not None]
        out.append(MemoryPoint(ps[0].model, L, round(float(np.mean([p.positions for p in ps]))),
                               float(np.mean([p.kv_bytes for p in ps])), max(peaks) if peaks else None,
                               ps[0].decoder_kv_bytes, len(ps)))
    return out


def _peak_reset(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: Any) -> int | None:
    import torch

    if torch.device(device).type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device))


def sllm_curve(model: Any, segmenter: Any, ids: Sequence[int], lengths: Sequence[int],
               name: str = "sllm") -> list[MemoryPoint]:
    """KV bytes of the SLLM's backbone after prefilling the first L tokens, per L."""
    import torch

    from segsllm.generate import decoder_cache_bytes
    from segsllm.models.backbone import kv_cache_bytes
    from segsllm.models.sllm import hidden_states_cached

    dec = decoder_cache_bytes(model.vae, model.vae.config.max_len)
    dev = model.start.device
    limit = model.max_positions
    points = []
    with torch.no_grad():
        for L in lengths:
            if len(ids) < L:
                continue
            segs = [torch.as_tensor(np.asarray(s, dtype=np.int64)) for s in segmenter.split_ids(list(ids[:L]))]
            if limit is not None and 1 + len(segs) > limit:
                continue
            _peak_reset(dev)
            _, cache = hidden_states_cached(model, segs, prefill=len(segs))
            points.append(MemoryPoint(name, int(L), 1 + len(segs), kv_cache_bytes(cache) + dec, _peak(dev), dec))
            del cache
    return points


def lm_curve(model: Any, ids: Sequence[int], lengths: Sequence[int], name: str = "baseline") -> list[MemoryPoint]:
    """KV bytes of a token LM after prefilling the first L tokens (``ids`` in its own
    tokenizer), per L."""
    import torch

    from segsllm.models.backbone import kv_cache_bytes
    from segsllm.models.token_lm import max_positions

    dev = next(model.parameters()).device
    limit = max_positions(model)
    points = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for L in lengths:
                if len(ids) < L or (limit is not None and limit < L):
                    continue
                _peak_reset(dev)
                out = model(input_ids=torch.tensor([list(ids[:L])], device=dev), use_cache=True, logits_to_keep=1)
                cache = out.cache if hasattr(out, "cache") else out.past_key_values
                points.append(MemoryPoint(name, int(L), int(L), kv_cache_bytes(cache), _peak(dev)))
                del out, cache
    finally:
        model.train(was_training)
    return points


def kb_per_token_slope(points: Sequence[MemoryPoint]) -> float:
    """The paper's "KB per token": slope of the least-squares line of KV KB vs context tokens."""
    if len(points) < 2:
        return points[0].kv_bytes / 1024 / points[0].context_tokens if points else float("nan")
    x = np.asarray([p.context_tokens for p in points], dtype=np.float64)
    y = np.asarray([p.kv_bytes for p in points], dtype=np.float64) / 1024.0
    return float(np.polyfit(x, y, 1)[0])


__all__ = ["MemoryPoint", "average_points", "context_ids", "context_samples", "kb_per_token_slope", "lm_curve", "sllm_curve"]
