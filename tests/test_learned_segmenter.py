"""The learned segmenter: contract in both modes, streaming causality, length control, DP, folders."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from segsllm.segment.samples import all_texts

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLE_TEXTS = all_texts()[:4]


@pytest.fixture(scope="module")
def splitter_dir(tokenizer, tmp_path_factory):
    """A tiny random predictor saved as a splitter folder; its threshold cuts ~1 token in 4."""
    import torch

    from segsllm.config.splitter import BoundaryPredictorConfig
    from segsllm.data.tokenizer import encode
    from segsllm.models.boundary import BoundaryPredictor

    torch.manual_seed(0)
    cfg = BoundaryPredictorConfig(vocab_size=len(tokenizer), d_model=16, n_layers=3, kernel_size=3,
                                  dilations=[1, 2, 4], lookahead=2, dropout=0.0, pad_id=0, max_len=12,
                                  target_len=4.0, decode="viterbi")
    model = BoundaryPredictor(cfg)
    z = np.concatenate(model.document_logits([np.array(encode(tokenizer, t)) for t in SAMPLE_TEXTS]))
    model.config = dataclasses.replace(cfg, threshold=float(np.quantile(z, 0.75)),
                                       viterbi_penalty=-float(np.median(z)))
    out = tmp_path_factory.mktemp("splitter")
    model.save_pretrained(out, tokenizer=tokenizer)
    return out


def _docs(tokenizer):
    from segsllm.data.tokenizer import encode

    return [np.array(encode(tokenizer, t), dtype=np.int64) for t in SAMPLE_TEXTS]


@pytest.mark.parametrize("extra", ["", ",decode=threshold", ",mode=stream"])
def test_conformance_kit_passes_in_every_mode(splitter_dir, tokenizer, extra):
    from segsllm.segment import build_segmenter
    from segsllm.segment.testing import check_segmenter

    seg = build_segmenter(f"learned:{splitter_dir}{extra}", tokenizer=tokenizer)
    assert seg.max_len == 12 and seg.effective_decode == ("viterbi" if not extra else "threshold")
    check_segmenter(seg, max_examples=25)


def test_spec_round_trip_and_config_max_len(splitter_dir, tokenizer):
    from segsllm.segment import build_segmenter

    seg = build_segmenter(f"learned:{splitter_dir},mode=stream", tokenizer=tokenizer)
    assert seg.spec() == f"learned:path={splitter_dir},mode=stream"
    assert build_segmenter(seg.spec()).params() == seg.params()
    capped = build_segmenter(f"learned:{splitter_dir}", max_len=6)  # a command's segmenter.max_len
    assert capped.max_len == 6
    for ends in capped.segment_batch(_docs(tokenizer)):
        assert np.diff(ends, prepend=0).max() <= 6


# --------------------------------------------------------------------------- causality


def assert_causal(seg, docs, lookahead: int, trials: int = 12, seed: int = 0) -> None:
    """Decisions after tokens <= t must not change when tokens after t + lookahead change
    (checked for segment() and for the incremental StreamingSplitter)."""
    rng = np.random.default_rng(seed)
    vocab = seg.config.vocab_size
    for ids in docs:
        base = seg.segment(ids)
        for t in rng.choice(len(ids) - lookahead - 1, size=min(trials, len(ids) - lookahead - 1), replace=False):
            changed = ids.copy()
            tail = slice(t + lookahead + 1, None)
            changed[tail] = rng.integers(0, vocab, size=changed[tail].size)
            other = seg.segment(changed)
            assert np.array_equal(base[base <= t + 1], other[other <= t + 1]), (
                f"decisions up to token {t} changed when tokens after {t + lookahead} changed"
            )
        stream, committed = seg.stream(), []
        for i, tok in enumerate(ids.tolist()):
            committed += stream.push([tok]).tolist()
            t = i - lookahead  # every decision up to t is final now
            assert committed == [e for e in base.tolist() if e <= t + 1], f"stream differs at token {i}"
        assert committed + stream.finish().tolist() == base.tolist()


def test_streaming_mode_depends_only_on_tokens_up_to_t_plus_lookahead(splitter_dir, tokenizer):
    from segsllm.segment import build_segmenter

    seg = build_segmenter(f"learned:{splitter_dir},mode=stream", tokenizer=tokenizer)
    assert seg.lookahead == 2
    assert_causal(seg, _docs(tokenizer), seg.lookahead)


def restricted_copy(folder, cut_at: str, tokenizer, out):
    """A splitter folder's predictor saved again with ``config.cut_at`` set."""
    from segsllm.models.loading import load_artifact

    model = load_artifact("boundary_predictor", str(folder)).model
    model.config = dataclasses.replace(model.config, cut_at=cut_at)
    model.save_pretrained(out, tokenizer=tokenizer)
    return out


