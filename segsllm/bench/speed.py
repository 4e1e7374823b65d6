"""Generation throughput at batch 1 (docs/DESIGN.md §7).

Both models get the **same prompt texts** and generate the **same number of tokens**
(greedy, KV cache on, the SLLM's stop head and the LM's EOS ignored so neither stops
early), after ``warmup`` untimed runs; a repeat times all prompts, tokens/s = generated
tokens / seconds of that repeat, and the reported figure is the median over repeats.
:mod:`segsllm.generate` synchronises CUDA around its timings. The speedup is the ratio of
two medians measured in the same process; absolute numbers only mean something on a GPU.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class SpeedResult:
    """Throughput of one model on one domain's prompts."""

    model: str
    tokens_per_s: float  # median over repeats
    repeats_tokens_per_s: list[float] = field(default_factory=list)
    new_tokens: float = 0.0  # mean generated tokens per prompt (should equal the budget)
    prefill_s: float = 0.0  # mean prefill seconds per prompt (last repeat)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_prompts(texts: Sequence[str], tokenizer: Any, n: int, prompt_tokens: int) -> list[str]:
    """``n`` prompts: the first ``prompt_tokens`` tokens of evenly spread documents, as text
    (each model tokenises the same strings itself)."""
    from segsllm.data.tokenizer import decode, encode

    texts = [t for t in texts if t.strip()]
    if not texts:
        return []
    pick = np.unique(np.linspace(0, len(texts) - 1, min(n, len(texts))).round().astype(np.int64))
    return [decode(tokenizer, encode(tokenizer, texts[int(i)])[:prompt_tokens]) for i in pick]


def _measure(name: str, gen: Callable[[str], Any], prompts: Sequence[str], repeats: int, warmup: int) -> SpeedResult:
    if not prompts:
        return SpeedResult(name, math.nan)
    for _ in range(warmup):
        gen(prompts[0])
    rates, made, prefill = [], 0, 0.0
    for _ in range(repeats):
        tokens, seconds, made, prefill = 0, 0.0, 0, 0.0
        for p in prompts:
            r = gen(p)
            tokens += r.new_tokens
            seconds += r.elapsed_s
            made += r.new_tokens
            prefill += r.prefill_s
        rates.append(tokens / seconds if seconds > 0 else math.nan)
    return SpeedResult(name, float(statistics.median(rates)), rates, made / len(prompts), prefill / len(prompts))


def measure_sllm(model: Any, tokenizer: Any, segmenter: Any, prompts: Sequence[str], new_tokens: int, *,
                 repeats: int = 3, warmup: int = 1) -> SpeedResult:
    """Median tokens/s of :func:`segsllm.generate.generate_sllm` (stop head ignored)."""
    from segsllm.generate import generate_sllm

    return _measure("sllm", lambda p: generate_sllm(model, tokenizer, segmenter, p, new_tokens, ignore_stop=True),
                    prompts, repeats, warmup)


def measure_lm(model: Any, tokenizer: Any, prompts: Sequence[str], new_tokens: int, *, repeats: int = 3,
               warmup: int = 1, name: str = "baseline") -> SpeedResult:
    """Median tokens/s of :func:`segsllm.generate.generate_lm` (EOS ignored)."""
    from segsllm.generate import generate_lm

    return _measure(name, lambda p: generate_lm(model, tokenizer, p, new_tokens, ignore_eos=True),
                    prompts, repeats, warmup)


def speedup(sllm: SpeedResult, base: SpeedResult | None) -> float:
    """SLLM tokens/s ÷ baseline tokens/s (NaN without a baseline)."""
    if base is None or not base.tokens_per_s or math.isnan(base.tokens_per_s):
        return math.nan
    return sllm.tokens_per_s / base.tokens_per_s


__all__ = ["SpeedResult", "make_prompts", "measure_lm", "measure_sllm", "speedup"]
