"""The bench's speed columns prove themselves: FLOPs against torch's counter, generated
segment length and steps/token under forced decoders, n/a on a missed budget, interleaved
pairs, the decoder cache in the memory figure, the Pareto front. No wall-clock limits."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from segsllm.bench import speed as spd  # noqa: E402
from segsllm.bench import timing  # noqa: E402
from segsllm.bench.flops import Pricer  # noqa: E402
from segsllm.config.backbone import BackboneConfig  # noqa: E402
from segsllm.config.sllm import SLLMConfig  # noqa: E402
from segsllm.config.vae import SentenceVAEConfig  # noqa: E402
from segsllm.generate import generate_lm, generate_sllm  # noqa: E402
from segsllm.models.backbone import load_backbone  # noqa: E402
from segsllm.models.sllm import SLLM  # noqa: E402
from segsllm.models.vae import SentenceVAE  # noqa: E402
from segsllm.segment import build_segmenter  # noqa: E402

PROMPT = "The Union is strong. We hold these truths, he said; "
MAX_LEN = 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _sllm(tokenizer, family: str = "llama", max_positions: int = 64, **vae_kw):
    torch.manual_seed(0)
    vae = SentenceVAE(SentenceVAEConfig(vocab_size=len(tokenizer), d_model=32, n_heads=4, d_ff=64, max_len=MAX_LEN,
                                        **vae_kw))
    bb = load_backbone(BackboneConfig(spec="tiny", family=family, hidden_size=48, num_layers=2, num_heads=4,
                                      max_positions=max_positions), tokenizer=tokenizer)
    return SLLM(SLLMConfig(**({"projection": "mlp"} if vae_kw else {})), vae, bb.model).eval(), bb.model.eval()


def _force_decoder(model, monkeypatch, eos_after: int | None):
    """The decoder emits token 7 until ``eos_after`` tokens, then EOS (never, with None)."""
    dec, eos = model.vae.decoder, model.vae.config.eos_id
    real = dec.forward

    def forced(ids, latent, attention_mask=None, cache=None):
        logits = real(ids, latent, attention_mask=attention_mask, cache=cache)  # (B, T, V)
        out = torch.full_like(logits, -1e4)
        made = cache.pos - 1  # tokens already emitted before this step's prediction
        out[..., eos if eos_after is not None and made >= eos_after else 7] = 0.0
        return out

    monkeypatch.setattr(dec, "forward", forced)


# --------------------------------------------------------------------------- FLOPs


@pytest.mark.parametrize("family,pooling", [("llama", "add"), ("gpt2", "add"), ("opt", "attention")])
def test_flop_account_matches_torch_flop_counter(tokenizer, family, pooling):
    """Our per-call account equals FlopCounterMode's matmul count (SDPA forced onto the math
    path, which the counter sees as bmm; attention pooling's h·q matvec is ours only)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model, lm = _sllm(tokenizer, family, pooling=pooling, memory_slots=2, latent_dim=24)
    seg = build_segmenter("punctuation", tokenizer=tokenizer, max_len=MAX_LEN)
    for m, gen in ((model, lambda: generate_sllm(model, tokenizer, seg, PROMPT, 24, ignore_stop=True)),
                   (lm, lambda: generate_lm(lm, tokenizer, PROMPT, 24, ignore_eos=True))):
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            r = gen()
        acc = Pricer(m).account(r)
        assert r.new_tokens == 24 and acc.generation > 0 and acc.prefill > 0
        assert acc.prefill + acc.generation == pytest.approx(counter.get_total_flops(), rel=0.01)


def test_flops_grow_with_the_cache(tokenizer):
    """The attention term follows the cache length: a later step costs more than an earlier one."""
    _, lm = _sllm(tokenizer)
    p = Pricer(lm)
    assert p.body.flops(1, 40) - p.body.flops(1, 10) == 2 * p.body.layers * p.body.attn_width * 2 * 30


# --------------------------------------------------------------------------- what generation did


