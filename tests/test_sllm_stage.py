"""The finetune stage end to end on tiny corpora: loss falls, artifact reloads, CLI works, errors are one line."""

from __future__ import annotations

import json

import pytest
from conftest import stage_config, tiny_backbone

from segsllm.data.tokenizer import save_tokenizer

torch = pytest.importorskip("torch")

BACKBONE = ["backbone.hidden_size=32", "backbone.num_layers=2", "backbone.num_heads=4", "backbone.max_positions=64"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(data_dir, out, *extra):
    return stage_config(data_dir, out, *[
        "train.batch_size=8", "train.lr=3e-3", "train.warmup_steps=5", "train.eval_every=0",
        "train.eval_batches=null", "train.log_every=10", "train.ckpt_every=0", "sllm.max_segments=16",
        *BACKBONE, *extra,
    ])


@pytest.fixture(scope="module")
def vae_dir(tiny_data_dir, tokenizer, tmp_path_factory):
    """A small SentenceVAE trained in-test on punctuation segments of the three domains."""
    from segsllm.train.vae_stage import train_vae

    root = tmp_path_factory.mktemp("sllm_stage")
    tok_dir = save_tokenizer(tokenizer, root / "tok")
    cfg = stage_config(tiny_data_dir, root / "vae", *[
        "segmenter.spec=punctuation", "segmenter.max_len=16", "train.steps=40", "train.batch_size=32",
        "train.lr=3e-3", "train.warmup_steps=5", "train.eval_every=0", "train.eval_batches=1",
        "train.ckpt_every=0", "vae.d_model=32", "vae.n_heads=4", "vae.d_ff=64", f"tokenizer.path={tok_dir}",
    ])
    train_vae(cfg, progress=False, exact_match_segments=2, n_samples=1)
    return root / "vae"


@pytest.fixture(scope="module")
def sllm_run(vae_dir, tiny_data_dir, tmp_path_factory):
    from segsllm.train.sllm_stage import finetune_sllm

    out = tmp_path_factory.mktemp("sllm_run") / "sllm"
    # The VAE is trained for 40 steps only: fine-tuning it too makes the SLLM's learning visible.
    result = finetune_sllm(_cfg(tiny_data_dir, out, "train.steps=60", "sllm.freeze_vae=false"), vae_dir,
                           progress=False, sample_tokens=12)
    return result


def test_finetune_lowers_validation_loss_and_saves_a_loadable_model(sllm_run, tokenizer):
    from segsllm.models.sllm import SLLM

    r = sllm_run
    assert set(r.metrics) == {"prose", "code", "csv"}
    for d, m in r.metrics.items():
        assert m["loss"] < 0.85 * r.start_loss[d], (d, r.start_loss[d], m["loss"])
        assert 0 < m["bits_per_byte"] < 20 and m["token_perplexity"] > 1
        assert m["bits_per_byte"] == pytest.approx(m["bits_per_byte_tokens"] + m["bits_per_byte_boundaries"])
        assert m["segments_per_doc"] > 1 and 0 < m["mean_segment_len"] <= 16
        assert m["paper_style_perplexity"] > 1
    assert r.segmenter.startswith("punctuation")  # taken from the VAE's lineage
    assert r.trainable_parameters < r.num_parameters  # the backbone's embeddings are never trained
    out = r.out_dir
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "sllm" and manifest["lineage"]["segmenter"] == r.segmenter
    assert manifest["lineage"]["vae"]["weights_sha256"] and manifest["lineage"]["backbone"]["kind"] == "tiny"
    assert (out / "config.yaml").is_file() and (out / "tokenizer.json").is_file()
    assert json.loads((out / "metrics.json").read_text())["final"]["code"]["bits_per_byte"] > 0
    model = SLLM.from_pretrained(out, tokenizer=tokenizer)
    assert model.backbone.config.model_type == "llama" and model.config.max_segments == 16
    assert set(r.samples) == {"prose", "code", "csv"}


def test_existing_run_is_refused_without_resume(sllm_run, vae_dir, tiny_data_dir):
    from segsllm.errors import SegsllmError
    from segsllm.train.sllm_stage import finetune_sllm

    with pytest.raises(SegsllmError, match="resume"):
        finetune_sllm(_cfg(tiny_data_dir, sllm_run.out_dir, "train.steps=1"), vae_dir, progress=False)


def test_backbone_with_another_tokenizer_is_refused(vae_dir, tiny_data_dir, tmp_path, sample_texts):
    from transformers import LlamaConfig, LlamaForCausalLM

    from segsllm.data.tokenizer import train_bpe
    from segsllm.errors import ArtifactError
    from segsllm.train.sllm_stage import finetune_sllm

    other = train_bpe(list(sample_texts.values()) * 5, vocab_size=300, min_frequency=1)
    folder = tmp_path / "lm"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(other), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=4, max_position_embeddings=64)).save_pretrained(folder)
    save_tokenizer(other, folder)
    with pytest.raises(ArtifactError, match="another tokenizer") as exc:
        finetune_sllm(_cfg(tiny_data_dir, tmp_path / "o", "train.steps=1", f"backbone.spec={folder}"), vae_dir,
                      progress=False)
    assert "\n" not in str(exc.value)


