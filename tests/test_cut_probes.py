"""scripts/causal_cut_probes.py: the bigram cut rules behind the README's "other causal cut
rules" rows are well-formed segmenters, causal, and do what they say."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import causal_cut_probes as probes
from test_free_boundaries import cutter_cuts, later_tokens_move_earlier_cuts

from segsllm.errors import SegmenterError
from segsllm.segment import build_segmenter
from segsllm.segment.testing import check_segmenter


@pytest.fixture(scope="module")
def docs(tokenizer):
    from conftest import SAMPLE_TEXTS

    from segsllm.data.tokenizer import encode

    return [np.asarray(encode(tokenizer, t), dtype=np.int64) for t in SAMPLE_TEXTS]


@pytest.fixture(scope="module")
def table(tokenizer, docs, tmp_path_factory):
    path = tmp_path_factory.mktemp("bigram") / "bigram.npy"
    np.save(path, probes.fit_bigram(docs, len(tokenizer)))
    return str(path)


def test_the_bigram_is_a_distribution_that_learned_its_corpus(tokenizer, docs, table):
    logp = np.load(table)
    assert logp.shape == (len(tokenizer) + 1, len(tokenizer))
    np.testing.assert_allclose(np.exp2(logp.astype(np.float64)).sum(1), 1.0, atol=1e-4)
    seen = probes.surprisal(logp, docs[0]).mean()
    shuffled = probes.surprisal(logp, np.random.default_rng(0).permutation(docs[0])).mean()
    assert seen < shuffled - 1.0  # the fitted order is cheaper than the same tokens shuffled


@pytest.mark.parametrize("spec", ["causal_cut_probes:InfoBudget:table={t},bits=30,max_len=12",
                                  "causal_cut_probes:LooseWindow:table={t},lo=3,hi=7,tau=3,max_len=12",
                                  "causal_cut_probes:LooseWindow:score=newline,lo=2,hi=6,max_len=12",
                                  "causal_cut_probes:CycleLengths:lengths=3-5-1-4,max_len=12"])
def test_each_rule_is_a_causal_segmenter(tokenizer, docs, table, spec):
    seg = build_segmenter(spec.format(t=table), tokenizer=tokenizer)
    check_segmenter(seg, max_examples=15)
    assert seg.causal and not later_tokens_move_earlier_cuts(seg, docs[:2], np.random.default_rng(0))
    for ids in docs:  # the generic cutter (free-boundary generation) agrees
        assert cutter_cuts(seg.cutter(), ids) == set(seg.segment(ids)[:-1].tolist())


def test_an_information_budget_spends_about_its_bits_per_segment(table, docs):
    logp = np.load(table)
    ids = np.concatenate(docs)
    for bits in (20.0, 60.0):
        ends = probes.InfoBudget(table, bits=bits, max_len=200).segment(ids)
        spent = np.add.reduceat(probes.surprisal(logp, ids), np.concatenate([[0], ends[:-1]]))
        assert np.all(spent[:-1] >= bits)  # every segment but the last reached the budget...
        lengths = np.diff(ends, prepend=0)[:-1]
        over = spent[:-1] - probes.surprisal(logp, ids)[ends[:-1] - 1]
        assert np.all(over[lengths > 1] < bits)  # ...and ended at the token that reached it


def test_a_loose_window_cuts_at_friendly_tokens_inside_it(tokenizer, table, docs):
    seg = probes.LooseWindow(table, lo=3, hi=7, tau=3.0).bind(tokenizer)
    friendly = probes.dependence(np.load(table)) <= 3.0
    n_early = 0
    for ids in docs:
        ends = seg.segment(ids)
        lengths = np.diff(ends, prepend=0)
        assert lengths[:-1].min() >= 3 and lengths.max() <= 7
        early = ends[:-1][lengths[:-1] < 7]
        assert friendly[ids[early - 1]].all()  # a cut before hi follows a friendly token
        n_early += early.size
    assert n_early > len(docs)


def test_the_control_cycles_its_lengths_from_each_documents_start():
    seg = probes.CycleLengths("3-5-1", max_len=6)
    assert np.diff(seg.segment(np.arange(20)), prepend=0).tolist() == [3, 5, 1, 3, 5, 1, 2]
    assert seg.segment([]).size == 0


def test_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(SegmenterError, match="lengths must be"):
        probes.CycleLengths("3-x")
    with pytest.raises(SegmenterError, match="max_len"):
        probes.CycleLengths("3-60", max_len=48)
    with pytest.raises(SegmenterError, match="lo <= hi"):
        probes.LooseWindow(lo=9, hi=4)
    with pytest.raises(SegmenterError, match="no bigram table"):
        probes.InfoBudget(str(tmp_path / "missing.npy")).segment([1, 2, 3])