@pytest.mark.parametrize("k", [1, 3, 5])
def test_forced_eos_after_k_gives_length_k(tokenizer, monkeypatch, k):
    model, _ = _sllm(tokenizer)
    _force_decoder(model, monkeypatch, eos_after=k)
    seg = build_segmenter("punctuation", tokenizer=tokenizer, max_len=MAX_LEN)
    runs = [generate_sllm(model, tokenizer, seg, PROMPT, 6 * k, ignore_stop=True)]
    st = spd.generation_stats(runs)
    assert runs[0].new_tokens == 6 * k and st["gen_segments"] == 6
    assert st["gen_segment_len"] == k and st["backbone_steps_per_token"] == pytest.approx(1 / k)
    assert st["gen_eos_share"] == 1.0 and st["speed_note"] is None and st["gen_empty_masked_share"] == 0
    acc = Pricer(model).account(runs[0])
    assert acc.decoder_steps == 6 * (k + 1)  # k tokens + the EOS step per segment
    assert acc.backbone_steps == acc.encoder_calls == 5  # the last segment is never fed back


def test_never_eos_decoder_reports_max_len_and_says_so(tokenizer, monkeypatch):
    model, lm = _sllm(tokenizer)
    _force_decoder(model, monkeypatch, eos_after=None)
    seg = build_segmenter("punctuation", tokenizer=tokenizer, max_len=MAX_LEN)
    row = spd.speed_cell(lm, tokenizer, model, tokenizer, seg, [PROMPT], 3 * MAX_LEN, pairs=2, warmup=0)
    assert row["speed_na"] is None and row["gen_segment_len"] == MAX_LEN
    assert row["gen_max_len_share"] == 1.0 and row["gen_eos_share"] == 0.0
    assert "max_len" in row["speed_note"] and "not the segmenter" in row["speed_note"]
    assert any("max_len" in w for w in spd.speed_figures([{**row, "segmenter": "x", "domain": "d"}]))


def test_empty_segments_do_not_end_a_speed_run(tokenizer, monkeypatch):
    """A decoder that always says EOS: the stop-free speed run still spends its budget."""
    model, _ = _sllm(tokenizer)
    _force_decoder(model, monkeypatch, eos_after=0)
    seg = build_segmenter("punctuation", tokenizer=tokenizer, max_len=MAX_LEN)
    assert generate_sllm(model, tokenizer, seg, PROMPT, 10).stop_reason == "empty_segment"  # as generation does
    r = generate_sllm(model, tokenizer, seg, PROMPT, 10, ignore_stop=True)
    assert r.new_tokens == 10 and len(r.segment_ends) == 10 and r.stop_reason == "max_new_tokens"
    st = spd.generation_stats([r])
    assert st["gen_empty_masked_share"] == 1.0 and "L is forced" in st["speed_note"]


def test_short_budget_is_na_never_zero(tokenizer, monkeypatch):
    """A backbone with too few positions for the budget: the cell is n/a with the reason."""
    from segsllm.bench.report import markdown

    model, _ = _sllm(tokenizer, max_positions=12)
    _, lm = _sllm(tokenizer, max_positions=64)
    _force_decoder(model, monkeypatch, eos_after=1)
    seg = build_segmenter("punctuation", tokenizer=tokenizer, max_len=MAX_LEN)
    row = spd.speed_cell(lm, tokenizer, model, tokenizer, seg, [PROMPT], 40, pairs=2, warmup=0)
    assert row["speed_na"].startswith("the SLLM generated") and "max_positions" in row["speed_na"]
    assert math.isnan(row["speedup"]) and math.isnan(row["speedup_flops"])
    row.update(segmenter="punctuation", domain="prose", sllm_bits_per_byte=1.0, eval_docs=1, eval_bytes=1)
    md = markdown(SimpleNamespace(rows=[row], meta={"split": "test", "device": "cpu"}))
    assert "n/a" in md and "0.00x" not in md and "max_positions" in md


# --------------------------------------------------------------------------- wall-clock pairs and bound


def _fake(seconds: float, tokens: int = 10) -> SimpleNamespace:
    return SimpleNamespace(new_tokens=tokens, elapsed_s=seconds)


