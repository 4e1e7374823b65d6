"""Wall-clock speed as a paired measurement, and the speedup the architecture allows.

**Interleaved pairs.** The token LM and an SLLM are timed in alternating pairs on the same
prompt (pair i uses prompt i mod n; even pairs run the LM first, odd pairs the SLLM first,
so a drift in machine load hits both sides alike). Each pair gives one ratio
SLLM tokens/s ÷ LM tokens/s; the figure is the median ratio with its interquartile range
and a bootstrap 95 % interval of the median. The machine's load average is read before and
after. A spread wider than ±25 % of the median (IQR end beyond 0.75× or 1.25×) is flagged.

**Analytic bound.** A second series of interleaved pairs, profiled, times every model call
(synchronised): t_b,LM (one token-LM step), t_b (one SLLM backbone step), t_d (one decoder
token step), t_e (one encoder call), all at the runs' actual contexts. Each is the median
over the calls of one run, and the smallest such median over the runs (the run least
disturbed by other processes: on a shared machine a preempted run inflates every call in
it, while nothing makes a call faster than the work it does). With L the generated
tokens per segment and d the decoder steps per segment (L + 1 when segments end by EOS),
``bound = L·t_b,LM / (t_b + d·t_d + t_e)``: what a perfect implementation of this SLLM
could reach against this LM; ``speedup ÷ bound`` is the implementation's efficiency.
The same bound in FLOPs uses the mean FLOPs per call (:mod:`segsllm.bench.flops`).
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SPREAD_LIMIT = 0.25  # flag a pair-ratio IQR reaching beyond ±25 % of the median


def load_average() -> float | None:
    """1-minute load average of this machine (None where the OS has none)."""
    try:
        return round(float(os.getloadavg()[0]), 2)
    except (AttributeError, OSError):
        return None


def bootstrap_median_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the median (seeded: the same on every rerun)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    meds = np.median(x[rng.integers(0, x.size, size=(n_boot, x.size))], axis=1)
    return float(np.percentile(meds, 2.5)), float(np.percentile(meds, 97.5))


@dataclass
class PairTiming:
    """Interleaved LM/SLLM wall-clock of one (segmenter, domain) cell."""

    ratios: list[float] = field(default_factory=list)  # SLLM tok/s ÷ LM tok/s, one per pair
    lm_tokens_per_s: list[float] = field(default_factory=list)
    sllm_tokens_per_s: list[float] = field(default_factory=list)
    load_before: float | None = None
    load_after: float | None = None
    lm_runs: list[Any] = field(default_factory=list, repr=False)  # the GenerationResults, in order
    sllm_runs: list[Any] = field(default_factory=list, repr=False)

    @property
    def median(self) -> float:
        return float(statistics.median(self.ratios)) if self.ratios else math.nan

    @property
    def iqr(self) -> tuple[float, float]:
        if not self.ratios:
            return math.nan, math.nan
        q1, q3 = np.percentile(self.ratios, [25, 75])
        return float(q1), float(q3)

    @property
    def noisy(self) -> bool:
        """True when the IQR reaches beyond ±25 % of the median."""
        lo, hi = self.iqr
        m = self.median
        return bool(m > 0 and (lo < (1 - SPREAD_LIMIT) * m or hi > (1 + SPREAD_LIMIT) * m))

    def as_dict(self) -> dict[str, Any]:
        lo, hi = self.iqr
        ci_lo, ci_hi = bootstrap_median_ci(self.ratios)
        return {"speedup": self.median, "speedup_q25": lo, "speedup_q75": hi, "speedup_ci_lo": ci_lo,
                "speedup_ci_hi": ci_hi, "speedup_pairs": len(self.ratios), "speedup_noisy": self.noisy,
                "sllm_tokens_per_s": _median(self.sllm_tokens_per_s), "baseline_tokens_per_s": _median(self.lm_tokens_per_s),
                "load_before": self.load_before, "load_after": self.load_after}


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else math.nan


def _rate(r: Any) -> float:
    return r.new_tokens / r.elapsed_s if r.elapsed_s > 0 else math.nan


def interleaved_pairs(run_lm: Callable[[str], Any], run_sllm: Callable[[str], Any], prompts: Sequence[str],
                      pairs: int, warmup: int = 1) -> PairTiming:
    """Time ``pairs`` LM/SLLM pairs (module docstring); ``run_*`` generate from a prompt and
    return a :class:`segsllm.generate.GenerationResult`."""
    out = PairTiming(load_before=load_average())
    if not prompts:
        return out
    for _ in range(warmup):
        run_lm(prompts[0])
        run_sllm(prompts[0])
    for i in range(pairs):
        p = prompts[i % len(prompts)]
        if i % 2 == 0:
            lm, sl = run_lm(p), run_sllm(p)
        else:
            sl = run_sllm(p)
            lm = run_lm(p)
        out.lm_runs.append(lm)
        out.sllm_runs.append(sl)
        a, b = _rate(lm), _rate(sl)
        out.lm_tokens_per_s.append(a)
        out.sllm_tokens_per_s.append(b)
        out.ratios.append(b / a if a > 0 else math.nan)
    out.load_after = load_average()
    return out


def call_times(result: Any, kind: str) -> list[float]:
    """Seconds of the generation-phase calls of one kind in a profiled result (decoder calls
    divided by their steps: seconds per decoder token step)."""
    return [c.seconds / c.length if kind == "decoder" and c.length else c.seconds
            for c in result.calls if c.kind == kind and not c.prefill and not math.isnan(c.seconds)]


def call_time(results: Sequence[Any], kind: str) -> float:
    """The smallest per-run median of :func:`call_times` over ``results`` (NaN: no such call)."""
    meds = [statistics.median(t) for r in results if (t := call_times(r, kind))]
    return float(min(meds)) if meds else math.nan


def analytic_bound(lm_profiled: Sequence[Any], sllm_profiled: Sequence[Any]) -> dict[str, float]:
    """t_b,LM, t_b, t_d, t_e (seconds), L, d and ``bound`` (module docstring)."""
    t_lm = call_time(lm_profiled, "lm")
    t_b = call_time(sllm_profiled, "backbone")
    t_d = call_time(sllm_profiled, "decoder")
    t_e = call_time(sllm_profiled, "encoder")
    segs = sum(len(r.segment_ends) for r in sllm_profiled)
    tokens = sum(r.new_tokens for r in sllm_profiled)
    dec_steps = sum(c.length for r in sllm_profiled for c in r.calls if c.kind == "decoder")
    L = tokens / segs if segs else math.nan
    d = dec_steps / segs if segs else math.nan
    t_b = 0.0 if math.isnan(t_b) and segs else t_b  # every segment fit in the prefill's first step
    t_e = 0.0 if math.isnan(t_e) and segs else t_e
    denom = t_b + d * t_d + t_e
    bound = L * t_lm / denom if denom > 0 else math.nan
    return {"t_b_lm_s": t_lm, "t_b_s": t_b, "t_d_s": t_d, "t_e_s": t_e, "bound_L": L,
            "bound_decoder_steps_per_segment": d, "bound": bound}


def flop_bound(lm_acc: Any, sllm_acc: Any, segments: int) -> float:
    """The bound in FLOPs: L·f_LM / (f_b + f_d + f_e) with mean FLOPs per LM step, per
    backbone step, per segment's decoder call and per encoder call."""
    if not segments or not lm_acc.backbone_steps:
        return math.nan
    f_lm = lm_acc.backbone / lm_acc.backbone_steps
    f_b = sllm_acc.backbone / sllm_acc.backbone_steps if sllm_acc.backbone_steps else 0.0
    f_e = sllm_acc.encoder / sllm_acc.encoder_calls if sllm_acc.encoder_calls else 0.0
    f_d = sllm_acc.decoder / segments
    L = sllm_acc.new_tokens / segments
    return L * f_lm / (f_b + f_d + f_e)


__all__ = ["SPREAD_LIMIT", "PairTiming", "analytic_bound", "bootstrap_median_ci", "call_time", "call_times", "flop_bound",
           "interleaved_pairs", "load_average"]