def test_different_segmenter_is_allowed_with_a_warning(vae_dir, tokenizer):
    from segsllm.models.loading import load_artifact
    from segsllm.train.sllm_stage import resolve_segmenter

    loaded = load_artifact("sentence_vae", vae_dir)
    vae, tok = loaded.model, loaded.tokenizer
    with pytest.warns(UserWarning, match="differs"):
        seg = resolve_segmenter(vae, tok, "fixed:k=4", "punctuation")
    assert seg.max_len <= vae.config.max_len


# ---------------------------------------------------------------------------------------
# CLI


def _invoke(args):
    from typer.testing import CliRunner

    from segsllm.cli.app import app

    return CliRunner().invoke(app, args)


def test_cli_finetune_runs_and_prints_a_table(vae_dir, tiny_data_dir, tmp_path):
    sets = [x for kv in ["train.steps=2", "train.eval_batches=1", "train.warmup_steps=1", "sllm.max_segments=8",
                         *BACKBONE] for x in ("--set", kv)]
    result = _invoke(["finetune", "--vae", str(vae_dir), "--backbone", "tiny:opt", "--data-dir", str(tiny_data_dir),
                      "--out", str(tmp_path / "o"), "--no-track", "--device", "cpu", "--domains", "code,csv",
                      "--train-last", "1", *sets])
    assert result.exit_code == 0, result.output
    assert "bits/byte" in result.output and "paper-style" in result.output and "csv" in result.output


@pytest.mark.parametrize("args, message", [
    ([], "--vae"),
    (["--vae", "/nonexistent/vae"], "no SentenceVAE folder"),
])
def test_cli_finetune_errors_are_one_line(args, message, tiny_data_dir, tmp_path):
    result = _invoke(["finetune", *args, "--data-dir", str(tiny_data_dir), "--out", str(tmp_path / "o"), "--no-track"])
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_cli_generate_streams_and_compares_with_a_baseline(sllm_run, tokenizer, tmp_path):
    lm = tiny_backbone(tokenizer, num_layers=1)
    lm.model.save_pretrained(tmp_path / "lm")
    save_tokenizer(tokenizer, tmp_path / "lm")
    result = _invoke(["generate", "--model", str(sllm_run.out_dir), "--prompt", "The Union is strong. ",
                      "--max-new-tokens", "20", "--baseline", str(tmp_path / "lm"), "--device", "cpu",
                      "--ignore-stop"])
    assert result.exit_code == 0, result.output
    table = result.output.split("Generation (greedy")[1]
    assert "│ sllm " in table and "│ lm " in table and "KV" in table
    assert result.output.startswith("The Union is strong. ")


def test_cli_generate_on_a_missing_model_is_one_line(tmp_path):
    result = _invoke(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output


def test_free_boundaries_train_end_to_end_with_a_causal_segmenter(vae_dir, tiny_data_dir, tmp_path, tokenizer):
    """boundaries=auto with fixed:k=4 trains a free-boundary SLLM (saved as ``segmenter``):
    its boundary share is only the document ends and last-segment decisions, so it is far
    below the EOS model's on the same data; it generates along fixed:k=4's grid."""
    from segsllm.generate import generate_sllm
    from segsllm.models.sllm import SLLM
    from segsllm.segment import build_segmenter
    from segsllm.train.sllm_stage import finetune_sllm

    runs = {}
    for mode in ("auto", "eos"):
        cfg = _cfg(tiny_data_dir, tmp_path / mode, "train.steps=20", f"sllm.boundaries={mode}")
        runs[mode] = finetune_sllm(cfg, vae_dir, segmenter="fixed:k=4", progress=False, sample_tokens=0)
    free = SLLM.from_pretrained(runs["auto"].out_dir, tokenizer=tokenizer)
    assert free.config.boundaries == "segmenter"
    assert SLLM.from_pretrained(runs["eos"].out_dir, tokenizer=tokenizer).config.boundaries == "eos"
    for d in ("prose", "code", "csv"):
        f, e = runs["auto"].metrics[d], runs["eos"].metrics[d]
        assert f["bits_per_byte"] == pytest.approx(f["bits_per_byte_tokens"] + f["bits_per_byte_boundaries"])
        assert f["bits_per_byte_boundaries"] < 0.5 * e["bits_per_byte_boundaries"], d
        assert 0 <= f["stop_accuracy"] <= 1
    run = generate_sllm(free, tokenizer, build_segmenter("fixed:k=4", tokenizer=tokenizer), "a, b", 10,
                        ignore_stop=True)
    assert run.new_tokens == 10 and run.segment_ends.count("cut") >= 2


def test_free_boundaries_with_punctuation_is_one_line(vae_dir, tiny_data_dir, tmp_path):
    result = _invoke(["finetune", "--vae", str(vae_dir), "--data-dir", str(tiny_data_dir), "--out", str(tmp_path / "o"),
                      "--no-track", "--set", "sllm.boundaries=segmenter", "--set", "train.steps=1", *[
                          x for kv in BACKBONE for x in ("--set", kv)]])
    assert result.exit_code == 2 and "needs a causal segmenter" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "o").exists()  # refused before anything is written