def test_interleaved_pairs_alternate_and_summarise():
    order: list[str] = []
    lm_times = iter([1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    sl_times = iter([0.5, 0.25, 0.5, 0.5, 1.0, 0.5])

    def run_lm(p):
        order.append("lm")
        return _fake(next(lm_times))

    def run_sllm(p):
        order.append("sllm")
        return _fake(next(sl_times))

    pt = timing.interleaved_pairs(run_lm, run_sllm, ["a", "b"], pairs=6, warmup=0)
    assert order == ["lm", "sllm", "sllm", "lm"] * 3  # even pairs LM first, odd pairs SLLM first
    assert pt.ratios == [2.0, 4.0, 2.0, 2.0, 1.0, 2.0] and pt.median == 2.0
    d = pt.as_dict()
    assert d["speedup_q25"] == 2.0 and d["speedup_q75"] == 2.0 and not d["speedup_noisy"]
    assert d["speedup_ci_lo"] <= 2.0 <= d["speedup_ci_hi"]
    assert timing.bootstrap_median_ci([1.0, 2.0, 3.0]) == timing.bootstrap_median_ci([1.0, 2.0, 3.0])  # seeded
    noisy = timing.PairTiming(ratios=[1.0, 2.0, 3.0, 4.0])
    assert noisy.noisy


def test_analytic_bound_from_call_times():
    from segsllm.generate import Call

    lm = [SimpleNamespace(calls=[Call("lm", 5, prefill=True, seconds=9.0)] + [Call("lm", 1, seconds=1.0)] * 4)]
    sllm = [SimpleNamespace(new_tokens=8, segment_ends=["eos", "eos"], calls=[
        Call("backbone", 3, prefill=True, seconds=9.0), Call("decoder", 5, seconds=0.5), Call("encoder", 4, seconds=0.2),
        Call("backbone", 1, context=3, seconds=1.0), Call("decoder", 5, seconds=0.5)])]
    slow = [SimpleNamespace(calls=[Call("lm", 1, seconds=5.0)] * 4)]  # a run preempted throughout
    b = timing.analytic_bound(lm + slow, sllm)
    # L = 4, d = 5 decoder steps per segment at 0.1 s, t_e = 0.2, t_b = 1: 4*1 / (1 + 0.5 + 0.2)
    assert b["bound_L"] == 4 and b["t_d_s"] == pytest.approx(0.1) and b["t_b_lm_s"] == 1.0
    assert b["bound"] == pytest.approx(4 / 1.7)


# --------------------------------------------------------------------------- memory and reading


def test_sllm_memory_includes_the_decoder_cache_and_averages_samples(tokenizer):
    from segsllm.bench import memory as mem
    from segsllm.generate import decoder_cache_bytes
    from segsllm.models.backbone import kv_cache_bytes
    from segsllm.models.sllm import hidden_states_cached

    model, _ = _sllm(tokenizer)
    seg = build_segmenter("punctuation", tokenizer=tokenizer, max_len=MAX_LEN)
    texts = [PROMPT * 3, "Yes... and then silence. " * 4, "A new line, with words. " * 5]
    samples = mem.context_samples(texts, tokenizer, 24, 3)
    assert len(samples) == 3 and len({tuple(s) for s in samples}) == 3
    curves = [mem.sllm_curve(model, seg, ids, [12, 24]) for ids in samples]
    dec = decoder_cache_bytes(model.vae, MAX_LEN)
    for ids, pts in zip(samples, curves, strict=True):
        segs = [torch.as_tensor(s) for s in seg.split_ids(ids[:24])]
        _, cache = hidden_states_cached(model, segs, prefill=len(segs))
        assert pts[-1].kv_bytes == kv_cache_bytes(cache) + dec and pts[-1].decoder_kv_bytes == dec
    avg = mem.average_points(curves)
    assert [p.samples for p in avg] == [3, 3]
    assert avg[-1].kv_bytes == pytest.approx(sum(c[-1].kv_bytes for c in curves) / 3)


def test_pareto_front():
    from segsllm.bench.report import pareto_front

    rows = [{"segmenter": "a", "sllm_bits_per_byte": 1.0, "sllm_flops_per_token": 10.0},
            {"segmenter": "b", "sllm_bits_per_byte": 2.0, "sllm_flops_per_token": 5.0},
            {"segmenter": "c", "sllm_bits_per_byte": 2.5, "sllm_flops_per_token": 6.0},  # dominated by b
            {"segmenter": "d", "sllm_bits_per_byte": 3.0, "sllm_flops_per_token": math.nan}]
    assert pareto_front(rows) == ["a", "b"]
