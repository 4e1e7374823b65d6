"""SentenceVAE: causality, padding invariance, overfitting, KV cache, save/load, losses.

Every test builds a tiny config and runs the real code path on CPU.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F

from segsllm.config.vae import SentenceVAEConfig
from segsllm.errors import ArtifactError, ConfigError
from segsllm.metrics import bits_per_byte, exact_match_count
from segsllm.models.artifact import MANIFEST_NAME, WEIGHTS_NAME, save_artifact
from segsllm.models.vae import (
    IGNORE_INDEX,
    SentenceVAE,
    reconstruction_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> SentenceVAEConfig:
    base = dict(vocab_size=64, d_model=32, n_heads=4, encoder_layers=2, decoder_layers=2, d_ff=64,
                max_len=12, dropout=0.0)
    base.update(kw)
    return SentenceVAEConfig(**base)


def make(seed: int = 0, **kw) -> SentenceVAE:
    torch.manual_seed(seed)
    return SentenceVAE(tiny(**kw)).eval()


def rand_ids(B: int, T: int, vocab: int = 64, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (B, T), generator=g)  # no specials inside segments


# --------------------------------------------------------------------------- 1. causality


@pytest.mark.parametrize("memory_slots", [1, 3])
def test_decoder_is_causal_with_and_without_padding(memory_slots):
    model = make(memory_slots=memory_slots)
    B, T = 3, 10
    latent = torch.randn(B, model.config.latent_width)
    ids = rand_ids(B, T)
    ids[:, 0] = model.config.bos_id
    for lengths in (torch.tensor([T, T, T]), torch.tensor([T, 6, 3])):  # no padding, then padding
        mask = torch.arange(T)[None, :] < lengths[:, None]
        with torch.no_grad():
            base = model.decoder(ids, latent, attention_mask=mask)  # (B, T, V)
        for t in range(T - 1):
            changed = ids.clone()
            changed[:, t + 1:] = rand_ids(B, T - t - 1, seed=100 + t)
            with torch.no_grad():
                new = model.decoder(changed, latent, attention_mask=mask)
            # Every real position <= t is unchanged ...
            for b in range(B):
                upto = min(t + 1, int(lengths[b]))
                torch.testing.assert_close(new[b, :upto], base[b, :upto], rtol=0, atol=1e-6)
            # ... and the change is visible later on, so the test can see a leak.
            assert not torch.allclose(new[0, t + 1:], base[0, t + 1:], atol=1e-4)


def test_decoder_rows_do_not_depend_on_other_rows_padding():
    model = make()
    latent = torch.randn(2, 32)
    ids = rand_ids(2, 8)
    mask = torch.tensor([[1] * 8, [1] * 4 + [0] * 4], dtype=torch.bool)
    with torch.no_grad():
        batched = model.decoder(ids, latent, attention_mask=mask)
        alone = model.decoder(ids[1:, :4], latent[1:])
    torch.testing.assert_close(batched[1, :4], alone[0], rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- 2. encoder padding


@pytest.mark.parametrize("pooling", ["add", "attention"])
@pytest.mark.parametrize("latent_dim", [None, 24])
def test_encoder_latent_is_padding_invariant(pooling, latent_dim):
    model = make(pooling=pooling, latent_dim=latent_dim)
    lengths = [7, 2, 5]
    segs = [rand_ids(1, n, seed=10 + i)[0] for i, n in enumerate(lengths)]
    T = max(lengths)
    # Fill padding with real-looking ids: the mask, not the pad embedding, must hide them.
    batch = rand_ids(3, T, seed=99)
    for i, s in enumerate(segs):
        batch[i, : len(s)] = s
    with torch.no_grad():
        together = model.encode(batch, lengths=torch.tensor(lengths))  # (3, D)
        for i, s in enumerate(segs):
            alone = model.encode(s[None])  # (1, D)
            torch.testing.assert_close(together[i], alone[0], rtol=0, atol=1e-5)
    assert together.shape == (3, latent_dim or 32)


# --------------------------------------------------------------------------- 3. overfit


def _real_segments(tokenizer, texts, per_domain=2, max_len=12):
    """A few sentence/clause pieces of each sample text, as a punctuation segmenter cuts them."""
    from segsllm.data.tokenizer import encode

    segs, seen = [], set()
    for text in texts.values():
        taken = 0
        for piece in re.split(r"(?<=[.,;:!?\n，。！？；：])", text):
            ids = encode(tokenizer, piece)
            if 3 <= len(ids) <= max_len and tuple(ids) not in seen and taken < per_domain:
                seen.add(tuple(ids))
                segs.append(ids)
                taken += 1
    return segs


def test_vae_overfits_a_handful_of_real_segments(tokenizer, sample_texts):
    segs = _real_segments(tokenizer, sample_texts)
    assert len(segs) == 8
    torch.manual_seed(0)
    cfg = SentenceVAEConfig(vocab_size=len(tokenizer), d_model=64, n_heads=4, encoder_layers=1,
                            decoder_layers=1, d_ff=128, max_len=12, dropout=0.0)
    model = SentenceVAE(cfg)
    T = max(map(len, segs))
    ids = torch.full((len(segs), T), cfg.pad_id)
    for i, s in enumerate(segs):
        ids[i, : len(s)] = torch.tensor(s)
    lengths = torch.tensor([len(s) for s in segs])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for step in range(400):
        model.train()
        out = model(ids, lengths=lengths)
        first = first if first is not None else out["loss"].item()
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        # Teacher-forced exactness first (free), then the real test: greedy generation.
        converged = step % 25 == 24 and out["n_exact"].item() == len(segs)
        if converged and exact_match_count(model.reconstruct(ids, lengths=lengths), segs) == len(segs):
            break
    recon = model.reconstruct(ids, lengths=lengths)
    assert recon == segs, f"after {step + 1} steps (loss {first:.2f} -> {out['loss'].item():.3f})"


# --------------------------------------------------------------------------- 4. KV cache


@pytest.mark.parametrize("memory_slots", [1, 2])
def test_kv_cache_prefill_and_steps_equal_full_forward(memory_slots):
    model = make(memory_slots=memory_slots)
    B, T, k = 2, 9, 4
    latent = torch.randn(B, 32)
    ids = rand_ids(B, T)
    ids[:, 0] = model.config.bos_id
    with torch.no_grad():
        full = model.decoder(ids, latent)  # (B, T, V)
        cache = model.decoder.new_cache()
        parts = [model.decoder(ids[:, :k], latent, cache=cache)]  # prefill
        for t in range(k, T):
            parts.append(model.decoder(ids[:, t : t + 1], latent, cache=cache))  # one step
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-5)


def test_generate_equals_greedy_without_cache():
    model = make(seed=3)
    latent = torch.randn(3, 32)
    got = model.generate(latent, max_len=8)
    # Reference: re-run the full decoder on the whole prefix at every step.
    want = []
    for b in range(3):
        seq = [model.config.bos_id]
        while len(seq) <= 8:
            with torch.no_grad():
                nxt = int(model.decoder(torch.tensor([seq]), latent[b : b + 1])[0, -1].argmax())
            if nxt == model.config.eos_id:
                break
            seq.append(nxt)
        want.append(seq[1:])
    assert got == want
    assert all(len(s) <= 8 for s in got)


def test_sampling_respects_max_len_and_seed():
    model = make()
    latent = torch.randn(4, 32)
    a = model.generate(latent, max_len=5, greedy=False, temperature=1.0, top_p=0.9,
                       generator=torch.Generator().manual_seed(7))
    b = model.generate(latent, max_len=5, greedy=False, temperature=1.0, top_p=0.9,
                       generator=torch.Generator().manual_seed(7))
    assert a == b and all(len(s) <= 5 for s in a)
    assert model.generate(latent, max_len=0) == [[]] * 4
    with pytest.raises(ValueError):
        model.generate(latent, max_len=13)


# --------------------------------------------------------------------------- 5. save / load


def test_save_load_round_trip(tmp_path, tokenizer):
    from segsllm.data.tokenizer import load_tokenizer, tokenizer_fingerprint

    model = make(vocab_size=len(tokenizer), pooling="attention", latent_noise=0.1)
    out = model.save_pretrained(tmp_path / "vae", {"note": "test"}, tokenizer=tokenizer,
                                lineage={"tokenizer": "tok/"})
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["kind"] == "sentence_vae" and manifest["note"] == "test"
    assert manifest["tokenizer_fingerprint"] == tokenizer_fingerprint(tokenizer)
    assert manifest["lineage"] == {"tokenizer": "tok/"}
    assert tokenizer_fingerprint(load_tokenizer(out)) == tokenizer_fingerprint(tokenizer)

    loaded = SentenceVAE.from_pretrained(out, tokenizer=tokenizer).eval()
    assert loaded.config == model.config
    assert loaded.decoder.lm_head.weight is loaded.decoder.tok_emb.weight  # still tied
    ids, lengths = rand_ids(3, 6, vocab=len(tokenizer)), torch.tensor([6, 4, 1])
    with torch.no_grad():
        a = model(ids, lengths=lengths, return_logits=True)
        b = loaded(ids, lengths=lengths, return_logits=True)
    assert torch.equal(a["logits"], b["logits"])
    assert model.generate(a["latent"]) == loaded.generate(b["latent"])


def _one_line_error(fn) -> str:
    with pytest.raises(ArtifactError) as info:
        fn()
    msg = str(info.value)
    assert msg and "\n" not in msg
    return msg


def test_corrupted_artifacts_are_refused(tmp_path):
    model = make()
    out = model.save_pretrained(tmp_path / "vae")
    weights = out / WEIGHTS_NAME
    good = weights.read_bytes()

    weights.write_bytes(good[: len(good) // 2])  # truncated
    assert "truncated" in _one_line_error(lambda: SentenceVAE.from_pretrained(out))

    flipped = bytearray(good)
    flipped[-10] ^= 0xFF  # same size, one byte of tensor data changed
    weights.write_bytes(bytes(flipped))
    assert "corrupted" in _one_line_error(lambda: SentenceVAE.from_pretrained(out))

    # Checksums off: a broken safetensors header is still refused by the reader itself.
    weights.write_bytes(b"\xff" * len(good))
    assert "safetensors" in _one_line_error(lambda: SentenceVAE.from_pretrained(out, verify_checksums=False))

    weights.unlink()
    assert "missing" in _one_line_error(lambda: SentenceVAE.from_pretrained(out))
    (out / MANIFEST_NAME).unlink()
    assert "manifest" in _one_line_error(lambda: SentenceVAE.from_pretrained(out))
    assert "no artifact folder" in _one_line_error(lambda: SentenceVAE.from_pretrained(tmp_path / "nope"))


def test_wrong_shapes_kind_and_config_are_refused(tmp_path):
    small, big = make(), make(d_ff=128)
    # Weights of one model under the config of another.
    save_artifact(tmp_path / "shape", kind="sentence_vae", config=big.config.to_dict(),
                  state_dict=small.state_dict())
    assert "shape" in _one_line_error(lambda: SentenceVAE.from_pretrained(tmp_path / "shape"))

    untied = make(tie_embeddings=False)
    save_artifact(tmp_path / "keys", kind="sentence_vae", config=small.config.to_dict(),
                  state_dict=untied.state_dict() | {"extra.weight": torch.zeros(1)})
    assert "unexpected" in _one_line_error(lambda: SentenceVAE.from_pretrained(tmp_path / "keys"))

    save_artifact(tmp_path / "kind", kind="sllm", config=small.config.to_dict(), state_dict=small.state_dict())
    assert "'sllm'" in _one_line_error(lambda: SentenceVAE.from_pretrained(tmp_path / "kind"))

    for bad in ({"pooling": "max"}, {"d_model": 30}, {"bogus": 1}, {"max_len": "long"}):
        d = small.config.to_dict() | bad
        save_artifact(tmp_path / "cfg", kind="sentence_vae", config=d, state_dict=small.state_dict())
        assert "config" in _one_line_error(lambda: SentenceVAE.from_pretrained(tmp_path / "cfg"))


def test_mismatched_tokenizer_is_refused(tmp_path, tokenizer):
    from segsllm.data.tokenizer import train_bpe

    other = train_bpe(["completely different text, other merges: 0123456789 " * 50], vocab_size=300)
    model = make(vocab_size=len(tokenizer))
    out = model.save_pretrained(tmp_path / "vae", tokenizer=tokenizer)
    msg = _one_line_error(lambda: SentenceVAE.from_pretrained(out, tokenizer=other))
    assert "another tokenizer" in msg
    SentenceVAE.from_pretrained(out, tokenizer=tokenizer)  # the right one loads

    # Saved without a fingerprint: a tokenizer too large for the vocabulary is still refused.
    model = make(vocab_size=64)
    out = model.save_pretrained(tmp_path / "nofp")
    assert "tokens" in _one_line_error(lambda: SentenceVAE.from_pretrained(out, tokenizer=tokenizer))


# --------------------------------------------------------------------------- 6. loss and metrics


def test_focal_with_gamma_zero_equals_ce_and_stats_are_right():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, requires_grad=True)
    targets = torch.randint(0, 11, (3, 5))
    targets[1, 3:] = IGNORE_INDEX
    targets[2, 1:] = IGNORE_INDEX
    ce = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), ignore_index=IGNORE_INDEX)
    focal0 = reconstruction_loss(logits, targets, loss="focal", focal_gamma=0.0)
    plain = reconstruction_loss(logits, targets, loss="ce")
    torch.testing.assert_close(focal0["loss"], ce)
    torch.testing.assert_close(plain["loss"], ce)
    g_ce = torch.autograd.grad(ce, logits)[0]
    g_f0 = torch.autograd.grad(focal0["loss"], logits)[0]
    torch.testing.assert_close(g_f0, g_ce)

    focal2 = reconstruction_loss(logits, targets, loss="focal", focal_gamma=2.0)
    assert focal2["loss"] < ce  # down-weighted ...
    torch.testing.assert_close(focal2["nll_sum"], ce.detach() * 9)  # ... but nll_sum stays CE
    assert focal2["n_tokens"].item() == 9 and focal2["n_segments"].item() == 3

    # Make row 2 exactly right and row 0 right except one token.
    sharp = torch.full((3, 5, 11), -10.0)
    sharp.scatter_(2, targets.clamp(min=0)[..., None], 10.0)
    sharp[0, 2] = 0.0
    stats = reconstruction_loss(sharp, targets)
    assert stats["n_correct"].item() == 8
    assert stats["n_exact"].item() == 2  # rows 1 and 2


def test_teacher_forcing_layout_and_token_count():
    model = make()
    ids = rand_ids(2, 4)
    out = model(ids, lengths=torch.tensor([4, 2]), return_logits=True)
    bos, eos = model.config.bos_id, model.config.eos_id
    dec_in, dec_mask, targets = model.teacher_forcing(ids, torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]).bool())
    assert dec_in[1].tolist() == [bos, *ids[1, :2].tolist(), 0, 0]
    assert targets[1].tolist() == [*ids[1, :2].tolist(), eos, IGNORE_INDEX, IGNORE_INDEX]
    assert targets[0].tolist() == [*ids[0].tolist(), eos]
    assert dec_mask.sum().item() == 5 + 3
    assert out["n_tokens"].item() == 4 + 1 + 2 + 1  # tokens + EOS per segment
    with pytest.raises(ValueError, match="right-padded"):
        model(ids, attention_mask=torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]))


def test_bits_per_byte_and_exact_match_helpers():
    import math

    assert bits_per_byte(math.log(2) * 10, 5) == pytest.approx(2.0)
    assert math.isnan(bits_per_byte(1.0, 0))
    assert exact_match_count([[1, 2], [3]], [[1, 2], [4]]) == 1


def test_latent_noise_only_in_training():
    model = make(latent_noise=0.5, latent_dropout=0.2)
    z = torch.randn(2, 32)
    assert torch.equal(model.eval().perturb(z), z)
    assert not torch.equal(model.train().perturb(z), z)


# --------------------------------------------------------------------------- config and init


def test_config_validation_and_omegaconf_compatibility():
    from omegaconf import OmegaConf

    with pytest.raises(ConfigError, match="n_heads"):
        SentenceVAE(tiny(d_model=30))
    with pytest.raises(ConfigError, match="pooling"):
        SentenceVAE(tiny(pooling="max"))
    with pytest.raises(ConfigError, match="unknown"):
        SentenceVAEConfig.from_dict({"vocab_size": 10, "nope": 1})
    # Presets embed the dataclass as a structured-config section.
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SentenceVAEConfig),
                                              OmegaConf.from_dotlist(["encoder_layers=4", "latent_dim=128"])))
    assert cfg.encoder_layers == 4 and cfg.latent_width == 128


@pytest.mark.parametrize("width", [32, 48, 16])
def test_init_embeddings_from_backbone(width):
    model = make()  # d_model 32, vocab 64
    torch.manual_seed(5)
    emb = torch.randn(64, width)
    model.init_embeddings_from(emb)
    w = model.encoder.tok_emb.weight
    assert torch.equal(w, model.decoder.tok_emb.weight)
    assert model.decoder.lm_head.weight is model.decoder.tok_emb.weight
    if width == 32:
        assert torch.equal(w, emb)
    elif width < 32:
        assert torch.equal(w[:, :width], emb) and not w[:, width:].any()
    else:  # projection keeps the Gram matrix as well as a rank-32 map can
        err = (w @ w.T - emb @ emb.T).norm() / (emb @ emb.T).norm()
        assert err < 0.5
    with pytest.raises(ArtifactError, match="vocabulary"):
        model.init_embeddings_from(torch.randn(65, 32))


# --------------------------------------------------------------------------- 8. architecture options (#17)

ARCH_COMBOS = [
    dict(norm=n, positions=p, activation=a, init=i, tie_embeddings=t)
    for n in ("pre", "post") for p in ("learned", "sinusoidal") for a in ("gelu", "relu")
    for i, t in (("small", True), ("torch", False))
]


def _arch_id(kw: dict) -> str:
    return "-".join(str(v) for v in kw.values())


@pytest.mark.parametrize("arch", ARCH_COMBOS, ids=_arch_id)
def test_every_architecture_option_keeps_causality_padding_invariance_and_kv_cache(arch):
    model = make(seed=5, pooling="add" if arch["init"] == "torch" else "attention", **arch)
    B, T = 3, 9
    latent = torch.randn(B, 32)
    ids = rand_ids(B, T)
    ids[:, 0] = model.config.bos_id
    lengths = torch.tensor([T, 6, 3])
    mask = torch.arange(T)[None, :] < lengths[:, None]
    with torch.no_grad():
        base = model.decoder(ids, latent, attention_mask=mask)  # (B, T, V)
        for t in (1, 4):  # changing tokens after t leaves positions <= t alone
            changed = ids.clone()
            changed[:, t + 1:] = rand_ids(B, T - t - 1, seed=200 + t)
            new = model.decoder(changed, latent, attention_mask=mask)
            for b in range(B):
                upto = min(t + 1, int(lengths[b]))
                torch.testing.assert_close(new[b, :upto], base[b, :upto], rtol=0, atol=1e-5)
            assert not torch.allclose(new[0, t + 1:], base[0, t + 1:], atol=1e-4)
        # KV cache: prefill + single steps equal the full forward pass.
        full = model.decoder(ids, latent)
        cache = model.decoder.new_cache()
        parts = [model.decoder(ids[:, :4], latent, cache=cache)]
        parts += [model.decoder(ids[:, t : t + 1], latent, cache=cache) for t in range(4, T)]
        torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-4)
        # Encoder: padding (filled with real-looking ids) never changes a segment's latent.
        segs = [rand_ids(1, n, seed=30 + i)[0] for i, n in enumerate((7, 2, 5))]
        batch = rand_ids(3, 7, seed=98)
        for i, s in enumerate(segs):
            batch[i, : len(s)] = s
        together = model.encode(batch, lengths=torch.tensor([7, 2, 5]))
        for i, s in enumerate(segs):
            torch.testing.assert_close(together[i], model.encode(s[None])[0], rtol=0, atol=1e-5)


def test_architecture_options_change_the_model_as_documented():
    small, torch_init = make(init="small"), make(init="torch")
    # PyTorch's default Embedding init is N(0, 1); ours is N(0, 0.02).
    assert small.encoder.tok_emb.weight.std() < 0.05 < 0.5 < torch_init.encoder.tok_emb.weight.std()
    post = make(norm="post", positions="sinusoidal")
    assert isinstance(post.decoder.ln_f, torch.nn.Identity)  # post-LN blocks end normalised
    assert not any("pos_emb" in k for k in post.state_dict())  # fixed table: not a weight
    relu, gelu = make(activation="relu"), make(activation="gelu")
    x = torch.randn(2, 3, 32)
    with torch.no_grad():
        assert not torch.allclose(relu.decoder.blocks[0].mlp(x), gelu.decoder.blocks[0].mlp(x))
    for key, bad in (("norm", "mid"), ("positions", "rope"), ("activation", "tanh"), ("init", "xavier")):
        with pytest.raises(ConfigError, match=key):
            tiny(**{key: bad}).validate()


def test_older_artifacts_load_with_the_architecture_they_were_built_with(tmp_path):
    from segsllm.config.vae import LEGACY_ARCH

    model = make(**LEGACY_ARCH)
    out = model.save_pretrained(tmp_path / "vae", tokenizer="f" * 16)
    cfg_path = out / "config.json"
    stored = json.loads(cfg_path.read_text())
    for key in LEGACY_ARCH:  # a config.json written before the options existed
        stored.pop(key)
    cfg_path.write_text(json.dumps(stored))
    assert SentenceVAEConfig.from_dict(stored) == model.config


def test_reference_model_trains_and_reconstructs_with_the_shared_interface():
    from segsllm.models.vae_reference import ReferenceSentenceVAE, reference_config

    torch.manual_seed(0)
    ref = ReferenceSentenceVAE(reference_config(tiny(), dropout=0.0))
    assert ref.config.loss == "focal" and ref.config.norm == "post"
    ids, lengths = rand_ids(4, 6), torch.tensor([6, 5, 3, 1])
    opt = torch.optim.AdamW(ref.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        out = ref(ids, lengths=lengths)
        first = first if first is not None else float(out["loss"].detach())
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert float(out["loss"].detach()) < 0.2 * first
    got = ref.reconstruct(ids, lengths=lengths)
    assert got == [ids[i, : int(n)].tolist() for i, n in enumerate(lengths)]
    # Causal decoder: a change after position t leaves logits up to t unchanged.
    ref.eval()
    lat = ref.encode(ids, lengths=lengths)
    dec = torch.cat([torch.full((4, 1), ref.config.bos_id), ids], dim=1)
    changed = dec.clone()
    changed[:, 4:] = rand_ids(4, 3, seed=7)
    with torch.no_grad():
        a, b = ref.decode(dec, lat), ref.decode(changed, lat)
    torch.testing.assert_close(a[:, :4], b[:, :4], rtol=0, atol=1e-5)
