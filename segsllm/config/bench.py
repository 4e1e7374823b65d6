"""The ``bench`` section: what ``segsllm bench`` measures, on which artifacts and how much data."""

from __future__ import annotations

from dataclasses import dataclass, field

from segsllm.errors import ConfigError


@dataclass
class BenchConfig:
    """What ``segsllm bench`` measures and on how much data (docs/DESIGN.md §7).

    Artifacts are named explicitly (``sllm`` / ``baseline`` / ``base_lm``) or found in a
    pipeline folder (``from_dir``; layout in :mod:`segsllm.layout`). Quality is scored on
    about ``eval_bytes`` UTF-8 bytes per domain from at least ``min_docs`` test documents, none
    more than ``max_doc_share`` of them (:mod:`segsllm.bench.selection`), the same bytes for
    every model, with the same token context ``context_tokens`` for the LM (sliding window,
    ``stride_tokens`` new tokens per window; null: half the context) and the SLLM (windows of
    whole segments of at most that many tokens), and again at every ``context_sweep`` value
    (on whole scored documents of about ``sweep_bytes``; null: all of them).
    Intervals: a paired bootstrap over documents (``bootstrap_resamples`` draws, ``level``).
    Floors: gzip/bzip2/xz on the same bytes, and xz primed with the first ``prime_bytes`` of
    the train split (0: no primed floor). Speed: ``prompts`` prompts of ``prompt_tokens`` tokens per
    domain, ``new_tokens`` generated tokens each, ``warmup`` untimed runs, then ``pairs``
    interleaved LM/SLLM pairs (:mod:`segsllm.bench.timing`). Memory: KV-cache bytes at each
    of ``context_lengths`` tokens, the mean over ``memory_samples`` windows.
    """

    segmenters: list[str] = field(default_factory=list)  # empty: the keys of `sllm`
    # "SEGMENTER=DIR" entries (a list, not a dict: specs like fixed:k=16 are not valid
    # MLflow param keys once the config is flattened).
    sllm: list[str] = field(default_factory=list)
    baseline: str | None = None  # fine-tuned token LM folder (train-lm output)
    base_lm: str | None = None  # untouched base LM folder (optional)
    from_dir: str | None = None  # pipeline output folder (see segsllm.bench.run.find_artifacts)
    split: str = "test"
    eval_bytes: int | None = 300_000  # scored bytes per domain; None: the whole split
    min_docs: int = 20  # at least this many documents per domain (where the split has them)
    max_doc_share: float = 0.125  # no document more than this share of a domain's scored bytes
    context_tokens: int = 256  # the token context C both the LM and the SLLM are scored with
    stride_tokens: int | None = None  # new tokens scored per window (< C); None: C // 2
    context_sweep: list[int] = field(default_factory=lambda: [128, 256, 512])  # extra C values (quality only)
    sweep_bytes: int | None = None  # the sweep scores evenly spread scored documents of about this many bytes
    bootstrap_resamples: int = 2000
    level: float = 0.95
    prime_bytes: int = 4_000_000  # train-split bytes that prime the xz floor (0: none)
    lm_batch_size: int = 8  # token-LM eval windows per batch
    sllm_batch_size: int = 4  # SLLM eval windows per batch
    prompts: int = 3  # speed prompts per domain
    prompt_tokens: int = 32
    new_tokens: int = 64
    pairs: int = 10  # interleaved LM/SLLM timing pairs per cell
    warmup: int = 1
    context_lengths: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    memory_samples: int = 4  # windows (from different documents) averaged per context length
    exact_match_segments: int = 256  # test segments reconstructed by the VAE (0: skip)
    speed: bool = True
    memory: bool = True
    plots: bool = True

    def validate(self) -> BenchConfig:
        """Raise a one-line :class:`ConfigError` naming the bad ``bench.*`` key."""
        for key in ("prompts", "prompt_tokens", "new_tokens", "pairs", "memory_samples", "lm_batch_size",
                    "sllm_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"bench.{key} must be >= 1, got {getattr(self, key)}")
        if self.warmup < 0 or self.exact_match_segments < 0:
            raise ConfigError("bench.warmup and bench.exact_match_segments must be >= 0")
        for key in ("min_docs", "context_tokens", "bootstrap_resamples"):
            if getattr(self, key) < 1:
                raise ConfigError(f"bench.{key} must be >= 1, got {getattr(self, key)}")
        if self.context_tokens < 2 or any(c < 2 for c in self.context_sweep):
            raise ConfigError("bench.context_tokens and bench.context_sweep values must be >= 2")
        if self.stride_tokens is not None and not 1 <= self.stride_tokens <= self.context_tokens:
            raise ConfigError(f"bench.stride_tokens must be in [1, bench.context_tokens={self.context_tokens}] "
                              f"(or null: half of it), got {self.stride_tokens}")
        if not 0.0 < self.max_doc_share <= 1.0:
            raise ConfigError(f"bench.max_doc_share must be in (0, 1], got {self.max_doc_share}")
        if not 0.0 < self.level < 1.0:
            raise ConfigError(f"bench.level must be in (0, 1), got {self.level}")
        if self.prime_bytes < 0:
            raise ConfigError(f"bench.prime_bytes must be >= 0, got {self.prime_bytes}")
        if self.sweep_bytes is not None and self.sweep_bytes < 1:
            raise ConfigError(f"bench.sweep_bytes must be >= 1 (or null: every scored byte), got {self.sweep_bytes}")
        if self.eval_bytes is not None and self.eval_bytes < 1:
            raise ConfigError(f"bench.eval_bytes must be >= 1 (or null: all), got {self.eval_bytes}")
        if any(n < 1 for n in self.context_lengths):
            raise ConfigError(f"bench.context_lengths must be positive, got {self.context_lengths}")
        if self.split not in ("train", "validation", "test"):
            raise ConfigError(f"bench.split must be train, validation or test, got {self.split!r}")
        sllm_pairs(self.sllm)
        return self

    def stride_for(self, context_tokens: int) -> int:
        """Stride at context ``C``: ``stride_tokens`` scaled to ``C`` for a sweep value, else ``C // 2``."""
        if self.stride_tokens is None:
            return max(1, context_tokens // 2)
        return max(1, min(context_tokens, round(self.stride_tokens * context_tokens / self.context_tokens)))


def sllm_pairs(entries: list[str]) -> dict[str, str]:
    """``["SEG=DIR", ...]`` -> {SEG: DIR}; the last ``=`` separates (a spec may hold ``=``)."""
    out: dict[str, str] = {}
    for v in entries:
        seg, sep, path = str(v).rpartition("=")
        if not sep or not seg.strip() or not path.strip():
            raise ConfigError(f"bench.sllm / --sllm expects SEGMENTER=DIR, got {v!r}")
        out[seg.strip()] = path.strip()
    return out


__all__ = ["BenchConfig", "sllm_pairs"]