@pytest.fixture(scope="module")
def fixed_merge_dir(splitter_dir, tokenizer, tmp_path_factory):
    """The same predictor, allowed to cut only where fixed:k=3 cuts (config.cut_at)."""
    return restricted_copy(splitter_dir, "fixed:k=3", tokenizer, tmp_path_factory.mktemp("splitter-cut-at"))


@pytest.mark.parametrize("extra", ["", ",decode=threshold", ",mode=stream"])
def test_a_cut_at_splitter_cuts_only_where_its_rule_does(fixed_merge_dir, splitter_dir, tokenizer, extra):
    """Every cut is a multiple of 3 (or the document's end); the rule forbids, it does not add."""
    from segsllm.segment import build_segmenter
    from segsllm.segment.testing import check_segmenter

    seg = build_segmenter(f"learned:{fixed_merge_dir}{extra}", tokenizer=tokenizer)
    free = build_segmenter(f"learned:{splitter_dir}{extra}", tokenizer=tokenizer)
    check_segmenter(seg, max_examples=10)
    n_cut = n_free = 0
    for ids, ends, other in zip(_docs(tokenizer), seg.segment_batch(_docs(tokenizer)),
                                free.segment_batch(_docs(tokenizer)), strict=True):
        inner = ends[:-1]
        assert np.all(inner % 3 == 0), inner
        assert ends[-1] == len(ids)
        n_cut, n_free = n_cut + len(ends), n_free + len(other)
        if extra:  # threshold decoding: the free splitter's cuts at multiples of 3 all stay
            assert {e for e in other[:-1].tolist() if e % 3 == 0} <= set(inner.tolist())
    assert 0 < n_cut < n_free


def test_a_cut_at_splitter_streams_causally(fixed_merge_dir, tokenizer):
    from segsllm.segment import build_segmenter

    seg = build_segmenter(f"learned:{fixed_merge_dir},mode=stream", tokenizer=tokenizer)
    assert_causal(seg, _docs(tokenizer), seg.lookahead)


def test_causality_check_fails_when_the_lookahead_is_violated(splitter_dir, tokenizer):
    """The check is not vacuous: claiming one token less lookahead than the model has fails."""
    from segsllm.segment import build_segmenter

    seg = build_segmenter(f"learned:{splitter_dir},mode=stream", tokenizer=tokenizer)
    with pytest.raises(AssertionError, match=r"changed|differs"):
        assert_causal(seg, _docs(tokenizer), seg.lookahead - 1, trials=40)


def test_predictor_receptive_field_is_exact(tokenizer):
    import torch

    from segsllm.config.splitter import BoundaryPredictorConfig
    from segsllm.models.boundary import BoundaryPredictor

    torch.manual_seed(1)
    cfg = BoundaryPredictorConfig(vocab_size=64, d_model=8, n_layers=3, kernel_size=3, dilations=[1, 2, 4],
                                  lookahead=3, dropout=0.0)
    model = BoundaryPredictor(cfg).eval()
    ids = torch.randint(0, 64, (1, 80))
    with torch.no_grad():
        base = model(ids)[0]
        for t in (5, 30, 60):
            after = ids.clone()
            after[0, t + cfg.lookahead + 1 :] = (after[0, t + cfg.lookahead + 1 :] + 7) % 64
            before = ids.clone()
            cut = max(t - cfg.left_context, 0)
            before[0, :cut] = (before[0, :cut] + 7) % 64
            assert torch.equal(model(after)[0, : t + 1], base[: t + 1])
            assert torch.equal(model(before)[0, t:], base[t:])
            edge = ids.clone()
            edge[0, t + cfg.lookahead] = (edge[0, t + cfg.lookahead] + 7) % 64
            assert not torch.equal(model(edge)[0, t], base[t])  # the lookahead is really used
    docs = [ids[0, :50].numpy(), ids[0].numpy()]
    alone = model.document_logits(docs[1:], piece_tokens=16, stream_tokens=40)[0]
    assert np.allclose(model.document_logits(docs)[1], alone, atol=1e-5)  # pieces and neighbours do not matter
    assert np.allclose(alone, base.numpy(), atol=1e-5)


