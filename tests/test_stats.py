"""Paired bootstrap over documents and mean ± sd over seeds, on numbers with a known answer."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from segsllm import stats


def _docs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, nats) of ``n`` documents of varied length and difficulty (~2 bits/byte)."""
    rng = np.random.default_rng(seed)
    n_bytes = rng.integers(200, 20_000, size=n)
    rate = rng.normal(2.0, 0.3, size=n)  # bits/byte of each document
    return n_bytes, n_bytes * rate * math.log(2)


def test_point_estimate_is_the_ratio_of_sums():
    n_bytes, nats = _docs(30)
    iv = stats.bpb_interval(nats, n_bytes)
    assert iv.estimate == pytest.approx(nats.sum() / n_bytes.sum() / math.log(2))
    assert iv.low < iv.estimate < iv.high and iv.excludes_zero


def test_identical_models_give_exactly_zero():
    n_bytes, nats = _docs(25)
    d = stats.paired_difference(nats, nats.copy(), n_bytes)
    assert (d.estimate, d.low, d.high) == (0.0, 0.0, 0.0)
    assert not d.excludes_zero


def test_constant_shift_is_recovered_and_significant():
    n_bytes, nats = _docs(25)
    shifted = nats + 0.05 * math.log(2) * n_bytes  # +0.05 bits/byte on every document
    d = stats.paired_difference(shifted, nats, n_bytes)
    assert d.estimate == pytest.approx(0.05)
    assert d.low == pytest.approx(0.05) and d.high == pytest.approx(0.05)
    # A noisy per-document shift: the interval holds the true 0.05 and excludes 0.
    rng = np.random.default_rng(5)
    noisy = nats + rng.normal(0.05, 0.05, size=nats.size) * math.log(2) * n_bytes
    d = stats.paired_difference(noisy, nats, n_bytes)
    assert d.low < 0.05 < d.high and d.excludes_zero and d.low > 0
    # The pairing matters: the unpaired intervals of the two models overlap.
    both = stats.PairedBootstrap({"noisy": noisy, "base": nats}, n_bytes)
    assert both.interval("noisy").low < both.interval("base").high
    assert both.difference("noisy", "base") == d


def test_no_real_difference_is_not_flagged():
    n_bytes, nats = _docs(40)
    rng = np.random.default_rng(7)
    noise = rng.normal(0.0, 0.05, size=nats.size)
    noise -= (noise * n_bytes).sum() / n_bytes.sum()  # per-document noise, no net difference
    other = nats + noise * math.log(2) * n_bytes
    d = stats.paired_difference(other, nats, n_bytes)
    assert d.estimate == pytest.approx(0.0, abs=1e-12)
    assert d.low < 0 < d.high and not d.excludes_zero


def test_coverage_is_about_95_percent_on_a_simulated_population():
    # Population: 100k documents; its bits/byte is the ratio of its sums. Each trial draws
    # 40 documents and checks whether the interval covers the population value.
    rng = np.random.default_rng(11)
    pop_bytes = rng.lognormal(8.0, 0.5, size=100_000)
    pop_rate = rng.gamma(20.0, 0.1, size=100_000)  # ~2 bits/byte, skewed
    truth = float((pop_bytes * pop_rate).sum() / pop_bytes.sum())
    trials, hits = 300, 0
    for t in range(trials):
        idx = rng.integers(0, pop_bytes.size, size=40)
        b = pop_bytes[idx]
        iv = stats.bpb_interval(b * pop_rate[idx] * math.log(2), b, n_resamples=1000, seed=t)
        hits += iv.low <= truth <= iv.high
    assert 0.90 <= hits / trials <= 0.99, hits / trials


def test_expanded_tails_widen_for_few_documents_only():
    assert stats.expanded_alpha(0.95, 20) == pytest.approx(0.0159, abs=5e-4)
    assert stats.expanded_alpha(0.95, 10_000) == pytest.approx(0.025, abs=1e-4)
    assert stats._t_quantile(0.025, 19) == pytest.approx(-2.093, abs=2e-3)  # tables: t_19 = 2.093


def test_seeded_and_vectorised_shapes():
    n_bytes, nats = _docs(10)
    a = stats.PairedBootstrap({"m": nats}, n_bytes, n_resamples=500, seed=3)
    b = stats.PairedBootstrap({"m": nats}, n_bytes, n_resamples=500, seed=3)
    c = stats.PairedBootstrap({"m": nats}, n_bytes, n_resamples=500, seed=4)
    assert a.samples.shape == (500, 1)
    assert np.array_equal(a.samples, b.samples) and not np.array_equal(a.samples, c.samples)
    counts = stats.resample_counts(10, 500, seed=3)
    assert counts.shape == (500, 10) and (counts.sum(axis=1) == 10).all()


def test_mean_sd_over_seeds():
    m = stats.mean_sd([1.0, 2.0, 3.0])
    assert (m.mean, m.sd, m.n) == (2.0, 1.0, 3)
    assert stats.mean_sd([2.5]).sd == 0.0


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        stats.paired_difference([1.0, 2.0], [1.0], [10, 10])
    with pytest.raises(ValueError):
        stats.bpb_interval([], [])
    with pytest.raises(ValueError):
        stats.bpb_interval([1.0], [0])
    with pytest.raises(ValueError):
        stats.mean_sd([])


def test_stats_imports_no_torch():
    code = "import sys, segsllm.stats; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_seed_rows_widen_the_interval_and_stay_paired():
    """(S, D) NLL: the estimate is the mean over seeds; the seed draw widens the interval by
    what a seed changes; seed k of one model stays paired with seed k of another."""
    n_bytes, nats = _docs(30)
    per_byte = math.log(2) * n_bytes
    same = np.stack([nats, nats, nats])
    single = stats.PairedBootstrap({"m": nats}, n_bytes, seed=1).interval("m")
    repeated = stats.PairedBootstrap({"m": same}, n_bytes, seed=1).interval("m")
    assert (repeated.estimate, repeated.low, repeated.high) == pytest.approx((single.estimate, single.low, single.high))

    offsets = np.array([-0.2, 0.0, 0.2])  # a seed moves every document by this many bits/byte
    lm = nats[None, :] + offsets[:, None] * per_byte[None, :]  # (3, D)
    sllm = lm + 0.05 * per_byte[None, :]  # each seed 0.05 worse than its own LM seed
    boot = stats.PairedBootstrap({"lm": lm, "sllm": sllm, "floor": nats}, n_bytes, seed=1)
    assert boot.n_seeds == {"lm": 3, "sllm": 3, "floor": 1}
    assert boot.interval("lm").estimate == pytest.approx(single.estimate)
    wide = boot.interval("lm")
    assert wide.high - wide.low > 2 * (single.high - single.low)  # the seed spread is in it
    d = boot.difference("sllm", "lm")
    assert d.estimate == pytest.approx(0.05) and d.low == pytest.approx(0.05) and d.high == pytest.approx(0.05)
    with pytest.raises(ValueError, match="documents"):
        stats.PairedBootstrap({"m": np.zeros((2, 5))}, n_bytes)
