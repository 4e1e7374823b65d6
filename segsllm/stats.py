"""Uncertainty of bits/byte: a paired bootstrap over documents, and mean ± sd over seeds.

A domain's bits/byte is a ratio, ``sum(nats) / (sum(bytes) · ln 2)`` over its scored
documents, so documents (not tokens) are the unit resampled: tokens of one document are
not independent. Every model scored on the same documents is resampled with the **same**
draws, which makes the interval of a difference between two models (SLLM − LM,
segmenter − segmenter, model − compressor) much tighter than the two intervals side by
side, and exactly [0, 0] for identical models. Intervals are percentile intervals.

With several seeds (``pipeline --seeds``) a model's NLL is an (S, D) array, one row per
seed, and the bootstrap is two-level (a hierarchical bootstrap): each resample draws the
documents *and* the seeds with replacement, both shared by every model, so seed k of an SLLM
stays paired with seed k of the LM it started from. The interval then covers what another
training seed would change as well as what other documents would; the point estimate is the
mean over seeds. Models with one row (an untouched backbone, a compressor) keep it.

numpy only (no torch), seeded, vectorised: the resamples are a (R, D) matrix of counts
(how often each of the D documents is drawn), so each model's R resampled bits/byte are one
matrix product.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

LN2 = math.log(2.0)


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval."""

    estimate: float
    low: float
    high: float
    level: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies strictly on one side of 0 (a significant difference)."""
        return self.low > 0.0 or self.high < 0.0

    def as_dict(self) -> dict[str, float | bool]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level,
                "excludes_zero": self.excludes_zero}


@dataclass(frozen=True)
class MeanSD:
    """Mean and sample standard deviation (ddof=1; 0 for one value) over seeds."""

    mean: float
    sd: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "sd": self.sd, "n": self.n}


def bits_per_byte(nats: Sequence[float] | np.ndarray, n_bytes: Sequence[int] | np.ndarray) -> float:
    """``sum(nats) / (sum(bytes) · ln 2)``."""
    total = float(np.sum(n_bytes))
    if total <= 0:
        raise ValueError("bits/byte needs a positive number of bytes")
    return float(np.sum(nats)) / total / LN2


def resample_counts(n_docs: int, n_resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """(R, D) int counts: row r says how often each document is drawn in resample r."""
    if n_docs < 1:
        raise ValueError("the bootstrap needs at least one document")
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_docs, np.full(n_docs, 1.0 / n_docs), size=n_resamples)


class PairedBootstrap:
    """Bits/byte of several models on the same documents, resampled with shared draws.

    ``nats[name]`` is a (D,) array of each document's summed negative log-likelihood in
    nats (a compressor's bits · ln 2 fits too), or (S, D) with one row per training seed;
    ``n_bytes`` the (D,) UTF-8 bytes scored per document, the same for every model.
    Models with the same number of seeds share the seed draws (paired by seed index).
    """

    def __init__(self, nats: Mapping[str, Sequence[float] | np.ndarray],
                 n_bytes: Sequence[int] | np.ndarray, n_resamples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> None:
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level}")
        self.n_bytes = np.asarray(n_bytes, dtype=np.float64)  # (D,)
        if self.n_bytes.ndim != 1 or np.any(self.n_bytes < 0) or self.n_bytes.sum() <= 0:
            raise ValueError("n_bytes must be a 1-D array of non-negative counts with a positive sum")
        self.nats = {k: np.atleast_2d(np.asarray(v, dtype=np.float64)) for k, v in nats.items()}  # (S, D)
        for name, v in self.nats.items():
            if v.ndim != 2 or v.shape[0] < 1 or v.shape[1] != self.n_bytes.size:
                raise ValueError(f"{name}: {v.shape[-1] if v.ndim else 0} documents, expected {self.n_bytes.size}")
        self.level = level
        rng_counts = resample_counts(self.n_bytes.size, n_resamples, seed).astype(np.float64)  # (R, D)
        resampled_bytes = rng_counts @ self.n_bytes  # (R,)
        # A resample can draw only empty documents; it carries no information, drop it.
        keep = resampled_bytes > 0
        counts, resampled_bytes = rng_counts[keep], resampled_bytes[keep]
        self.names = list(self.nats)
        seed_weights = {n_seeds: _seed_weights(n_seeds, n_resamples, seed)[keep]
                        for n_seeds in {v.shape[0] for v in self.nats.values()}}  # S -> (R, S), rows sum to 1
        columns = [((counts @ v.T) * seed_weights[v.shape[0]]).sum(axis=1) for v in self.nats.values()]  # (R,) each
        self.samples = (np.stack(columns, axis=1) if columns else np.zeros((counts.shape[0], 0))) \
            / resampled_bytes[:, None] / LN2  # (R, M) bits/byte

    @property
    def n_seeds(self) -> dict[str, int]:
        """Seeds (rows) behind each model."""
        return {k: v.shape[0] for k, v in self.nats.items()}

    def estimate(self, name: str) -> float:
        """Bits/byte of one model: its mean over seeds."""
        return float(np.mean([bits_per_byte(row, self.n_bytes) for row in self.nats[name]]))

    def _column(self, name: str) -> np.ndarray:
        if name not in self.nats:
            raise KeyError(f"unknown model {name!r}; known: {', '.join(self.names)}")
        return self.samples[:, self.names.index(name)]

    def _interval(self, estimate: float, draws: np.ndarray) -> Interval:
        alpha = expanded_alpha(self.level, self.n_bytes.size)
        low, high = np.quantile(draws, [alpha, 1.0 - alpha])
        return Interval(float(estimate), float(low), float(high), self.level)

    def interval(self, name: str) -> Interval:
        """Bits/byte of one model with its interval."""
        return self._interval(self.estimate(name), self._column(name))

    def difference(self, a: str, b: str) -> Interval:
        """Bits/byte of ``a`` minus ``b`` with its paired interval (negative: ``a`` is better)."""
        est = self.estimate(a) - self.estimate(b)
        return self._interval(est, self._column(a) - self._column(b))


def _seed_weights(n_seeds: int, n_resamples: int, seed: int) -> np.ndarray:
    """(R, S) weights of the seeds in each resample: draw counts / S (all 1 for one seed)."""
    if n_seeds == 1:
        return np.ones((n_resamples, 1))
    rng = np.random.default_rng([seed, n_seeds])  # its own stream: the document draws stay as without seeds
    return rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_resamples) / n_seeds


def _t_quantile(p: float, dof: int) -> float:
    """Student-t quantile by the Cornish-Fisher expansion around the normal one (stdlib
    only; accurate to ~1e-3 for dof >= 5)."""
    z = NormalDist().inv_cdf(p)
    v = float(dof)
    return (z + (z**3 + z) / (4 * v) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3))


def expanded_alpha(level: float, n: int) -> float:
    """Lower tail of the *expanded* percentile interval (Hesterberg 2015): the percentile
    bootstrap is too narrow for few documents (it uses the plug-in variance and normal
    tails), so its tail ``α/2`` becomes ``Φ(√(n/(n−1)) · t_{n−1}(α/2))``. With n = 20
    documents and 95 % this takes the 1.6 % and 98.4 % quantiles."""
    half = (1.0 - level) / 2.0
    if n < 3:
        return half
    return NormalDist().cdf(math.sqrt(n / (n - 1)) * _t_quantile(half, n - 1))


def bpb_interval(nats: Sequence[float] | np.ndarray, n_bytes: Sequence[int] | np.ndarray,
                 n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    """Bits/byte of one model with its bootstrap interval over documents."""
    return PairedBootstrap({"m": nats}, n_bytes, n_resamples, seed, level).interval("m")


def paired_difference(nats_a: Sequence[float] | np.ndarray, nats_b: Sequence[float] | np.ndarray,
                      n_bytes: Sequence[int] | np.ndarray, n_resamples: int = 2000, seed: int = 0,
                      level: float = 0.95) -> Interval:
    """Bits/byte of ``a`` minus ``b``, scored on the same documents, with its paired interval."""
    return PairedBootstrap({"a": nats_a, "b": nats_b}, n_bytes, n_resamples, seed, level).difference("a", "b")


def mean_sd(values: Sequence[float] | np.ndarray) -> MeanSD:
    """Mean ± sample sd of one number over seeds."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_sd needs at least one value")
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return MeanSD(float(v.mean()), sd, int(v.size))