# --------------------------------------------------------------------------- length control


def test_calibration_hits_the_target_on_synthetic_data():
    from segsllm.segment.learned import (
        balanced_mean,
        length_prior,
        mean_length,
        threshold_decode,
        viterbi_decode,
    )
    from segsllm.train.splitter_stage import calibrate

    rng = np.random.default_rng(0)
    # Two "domains": boundaries every ~5 and every ~12 tokens, noisy logits.
    logits = {}
    for name, period in (("a", 5), ("b", 12)):
        docs = []
        for n in rng.integers(50, 400, size=20):
            z = rng.normal(-3, 1.0, size=n)
            z[rng.random(n) < 1 / period] += 6
            docs.append(z.astype(np.float32))
        logits[name] = docs

    class Probe:
        max_len = 24
        config = type("C", (), {"prior_weight": 1.0, "target_len": 8.0, "decode": "viterbi"})()
        _log_prior = length_prior(8.0, 24, 2.0)

    for target in (4.0, 8.0, 16.0):
        Probe._log_prior = length_prior(target, 24, 2.0)
        cal = calibrate(Probe(), logits, target)
        got = balanced_mean({d: mean_length(threshold_decode(z, cal["threshold"], 24)) for d, z in logits.items()})
        assert abs(got / target - 1) < 0.03, (target, got)
        got = balanced_mean({d: mean_length(viterbi_decode(z, 24, Probe._log_prior, 1.0, cal["viterbi_penalty"]))
                             for d, z in logits.items()})
        assert abs(got / target - 1) < 0.05, (target, got)


def test_hazard_odds_by_hand_and_a_hazard_decode_that_follows_the_prior():
    from segsllm.segment.learned import hazard_decode, length_prior, log_hazard_odds

    odds = log_hazard_odds(np.log([0.5, 0.25, 0.25]))  # h = 0.5, 0.5, 1
    assert odds[:2] == pytest.approx([0.0, 0.0]) and odds[2] == np.inf
    # Flat logits: every segment ends at the first length whose hazard clears the threshold.
    lp = length_prior(6.0, 20, 32.0)  # peaked at 6
    lo = log_hazard_odds(lp)
    tau = float((lo[5] + lo[4]) / 2)  # cleared from length 6 on (the odds grow with l)
    ends = hazard_decode([np.zeros(30, np.float32)], tau, 20, lo)[0]
    assert np.diff(np.r_[0, ends]).tolist() == [6, 6, 6, 6, 6]
    # A strong logit cuts early; a forbidden one (-inf) is skipped until max_len forces a cut.
    z = np.zeros(30, np.float32)
    z[2] = 1e3
    assert hazard_decode([z], tau, 20, lo)[0][:2].tolist() == [3, 9]
    assert hazard_decode([np.full(25, -np.inf, np.float32)], tau, 10, lo)[0].tolist() == [10, 20, 25]
    # Causal: the cuts of a prefix are the whole document's cuts inside it.
    rng = np.random.default_rng(0)
    doc = rng.normal(0, 2, 200).astype(np.float32)
    full = hazard_decode([doc], tau, 20, lo)[0]
    for t in (17, 64, 133):
        part = hazard_decode([doc[:t]], tau, 20, lo)[0]
        assert part[:-1].tolist() == full[full < t].tolist()


def test_calibration_hits_the_target_with_the_hazard_decode():
    from segsllm.segment.learned import (
        balanced_mean,
        hazard_decode,
        length_prior,
        log_hazard_odds,
        mean_length,
    )
    from segsllm.train.splitter_stage import calibrate

    rng = np.random.default_rng(1)
    logits = {name: [rng.normal(-2, 1.5, size=int(n)).astype(np.float32) for n in rng.integers(50, 300, size=15)]
              for name in ("a", "b")}
    for target in (6.0, 16.0):
        class Probe:
            max_len = 32
            config = type("C", (), {"prior_weight": 1.0, "target_len": target, "decode": "hazard"})()
            _log_prior = length_prior(target, 32, 8.0)
            _log_odds = log_hazard_odds(_log_prior)

        cal = calibrate(Probe(), logits, target)
        got = balanced_mean({d: mean_length(hazard_decode(z, cal["hazard_threshold"], 32, Probe._log_odds))
                             for d, z in logits.items()})
        assert abs(got / target - 1) < 0.05, (target, got)


