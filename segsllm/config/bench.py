"""The ``bench`` section: what ``segsllm bench`` measures, on which artifacts and how much data."""

from __future__ import annotations

from dataclasses import dataclass, field

from segsllm.errors import ConfigError


@dataclass
class BenchConfig:
    """What ``segsllm bench`` measures and on how much data (docs/DESIGN.md §7).

    Artifacts are named explicitly (``sllm`` / ``baseline`` / ``base_lm``) or found in a
    pipeline folder (``from_dir``; layout in :mod:`segsllm.bench.run`). Quality is scored on
    whole test documents of about ``eval_bytes`` UTF-8 bytes per domain, the same documents
    and bytes for every model. Speed: ``prompts`` prompts of ``prompt_tokens`` tokens per
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
    eval_bytes: int | None = 200_000  # per domain; None: the whole split
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
        if self.eval_bytes is not None and self.eval_bytes < 1:
            raise ConfigError(f"bench.eval_bytes must be >= 1 (or null: all), got {self.eval_bytes}")
        if any(n < 1 for n in self.context_lengths):
            raise ConfigError(f"bench.context_lengths must be positive, got {self.context_lengths}")
        if self.split not in ("train", "validation", "test"):
            raise ConfigError(f"bench.split must be train, validation or test, got {self.split!r}")
        sllm_pairs(self.sllm)
        return self


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
