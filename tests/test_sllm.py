"""The SLLM model: causality (docs/DESIGN.md §5's hard rule), cached = full forward, metrics, save/load.

Tiny random configs of three backbone families, eval mode, float32. The causality check
is also run against a deliberately leaky backbone call (bidirectional mask), which it must
catch: a test that cannot fail proves nothing. The self-latent check (the latent decoding
segment k never saw s_k) is run against a forward mutated to decode s_k from h_k.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import tiny_backbone, tiny_vae  # noqa: E402

from segsllm.config.sllm import SLLMConfig  # noqa: E402
from segsllm.data.segment_windows import (  # noqa: E402
    SegmentWindows,
    collate_windows,
    document_bounds,
    window_index,
    windows_from_segments,
)
from segsllm.models import sllm as sllm_mod  # noqa: E402
from segsllm.models.sllm import SLLM, hidden_states_cached  # noqa: E402
from segsllm.models.vae import SentenceVAE  # noqa: E402

FAMILIES = ["llama", "opt", "gpt2"]
V, MAX_LEN = 64, 8
ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_sllm(family: str = "llama", vocab: int = V, **kw) -> SLLM:
    """VAE width 32, backbone width 48 (so both projections are real), 2 layers, eval mode."""
    torch.manual_seed(0)
    vae = tiny_vae(vocab, MAX_LEN)
    bb = tiny_backbone(vocab_size=vocab, family=family, hidden_size=48)
    model = SLLM(SLLMConfig(**kw), vae, bb.model).eval()
    with torch.no_grad():  # a visible stop head, so stop-logit differences are not hidden by tiny weights
        model.stop_head.weight.normal_(0, 0.5)
    return model


def random_doc(rng: np.random.Generator, n: int) -> list[list[int]]:
    """n segments of 1..MAX_LEN token ids (no specials)."""
    return [rng.integers(3, V, int(rng.integers(1, MAX_LEN + 1))).tolist() for _ in range(n)]


def batch_of(docs: list[list[list[int]]]) -> dict:
    items = []
    for segs in docs:
        lengths = np.array([len(s) for s in segs])
        items.append({"ids": np.concatenate(segs), "lengths": lengths, "n_bytes": int(lengths.sum()),
                      "is_first": True, "is_last": True})
    return collate_windows(items, pad_id=0)


def details(model: SLLM, docs) -> dict:
    with torch.no_grad():
        b = batch_of(docs)
        return model(b["ids"], b["lengths"], is_last=b["is_last"], return_details=True)


def causal_violation(model: SLLM, seed: int = 0) -> float:
    """Largest change in what positions ≤ k predict when segments k+1.. of document 0 are
    replaced (other tokens, other lengths, another number of segments), over every k, in a
    padded batch beside two other documents (which must not change at all)."""
    rng = np.random.default_rng(seed)
    doc, others = random_doc(rng, 6), [random_doc(rng, 3), random_doc(rng, 8)]
    ref = details(model, [doc, *others])
    worst = 0.0
    for k in range(len(doc)):
        for n_new in (0, 2, 9):  # truncated, shorter, longer than the batch's other rows
            new = doc[:k] + random_doc(rng, n_new)
            if not new:
                continue
            got = details(model, [new, *others])
            # Segment j (1-based) is predicted from h_{j-1}: segments 1..k keep their NLL.
            if k:
                worst = max(worst, float((got["seg_nll"][0, :k] - ref["seg_nll"][0, :k]).abs().max()))
            # The stop decision at position j sees segments 1..j: positions 0..k keep their logit.
            worst = max(worst, float((got["stop_logits"][0, : k + 1] - ref["stop_logits"][0, : k + 1]).abs().max()))
            for row, other in enumerate(others, start=1):  # the rest of the batch is untouched
                n = len(other)
                worst = max(worst, float((got["seg_nll"][row, :n] - ref["seg_nll"][row, :n]).abs().max()))
                worst = max(worst, float((got["stop_logits"][row, : n + 1] - ref["stop_logits"][row, : n + 1])
                                         .abs().max()))
    return worst


def leaky_body_forward(model, inputs_embeds, attention_mask=None, past_key_values=None, use_cache=False):
    """The reference implementation's bug, reproduced: every position sees every real position."""
    B, S, _ = inputs_embeds.shape
    keys = torch.ones(B, S, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    full = keys[:, None, None, :].expand(B, 1, S, S)  # (B, 1, S, S): no causal triangle
    positions = (keys.long().cumsum(-1) - 1).clamp(min=0)
    out = model.base_model(inputs_embeds=inputs_embeds, attention_mask=full, position_ids=positions)
    return out["last_hidden_state"], None


# ---------------------------------------------------------------------------------------
# causality


@pytest.mark.parametrize("family", FAMILIES)
def test_changing_later_segments_leaves_earlier_predictions_unchanged(family):
    model = tiny_sllm(family)
    assert causal_violation(model) < ATOL


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_causality_check_catches_a_bidirectional_backbone(family, monkeypatch):
    model = tiny_sllm(family)
    monkeypatch.setattr(sllm_mod, "body_forward", leaky_body_forward)
    assert causal_violation(model) > 1e-3


def decoder_latents(model: SLLM, docs) -> list[torch.Tensor]:
    """Per document, the (n, D) latents the decoder was given for its n segments, in order."""
    seen: list[torch.Tensor] = []
    real = model.decode_nll

    def spy(ids, lengths, latent, *rest):
        seen.append(latent.detach().clone())
        return real(ids, lengths, latent, *rest)

    model.decode_nll = spy  # instance attribute: only this model, only this call
    try:
        details(model, docs)
    finally:
        del model.decode_nll
    flat = torch.cat(seen)  # (N, D) segments of every row, row-major (the forward's seg_mask order)
    return list(flat.split([len(d) for d in docs]))


def self_latent_violation(model: SLLM, seed: int = 0) -> float:
    """Largest change in the latent that decodes segment k when segment k itself (and what
    follows) is replaced, over every k: it must come from h_{k-1}, which never saw s_k."""
    rng = np.random.default_rng(seed)
    doc, others = random_doc(rng, 6), [random_doc(rng, 3), random_doc(rng, 8)]
    ref = decoder_latents(model, [doc, *others])
    worst = 0.0
    for k in range(len(doc)):
        for n_new in (1, 3, 9):
            tail = random_doc(rng, n_new)
            while tail[0] == doc[k]:  # segment k itself must change
                tail[0] = random_doc(rng, 1)[0]
            got = decoder_latents(model, [doc[:k] + tail, *others])
            worst = max(worst, float((got[0][: k + 1] - ref[0][: k + 1]).abs().max()))  # segments 1..k+1
            for row in (1, 2):
                worst = max(worst, float((got[row] - ref[row]).abs().max()))
    return worst


def self_latent_forward():
    """SLLM.forward with the mutation the issue describes: the decoder of segment k reads
    h_k (its own encoder vector's backbone output) instead of h_{k-1}."""
    import inspect
    import textwrap

    src = textwrap.dedent(inspect.getsource(SLLM.forward))
    good = "latent = self.predict_latent(h[:, :S][seg_mask])"
    assert src.count(good) == 1, "SLLM.forward changed: update the mutation in this test"
    namespace = dict(vars(sllm_mod))
    exec(compile(src.replace(good, "latent = self.predict_latent(h[:, 1:][seg_mask])"), sllm_mod.__file__, "exec"),
         namespace)
    return namespace["forward"]


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_segment_k_is_decoded_from_a_latent_that_never_saw_it(family):
    model = tiny_sllm(family)
    assert self_latent_violation(model) < ATOL


def test_self_latent_check_catches_a_decoder_reading_its_own_segment(monkeypatch):
    model = tiny_sllm("llama")
    monkeypatch.setattr(SLLM, "forward", self_latent_forward())
    assert self_latent_violation(model) > 1e-3
    # The older check (later segments only) is blind to this mutation: why this test exists.
    assert causal_violation(model) < ATOL


def test_trainable_vae_and_train_mode_stay_causal():
    """With the VAE unfrozen and dropout-free train mode, the same rule holds."""
    model = tiny_sllm("opt", freeze_vae=False)
    model.train()
    assert causal_violation(model, seed=1) < ATOL


# ---------------------------------------------------------------------------------------
# cached generation path = full forward


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("prefill", [0, 3])
def test_prefill_plus_cached_steps_equal_the_full_forward(family, prefill):
    model = tiny_sllm(family)
    rng = np.random.default_rng(2)
    doc = random_doc(rng, 7)
    full = details(model, [doc])["hidden"]  # (1, 8, H)
    with torch.no_grad():
        cached, _ = hidden_states_cached(model, [torch.tensor(s) for s in doc], prefill=prefill)
    assert cached.shape == full.shape
    torch.testing.assert_close(cached, full, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------
# metrics


def test_bits_per_byte_and_perplexities_by_hand():
    from segsllm.train.sllm_stage import reduce_sllm_metrics, sllm_loss

    model = tiny_sllm("llama")
    segs = [[5, 6, 7], [8, 9]]
    batch = windows_from_segments(segs, pad_id=0, n_bytes=11)
    _, stats = sllm_loss(model, batch)
    m = reduce_sllm_metrics({**stats, "loss": 0.0, "batches": 1.0})

    # By hand: h from [start, e1, e2]; segment j decoded from h_{j-1}; stop after each position.
    with torch.no_grad():
        e = [model.embed_segments(torch.tensor([s]), torch.tensor([len(s)])) for s in segs]
        h, _ = model.run_backbone(torch.cat([model.start_inputs(1), e[0][:, None], e[1][:, None]], 1))
        seg_nll, first_nll = [], []
        for j, s in enumerate(segs):
            logits = model.vae.decoder(torch.tensor([[1, *s]]), model.predict_latent(h[:, j]))  # BOS=1
            logp = logits.log_softmax(-1)[0]
            seg_nll.append(-sum(float(logp[t, tok]) for t, tok in enumerate([*s, 2])))  # EOS=2
            first_nll.append(-float(logp[0, s[0]]))
        out = model(batch["ids"], batch["lengths"], return_details=True)
        p_stop = torch.sigmoid(model.stop_logits(h))[0]
        stop_nll = -math.log(1 - p_stop[0]) - math.log(1 - p_stop[1]) - math.log(p_stop[2])
    total = sum(seg_nll) + stop_nll
    assert m["bits_per_byte"] == pytest.approx(total / (math.log(2) * 11), rel=1e-5)
    assert m["token_perplexity"] == pytest.approx(math.exp(total / (5 + 1)), rel=1e-5)  # 5 tokens + 1 per doc
    assert m["paper_style_perplexity"] == pytest.approx(math.exp(seg_nll[1] / 3), rel=1e-5)  # first excluded
    assert stats["n_stop"] == 3 and stats["n_docs"] == 1 and stats["n_targets"] == 7
    assert m["bits_per_byte_tokens"] + m["bits_per_byte_boundaries"] == pytest.approx(m["bits_per_byte"], rel=1e-6)
    # Where the bits go: each segment's first token, decoded from its latent alone.
    assert out["seg_first_nll"][0].tolist() == pytest.approx(first_nll, rel=1e-5)
    assert m["bits_per_byte_first_token"] == pytest.approx(sum(first_nll) / (math.log(2) * 11), rel=1e-5)
    assert out["seg_nll"][0].tolist() == pytest.approx(seg_nll, rel=1e-5)


def test_a_window_that_does_not_end_its_document_scores_no_stop_at_its_end():
    model = tiny_sllm("llama")
    segs = [[5, 6], [7]]
    with torch.no_grad():
        mid = model(**windows_from_segments(segs, 0, is_last=False), return_details=True)
        end = model(**windows_from_segments(segs, 0, is_last=True), return_details=True)
    assert float(mid["n_stop"]) == 2 and float(end["n_stop"]) == 3
    assert float(mid["n_docs"]) == 0
    torch.testing.assert_close(mid["seg_nll"], end["seg_nll"])


def test_freezing_options():
    model = tiny_sllm("llama", train_last=1)
    assert not any(p.requires_grad for p in model.vae.parameters())
    assert not model.backbone.get_input_embeddings().weight.requires_grad
    blocks = model.backbone.model.layers
    assert not any(p.requires_grad for p in blocks[0].parameters())
    assert all(p.requires_grad for p in blocks[1].parameters())
    assert model.start.requires_grad and model.stop_head.weight.requires_grad
    model.train()
    assert model.training and not model.vae.training  # a frozen VAE stays in eval mode
    everything = tiny_sllm("opt", freeze_vae=False)
    everything.train()
    assert everything.vae.training and all(p.requires_grad for p in everything.vae.parameters())


def test_loss_backpropagates_into_the_trainable_parts():
    model = tiny_sllm("gpt2").train()
    rng = np.random.default_rng(3)
    out = model(**batch_of([random_doc(rng, 4), random_doc(rng, 2)]))
    out["loss"].backward()
    assert model.start.grad is not None and model.proj_in.weight.grad is not None
    assert model.stop_head.weight.grad is not None
    assert all(p.grad is None for p in model.vae.parameters())


# ---------------------------------------------------------------------------------------
# save / load


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_save_and_load_round_trip(family, tokenizer, tmp_path):
    from segsllm.errors import ArtifactError

    model = tiny_sllm(family, vocab=len(tokenizer), projection="mlp")
    model.save_pretrained(tmp_path / "m", tokenizer=tokenizer, lineage={"segmenter": "fixed:k=4"})
    loaded = SLLM.from_pretrained(tmp_path / "m", tokenizer=tokenizer).eval()
    assert loaded.config == model.config and loaded.backbone.config.model_type == family
    rng = np.random.default_rng(4)
    docs = [[rng.integers(3, len(tokenizer), 5).tolist(), [7, 8]]]
    torch.testing.assert_close(details(loaded, docs)["seg_nll"], details(model, docs)["seg_nll"])
    with pytest.raises(ArtifactError, match="sllm"):
        SentenceVAE.from_pretrained(tmp_path / "m")


# ---------------------------------------------------------------------------------------
# documents -> windows


class FakeTable:
    def __init__(self, seg_counts: list[int], seg_len: int = 2, first_id: int = 3) -> None:
        self.domain = "test"
        self.doc_index = np.repeat(np.arange(len(seg_counts)), seg_counts).astype(np.int32)
        n = len(self.doc_index)
        self.lengths = np.full(n, seg_len, dtype=np.int32)
        self.starts = np.arange(n, dtype=np.int64) * seg_len
        self.ids = np.arange(n * seg_len, dtype=np.int32) + first_id
        self.n_bytes = np.full(n, 3, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.lengths)


def test_documents_are_cut_into_windows_that_partition_them():
    table = FakeTable([5, 1, 7])
    assert document_bounds(table).tolist() == [[0, 5], [5, 6], [6, 13]]
    w = window_index(table, 3)
    assert w[:, 1:3].tolist() == [[0, 3], [3, 5], [5, 6], [6, 9], [9, 12], [12, 13]]
    assert w[:, 3].tolist() == [1, 0, 1, 1, 0, 0]  # first of its document
    assert w[:, 4].tolist() == [0, 1, 1, 0, 0, 1]  # last of its document
    data = SegmentWindows([table], 3)
    assert data.n_docs == 3 and data.n_segments == 13
    assert sum(data[i]["n_bytes"] for i in range(len(data))) == int(table.n_bytes.sum())
    b = collate_windows([data[0], data[2]], pad_id=0)
    assert b["ids"].shape == (2, 3, 2)
    assert b["lengths"].tolist() == [[2, 2, 2], [2, 0, 0]]
    assert b["ids"][0].tolist() == [[3, 4], [5, 6], [7, 8]] and b["ids"][1, 0].tolist() == [13, 14]
    assert b["is_last"].tolist() == [False, True] and b["n_segments"].tolist() == [3, 1]


def test_window_batches_are_single_domain_balanced_and_resumable():
    from segsllm.data.segment_windows import SegmentWindowBatches, eval_windows

    small, big = FakeTable([4, 4]), FakeTable([8] * 10, first_id=100)  # 2 vs 10 windows of 4 segments
    src = SegmentWindowBatches([small, big], 4, batch_size=2, pad_id=0, seed=3)
    assert len(src) == 2  # 2 windows per domain per epoch, 2 per batch
    it = iter(src)
    seen = [next(it) for _ in range(5)]
    state = src.state_dict()
    rest = [next(it)["ids"] for _ in range(3)]
    again = SegmentWindowBatches([small, big], 4, batch_size=2, pad_id=0, seed=3)
    again.load_state_dict(state)
    it2 = iter(again)
    assert all(torch.equal(a, next(it2)["ids"]) for a in rest)
    for b in seen:  # one domain per batch
        real = b["ids"][b["lengths"] > 0]  # (N, T) real segments (all of length 2 here)
        assert bool((real < 100).all()) or bool((real >= 100).all())
    assert sum(bool((b["ids"][b["lengths"] > 0] < 100).all()) for b in seen[:4]) == 2  # balanced: 1 of 2 per epoch
    whole = eval_windows(big, 4, batch_size=3, pad_id=0, max_windows=5)  # 2 windows per document
    assert whole.dataset.n_docs == 2 and len(whole.dataset) == 4
    assert len(eval_windows(big, 4, batch_size=3, pad_id=0).dataset) == 20
