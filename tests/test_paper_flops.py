"""scripts/paper_flops.py: the paper's OPT configurations priced on the meta device.

Its predictions rest on two things tested here: the meta-built OPT models have the
published parameter counts (so the shapes are OPT's), and the call lists it simulates
are exactly what ``generate_sllm`` / ``generate_lm`` make (so the bench's own cost
account prices the same work). No weights are read.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from test_bench_speed import PROMPT, _force_decoder, _sllm  # noqa: E402

from segsllm.bench.flops import Pricer  # noqa: E402
from segsllm.generate import generate_lm, generate_sllm  # noqa: E402
from segsllm.segment import build_segmenter  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pf():
    path = Path(__file__).resolve().parents[1] / "scripts" / "paper_flops.py"
    spec = importlib.util.spec_from_file_location("paper_flops", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["paper_flops"] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("paper_flops", None)


@pytest.mark.parametrize("size", ["125m", "350m", "1.3b"])
def test_meta_opt_models_have_the_published_parameter_counts(pf, size):
    pair = pf.build_pair(size, 1)
    assert next(pair.lm.parameters()).is_meta  # nothing was allocated, nothing downloaded
    assert pf.count_params(pair.lm) == pf.OPT_PARAMS[size]
    assert pair.sllm.vae.config.d_model == pair.cfg.vae.d_model and pair.sllm.vae.config.vocab_size == 50272


@pytest.mark.parametrize("k", [1, 3])
def test_simulated_calls_are_the_calls_generation_makes(pf, tokenizer, monkeypatch, k):
    model, lm = _sllm(tokenizer)
    _force_decoder(model, monkeypatch, eos_after=k)  # every segment: k tokens, then EOS
    seg = build_segmenter("punctuation", tokenizer=tokenizer, max_len=8)
    real = generate_sllm(model, tokenizer, seg, PROMPT, 5 * k + 1, ignore_stop=True)
    longest = max((c.length for c in real.calls if c.kind == "encoder" and c.prefill), default=0)
    sim = pf.sllm_calls(real.prompt_segments, longest, real.new_tokens, [k] * 10)
    got, want = Pricer(model).account(sim), Pricer(model).account(real)
    assert [(c.kind, c.length, c.batch, c.context, c.prefill) for c in sim.calls] == \
        [(c.kind, c.length, c.batch, c.context, c.prefill) for c in real.calls]
    assert got.as_dict() == want.as_dict()

    lm_real = generate_lm(lm, tokenizer, PROMPT, 7, ignore_eos=True)
    lm_sim = pf.lm_calls(lm_real.prompt_tokens, 7)
    assert Pricer(lm).account(lm_sim).as_dict() == Pricer(lm).account(lm_real).as_dict()


def test_segment_lengths_have_the_asked_mean(pf):
    lengths = pf.segment_lengths(7.25, 400, 64)
    assert set(lengths) == {7, 8} and sum(lengths) / len(lengths) == pytest.approx(7.25, abs=0.01)
    assert set(pf.segment_lengths(100.0, 5, 64)) == {64}  # capped at the segmenter's max_len


def test_longer_segments_cost_less_and_hold_less_cache(pf):
    pair = pf.build_pair("125m", 1)
    s4, s16 = (pf.flops_speedup(pair, L, 32, 128) for L in (4.0, 16.0))
    assert s4[0] == s16[0]  # the token LM does not depend on L
    assert s16[2] > s4[2] > 1.0 and s16[3] > s4[3]
    r8 = pf.kv_ratio(pair, 8.0, 2048)
    assert 1 / 8 < r8 < 1 / 8 + 0.02  # 1/L plus the decoder's per-segment cache
