"""Generation API: SLLM segment by segment and token-level LM, both with KV caches.

The cached loops must produce exactly what the full (uncached) forward predicts.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from conftest import tiny_backbone, tiny_vae  # noqa: E402

from segsllm.config.sllm import SLLMConfig  # noqa: E402
from segsllm.generate import Sampling, TextStream, generate_lm, generate_sllm  # noqa: E402
from segsllm.models.sllm import SLLM  # noqa: E402
from segsllm.segment import build_segmenter  # noqa: E402

PROMPT = "The Union is strong. We hold these truths, he said; "


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tokenizer):
    torch.manual_seed(0)
    vae = tiny_vae(len(tokenizer), 8)
    bb = tiny_backbone(tokenizer, hidden_size=48)
    model = SLLM(SLLMConfig(), vae, bb.model).eval()
    with torch.no_grad():
        model.stop_head.bias.fill_(-10.0)  # never stop unless a test says so
    seg = build_segmenter("punctuation", tokenizer=tokenizer, max_len=8)
    return model, seg


def test_sllm_streams_segments_and_respects_the_token_budget(setup, tokenizer):
    model, seg = setup
    streamed: list[str] = []
    r = generate_sllm(model, tokenizer, seg, PROMPT, max_new_tokens=13, on_segment=streamed.append)
    assert r.new_tokens == 13 and r.stop_reason == "max_new_tokens"  # the last segment is cut to fit
    assert "".join(streamed) == r.text == "".join(r.segments)
    assert len(r.segments) == r.backbone_steps + 1  # no backbone step after the last segment
    assert r.prompt_segments == len(seg.split_ids(tokenizer(PROMPT, add_special_tokens=False)["input_ids"]))
    assert r.prompt_tokens > 0 and r.elapsed_s >= r.prefill_s > 0 and r.tokens_per_s > 0
    # KV cache: 2 layers x (K, V) x positions (start + prompt segments + steps) x 48 floats.
    positions = 1 + r.prompt_segments + r.backbone_steps
    assert r.kv_cache_bytes == 2 * 2 * positions * 48 * 4
    assert r.decoder_cache_bytes > 0


def test_sllm_cached_generation_equals_the_full_forward(setup, tokenizer):
    """Each generated segment is what the greedy decoder makes of the latent that the full,
    uncached forward over [prompt segments + generated segments] predicts at that position."""
    model, seg = setup
    r = generate_sllm(model, tokenizer, seg, PROMPT, max_new_tokens=20)
    prompt_segs = seg.split_ids(tokenizer(PROMPT, add_special_tokens=False)["input_ids"])
    segs = [list(map(int, s)) for s in prompt_segs]
    ids, i = r.token_ids, 0
    with torch.no_grad():
        while i < len(ids):
            out = model(**_window(segs), return_details=True)  # no cache: one forward over everything
            latent = model.predict_latent(out["hidden"][:, -1])
            expected = model.vae.generate(latent, max_len=min(8, len(ids) - i))[0]
            assert ids[i : i + len(expected)] == expected
            segs.append(expected)
            i += len(expected)
    assert len(segs) - len(prompt_segs) == len(r.segments)


def _window(segs):
    from segsllm.data.segment_windows import windows_from_segments

    return windows_from_segments(segs, pad_id=0)


def test_sllm_stop_head_ends_the_document(setup, tokenizer):
    model, seg = setup
    with torch.no_grad():
        model.stop_head.bias.fill_(10.0)
    try:
        r = generate_sllm(model, tokenizer, seg, PROMPT, max_new_tokens=20)
        assert r.stop_reason == "stop" and r.new_tokens == 0 and r.text == ""
        r = generate_sllm(model, tokenizer, seg, PROMPT, max_new_tokens=5, ignore_stop=True)
        assert r.new_tokens == 5
    finally:
        with torch.no_grad():
            model.stop_head.bias.fill_(-10.0)


def test_sllm_sampling_is_seeded_and_works_without_a_prompt(setup, tokenizer):
    model, seg = setup
    sampling = Sampling(greedy=False, temperature=1.0, top_p=0.9, seed=1)
    a = generate_sllm(model, tokenizer, seg, "", max_new_tokens=10, sampling=sampling)
    b = generate_sllm(model, tokenizer, seg, "", max_new_tokens=10, sampling=sampling)
    assert a.token_ids == b.token_ids and a.prompt_segments == 0 and a.new_tokens == 10


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_lm_cached_generation_equals_the_full_forward(family, tokenizer):
    torch.manual_seed(0)
    bb = tiny_backbone(tokenizer, family=family)
    model = bb.model.eval()
    pieces: list[str] = []
    r = generate_lm(bb, tokenizer, PROMPT, max_new_tokens=12, ignore_eos=True, on_text=pieces.append)
    assert r.new_tokens == 12 and "".join(pieces) == r.text and r.backbone_steps == 11
    context = [tokenizer.bos_token_id, *tokenizer(PROMPT, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        logits = model(torch.tensor([context + r.token_ids])).logits[0]  # (P+N, V)
    logits[:, tokenizer.eos_token_id] = float("-inf")
    predicted = logits[len(context) - 1 : -1].argmax(-1).tolist()
    assert predicted == r.token_ids
    assert r.kv_cache_bytes == 2 * 2 * (len(context) + 11) * 32 * 4


def test_lm_sampling_is_seeded_and_temperature_zero_is_greedy(tokenizer):
    torch.manual_seed(0)
    bb = tiny_backbone(tokenizer)
    drawn = Sampling(greedy=False, temperature=1.0, top_p=0.9, seed=3)
    a = generate_lm(bb, tokenizer, PROMPT, max_new_tokens=8, ignore_eos=True, sampling=drawn)
    b = generate_lm(bb, tokenizer, PROMPT, max_new_tokens=8, ignore_eos=True, sampling=drawn)
    assert a.token_ids == b.token_ids and a.new_tokens == 8
    cold = Sampling(greedy=False, temperature=0.0, seed=3)
    assert drawn.sampled and not cold.sampled
    greedy = generate_lm(bb, tokenizer, PROMPT, max_new_tokens=8, ignore_eos=True)
    assert generate_lm(bb, tokenizer, PROMPT, max_new_tokens=8, ignore_eos=True, sampling=cold).token_ids == greedy.token_ids


def test_lm_stops_at_eos(tokenizer):
    torch.manual_seed(0)
    bb = tiny_backbone(tokenizer, num_layers=1)
    bias_hook = bb.model.lm_head.register_forward_hook(
        lambda m, i, o: o.index_add(-1, torch.tensor([tokenizer.eos_token_id]), torch.full_like(o[..., :1], 100.0)))
    try:
        r = generate_lm(bb, tokenizer, PROMPT, max_new_tokens=10)
        assert r.stop_reason == "eos" and r.new_tokens == 0
    finally:
        bias_hook.remove()


def test_text_stream_holds_back_split_characters(tokenizer):
    ids = tokenizer("你好，世界。", add_special_tokens=False)["input_ids"]
    stream = TextStream(tokenizer)
    out = "".join(stream.push([i]) for i in ids) + stream.flush()
    assert out == "你好，世界。"  # no U+FFFD although some tokens hold half a character