def _brute_force(n: int, L: int, score) -> tuple[float, tuple[int, ...]]:
    best = (-np.inf, ())
    for mask in itertools.product([0, 1], repeat=n - 1):
        ends = (*(i + 1 for i, m in enumerate(mask) if m), n)
        lengths = np.diff((0, *ends))
        if lengths.max() > L:
            continue
        total = sum(score(e - ln, e, e == n) for e, ln in zip(ends, lengths, strict=True))
        if total > best[0] + 1e-12:
            best = (total, ends)
    return best


def test_dynamic_programme_matches_brute_force():
    from segsllm.segment.learned import best_segmentation
    from segsllm.train.teachers import VAETeacher

    rng = np.random.default_rng(3)
    for n, L, lam in ((9, 4, 0.7), (10, 3, 2.0), (7, 7, 0.0), (1, 3, 1.0)):
        cost = rng.random((n, L)) * 5  # cost[s, l-1] of span [s, s+l), hand-made
        cost[n - np.arange(1, L + 1)[None, :] < np.arange(n)[:, None]] = np.inf  # past the end
        got = best_segmentation([n], L, span_score=[VAETeacher.end_indexed(cost)], penalty=lam)[0]
        want = _brute_force(n, L, lambda s, e, last, cost=cost, lam=lam: -cost[s, e - s - 1] - lam)
        assert tuple(got.tolist()) == want[1], (n, L, lam)
        # Viterbi form: cut logits + length prior; the document's end is not scored.
        z, prior = rng.normal(size=n), rng.normal(size=L)
        got = best_segmentation([n], L, end_score=[z], len_score=prior, penalty=lam)[0]
        want = _brute_force(n, L, lambda s, e, last, z=z, prior=prior, lam=lam:
                            (0.0 if last else z[e - 1]) + prior[e - s - 1] - lam)
        assert tuple(got.tolist()) == want[1], (n, L, lam)
    # Several documents at once give the same answers as one by one.
    docs = [rng.normal(size=k) for k in (5, 17, 1, 9)]
    prior = rng.normal(size=6)
    together = best_segmentation([len(z) for z in docs], 6, end_score=docs, len_score=prior, penalty=0.3, rows=2)
    for z, ends in zip(docs, together, strict=True):
        assert np.array_equal(ends, best_segmentation([len(z)], 6, end_score=[z], len_score=prior, penalty=0.3)[0])


# --------------------------------------------------------------------------- folders


def test_save_load_round_trip_and_bad_folders(splitter_dir, tokenizer, tmp_path):
    import torch

    from segsllm.data.tokenizer import train_bpe
    from segsllm.models.boundary import BoundaryPredictor
    from segsllm.segment import SegmenterError, build_segmenter

    model = BoundaryPredictor.from_pretrained(splitter_dir, tokenizer=tokenizer)
    again = BoundaryPredictor.from_pretrained(splitter_dir)
    ids = torch.from_numpy(_docs(tokenizer)[0])[None]
    assert torch.equal(model(ids), again(ids)) and model.config == again.config
    assert model.config.threshold != 0.0  # calibration travels in config.json
    seg = build_segmenter(f"learned:{splitter_dir}")
    assert seg.tokenizer is not None  # the folder's own tokenizer
    assert "".join(seg.split_text(SAMPLE_TEXTS[0])) == SAMPLE_TEXTS[0]

    other = train_bpe(["completely different text " * 50], vocab_size=300)
    with pytest.raises(SegmenterError, match="another tokenizer"):
        build_segmenter(f"learned:{splitter_dir}", tokenizer=other)
    with pytest.raises(SegmenterError, match="no splitter folder"):
        build_segmenter(f"learned:{tmp_path / 'missing'}")
    with pytest.raises(SegmenterError, match="outside the vocabulary"):
        seg.segment([0, len(tokenizer) + 5])
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in splitter_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"\0" * (broken / "model.safetensors").stat().st_size)
    with pytest.raises(SegmenterError, match="corrupted"):
        build_segmenter(f"learned:{broken}")
    with pytest.raises(SegmenterError, match="mode must be"):
        build_segmenter(f"learned:{splitter_dir},mode=online")


