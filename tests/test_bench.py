"""`segsllm bench`: quality on the same bytes, hand-checked bits/byte, reproducibility,
result files and plots, CLI errors. Tiny models are built in-test and saved as artifacts."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from conftest import tiny_backbone, tiny_vae  # noqa: E402

from segsllm.bench import quality as q  # noqa: E402
from segsllm.bench.run import find_artifacts  # noqa: E402
from segsllm.config import Config  # noqa: E402
from segsllm.layout import segmenter_slug  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_backbone(tokenizer, seed: int):
    torch.manual_seed(seed)
    return tiny_backbone(tokenizer, max_positions=256)


def _save_sllm(tokenizer, path, spec: str, seed: int):
    from segsllm.config.sllm import SLLMConfig
    from segsllm.models.sllm import SLLM

    torch.manual_seed(seed)
    vae = tiny_vae(len(tokenizer), 16)
    model = SLLM(SLLMConfig(max_segments=32), vae, _tiny_backbone(tokenizer, seed).model)
    model.save_pretrained(path, tokenizer=tokenizer, lineage={"segmenter": spec, "backbone": {"spec": "tiny"}},
                          extra_manifest={"run_id": f"sllm-run-{seed}"})
    return path


def _save_lm(tokenizer, path, seed: int):
    bb = _tiny_backbone(tokenizer, seed)
    bb.model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    (path / "manifest.json").write_text(json.dumps({"kind": "token_lm", "run_id": "lm-run"}), encoding="utf-8")
    (path / "config.yaml").write_text("lm:\n  context_len: 64\n  eval_stride: null\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory, tokenizer):
    """A pipeline-style folder: lm/, sllm-punctuation/, sllm-fixed-k-8/."""
    root = tmp_path_factory.mktemp("pipe")
    _save_lm(tokenizer, root / "lm", seed=1)
    _save_sllm(tokenizer, root / "sllm-punctuation", "punctuation", seed=2)
    _save_sllm(tokenizer, root / f"sllm-{segmenter_slug('fixed:k=8')}", "fixed:k=8", seed=3)
    return root


def _cfg(data_dir, pipeline_dir, out, **bench):
    cfg = Config()
    cfg.run.track = False
    cfg.run.device = "cpu"
    cfg.run.out = str(out)
    cfg.data.dir = str(data_dir)
    cfg.data.domains = ["prose", "csv"]
    b = cfg.bench
    b.segmenters, b.from_dir = ["punctuation", "fixed:k=8"], str(pipeline_dir)
    b.eval_bytes, b.prompts, b.prompt_tokens, b.new_tokens = 2500, 1, 12, 8
    b.pairs, b.warmup, b.context_lengths, b.exact_match_segments = 3, 0, [16, 32, 48], 16
    b.memory_samples = 2
    for k, v in bench.items():
        setattr(b, k, v)
    return cfg


def test_slug_and_pipeline_layout(pipeline_dir):
    assert segmenter_slug("punctuation") == "punctuation"
    assert segmenter_slug("fixed:k=16") == "fixed-k-16"
    assert segmenter_slug("learned:runs/x/splitter-entropy/") == "learned-splitter-entropy"
    arts = find_artifacts(pipeline_dir, ["punctuation", "fixed:k=8"])
    assert set(arts.sllm) == {"punctuation", "fixed:k=8"} and arts.baseline == pipeline_dir / "lm"
    assert set(find_artifacts(pipeline_dir, []).sllm) == {"punctuation", "fixed:k=8"}  # from the manifests


def test_bits_per_byte_hand_computed_and_same_bytes(tiny_data_dir, tokenizer):
    """Uniform predictions make bits/byte computable by hand; both models see the same bytes."""
    from segsllm.config.sllm import SLLMConfig
    from segsllm.data.tokenizer import encode
    from segsllm.models.sllm import SLLM
    from segsllm.segment import build_segmenter

    split_bytes, texts = q.split_doc_bytes(tiny_data_dir, "prose", "test")
    docs = q.choose_documents("prose", "test", split_bytes, 1500)
    n_bytes = sum(len(texts[int(i)].encode("utf-8")) for i in docs.doc_index)
    n_tok = sum(len(encode(tokenizer, texts[int(i)])) for i in docs.doc_index)
    assert docs.n_docs >= 2 and docs.total_bytes == n_bytes

    # Token LM with a zeroed final norm: logits 0, every target costs ln V.
    lm = _tiny_backbone(tokenizer, 0).model.eval()
    with torch.no_grad():
        lm.model.norm.weight.zero_()
    V = lm.config.vocab_size
    rl = q.score_lm(lm, tokenizer, tiny_data_dir, docs, context_len=64)
    expected = (n_tok + docs.n_docs) * math.log2(V) / n_bytes  # tokens + one EOS per document
    assert rl.bits_per_byte == pytest.approx(expected, rel=1e-5)
    assert rl.token_perplexity == pytest.approx(V, rel=1e-4)

    # SLLM with a zeroed decoder norm and a zero stop head: each decoder target costs ln V,
    # each stop decision ln 2: one after every segment but a window's last, and after each
    # document's last segment (the start vector's decision counts as the first of those).
    vae = tiny_vae(len(tokenizer), 16)
    model = SLLM(SLLMConfig(max_segments=8), vae, _tiny_backbone(tokenizer, 0).model).eval()
    with torch.no_grad():
        vae.decoder.ln_f.weight.zero_()
        vae.decoder.ln_f.bias.zero_()
        model.stop_head.weight.zero_()
        model.stop_head.bias.zero_()
    seg = build_segmenter("punctuation", tokenizer=tokenizer, max_len=16)
    table, sel = q.sllm_table(tiny_data_dir, docs, tokenizer, seg)
    rs = q.score_sllm(model, table, docs)
    n_seg = len(sel)
    n_windows = sum(math.ceil(len(seg.split_ids(encode(tokenizer, texts[int(i)]))) / 8) for i in docs.doc_index)
    assert n_windows > docs.n_docs  # several windows per document are exercised
    nll = (n_tok + n_seg) * math.log(len(tokenizer)) + (n_seg + docs.n_docs) * math.log(2)
    assert rs.bits_per_byte == pytest.approx(nll / (math.log(2) * n_bytes), rel=1e-5)

    # Same documents, same bytes, same perplexity denominator (one tokenizer).
    q.check_same_bytes([rs, rl])
    assert rs.doc_index == rl.doc_index == docs.doc_index.tolist()
    assert rs.n_bytes == rl.n_bytes == n_bytes and rs.n_tokens == rl.n_tokens
    other = q.score_lm(lm, tokenizer, tiny_data_dir, q.choose_documents("prose", "test", split_bytes, 1))
    with pytest.raises(Exception, match="different documents"):
        q.check_same_bytes([rs, other])


def test_bench_reproducible_files_and_plots(tiny_data_dir, pipeline_dir, tmp_path):
    from segsllm.bench.run import run_bench

    r1 = run_bench(_cfg(tiny_data_dir, pipeline_dir, tmp_path / "a"))
    r2 = run_bench(_cfg(tiny_data_dir, pipeline_dir, tmp_path / "b", speed=False, memory=False))
    assert [(r["segmenter"], r["domain"]) for r in r1.rows] == [
        ("punctuation", "prose"), ("punctuation", "csv"), ("fixed:k=8", "prose"), ("fixed:k=8", "csv")]
    keys = ("sllm_bits_per_byte", "baseline_bits_per_byte", "mean_segment_len", "p95_segment_len",
            "vae_exact_match", "eval_bytes")
    assert [[r[k] for k in keys] for r in r1.rows] == [[r[k] for k in keys] for r in r2.rows]  # bit-identical
    by = {(r["segmenter"], r["domain"]): r for r in r1.rows}
    # The baseline is shared across segmenter cells of a domain.
    assert by["punctuation", "prose"]["baseline_bits_per_byte"] == by["fixed:k=8", "prose"]["baseline_bits_per_byte"]
    assert by["fixed:k=8", "csv"]["p95_segment_len"] <= 8
    row = by["punctuation", "prose"]
    assert row["speedup"] > 0 and row["speed_new_tokens"] == 8 and row["speed_na"] is None
    assert row["speedup_q25"] <= row["speedup"] <= row["speedup_q75"] and row["speedup_pairs"] == 3
    assert row["speedup_flops"] == pytest.approx(row["baseline_flops_per_token"] / row["sllm_flops_per_token"])
    assert row["backbone_steps_per_token"] == pytest.approx(1 / row["gen_segment_len"])
    assert row["bound"] > 0 and row["bound_flops"] > 0
    # A rerun gives the same cost account and generation, whatever the clock says.
    r3 = run_bench(_cfg(tiny_data_dir, pipeline_dir, tmp_path / "c", memory=False))
    exact = ("sllm_flops_per_token", "baseline_flops_per_token", "speedup_flops", "bound_flops", "gen_segment_len",
             "gen_eos_share", "sllm_decoder_steps")
    assert [[r[k] for k in exact] for r in r1.rows] == [[r[k] for k in exact] for r in r3.rows]
    assert row["sllm_kv_bytes_per_token"] < row["baseline_kv_bytes_per_token"]  # one position per segment
    assert row["baseline_kv_kb_per_token_slope"] == pytest.approx(2 * 2 * 32 * 4 / 1024)  # layers*(K,V)*width*fp32
    assert math.isnan(row["sllm_peak_mem_bytes"])  # CUDA only
    for name in ("results.json", "results.csv", "results.md", "speed_quality.png", "memory.png"):
        assert (tmp_path / "a" / name).stat().st_size > 0, name
    assert (tmp_path / "a" / "memory.png").read_bytes()[:4] == b"\x89PNG"
    doc = json.loads((tmp_path / "a" / "results.json").read_text())
    assert len(doc["rows"]) == 4 and {b["model"] for b in doc["baselines"]} == {"baseline"}
    assert "paper-style" in (tmp_path / "a" / "results.md").read_text().lower()
    assert "speed_quality.png" not in r2.files  # no speed measured: no speed plot


def test_cli_smoke_and_bad_input(tiny_data_dir, pipeline_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from segsllm.cli.app import app

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    common = ["bench", "--no-track", "--device", "cpu", "--data-dir", str(tiny_data_dir), "--domains", "csv",
              "--set", "bench.eval_bytes=1500", "--set", "bench.exact_match_segments=4"]
    ok = runner.invoke(app, [*common, "--segmenters", "fixed:k=8", "--sllm",
                             f"fixed:k=8={pipeline_dir / 'sllm-fixed-k-8'}", "--baseline", str(pipeline_dir / "lm"),
                             "--no-speed", "--no-memory", "--out", str(tmp_path / "out")])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "out" / "results.csv").is_file() and "csv" in ok.output

    for bad, what in (
        (["--segmenters", "punctuation", "--sllm", f"punctuation={tmp_path / 'nope'}"], "nope"),
        (["--sllm", f"nosuchseg={pipeline_dir / 'sllm-punctuation'}"], "nosuchseg"),
        (["--from", str(tmp_path / "missing")], "missing"),
        (["--from", str(pipeline_dir), "--segmenters", "fixed:k=99"], "fixed:k=99"),
    ):
        res = runner.invoke(app, [*common, *bad])
        assert res.exit_code == 2, (bad, res.output)
        err = res.stderr if hasattr(res, "stderr") else res.output
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and re.search("error", lines[0]) and what in err, err


def test_mlflow_parent_and_child_runs(tiny_data_dir, pipeline_dir, tmp_path):
    """One parent run (stage bench) with one child per cell, results as parent artifacts."""
    from mlflow import MlflowClient

    from segsllm.bench.run import run_bench
    from segsllm.tracking import TrackingWarning

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = _cfg(tiny_data_dir, pipeline_dir, tmp_path / "out", speed=False, segmenters=["fixed:k=8"])
    cfg.run.track, cfg.run.tracking_uri = True, uri
    cfg.data.domains = ["csv"]
    cfg.bench.sllm = [f"fixed:k=8={pipeline_dir / 'sllm-fixed-k-8'}"]  # '=' in a spec must not break tracking
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrackingWarning)
        res = run_bench(cfg)
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(res.run_id)
    assert parent.data.tags["stage"] == "bench"
    assert parent.data.tags["lineage.sllm.fixed-k-8.run_id"] == "sllm-run-3"
    kids = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{res.run_id}'")
    assert len(kids) == 1
    kid = kids[0].data
    assert kid.params["segmenter"] == "fixed:k=8" and kid.params["domain"] == "csv" and kid.params["vae_depth"] == "1"
    assert kid.metrics["sllm_bits_per_byte"] == pytest.approx(res.rows[0]["sllm_bits_per_byte"])
    arts = {a.path for a in client.list_artifacts(res.run_id)}
    assert {"results.json", "results.csv", "results.md", "memory.png", "results_table.json"} <= arts
    # Browsable: named after the folder it benched, sortable metric keys without paths.
    assert parent.info.run_name == f"bench · {pipeline_dir.parent.name}/{pipeline_dir.name}"
    assert kids[0].info.run_name == "csv · fixed:k=8"
    assert "csv.sllm_bits_per_byte.fixed-k-8" in parent.data.metrics
    assert all("/" not in k for k in parent.data.metrics), parent.data.metrics
    table = json.loads((Path(client.download_artifacts(res.run_id, "results_table.json", str(tmp_path)))).read_text())
    # The runs page's artifact view groups by the first column and shows the second.
    assert table["columns"][:2] == ["domain · segmenter", "sllm_bits_per_byte"] and "segmenter" in table["columns"]
    assert [r[0] for r in table["data"]] == ["csv · fixed:k=8"]


def test_baseline_on_another_tokenizer_warns_and_drops_token_unit_columns(tiny_data_dir, pipeline_dir, tmp_path):
    from segsllm.bench.run import run_bench
    from segsllm.data.tokenizer import train_bpe

    other = train_bpe(["Another tokenizer, trained on other text: 1, 2, 3.\n"] * 30, vocab_size=300, min_frequency=2)
    lm = _save_lm(other, tmp_path / "other-lm", seed=4)
    cfg = _cfg(tiny_data_dir, pipeline_dir, tmp_path / "out", segmenters=["punctuation"], baseline=str(lm),
               plots=False)
    cfg.data.domains = ["prose"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_bench(cfg)
    messages = [str(w.message) for w in caught if "another tokenizer" in str(w.message)]
    assert len(messages) == 1 and "bits/byte still compares" in messages[0]
    (row,) = result.rows
    for col in ("baseline_token_perplexity", "baseline_tokens_per_s", "speedup", "kv_ratio",
                "baseline_kv_bytes_per_token"):
        assert math.isnan(row[col]), col
    assert math.isfinite(row["sllm_bits_per_byte"]) and math.isfinite(row["baseline_bits_per_byte"])
    assert math.isfinite(row["sllm_token_perplexity"]) and math.isfinite(row["sllm_tokens_per_s"])


def test_same_tokenizer_keeps_token_unit_columns(tokenizer):
    from segsllm.bench.units import drop_token_units, same_tokenizer, token_unit_columns

    assert same_tokenizer(tokenizer, tokenizer)
    row = {"baseline_token_perplexity": 3.0, "base_lm_token_perplexity": 4.0, "speedup": 2.0}
    assert drop_token_units(row, "base_lm", speed_ref=False) == ["base_lm_token_perplexity"]
    assert row["speedup"] == 2.0 and row["baseline_token_perplexity"] == 3.0
    assert "speedup" in token_unit_columns("baseline", speed_ref=True)


def test_generate_with_a_baseline_on_another_tokenizer_warns_and_gives_no_ratio(pipeline_dir, tmp_path):
    from typer.testing import CliRunner

    from segsllm.cli.app import app
    from segsllm.data.tokenizer import train_bpe

    other = train_bpe(["Another tokenizer, trained on other text: 1, 2, 3.\n"] * 30, vocab_size=300, min_frequency=2)
    lm = _save_lm(other, tmp_path / "other-lm", seed=4)
    args = ["generate", "--model", str(pipeline_dir / "sllm-punctuation"), "--prompt", "Hello there. ",
            "--max-new-tokens", "6", "--device", "cpu", "--ignore-stop"]
    r = CliRunner().invoke(app, [*args, "--baseline", str(lm)])
    assert r.exit_code == 0, r.output
    assert "warning: the baseline" in " ".join(r.stderr.split()) and "another tokenizer" in r.stderr
    assert "speed ratio" not in r.stdout
    same = CliRunner().invoke(app, [*args, "--baseline", str(pipeline_dir / "lm")])
    assert same.exit_code == 0 and "speed ratio SLLM / baseline" in same.stdout and "warning" not in same.stderr
