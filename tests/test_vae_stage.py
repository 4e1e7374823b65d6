"""The train-vae stage end to end on tiny corpora: loss falls, artifact reloads, CLI works."""

from __future__ import annotations

import json

import pytest
from conftest import stage_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(data_dir, out, *extra):
    return stage_config(
        data_dir, out,
        "segmenter.spec=fixed:k=8", "train.steps=60", "train.batch_size=16", "train.lr=3e-3",
        "train.warmup_steps=5", "train.eval_every=0", "train.eval_batches=4", "train.log_every=10",
        "train.ckpt_every=0", "vae.d_model=64", "vae.n_heads=4", "vae.d_ff=128", *extra,
    )


def test_train_vae_lowers_validation_loss_and_saves_a_loadable_model(tiny_data_dir, tokenizer, tokenizer_dir, tmp_path):

    from segsllm.models.vae import SentenceVAE
    from segsllm.train.vae_stage import train_vae

    out = tmp_path / "vae"
    result = train_vae(_cfg(tiny_data_dir, out, f"tokenizer.path={tokenizer_dir}"), progress=False, exact_match_segments=16)
    assert set(result.metrics) == {"prose", "code", "csv"}
    for domain, m in result.metrics.items():
        assert m["loss"] < 0.8 * result.start_loss[domain], domain
        assert 0.0 <= m["token_accuracy"] <= 1.0 and m["bits_per_byte"] > 0
        assert m["mean_segment_len"] <= 8.0
    assert result.samples["code"], "samples are reported"
    model = SentenceVAE.from_pretrained(out, tokenizer=tokenizer)
    assert model.config.max_len == 64 and model.config.vocab_size == len(tokenizer)  # segmenter.max_len
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["lineage"]["segmenter"].startswith("fixed:k=8")
    assert (out / "config.yaml").is_file() and (out / "metrics.json").is_file()
    # The completeness marker is written last; everything honours the umask (not 0600/0700).
    from segsllm.io import dir_mode, file_mode

    for name in ("config.yaml", "metrics.json", "model.safetensors", "config.json"):
        assert (out / name).stat().st_mtime_ns <= (out / "manifest.json").stat().st_mtime_ns, name
    for path in [out, *out.rglob("*")]:
        want = dir_mode() if path.is_dir() else file_mode()
        assert path.stat().st_mode & 0o777 == want, (path, oct(path.stat().st_mode & 0o777))


def test_existing_run_without_resume_is_refused(tiny_data_dir, tokenizer_dir, tmp_path):
    from segsllm.errors import SegsllmError
    from segsllm.train.vae_stage import train_vae

    out = tmp_path / "vae"
    cfg = _cfg(tiny_data_dir, out, "train.steps=2", "train.eval_batches=1", f"tokenizer.path={tokenizer_dir}")
    train_vae(cfg, progress=False, exact_match_segments=2)
    with pytest.raises(SegsllmError):
        train_vae(cfg, progress=False, exact_match_segments=2)


def test_cli_train_vae_needs_a_tokenizer(tiny_data_dir, tmp_path):
    from typer.testing import CliRunner

    from segsllm.cli.app import app

    result = CliRunner().invoke(app, ["train-vae", "--data-dir", str(tiny_data_dir), "--out", str(tmp_path / "o"),
                                      "--no-track"])
    assert result.exit_code == 2 and "tokenizer" in result.output


def test_cli_train_vae_runs_and_prints_a_table(tiny_data_dir, tokenizer_dir, tmp_path):
    from typer.testing import CliRunner

    from segsllm.cli.app import app

    args = ["train-vae", "--data-dir", str(tiny_data_dir), "--out", str(tmp_path / "o"), "--no-track",
            "--tokenizer", str(tokenizer_dir), "--segmenter", "punctuation", "--domains", "code,csv",
            "--device", "cpu", "--set", "train.steps=3", "--set", "train.eval_batches=1",
            "--set", "vae.d_model=32", "--set", "vae.d_ff=64", "--depth", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "code" in result.output and "csv" in result.output and "prose" not in result.output.split("validation")[1]


def test_bucketed_batches_resume_and_balance():
    import numpy as np

    from segsllm.data.segments import BucketedBatches, ConcatTables, SegmentTable

    def table(domain, n, length):
        lengths = np.full(n, length, dtype=np.int32)
        starts = np.arange(n, dtype=np.int64) * length
        return SegmentTable(domain, np.arange(n * length, dtype=np.int32) % 50 + 3, starts, lengths,
                            lengths.astype(np.int64), np.arange(n, dtype=np.int32), n)

    data = ConcatTables([table("a", 40, 2), table("b", 400, 5)])
    src = BucketedBatches(data, 8, pad_id=0, seed=1, balanced=True)
    assert len(src) == 10  # 40 from each domain per epoch
    it = iter(src)
    first = [next(it)["lengths"].tolist() for _ in range(len(src))]
    widths = [length for batch in first for length in batch]
    assert widths.count(2) == widths.count(5) == 40  # balanced
    assert all(len(set(b)) == 1 for b in first)  # length buckets never mix here
    # Resume: a fresh source loaded with the state continues with the same batches.
    for _ in range(3):
        next(it)
    state = src.state_dict()
    expected = [next(it)["ids"] for _ in range(4)]
    again = BucketedBatches(data, 8, pad_id=0, seed=1, balanced=True)
    again.load_state_dict(state)
    it2 = iter(again)
    for want in expected:
        assert (next(it2)["ids"] == want).all()


def test_vae_embeddings_start_from_the_backbone(tiny_data_dir, tokenizer, tokenizer_dir, tmp_path):
    import torch

    from segsllm.config.backbone import BackboneConfig
    from segsllm.models.backbone import load_backbone
    from segsllm.models.vae import SentenceVAE
    from segsllm.train.vae_stage import build_vae_config, init_embeddings_from_backbone

    cfg = _cfg(tiny_data_dir, tmp_path / "v", "vae.embeddings_from_backbone=true", "backbone.hidden_size=64",
               "backbone.num_layers=1", "backbone.num_heads=2", "run.seed=3")
    model = SentenceVAE(build_vae_config(cfg, tokenizer, 16))
    torch.manual_seed(cfg.run.seed)
    init_embeddings_from_backbone(model, cfg, tokenizer)
    torch.manual_seed(cfg.run.seed)
    expected = load_backbone(BackboneConfig(**{**cfg.backbone.__dict__}), vocab_size=len(tokenizer),
                             tokenizer=tokenizer).model.get_input_embeddings().weight
    assert torch.allclose(model.encoder.tok_emb.weight, expected[: len(tokenizer)])