def test_a_punctuation_cut_at_splitter_decodes_in_batch_only(splitter_dir, tokenizer, tmp_path):
    """Punctuation moves its boundary past the whitespace after it (it looks ahead), so the
    stream mode, which promises causality, is refused in one line; batch mode works."""
    from segsllm.models.loading import load_artifact
    from segsllm.segment import SegmenterError, build_segmenter

    model = load_artifact("boundary_predictor", str(splitter_dir)).model
    model.config = dataclasses.replace(model.config, cut_at="punctuation")
    model.save_pretrained(tmp_path, tokenizer=tokenizer)
    punct = build_segmenter("punctuation", tokenizer=tokenizer, max_len=12)
    for ids, ends, rule in zip(_docs(tokenizer), build_segmenter(f"learned:{tmp_path}", tokenizer=tokenizer)
                               .segment_batch(_docs(tokenizer)), punct.segment_batch(_docs(tokenizer)), strict=True):
        assert set(ends.tolist()) <= set(rule.tolist()) | {len(ids)}
    with pytest.raises(SegmenterError, match="batch mode only"):
        build_segmenter(f"learned:{tmp_path},mode=stream", tokenizer=tokenizer)


def test_cut_at_rules_are_the_built_in_ones(tokenizer):
    """The same cuts as the registry's rule; anything else is refused in one line."""
    from segsllm.segment import SegmenterError, build_segmenter
    from segsllm.segment.learned import rule_segmenter

    ids = _docs(tokenizer)
    for spec in ("fixed:k=5", "punctuation", "lines"):
        mine, theirs = rule_segmenter(spec, tokenizer, 12), build_segmenter(spec, tokenizer=tokenizer, max_len=12)
        assert [e.tolist() for e in mine.segment_batch(ids)] == [e.tolist() for e in theirs.segment_batch(ids)]
    with pytest.raises(SegmenterError, match="restricted to fixed, punctuation, lines"):
        rule_segmenter("segsllm.segment.random_span:RandomSpanSegmenter:max_len=5")


@pytest.fixture(scope="module")
def lookahead0_dir(tokenizer, tmp_path_factory):
    """A tiny random predictor with lookahead 0 (threshold ~1 cut in 4)."""
    import torch

    from segsllm.config.splitter import BoundaryPredictorConfig
    from segsllm.data.tokenizer import encode
    from segsllm.models.boundary import BoundaryPredictor

    torch.manual_seed(1)
    cfg = BoundaryPredictorConfig(vocab_size=len(tokenizer), d_model=16, n_layers=2, kernel_size=3,
                                  dilations=[1, 2], lookahead=0, dropout=0.0, pad_id=0, max_len=12,
                                  target_len=4.0, decode="threshold")
    model = BoundaryPredictor(cfg)
    z = np.concatenate(model.document_logits([np.array(encode(tokenizer, t)) for t in SAMPLE_TEXTS]))
    model.config = dataclasses.replace(cfg, threshold=float(np.quantile(z, 0.75)))
    out = tmp_path_factory.mktemp("splitter-la0")
    model.save_pretrained(out, tokenizer=tokenizer)
    return out


@pytest.mark.parametrize("which,extra,causal", [("la0", "", True), ("la0", ",decode=hazard", True),
                                                ("la0", ",decode=viterbi", False), ("la2", ",decode=threshold", False)])
def test_the_causal_flag_of_a_learned_splitter(lookahead0_dir, splitter_dir, tokenizer, which, extra, causal):
    """Causal = lookahead 0 and threshold or hazard decoding; then later tokens never move a cut (the
    same check finds the moves of a lookahead-2 or a Viterbi splitter)."""
    from test_free_boundaries import later_tokens_move_earlier_cuts

    from segsllm.segment import build_segmenter

    folder = lookahead0_dir if which == "la0" else splitter_dir
    seg = build_segmenter(f"learned:{folder}{extra}", tokenizer=tokenizer)
    assert seg.causal is causal
    assert later_tokens_move_earlier_cuts(seg, _docs(tokenizer)[:3], np.random.default_rng(0)) is (not causal)


@pytest.fixture(scope="module")
def lookahead0_lines_dir(lookahead0_dir, tokenizer, tmp_path_factory):
    """The lookahead-0 predictor, allowed to cut only where lines (max_len 5) cuts."""
    return restricted_copy(lookahead0_dir, "lines:max_len=5", tokenizer, tmp_path_factory.mktemp("splitter-la0-lines"))


@pytest.mark.parametrize("which,extra", [("la0", ""), ("la0", ",decode=hazard"), ("lines", ""),
                                         ("lines", ",decode=hazard")])
