"""The sllm teacher: span costs are what the SLLM pays, causal in the prefix; the DP is exact."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import tiny_backbone, tiny_vae

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sllm(tokenizer):
    from segsllm.config.sllm import SLLMConfig
    from segsllm.models.sllm import SLLM

    torch.manual_seed(0)
    vae = tiny_vae(len(tokenizer), 8, d_model=16, n_heads=2)
    backbone = tiny_backbone(vocab_size=len(tokenizer), hidden_size=16, num_layers=1, num_heads=2, max_positions=64)
    model = SLLM(SLLMConfig(max_segments=4), vae, backbone.model).eval()
    with torch.no_grad():  # a stop head that is not ~constant, so stop costs differ per position
        model.stop_head.weight.normal_(0, 1.0)
    return model


@pytest.fixture(scope="module")
def ids(tokenizer, sample_texts):
    from segsllm.data.tokenizer import encode

    return np.array(encode(tokenizer, sample_texts["prose"]), dtype=np.int64)[:40]


def _teacher(sllm, tokenizer, **kw):
    from segsllm.segment import build_segmenter
    from segsllm.train.sllm_teacher import SLLMTeacher

    seg = build_segmenter("punctuation", tokenizer=tokenizer, max_len=8)
    return SLLMTeacher(sllm, seg, max_span=kw.pop("max_span", 6), target_len=4.0, batch_tokens=kw.pop("bt", 512), **kw)


def test_span_costs_equal_the_sllms_own_decoder_and_stop_costs(sllm, tokenizer, ids):
    import torch.nn.functional as F

    teacher = _teacher(sllm, tokenizer)
    ends = teacher.segmenter.segment(ids)
    z, stop = teacher.prefix_states([ids], [ends])
    costs = teacher.span_costs([ids], z)[0]
    assert costs.shape == (len(ids), 6) and np.isinf(costs[-1, 1:]).all() and np.isfinite(costs[:-5]).all()
    # At an S_t boundary the prefix state is exactly the SLLM's teacher-forced state.
    k = 2
    e = int(ends[k - 1])
    segs = np.split(ids, ends[:-1])
    L = max(len(x) for x in segs[:4])
    grid = torch.zeros(1, 4, L, dtype=torch.long)
    lens = torch.zeros(1, 4, dtype=torch.long)
    for i, x in enumerate(segs[:4]):
        grid[0, i, : len(x)] = torch.from_numpy(x)
        lens[0, i] = len(x)
    with torch.no_grad():
        out = sllm(grid, lens, return_details=True)
        want_z = sllm.predict_latent(out["hidden"][0, k]).numpy()
        want_stop = float(F.softplus(out["stop_logits"][0, k]))
    assert np.allclose(z[0][e], want_z, atol=1e-4) and stop[0][e] == pytest.approx(want_stop, abs=1e-4)
    # Every length's cost equals the decoder NLL (+EOS) of that span alone (one causal pass = many).
    for length in (1, 3, 6):
        span = torch.from_numpy(ids[e : e + length])[None]
        with torch.no_grad():
            nll = sllm.decode_nll(span, torch.tensor([length]), torch.from_numpy(z[0][e])[None]).seg
        assert costs[e, length - 1] == pytest.approx(float(nll[0]), abs=1e-3), length
    # The table the DP reads: continue cost after token t is the stop cost at t + 1.
    full = teacher.scores([ids])[0]
    assert full.shape == (len(ids), 7) and full[e - 1, 6] == pytest.approx(want_stop, abs=1e-4) and full[-1, 6] == 0


def test_inside_a_segment_the_cached_prefix_gives_the_direct_backbone_state(sllm, tokenizer, ids):
    """Positions inside an S_t segment continue a cached prefix by one step: the state must
    be the one a single backbone call over [start, earlier segments, partial piece] gives,
    in every SLLM window (max_segments = 4 here, so the chunk spans several)."""
    import torch.nn.functional as F

    teacher = _teacher(sllm, tokenizer, bt=64)  # small batches: several prefix groups per call
    ends = teacher.segmenter.segment(ids)
    z, stop = teacher.prefix_states([ids], [ends])
    starts = np.concatenate([[0], ends[:-1]])
    checked = 0
    for s in range(len(ids)):
        k = int(np.searchsorted(ends, s, side="right"))
        b = int(ends[k - 1]) if k else 0
        pieces = [ids[a:e] for a, e in zip(starts[(k // 4) * 4 : k], ends[(k // 4) * 4 : k], strict=True)]
        if s > b:
            pieces.append(ids[b:s])
        with torch.no_grad():
            vecs = [sllm.start_inputs(1)[0]]
            for p in pieces:
                t = torch.from_numpy(p)[None]
                vecs.append(sllm.embed_segments(t, torch.tensor([len(p)])))
            h, _ = sllm.run_backbone(torch.cat(vecs)[None])  # (1, P, H)
            want_z = sllm.predict_latent(h[0, -1]).numpy()
            want_stop = float(F.softplus(sllm.stop_logits(h[0, -1])))
        assert np.allclose(z[0][s], want_z, atol=1e-4), s
        assert stop[0][s] == pytest.approx(want_stop, abs=1e-4), s
        checked += s > b
    assert checked > 10  # most positions sit inside a segment


def test_the_latent_for_a_span_cannot_see_that_span_or_later(sllm, tokenizer, ids):
    teacher = _teacher(sllm, tokenizer)
    ends = teacher.segmenter.segment(ids)
    s0 = int(ends[2]) + 1  # inside an S_t segment: the partial piece is part of the prefix
    other = ids.copy()
    rng = np.random.default_rng(0)
    other[s0:] = rng.integers(5, len(tokenizer), size=len(ids) - s0)  # new tokens from s0 on
    (za,), (sa,) = teacher.prefix_states([ids], [ends])
    (zb,), (sb,) = teacher.prefix_states([other], [ends])  # S_t's boundaries held fixed
    assert np.allclose(za[: s0 + 1], zb[: s0 + 1], atol=1e-5)  # z_s for every s <= s0 is unchanged
    assert np.allclose(sa[: s0 + 1], sb[: s0 + 1], atol=1e-5)
    assert not np.allclose(za[s0 + 1 :], zb[s0 + 1 :], atol=1e-3)  # the check can fail: later latents moved
    # The cost of span k changes only through span k's own tokens, never its latent.
    ca = teacher.span_costs([ids], [za])[0]
    cb = teacher.span_costs([other], [zb])[0]
    assert np.allclose(ca[: s0 - 6 + 1], cb[: s0 - 6 + 1], atol=1e-4)  # spans that end before s0


def _brute_force(span, after, penalty, prior, L):
    n = span.shape[0]
    best = (np.inf, None)
    for k in range(1, n + 1):
        for cuts in itertools.combinations(range(1, n), k - 1):
            ends = np.array([*cuts, n])
            if np.diff(ends, prepend=0).max() > L:
                continue
            from segsllm.train.sllm_teacher import segmentation_cost

            best = min(best, (segmentation_cost(span, after, ends, penalty, prior), tuple(ends)), key=lambda x: x[0])
    return best


def test_dp_picks_the_lowest_cost_segmentation_of_a_hand_built_table(sllm, tokenizer):
    from segsllm.segment.learned import length_prior
    from segsllm.train.sllm_teacher import segmentation_cost

    teacher = _teacher(sllm, tokenizer, max_span=3)
    # A hand-built table: spans [0,2), [2,3), [3,6) are cheap, everything else dear.
    n, L = 6, 3
    span = np.full((n, L), 9.0, dtype=np.float32)
    span[0, 1], span[2, 0], span[3, 2] = 1.0, 0.5, 1.5
    after = np.zeros(n, dtype=np.float32)
    table = np.concatenate([span, after[:, None]], 1)
    teacher.prior_weight = 0.0
    got = teacher.apply([np.zeros(n)], [table], 0.0, L)[0]
    assert got.tolist() == [2, 3, 6]
    after[1] = 20.0  # now continuing after token 1 is dear: the cut at 2 should go
    table = np.concatenate([span, after[:, None]], 1)
    got = teacher.apply([np.zeros(n)], [table], 0.0, L)[0]
    assert 2 not in got.tolist()
    # Random tables, with prior and penalty: the DP's choice is the brute-force optimum.
    rng = np.random.default_rng(1)
    teacher.prior_weight = 0.7
    prior = 0.7 * length_prior(4.0, L)
    for trial in range(20):
        n = int(rng.integers(1, 8))
        span = rng.uniform(0, 5, size=(n, L)).astype(np.float32)
        for s in range(n):
            span[s, n - s :] = np.inf
        after = rng.uniform(0, 2, size=n).astype(np.float32)
        after[-1] = 0
        pen = float(rng.uniform(-1, 1))
        got = teacher.apply([np.zeros(n)], [np.concatenate([span, after[:, None]], 1)], pen, L)[0]
        cost, ends = _brute_force(span, after, pen, prior, L)
        assert segmentation_cost(span, after, got, pen, prior) == pytest.approx(cost, abs=1e-4), (trial, got, ends)


def test_fit_hits_the_target_length(sllm, tokenizer, ids):

    teacher = _teacher(sllm, tokenizer)
    chunks = [ids[:30], ids[10:40]]
    scores = teacher.scores(chunks)
    fit = teacher.fit(chunks, scores, 4.0, 8)
    assert abs(fit.mean_len / 4.0 - 1) < 0.1 and np.isfinite(fit.param)
    for c, e in zip(chunks, fit.ends, strict=True):
        assert e[-1] == len(c) and np.diff(e, prepend=0).max() <= 6


def test_merge_only_cuts_fall_on_the_rule_and_are_the_cheapest_such(sllm, tokenizer, sample_texts):
    from segsllm.data.tokenizer import encode
    from segsllm.errors import ConfigError
    from segsllm.segment import build_segmenter
    from segsllm.segment.learned import length_prior
    from segsllm.train.sllm_teacher import segmentation_cost

    rule = build_segmenter("punctuation", tokenizer=tokenizer, max_len=6)
    free, merge = _teacher(sllm, tokenizer), _teacher(sllm, tokenizer, cut_at=rule)
    assert "cut_at" not in free.describe() and merge.describe()["cut_at"] == rule.spec()
    chunk = np.array(encode(tokenizer, sample_texts["csv"]), dtype=np.int64)[:16]  # commas and newlines
    rule_ends = set(rule.segment_batch([chunk])[0].tolist())
    assert 4 <= len(rule_ends) < len(chunk)  # the rule cuts often, not everywhere
    table = merge.scores([chunk])[0]
    span, after = table[:, :6], table[:, 6]
    prior = merge.prior_weight * length_prior(4.0, 6)
    for penalty in (-50.0, 0.0, 5.0):
        got = merge.apply([chunk], [table], penalty, 6)[0].tolist()
        assert set(got) <= rule_ends | {len(chunk)}
        # The brute-force optimum over segmentations that cut only on the rule.
        best = min(
            segmentation_cost(span, after, np.array([*cuts, len(chunk)]), penalty, prior)
            for k in range(len(rule_ends))
            for cuts in itertools.combinations(sorted(rule_ends - {len(chunk)}), k)
            if np.diff([*cuts, len(chunk)], prepend=0).max() <= 6
        )
        assert segmentation_cost(span, after, np.array(got), penalty, prior) == pytest.approx(best, abs=1e-4)
    # Unrestricted, a segment bonus this large cuts after every token, off the rule too.
    assert free.apply([chunk], [table], -50.0, 6)[0].tolist() == list(range(1, len(chunk) + 1))
    with pytest.raises(ConfigError, match="longer than max_span"):
        _teacher(sllm, tokenizer, cut_at=build_segmenter("punctuation", tokenizer=tokenizer, max_len=8))
