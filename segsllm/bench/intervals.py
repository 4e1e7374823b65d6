"""One domain's quality comparison: every model and floor with its interval, and the differences.

Input: the per-document NLL of every model scored on the same bytes
(:class:`segsllm.bench.quality.QualityResult`) and the compressors' per-document bits
(:func:`segsllm.bench.floors.per_document_bits`). One :class:`~segsllm.stats.PairedBootstrap`
resamples all of them with shared draws, so every difference is paired (docs/DESIGN.md §7):

- ``sllm:<seg> − baseline``  the SLLM against the untouched ``lm`` it started from;
- ``sllm:<seg> − matched:<seg>``  against the token LM trained on as many tokens;
- ``matched:<seg> − baseline``  what the extra training alone bought;
- ``sllm:<a> − sllm:<b>``  segmenter against segmenter.

With ``pipeline --seeds`` every trained model has one row of per-document NLL per seed
and the bootstrap draws seeds as well as documents (:mod:`segsllm.stats`), so its interval
and each difference's carry the seed-to-seed spread; ``seeds`` adds mean ± sd over seeds.

A difference is ``significant`` when its interval excludes 0. Names: ``baseline`` (the
pipeline's ``lm``), ``base_lm``, ``matched:<seg>``, ``sllm:<seg>``, ``floor:<compressor>``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from segsllm.stats import LN2, Interval, PairedBootstrap, mean_sd

FLOOR_PREFIX, SLLM_PREFIX, MATCHED_PREFIX = "floor:", "sllm:", "matched:"


def model_kind(name: str) -> str:
    """``floor`` | ``sllm`` | ``matched`` | ``lm`` (the untouched baseline) | ``base_lm``."""
    for prefix in (FLOOR_PREFIX, SLLM_PREFIX, MATCHED_PREFIX):
        if name.startswith(prefix):
            return prefix[:-1]
    return "lm" if name == "baseline" else name


def _diff(boot: PairedBootstrap, a: str, b: str, kind: str) -> dict[str, Any]:
    iv = boot.difference(a, b)
    return {"a": a, "b": b, "kind": kind, **_iv(iv)}


def _iv(iv: Interval) -> dict[str, Any]:
    return {"estimate": iv.estimate, "low": iv.low, "high": iv.high, "level": iv.level,
            "significant": iv.excludes_zero}


def differences(boot: PairedBootstrap, segmenters: Sequence[str]) -> list[dict[str, Any]]:
    """Every SLLM − LM, SLLM − matched, matched − LM and segmenter − segmenter difference
    the bootstrap holds the models for (module docstring)."""
    have = set(boot.names)
    out = []
    for spec in segmenters:
        s, m = SLLM_PREFIX + spec, MATCHED_PREFIX + spec
        if s in have and "baseline" in have:
            out.append(_diff(boot, s, "baseline", "sllm-lm"))
        if s in have and m in have:
            out.append(_diff(boot, s, m, "sllm-matched"))
        if m in have and "baseline" in have:
            out.append(_diff(boot, m, "baseline", "matched-lm"))
    sllms = [SLLM_PREFIX + s for s in segmenters if SLLM_PREFIX + s in have]
    out += [_diff(boot, a, b, "segmenter") for a, b in itertools.combinations(sllms, 2)]
    return out


def domain_quality(results: Mapping[str, Any], floor_bits: Mapping[str, np.ndarray], segmenters: Sequence[str], *,
                   n_resamples: int = 2000, level: float = 0.95, seed: int = 0,
                   seed_nats: Mapping[str, Sequence[np.ndarray]] | None = None,
                   budgets: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{"models": {name: interval + kind + seeds + budget}, "differences": [...]}`` for one
    domain. ``floor_bits``: (D,) bits per document of each compressor, cold start;
    ``seed_nats``: a model's (D,) per-document NLL in every seed, the first seed's included
    (its interval then spans seeds too, and ``seeds`` gives mean ± sd)."""
    ref = next(iter(results.values()))
    n_bytes = np.asarray(ref.doc_bytes)
    nats = {name: np.asarray(r.doc_nats) for name, r in results.items()}
    for name, rows in (seed_nats or {}).items():
        if name in nats and len(rows) > 1:
            nats[name] = np.stack([np.asarray(r, dtype=np.float64) for r in rows])  # (S, D)
    nats.update({FLOOR_PREFIX + k: np.asarray(v, dtype=np.float64) * LN2 for k, v in floor_bits.items()})
    boot = PairedBootstrap(nats, n_bytes, n_resamples, seed, level)
    models: dict[str, Any] = {}
    for name in nats:
        entry: dict[str, Any] = {"kind": model_kind(name), **_iv(boot.interval(name))}
        entry.pop("significant")
        rows = np.atleast_2d(nats[name])
        entry["seeds"] = mean_sd([float(r.sum() / n_bytes.sum() / LN2) for r in rows]).as_dict() \
            if rows.shape[0] > 1 else None
        if budgets and name in budgets:
            entry["budget"] = budgets[name]
        if budgets and f"{name}.vae" in budgets:
            entry["vae_budget"] = budgets[f"{name}.vae"]
        models[name] = entry
    return {"models": models, "differences": differences(boot, segmenters), "resamples": n_resamples,
            "level": level}


def sweep_point(results: Mapping[str, Any], n_resamples: int = 2000, level: float = 0.95,
                seed: int = 0) -> dict[str, Any]:
    """Bits/byte of each model at one context length, with its interval."""
    ref = next(iter(results.values()))
    boot = PairedBootstrap({n: np.asarray(r.doc_nats) for n, r in results.items()}, np.asarray(ref.doc_bytes),
                           n_resamples, seed, level)
    out = {}
    for name in results:
        iv = boot.interval(name)
        out[name] = {"estimate": iv.estimate, "low": iv.low, "high": iv.high}
    return out


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


__all__ = ["FLOOR_PREFIX", "MATCHED_PREFIX", "SLLM_PREFIX", "differences", "domain_quality", "model_kind",
           "sweep_point"]
