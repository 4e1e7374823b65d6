"""Free boundaries (``sllm.boundaries=segmenter``): a causal segmenter ends segments, so the
SLLM pays nothing for them (docs/DESIGN.md §5).

What must hold: the ``causal`` flag is true exactly where a cut cannot depend on later tokens
(checked by changing later tokens, so the check itself can fail: it does for punctuation);
a free-boundary SLLM's token distributions are normalised without EOS, its last segment
keeps EOS, it still cannot see the future; generation cuts where the segmenter cuts.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_sllm import V, batch_of, leaky_body_forward, random_doc, tiny_sllm  # noqa: E402

from segsllm.errors import ConfigError, SegmenterError  # noqa: E402
from segsllm.models import sllm as sllm_mod  # noqa: E402
from segsllm.segment import build_segmenter  # noqa: E402
from segsllm.segment.base import (  # noqa: E402
    HistoryCutter,
    MaxLenCapped,
    Segmenter,
    cuts_after,
    enforce_max_len,
)
from segsllm.segment.fixed import FixedSegmenter  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ATOL = 1e-5


def later_tokens_move_earlier_cuts(seg, docs, rng) -> bool:
    """Whether replacing tokens t.. ever changes a cut after one of tokens ..t-1 (an end
    offset <= t), over every t and a few permutations of the rest."""
    for ids in docs:
        full = seg.segment(ids)
        for t in range(1, len(ids) - 1):
            for _ in range(3):
                got = seg.segment(np.concatenate([ids[:t], rng.permutation(ids[t:])]))
                if not np.array_equal(full[full <= t], got[got <= t]):
                    return True
    return False


@pytest.fixture()
def text_docs(tokenizer):
    from conftest import SAMPLE_TEXTS

    from segsllm.data.tokenizer import encode

    return [np.asarray(encode(tokenizer, t), dtype=np.int64) for t in SAMPLE_TEXTS[:4]]


@pytest.mark.parametrize("spec,causal", [("fixed:k=5", True), ("lines", True), ("punctuation", False)])
def test_causal_flag_matches_what_later_tokens_do(tokenizer, text_docs, spec, causal):
    seg = build_segmenter(spec, tokenizer=tokenizer, max_len=12)
    assert seg.causal is causal
    moved = later_tokens_move_earlier_cuts(seg, text_docs, np.random.default_rng(0))
    # A causal segmenter's cuts never move; punctuation's do (it looks past its boundaries).
    assert moved is (not causal)


def test_random_spans_are_not_causal_and_capping_keeps_the_flag(tokenizer, text_docs):
    rnd = build_segmenter("segsllm.segment.random_span:RandomSpanSegmenter:max_len=6", tokenizer=tokenizer)
    assert rnd.causal is False  # seeded by the whole document's ids
    assert later_tokens_move_earlier_cuts(rnd, text_docs, np.random.default_rng(0))
    fixed = build_segmenter("fixed:k=4", tokenizer=tokenizer)
    assert MaxLenCapped(fixed, 3).causal is True
    assert MaxLenCapped(build_segmenter("punctuation", tokenizer=tokenizer), 3).causal is False


@pytest.mark.parametrize("spec", ["fixed:k=3", "lines"])
def test_cuts_after_agrees_with_the_whole_document(tokenizer, text_docs, spec):
    seg = build_segmenter(spec, tokenizer=tokenizer, max_len=10)
    for ids in text_docs:
        ends = set(seg.segment(ids)[:-1].tolist())
        got = {t for t in range(1, len(ids)) if cuts_after(seg, ids[:t].tolist())}
        assert got == ends


def cutter_cuts(cutter, ids) -> set[int]:
    """End offsets where ``cutter`` cuts, pushed the tokens of ``ids`` but the last (whose end
    is the document's)."""
    return {t + 1 for t, tok in enumerate(ids[:-1].tolist()) if cutter.push(tok)}


class EverySeventh(Segmenter):
    """A causal plug-in without a cutter of its own: cut after ids divisible by 7."""

    causal = True

    def __init__(self, max_len: int = 5) -> None:
        self.max_len = max_len

    def segment(self, ids):
        ids = np.asarray(ids, dtype=np.int64)
        cut = np.flatnonzero(ids % 7 == 0) + 1
        return enforce_max_len(np.unique(np.append(cut[cut < ids.size], ids.size)), self.max_len)


@pytest.mark.parametrize("make", [lambda tok: build_segmenter("fixed:k=3", tokenizer=tok),
                                  lambda tok: build_segmenter("fixed:k=3,max_len=5", tokenizer=tok),
                                  lambda tok: build_segmenter("lines", tokenizer=tok, max_len=7),
                                  lambda tok: MaxLenCapped(FixedSegmenter(k=9), 4),
                                  lambda tok: EverySeventh(max_len=5)],
                         ids=["fixed", "fixed-max-len", "lines", "capped", "plugin"])
def test_a_cutter_cuts_where_the_segmenter_cuts(tokenizer, text_docs, make):
    """Pushed a document token by token, a causal segmenter's cutter takes its batch decisions."""
    seg = make(tokenizer)
    for ids in text_docs:
        assert cutter_cuts(seg.cutter(), ids) == set(seg.segment(ids)[:-1].tolist())
    if isinstance(seg, EverySeventh):
        assert isinstance(seg.cutter(), HistoryCutter)  # the generic one


def test_a_cutter_restarts_its_run_where_a_segment_ended_outside_it(tokenizer):
    cutter = build_segmenter("fixed:k=4", tokenizer=tokenizer).cutter()
    assert [cutter.push(5) for _ in range(2)] == [False, False]
    cutter.end_segment()  # e.g. the decoder's budget ended the segment after two tokens
    assert [cutter.push(5) for _ in range(5)] == [False, False, False, True, False]
    cutter.start([5, 5, 5])  # a prompt: left context, then a fresh segment
    assert [cutter.push(5) for _ in range(4)] == [False, False, False, True]


@pytest.mark.parametrize("spec", ["punctuation", "segsllm.segment.random_span:RandomSpanSegmenter:max_len=6"])
def test_a_segmenter_that_looks_ahead_has_no_cutter(tokenizer, spec):
    with pytest.raises(SegmenterError, match="not causal"):
        build_segmenter(spec, tokenizer=tokenizer).cutter()


def test_cuts_after_refuses_a_segmenter_that_looks_ahead(tokenizer):
    with pytest.raises(SegmenterError, match="not causal"):
        cuts_after(build_segmenter("punctuation", tokenizer=tokenizer), [5, 6, 7])


# --------------------------------------------------------------------------- the model


def nll_of(model, docs):
    with torch.no_grad():
        b = batch_of(docs)
        return model(b["ids"], b["lengths"], is_last=b["is_last"], return_details=True)


def test_a_cut_segment_is_scored_without_eos_in_the_softmax():
    """Sum over every ordinary token as a non-final segment's last token: with free
    boundaries it is 1 less what the decoder gives pad and bos (EOS is not an option
    there); with EOS boundaries it is also less EOS's share."""
    rng = np.random.default_rng(1)
    prefix, rest = [5, 6, 7], random_doc(rng, 2)
    totals, specials = {}, {}
    for mode in ("segmenter", "eos"):
        model = tiny_sllm(boundaries=mode)
        head = nll_of(model, [[prefix, *rest]])  # the prefix as a whole segment, to subtract its tokens
        before = float(head["seg_nll"][0, 0] - head["seg_eos_nll"][0, 0])
        mass = 0.0
        for v in range(3, V):  # every ordinary token as the segment's last
            out = nll_of(model, [[[*prefix, v], *rest]])
            tokens = float(out["seg_nll"][0, 0] - out["seg_eos_nll"][0, 0])
            mass += math.exp(-(tokens - before))
        totals[mode], specials[mode] = mass, next_token_probs(model, prefix)
    cfg = model.vae.config
    specials_ids = [cfg.pad_id, cfg.bos_id]
    assert totals["segmenter"] == pytest.approx(1.0 - specials["segmenter"][specials_ids].sum(), abs=1e-4)
    assert totals["eos"] == pytest.approx(1.0 - specials["eos"][[*specials_ids, cfg.eos_id]].sum(), abs=1e-4)
    assert totals["segmenter"] > totals["eos"]


def next_token_probs(model, prefix):
    """The decoder's distribution after ``prefix`` in a document's first segment (V,):
    without EOS for a free-boundary model, with it otherwise."""
    with torch.no_grad():
        b = batch_of([[prefix]])
        h = model(b["ids"], b["lengths"], return_details=True)["hidden"][0, :1]  # (1, H): h_0
        latent = model.predict_latent(h)
        seg = torch.tensor([prefix])
        dec_in, mask, _ = model.vae.teacher_forcing(seg, torch.ones_like(seg, dtype=torch.bool))
        logits = model.vae.decoder(dec_in, latent, attention_mask=mask)[0, len(prefix)]  # after the prefix
        if model.free_boundaries:
            logits[model.vae.config.eos_id] = float("-inf")
        return torch.softmax(logits, -1).numpy()


def test_only_the_documents_last_segment_pays_an_eos_and_stops_are_announced():
    rng = np.random.default_rng(2)
    docs = [random_doc(rng, 4), random_doc(rng, 2)]
    free = nll_of(tiny_sllm(boundaries="segmenter"), docs)
    eos = nll_of(tiny_sllm(boundaries="eos"), docs)
    eos_paid = free["seg_eos_nll"] > 0
    assert eos_paid[0].tolist() == [False, False, False, True]
    assert eos_paid[1, :2].tolist() == [False, True]
    assert bool((eos["seg_eos_nll"][0] > 0).all())
    # Stop decisions: one per segment, "the next segment is the last" at h_{n-1}, none at h_n.
    assert float(free["stop_nll"][0, 4]) == 0.0 and float(free["stop_nll"][0, :4].min()) > 0
    assert float(eos["stop_nll"][0, 4]) > 0
    assert int(free["n_targets"]) == sum(len(s) for d in docs for s in d) + 2  # tokens + one EOS per document
    assert int(free["n_stop"]) == 6


def free_causal_violation(model, seed=0) -> float:
    """Largest change of segments 1..k's NLL and stop logits 0..k when segments k+1.. change
    (the document keeps at least one segment after k, so segment k stays a non-final one)."""
    rng = np.random.default_rng(seed)
    doc = random_doc(rng, 6)
    ref = nll_of(model, [doc])
    worst = 0.0
    for k in range(1, len(doc)):
        for n_new in (1, 3, 8):
            got = nll_of(model, [doc[:k] + random_doc(rng, n_new)])
            worst = max(worst, float((got["seg_nll"][0, :k] - ref["seg_nll"][0, :k]).abs().max()))
            worst = max(worst, float((got["stop_logits"][0, :k] - ref["stop_logits"][0, :k]).abs().max()))
    return worst


def test_free_boundaries_still_cannot_see_the_future(monkeypatch):
    model = tiny_sllm(boundaries="segmenter")
    assert free_causal_violation(model) < ATOL
    monkeypatch.setattr(sllm_mod, "body_forward", leaky_body_forward)
    assert free_causal_violation(model) > 1e-3  # the check catches a bidirectional backbone


def test_auto_is_resolved_before_a_model_exists(tokenizer):
    from segsllm.config.sllm import SLLMConfig
    from segsllm.train.sllm_stage import resolve_boundaries

    with pytest.raises(ConfigError, match="resolved by the training stage"):
        tiny_sllm(boundaries="auto")
    cfg = SLLMConfig(boundaries="auto")
    fixed = build_segmenter("fixed:k=4", tokenizer=tokenizer)
    punct = build_segmenter("punctuation", tokenizer=tokenizer)
    assert resolve_boundaries(cfg, fixed).boundaries == "segmenter"
    assert resolve_boundaries(cfg, punct).boundaries == "eos"
    with pytest.raises(ConfigError, match="needs a causal segmenter"):
        resolve_boundaries(SLLMConfig(boundaries="segmenter"), punct)
    with pytest.raises(ConfigError, match=r"sllm\.boundaries"):
        SLLMConfig(boundaries="sometimes").validate()


# --------------------------------------------------------------------------- generation


def test_generation_cuts_where_the_segmenter_cuts_even_when_the_decoder_wants_eos(tokenizer, monkeypatch):
    from test_bench_speed import PROMPT, _force_decoder, _sllm

    from segsllm.bench import speed as spd
    from segsllm.data.tokenizer import encode
    from segsllm.generate import generate_sllm

    model, _ = _sllm(tokenizer)
    model.config.boundaries = "segmenter"
    _force_decoder(model, monkeypatch, eos_after=1)  # EOS is the top choice after one token
    seg = build_segmenter("fixed:k=3", tokenizer=tokenizer)
    run = generate_sllm(model, tokenizer, seg, PROMPT, 11, ignore_stop=True)
    assert run.new_tokens == 11 and len(encode(tokenizer, PROMPT)) % 3  # the prompt is off fixed:k=3's grid
    # The prompt ends a segment; fixed:k=3 then cuts every 3 generated tokens, the budget the last.
    steps = [c.length for c in run.calls if c.kind == "decoder"]
    assert steps[:-1] == [3, 3, 3]  # a cut segment takes one decoder step per token, no EOS step
    assert run.segment_ends == ["cut", "cut", "cut", "budget"]
    assert sum(c.kind == "splitter" and not c.prefill for c in run.calls) == 11  # one decision per new token
    st = spd.generation_stats([run])
    assert st["gen_cut_share"] > 0.5 and st["speed_note"] is None
    with pytest.raises(Exception, match="not causal"):
        generate_sllm(model, tokenizer, build_segmenter("punctuation", tokenizer=tokenizer), PROMPT, 4,
                      ignore_stop=True)
