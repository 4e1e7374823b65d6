"""`segsllm bench`: quality on the same bytes, hand-checked bits/byte, reproducibility,
result files and plots, CLI errors. Tiny models are built in-test and saved as artifacts."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
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
    b.min_docs, b.max_doc_share, b.context_tokens, b.context_sweep = 4, 0.5, 32, [16, 32, 64]
    b.prime_bytes, b.bootstrap_resamples = 3000, 200
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


def test_layout_seeds_matched_and_budgets(tmp_path):
    from segsllm.layout import budgets_path, matched_lm_dir, seed_dirs

    assert seed_dirs(tmp_path) == [tmp_path]
    for name in ("seed-10", "seed-2", "seed-x", "seed-0"):
        (tmp_path / name).mkdir()
    (tmp_path / "seed-3").write_text("not a folder")
    assert [p.name for p in seed_dirs(tmp_path)] == ["seed-0", "seed-2", "seed-10"]
    assert matched_lm_dir(tmp_path, "fixed-k-8") == tmp_path / "lm-matched" / "fixed-k-8"
    assert budgets_path(tmp_path) == tmp_path / "budgets.json"
    from segsllm.bench.run import seed_segmenter

    # Another seed benches its own learned splitter; rule segmenters stay as they are.
    seed1 = tmp_path / "seed-1"
    assert seed_segmenter(f"learned:{tmp_path / 'seed-0' / 'splitter-sllm'}/", seed1) == \
        f"learned:{seed1 / 'splitter-sllm'}"
    assert seed_segmenter("fixed:k=8", seed1) == "fixed:k=8"
    assert seed_segmenter(f"learned:path={tmp_path / 'seed-0' / 'splitter-sllm'},decode=threshold", seed1) == \
        f"learned:{seed1 / 'splitter-sllm'}"


def test_costs_by_length_merge_seeds_by_length():
    from segsllm.bench.quality import costs_by_length

    seed0 = {"nats": [0.0, 2.0, 0.0, 9.0], "segments": [0, 1, 0, 2]}  # one 1-token, two 3-token segments
    seed1 = {"nats": [0.0, 4.0], "segments": [0, 3]}  # three 1-token segments
    got = costs_by_length([seed0, seed1])
    assert got["length"] == [1, 3] and got["segments"] == [4, 2]
    assert got["nats_per_segment"] == pytest.approx([1.5, 4.5])
    assert got["bits_per_token"] == pytest.approx([1.5 / math.log(2), 4.5 / (3 * math.log(2))])
    assert costs_by_length([]) == {"length": [], "segments": [], "nats_per_segment": [], "bits_per_token": []}


def test_teacher_f1_is_the_mean_over_the_seeds_own_splitters(tmp_path):
    """A learned row's fidelity reads each seed's splitter metrics; rules and gaps are NaN."""
    from segsllm.bench.run import splitter_teacher_f1

    for seed, f1 in (("seed-0", 0.2), ("seed-1", 0.4)):
        folder = tmp_path / seed / "splitter-sllm"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"final": {"csv": {"teacher_f1": f1}}}))
    spec = f"learned:{tmp_path / 'seed-0' / 'splitter-sllm'}"
    assert splitter_teacher_f1(spec, "csv") == pytest.approx(0.2)
    assert splitter_teacher_f1(spec, "csv", [tmp_path / "seed-1"]) == pytest.approx(0.3)
    assert math.isnan(splitter_teacher_f1(spec, "code"))  # the domain was not recorded
    assert math.isnan(splitter_teacher_f1(spec, "csv", [tmp_path / "seed-2"]))  # a seed without its splitter
    assert math.isnan(splitter_teacher_f1("fixed:k=8", "csv"))


def _docs(data_dir, domain="prose", target=1500):
    return q.scored_documents(data_dir, domain, "test", target_bytes=target, min_docs=3, max_share=0.5)


def test_bits_per_byte_hand_computed_and_same_bytes(tiny_data_dir, tokenizer):
    """Uniform predictions make bits/byte computable by hand: every token, EOS and stop
    decision is scored exactly once under sliding windows; both models see the same bytes."""
    from segsllm.config.sllm import SLLMConfig
    from segsllm.data.tokenizer import encode
    from segsllm.models.sllm import SLLM
    from segsllm.segment import build_segmenter

    docs = _docs(tiny_data_dir)
    n_bytes = sum(len(t.encode("utf-8")) for t in docs.texts)
    n_tok = sum(len(encode(tokenizer, t)) for t in docs.texts)
    assert docs.n_docs >= 3 and docs.total_bytes == n_bytes

    # Token LM with a zeroed final norm: logits 0, every target costs ln V.
    lm = _tiny_backbone(tokenizer, 0).model.eval()
    with torch.no_grad():
        lm.model.norm.weight.zero_()
    V = lm.config.vocab_size
    rl = q.score_lm(lm, tokenizer, docs, context_tokens=32, stride=8)
    expected = (n_tok + docs.n_docs) * math.log2(V) / n_bytes  # tokens + one EOS per document
    assert rl.bits_per_byte == pytest.approx(expected, rel=1e-5)
    assert rl.token_perplexity == pytest.approx(V, rel=1e-4)
    assert rl.doc_nats.shape == (docs.n_docs,) and rl.doc_bytes.tolist() == docs.doc_bytes.tolist()

    # SLLM with a zeroed decoder norm and a zero stop head: each decoder target costs ln V,
    # each stop decision ln 2: one before every segment, and the document's final stop.
    vae = tiny_vae(len(tokenizer), 16)
    model = SLLM(SLLMConfig(max_segments=8), vae, _tiny_backbone(tokenizer, 0).model).eval()
    with torch.no_grad():
        vae.decoder.ln_f.weight.zero_()
        vae.decoder.ln_f.bias.zero_()
        model.stop_head.weight.zero_()
        model.stop_head.bias.zero_()
    seg = build_segmenter("punctuation", tokenizer=tokenizer, max_len=16)
    table = q.sllm_table(docs, tokenizer, seg)
    rs = q.score_sllm(model, table, docs, context_tokens=32, stride=16)
    n_seg = len(table)
    assert rs.extra["windows"] > docs.n_docs  # several windows per document are exercised
    nll = (n_tok + n_seg) * math.log(len(tokenizer)) + (n_seg + docs.n_docs) * math.log(2)
    assert rs.bits_per_byte == pytest.approx(nll / (math.log(2) * n_bytes), rel=1e-5)

    # Same documents, same bytes, same perplexity denominator (one tokenizer).
    q.check_same_bytes([rs, rl])
    assert rs.doc_ids == rl.doc_ids == docs.ids
    assert rs.n_bytes == rl.n_bytes == n_bytes and rs.n_tokens == rl.n_tokens
    sub = q.subset(docs, 600)  # the context sweep's cheaper sample: whole scored documents
    assert q.subset(docs, None) is docs and 1 <= sub.n_docs < docs.n_docs and set(sub.ids) < set(docs.ids)
    assert sub.total_bytes >= 600 and all(t in docs.texts for t in sub.texts)
    other = q.score_lm(lm, tokenizer, _docs(tiny_data_dir, target=300), context_tokens=32, stride=8)
    with pytest.raises(Exception, match="different documents"):
        q.check_same_bytes([rs, other])


def test_sliding_window_lm_scores_every_token_once_with_its_context(tiny_data_dir, tokenizer):
    """Stride < C: each position is scored once, by the window that gives it the most
    context C allows; with C >= the document the NLL is one plain forward pass."""
    from segsllm.data.token_windows import IGNORE, window_bounds

    for n, c, stride in ((100, 32, 8), (7, 32, 8), (65, 16, 16), (50, 20, 1)):
        seen = np.zeros(n, dtype=int)
        for a, b, e in window_bounds(n, c, stride):
            assert e - a <= c and a <= b < e
            seen[b:e] += 1
            for p in range(b, e):  # context of position p: positions [a, p)
                assert p - a >= min(p, c - stride)
        assert (seen == 1).all()

    docs = _docs(tiny_data_dir, "code", 800)
    lm = _tiny_backbone(tokenizer, 5).model.eval()
    wide = q.score_lm(lm, tokenizer, docs, context_tokens=256, stride=128)
    for i, text in enumerate(docs.texts):  # by hand: one forward over BOS d, targets d EOS
        from segsllm.data.tokenizer import encode

        ids = encode(tokenizer, text)
        bos, eos = tokenizer.bos_token_id or tokenizer.eos_token_id, tokenizer.eos_token_id
        assert len(ids) + 1 <= 256
        x = torch.tensor([[bos, *ids]])
        t = torch.tensor([[*ids, eos]])
        with torch.no_grad():
            logits = lm(input_ids=x).logits
        ref = torch.nn.functional.cross_entropy(logits[0], t[0], reduction="sum", ignore_index=IGNORE)
        assert wide.doc_nats[i] == pytest.approx(float(ref), rel=1e-5)
    narrow = q.score_lm(lm, tokenizer, docs, context_tokens=16, stride=4)
    assert narrow.n_tokens == wide.n_tokens and not np.allclose(narrow.doc_nats, wide.doc_nats)


def test_sllm_windows_hold_at_most_c_tokens_and_score_each_segment_once(tiny_data_dir, tokenizer):
    from segsllm.bench.context import segment_window_bounds
    from segsllm.config.sllm import SLLMConfig
    from segsllm.errors import DataError
    from segsllm.models.sllm import SLLM
    from segsllm.segment import build_segmenter

    lengths = np.array([5, 3, 9, 1, 1, 7, 4, 12, 2, 6])
    for c, stride, cap in ((16, 8, None), (12, 12, None), (40, 10, 3), (12, 1, None)):
        seen = np.zeros(lengths.size, dtype=int)
        for a, b, e in segment_window_bounds(lengths, c, stride, cap):
            assert lengths[a:e].sum() <= c and a <= b < e
            assert cap is None or e - a <= cap
            if b > 0:  # a later window scores what fits in the stride (at least one segment)
                assert e - b == 1 or lengths[b:e].sum() <= stride
            seen[b:e] += 1
        assert (seen == 1).all()
    with pytest.raises(DataError, match="does not fit"):
        segment_window_bounds(lengths, 10, 5)

    docs = _docs(tiny_data_dir, "prose", 1200)
    seg = build_segmenter("punctuation", tokenizer=tokenizer, max_len=16)
    table = q.sllm_table(docs, tokenizer, seg)
    items = q.sllm_windows(table, 24, 12, None)
    assert max(it["tokens"] for it in items) <= 24 and len(items) > docs.n_docs
    assert sum(len(it["lengths"]) - it["offset"] for it in items) == len(table)
    # Carried-over context: with one window per document the NLL equals the model's own
    # forward over the whole document.
    torch.manual_seed(3)
    model = SLLM(SLLMConfig(max_segments=256), tiny_vae(len(tokenizer), 16), _tiny_backbone(tokenizer, 3).model).eval()
    whole = q.score_sllm(model, table, docs, context_tokens=10_000, stride=10_000)
    from segsllm.data.segment_windows import SegmentWindows, collate_windows

    data = SegmentWindows([table], 10_000)
    for i in range(len(data)):
        it = data[i]
        b = collate_windows([it], model.vae.config.pad_id)
        with torch.no_grad():
            out = model(b["ids"], b["lengths"], is_last=b["is_last"])
        ref = float(out["nll_tokens"] + out["nll_seg_eos"] + out["nll_stop"])
        doc = int(table.doc_index[int(data.index[i, 1])])
        assert whole.doc_nats[doc] == pytest.approx(ref, rel=1e-5)
    short = q.score_sllm(model, table, docs, context_tokens=24, stride=12)
    assert short.n_tokens == whole.n_tokens and not np.allclose(short.doc_nats, whole.doc_nats)


def test_identical_models_give_a_zero_difference_not_significant(tiny_data_dir, tokenizer):
    """Bootstrap wiring: the same LM under two names differs by exactly [0, 0]; a worse model
    (uniform predictions) is flagged."""
    from segsllm.bench.floors import per_document_bits
    from segsllm.bench.intervals import domain_quality

    docs = _docs(tiny_data_dir, "csv", 1500)
    lm = _tiny_backbone(tokenizer, 7).model.eval()
    res = q.score_lm(lm, tokenizer, docs, context_tokens=32, stride=16)
    twin = q.score_lm(lm, tokenizer, docs, context_tokens=32, stride=16, name="matched:punctuation")
    sllm = q.score_lm(lm, tokenizer, docs, context_tokens=32, stride=16, name="sllm:punctuation")
    sllm.doc_nats = sllm.doc_nats * 1.5  # a clearly worse "SLLM" on every document
    out = domain_quality({"baseline": res, "matched:punctuation": twin, "sllm:punctuation": sllm},
                         per_document_bits(docs.texts), ["punctuation"], n_resamples=300)
    by = {(d["a"], d["b"]): d for d in out["differences"]}
    same = by["matched:punctuation", "baseline"]
    assert same["estimate"] == same["low"] == same["high"] == 0.0 and not same["significant"]
    worse = by["sllm:punctuation", "baseline"]
    assert worse["significant"] and worse["low"] > 0
    assert worse["estimate"] == pytest.approx(0.5 * res.bits_per_byte)
    m = out["models"]["baseline"]
    assert m["low"] <= m["estimate"] <= m["high"] and m["kind"] == "lm"
    assert {"floor:gzip-9", "floor:bzip2-9", "floor:xz-9e"} <= set(out["models"])


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
    assert all(r["segmenter_tokens_per_s"] > 0 for r in r1.rows)  # the segmenter's own batch throughput
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


def test_floors_matched_lm_seeds_and_sweep_in_the_results(tiny_data_dir, pipeline_dir, tmp_path):
    """A fake matched LM (a copy of lm/) and a second seed (a copy of the run): the floors
    are computed on exactly the scored bytes, the matched row equals the untouched LM with a
    [0, 0] difference, seeds give mean ± sd, budgets come from budgets.json."""
    import shutil

    from segsllm.bench import floors as fl
    from segsllm.bench.run import run_bench
    from segsllm.data.store import iter_documents

    run = tmp_path / "run"
    seed0 = run / "seed-0"
    shutil.copytree(pipeline_dir, seed0)
    shutil.copytree(pipeline_dir / "lm", seed0 / "lm-matched" / "punctuation")
    shutil.copytree(seed0, run / "seed-1")
    (seed0 / "budgets.json").write_text(json.dumps({  # the layout segsllm.budgets writes
        "unit": "tokens", "lm": {"path": "lm", "tokens_seen": 1000, "steps": 10},
        "models": {"punctuation": {
            "segmenter": "punctuation",
            "vae": {"path": "vae-punctuation", "tokens_seen": 300, "steps": 3},
            "sllm": {"path": "sllm-punctuation", "tokens_seen": 700, "steps": 7},
            "lm_matched": {"path": "lm-matched/punctuation", "target_tokens": 700, "tokens_seen": 1700,
                           "steps": 17}}}}), encoding="utf-8")
    cfg = _cfg(tiny_data_dir, run, tmp_path / "out", speed=False, memory=False, segmenters=["punctuation"])
    cfg.data.domains = ["code"]
    res = run_bench(cfg)
    qd = res.quality["code"]
    texts = {d.id: d.text for d in iter_documents(tiny_data_dir, "code", "test")}
    scored = [texts[i].encode()[:n].decode() for i, n in zip(qd["doc_ids"], qd["doc_bytes"], strict=True)]
    assert sum(len(t.encode()) for t in scored) == qd["bytes"] == res.rows[0]["eval_bytes"]
    prime = fl.fixed_prime([d.text for d in iter_documents(tiny_data_dir, "code", "train")], 3000)
    assert qd["floors_whole_set"] == {**fl.floors(scored, prime), "prime_bytes": 3000}
    per_doc = fl.per_document_bits(scored)
    assert qd["models"]["floor:xz-9e"]["estimate"] == pytest.approx(per_doc["xz-9e"].sum() / qd["bytes"])
    # The matched LM is a copy of lm/: identical per document, so its difference is exactly 0.
    by = {(d["a"], d["b"]): d for d in qd["differences"]}
    same = by["matched:punctuation", "baseline"]
    assert same["low"] == same["high"] == 0.0 and not same["significant"]
    assert {("sllm:punctuation", "baseline"), ("sllm:punctuation", "matched:punctuation")} <= set(by)
    row = res.rows[0]
    assert row["matched_bits_per_byte"] == row["baseline_bits_per_byte"]
    assert row["sllm_bits_per_byte_low"] <= row["sllm_bits_per_byte"] <= row["sllm_bits_per_byte_high"]
    assert row["context_tokens"] == 32 and row["sllm_max_window_tokens"] <= 32
    # Where the bits go (mean over the seeds): tokens + boundaries, the first tokens a part of the tokens.
    assert row["sllm_bits_per_byte_tokens"] + row["sllm_bits_per_byte_boundaries"] == \
        pytest.approx(row["sllm_bits_per_byte"], rel=1e-9)
    assert 0 < row["sllm_bits_per_byte_first_token"] < row["sllm_bits_per_byte_tokens"]
    assert math.isnan(row["splitter_teacher_f1"])  # a rule segmenter has no teacher
    # What a segment of each length costs: every scored segment of both seeds, once; its
    # nats are the tokens + EOS, i.e. between the tokens' share and the whole NLL.
    costs = qd["segment_costs"]["punctuation"]
    assert sum(costs["segments"]) == 2 * row["segments"] and min(costs["length"]) >= 1
    seg_bits = sum(n * c for n, c in zip(costs["segments"], costs["nats_per_segment"], strict=True)) / math.log(2)
    assert row["sllm_bits_per_byte_tokens"] < seg_bits / (2 * qd["bytes"]) < row["sllm_bits_per_byte"]
    assert (tmp_path / "out" / "segment_costs.png").read_bytes()[:4] == b"\x89PNG"
    # Two seeds (identical copies): mean ± sd with sd 0; budgets in tokens.
    assert qd["n_seeds"] == 2 and qd["models"]["sllm:punctuation"]["seeds"] == {
        "mean": pytest.approx(row["sllm_bits_per_byte"]), "sd": 0.0, "n": 2}
    assert qd["models"]["baseline"]["budget"] == 1000 and qd["models"]["matched:punctuation"]["budget"] == 1700
    assert qd["models"]["sllm:punctuation"]["vae_budget"] == 300
    # The context sweep: the LM and the SLLMs at every C (matched LMs at the headline C only),
    # a plot, and the tables in results.md.
    assert set(res.context_sweep["code"]) == {"16", "32", "64"}
    assert set(res.context_sweep["code"]["16"]) == {"baseline", "sllm:punctuation"}
    assert res.context_sweep["code"]["32"]["baseline"]["estimate"] == pytest.approx(row["baseline_bits_per_byte"])
    assert (tmp_path / "out" / "context.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "out" / "results.md").read_text()
    for text in ("xz -9e (whole set)", "xz -9e primed (whole set)", "gzip -9 (per document, cold)",
                 "token LM matched to punctuation", "Context sweep", "context C = 32 tokens", "± 0.0000 (n=2)"):
        assert text in md, text
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["quality"]["code"]["differences"][0]["significant"] in (True, False)
    assert doc["meta"]["context_tokens"] == 32 and doc["meta"]["budgets"]["lm"] == 1000


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
    # (MLflow's own system metrics, sampled while a slow run lasts, are named system/...)
    assert all("/" not in k for k in parent.data.metrics if not k.startswith("system/")), parent.data.metrics
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


def test_speed_plot_draws_a_bits_per_byte_interval_that_misses_its_estimate(tmp_path):
    """A percentile interval over a few documents need not hold the estimate (the smoke run on
    the real weights produced one): the plot draws the interval from its ends, no error."""
    from types import SimpleNamespace

    from segsllm.bench.report import plot_speed_quality

    row = {"segmenter": "punctuation", "domain": "code", "sllm_bits_per_byte": 3.0, "sllm_bits_per_byte_low": 3.1,
           "sllm_bits_per_byte_high": 3.4, "speedup_flops": 2.0, "speedup": 1.5, "speedup_q25": 1.4,
           "speedup_q75": 1.6, "bound": 1.7, "baseline_bits_per_byte": 2.0}
    result = SimpleNamespace(rows=[row], meta={"segmenters": ["punctuation"]}, quality={})
    out = plot_speed_quality(result, tmp_path / "sq.png")
    assert out is not None and out.read_bytes()[:4] == b"\x89PNG"


def test_names_of_points_that_sit_together_are_stacked_not_overprinted():
    from segsllm.bench.report import label_rows

    # In points: two names 100 wide whose points sit 3 apart take two lines; a point far to
    # the left keeps its first line; a third point just below the pair goes under both names.
    assert label_rows([(100, 200), (102, 197), (-300, 198)], [100, 100, 100], 10) == [0, 1, 0]
    assert label_rows([(100, 200), (102, 197), (150, 188)], [100, 100, 100], 10) == [0, 1, 2]
    assert label_rows([(0, 0), (500, 0)], [100, 100], 10) == [0, 0] and label_rows([], [], 10) == []


def test_segmenter_speed_times_exactly_the_tokens_of_the_scored_table():
    """The segmenter is timed on each scored document's ids as the table holds them (no second
    tokenization): two documents of 3 + 2 tokens reach segment_batch as two arrays."""
    from types import SimpleNamespace

    import numpy as np

    from segsllm.bench.quality import segmenter_tokens_per_s

    table = SimpleNamespace(ids=np.array([5, 6, 7, 8, 9]), starts=np.array([0, 2, 3]), lengths=np.array([2, 1, 2]),
                            doc_index=np.array([0, 0, 1]))
    seen = []

    class Recorder:
        def segment_batch(self, docs):
            seen.append([d.tolist() for d in docs])
            return [np.array([len(d)]) for d in docs]

    assert segmenter_tokens_per_s(Recorder(), table, repeats=2) > 0
    assert seen == [[[5, 6, 7], [8, 9]]] * 2


def test_a_seed_stopped_part_way_is_left_out_of_the_intervals(tmp_path):
    """A pipeline stopped in seed 2 leaves a half-trained ``lm``: the bench reads seeds 0 and
    1 and names seed 2, instead of crashing on it or mixing in a seed with models missing."""
    from segsllm.bench.run import complete_seeds

    def finished(folder):
        folder.mkdir(parents=True)
        for name in ("config.json", "manifest.json"):
            (folder / name).write_text("{}")

    for seed in (0, 1):
        for part in ("lm", "sllm-punctuation", "lm-matched/punctuation"):
            finished(tmp_path / f"seed-{seed}" / part)
    (tmp_path / "seed-2" / "lm" / "checkpoints").mkdir(parents=True)  # stopped while training its LM
    finished(tmp_path / "seed-3" / "lm")  # finished LM, no SLLM yet
    (tmp_path / "seed-3" / "sllm-punctuation").mkdir()
    found = find_artifacts(tmp_path, ["punctuation"])
    assert found.baseline and set(found.matched) == {"punctuation"}
    complete, incomplete = complete_seeds(found, ["punctuation"])
    assert [p.name for p in complete] == ["seed-1"]
    assert [p.name for p in incomplete] == ["seed-2", "seed-3"]


def test_segment_information_adds_up_to_what_the_models_score(tiny_data_dir, pipeline_dir):
    """Per-token LM nats and per-segment SLLM nats are the scorers' own totals, split; the
    profile's excess is cost minus information, binned by information."""
    from segsllm.bench import quality as q
    from segsllm.bench.run import load_token_lm
    from segsllm.bench.segment_info import information_profile, segment_information
    from segsllm.generate import load_sllm
    from segsllm.segment import build_segmenter

    docs = q.scored_documents(tiny_data_dir, "csv", "test", target_bytes=2500, min_docs=4, max_share=0.5)
    lm, tok = load_token_lm(pipeline_dir / "lm", "cpu")
    res = q.score_lm(lm, tok, docs, context_tokens=32, stride=16, per_token=True)
    token_nats = res.extra["token_nats"]
    assert [t.sum() for t in token_nats] == pytest.approx(res.doc_nats.tolist(), rel=1e-6)
    model, stok, _ = load_sllm(pipeline_dir / "sllm-punctuation")
    table = q.sllm_table(docs, stok, build_segmenter("punctuation", tokenizer=stok, max_len=model.vae.config.max_len))
    sres = q.score_sllm(model, table, docs, context_tokens=32, stride=16)
    cost, info = sres.extra["segment_nats"], segment_information(token_nats, table)
    assert cost.min() > 0 and len(cost) == len(info) == len(table.lengths)
    # Every segment is scored once: its tokens and its EOS, not the stop decisions.
    seg_bits = cost.sum() / math.log(2) / docs.total_bytes
    tokens, boundaries = sres.extra["bits_per_byte_tokens"], sres.extra["bits_per_byte_boundaries"]
    assert tokens < seg_bits < tokens + boundaries
    # The LM's information of all segments is its NLL of every token but the documents' EOS.
    assert info.sum() == pytest.approx(sum(t[:-1].sum() for t in token_nats), rel=1e-6)
    # Known answer: excess = 2 + 0.5 * info.
    x = np.arange(1.0, 101.0)
    p = information_profile(3 + 1.5 * x - 1, x, np.full(100, 4), bins=4)
    assert p["slope"] == pytest.approx(0.5) and p["mean_excess"] == pytest.approx(2 + 0.5 * x.mean())
    assert [b["segments"] for b in p["bins"]] == [25, 25, 25, 25]
    assert p["bins"][0]["excess"] == pytest.approx(2 + 0.5 * 13.0) and p["mean_length"] == 4