def test_a_causal_learned_splitters_cutter_takes_its_batch_decisions(lookahead0_dir, lookahead0_lines_dir,
                                                                       tokenizer, which, extra):
    """Token by token (one predictor step over the last left_context tokens each) = the batch cuts;
    started after a context = pushed that context, then a segment ended."""
    from test_free_boundaries import cutter_cuts

    from segsllm.segment import build_segmenter

    folder = lookahead0_dir if which == "la0" else lookahead0_lines_dir
    seg = build_segmenter(f"learned:{folder}{extra}", tokenizer=tokenizer)
    docs = _docs(tokenizer)
    n_cuts = 0
    for ids in docs:
        want = set(seg.segment(ids)[:-1].tolist())
        assert cutter_cuts(seg.cutter(), ids) == want
        n_cuts += len(want)
    assert n_cuts > 3 * len(docs)
    ctx, rest = docs[0][:20], docs[1]
    started, pushed = seg.cutter(), seg.cutter()
    started.start(ctx.tolist())
    for t in ctx.tolist():
        pushed.push(t)
    pushed.end_segment()
    assert cutter_cuts(started, rest) == cutter_cuts(pushed, rest)


def test_a_logit_stream_gives_the_forward_passes_logits(lookahead0_dir, splitter_dir):
    """Token by token from cached histories = the convolution over the whole document, also
    after a reset; a predictor that looks ahead cannot stream its logits at once."""
    from segsllm.models.boundary import BoundaryPredictor

    model = BoundaryPredictor.from_pretrained(lookahead0_dir)
    stream = model.logit_stream()
    rng = np.random.default_rng(0)
    for n in (5, 90):  # shorter and longer than the receptive field (left_context 6)
        ids = rng.integers(3, model.config.vocab_size, n)
        want = model.document_logits([ids])[0]
        stream.reset()
        got = np.array([stream.push(int(t)) for t in ids])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert np.ptp(want) > 0.1  # the logits do vary with the tokens
    with pytest.raises(ValueError, match="lookahead 0"):
        BoundaryPredictor.from_pretrained(splitter_dir).logit_stream()


def test_a_learned_splitter_that_looks_ahead_has_no_cutter(lookahead0_dir, splitter_dir, tokenizer):
    from segsllm.errors import SegmenterError
    from segsllm.segment import build_segmenter

    for spec in (f"learned:{lookahead0_dir},decode=viterbi", f"learned:{splitter_dir},decode=threshold"):
        with pytest.raises(SegmenterError, match="not causal"):
            build_segmenter(spec, tokenizer=tokenizer).cutter()


def test_a_learned_splitters_decisions_are_priced(lookahead0_dir, tokenizer):
    """splitter_macs = what torch's FlopCounterMode counts per position of the predictor; a
    free-boundary generation pays it once per generated token; a rule costs nothing."""
    import torch
    from test_bench_speed import PROMPT, _sllm
    from torch.utils.flop_counter import FlopCounterMode

    from segsllm.bench.flops import Pricer, splitter_macs
    from segsllm.generate import generate_sllm
    from segsllm.segment import build_segmenter

    seg = build_segmenter(f"learned:{lookahead0_dir}", tokenizer=tokenizer)
    T = 2000
    with FlopCounterMode(display=False) as counter:
        seg.model(torch.randint(3, len(tokenizer), (1, T)))
    assert 2 * T * splitter_macs(seg) == pytest.approx(counter.get_total_flops(), rel=0.02)
    assert splitter_macs(build_segmenter("fixed:k=4", tokenizer=tokenizer)) == 0
    model, _ = _sllm(tokenizer)
    model.config.boundaries = "segmenter"
    run = generate_sllm(model, tokenizer, seg, PROMPT, 10, ignore_stop=True)
    acc = Pricer(model, seg).account(run)
    assert acc.splitter == 2 * splitter_macs(seg) * 10 and acc.generation > acc.splitter > 0
    assert Pricer(model).account(run).splitter == 0  # priced only when the segmenter is named
    # The prompt's last left_context tokens fill the cutter's states once: prefill, not generation.
    from segsllm.data.tokenizer import encode

    primed = min(len(encode(tokenizer, PROMPT)), seg.model.left_context)
    assert acc.prefill - Pricer(model).account(run).prefill == 2 * splitter_macs(seg) * primed > 0
