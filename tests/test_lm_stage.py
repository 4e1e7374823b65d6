"""The train-lm stage: windowing, exact bits/byte, training, artifact round trip, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import stage_config, tiny_backbone

from segsllm.config import load_config

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["backbone.spec=tiny", "backbone.hidden_size=64", "backbone.num_layers=2", "backbone.num_heads=4",
        "backbone.max_positions=128", "lm.context_len=64"]


def _cfg(data_dir, out, *extra):
    return stage_config(data_dir, out, *TINY, "train.steps=40", "train.batch_size=8", "train.lr=3e-3",
                        "train.warmup_steps=4", "train.eval_every=0", "lm.eval_bytes=2000", "train.log_every=10",
                        "train.ckpt_every=0", *extra)


def _table(texts, tokenizer):
    from segsllm.data.segments import build_segment_table
    from segsllm.segment import build_segmenter

    return build_segment_table(texts, tokenizer, build_segmenter("fixed:k=5"), "t")


def _tiny_model(tokenizer, **kw):
    import torch

    torch.manual_seed(0)
    return tiny_backbone(tokenizer, max_positions=256, **kw).model.eval()


# --------------------------------------------------------------------------- windows


@pytest.mark.parametrize(("context_len", "stride"), [(16, None), (16, 5), (7, 1), (512, None)])
def test_every_token_and_eos_is_scored_exactly_once(tokenizer, sample_texts, context_len, stride):
    from segsllm.data.token_windows import IGNORE, eval_windows, train_windows
    from segsllm.data.vocab import vocab_bytes

    texts = [sample_texts["prose"], "x", sample_texts["code"], sample_texts["cjk"] * 3, sample_texts["csv"]]
    table = _table(texts, tokenizer)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    exact = [len(t.encode("utf-8")) for t in texts]
    tb = vocab_bytes(tokenizer).lengths
    for w in (eval_windows(table, context_len, bos, eos, stride=stride, token_bytes=tb, doc_bytes=exact),
              train_windows(table, context_len, bos, eos, tb)):
        scored = {d: [] for d in range(len(texts))}
        bytes_per_doc = dict.fromkeys(range(len(texts)), 0)
        for i in range(len(w)):
            item = w[i]
            d = int(w.docs.doc_index[w.row[i]])
            doc = list(tokenizer(texts[d], add_special_tokens=False)["input_ids"])
            x, t = [bos, *doc], [*doc, eos]  # the document's stream, inputs and targets
            a, e = int(w.a[i]), int(w.e[i])
            assert len(item["input_ids"]) == e - a <= context_len
            assert list(item["input_ids"]) == x[a:e]  # one document only: no window crosses documents
            for p, label in zip(range(a, e), item["labels"], strict=True):
                if label != IGNORE:
                    assert label == t[p]
                    scored[d].append(p)
            bytes_per_doc[d] += item["n_bytes"]
        for d, text in enumerate(texts):
            n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            assert sorted(scored[d]) == list(range(n + 1)), d  # every token + EOS, once
            assert bytes_per_doc[d] == len(text.encode("utf-8"))
        assert w.n_targets == sum(len(s) for s in scored.values())


def test_eval_budget_keeps_whole_documents_spread_over_the_split(tokenizer, sample_texts):
    from segsllm.data.token_windows import eval_windows, pick_documents

    assert pick_documents(np.array([3, 3, 3]), None).tolist() == [0, 1, 2]
    picked = pick_documents(np.ones(10, dtype=int), 3)
    assert len(picked) == 3 and picked[0] == 0 and picked[-1] == 9
    texts = [sample_texts["prose"] + f"Paragraph {i}.\n" for i in range(6)]
    table = _table(texts, tokenizer)
    doc_bytes = np.array([len(t.encode("utf-8")) for t in texts])
    w = eval_windows(table, 16, 1, 2, doc_bytes=doc_bytes, max_bytes=int(doc_bytes[0]) + 1)
    assert w.docs.doc_index.tolist() == [0, 5]  # the fewest whole documents, spread out
    assert w.n_targets == sum(int(n) + 1 for n in w.docs.lengths)  # whole documents


def test_window_batches_balance_domains_and_resume_exactly(tokenizer, sample_texts):
    from segsllm.data.segments import ConcatTables
    from segsllm.data.token_windows import TokenWindowBatches, train_windows

    big = train_windows(_table([sample_texts["csv"]] * 12, tokenizer), 8, 1, 2)
    small = train_windows(_table([sample_texts["prose"]], tokenizer), 8, 1, 2)
    data = ConcatTables([big, small])
    src = TokenWindowBatches(data, 4, 0, seed=3, balanced=True)
    assert len(src) == (2 * len(small)) // 4 < len(data) // 4
    order = src._order(np.random.default_rng([3, 0]))
    assert (order < len(big)).sum() == (order >= len(big)).sum() == len(small)  # balanced
    it = iter(src)
    first = [next(it) for _ in range(len(src))]  # one epoch: as many windows of each domain
    widths = [len(data[i]["input_ids"]) for i in range(len(data))]
    assert all(b["input_ids"].shape[1] <= max(widths) for b in first)
    state = src.state_dict()
    ahead = [next(it)["input_ids"].tolist() for _ in range(3)]
    again = TokenWindowBatches(data, 4, 0, seed=3, balanced=True)
    again.load_state_dict(state)
    it2 = iter(again)
    assert [next(it2)["input_ids"].tolist() for _ in range(3)] == ahead


# --------------------------------------------------------------------------- exact metric


@pytest.mark.parametrize(("context_len", "stride"), [(256, None), (24, None), (24, 8)])
def test_bits_per_byte_equals_a_hand_computation(tokenizer, sample_texts, context_len, stride):
    import torch

    from segsllm.data.token_windows import eval_windows, window_bounds
    from segsllm.data.vocab import vocab_bytes
    from segsllm.train.lm_stage import evaluate_windows

    model = _tiny_model(tokenizer)
    text = sample_texts["code"]
    short = "def f():\n    return 1\n"  # a second, shorter document: batches mix padded windows
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    w = eval_windows(_table([text, short], tokenizer), context_len, bos, eos, stride=stride,
                     token_bytes=vocab_bytes(tokenizer).lengths)
    got = evaluate_windows(model, w, pad_id=pad, batch_size=4)

    nll, n_tok = 0.0, 0
    with torch.no_grad():
        for doc_text in (text, short):
            ids = tokenizer(doc_text, add_special_tokens=False)["input_ids"]
            x, t = [bos, *ids], [*ids, eos]
            for a, b, e in window_bounds(len(t), context_len, stride or context_len):
                logp = model(torch.tensor([x[a:e]])).logits[0].double().log_softmax(-1)  # (T, V)
                nll -= sum(float(logp[p - a, t[p]]) for p in range(b, e))
                n_tok += e - b
    n_bytes = len(text.encode("utf-8")) + len(short.encode("utf-8"))
    assert got["n_tokens"] == n_tok and got["n_bytes"] == n_bytes
    assert got["bits_per_byte"] == pytest.approx(nll / (math.log(2) * n_bytes), rel=1e-5)
    assert got["token_perplexity"] == pytest.approx(math.exp(nll / n_tok), rel=1e-5)


# --------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def trained(tiny_data_dir, tokenizer_dir, tmp_path_factory):

    from segsllm.train.lm_stage import train_lm

    out = tmp_path_factory.mktemp("lm") / "run"
    cfg = _cfg(tiny_data_dir, out, f"tokenizer.path={tokenizer_dir}")
    return cfg, train_lm(cfg, progress=False)


def test_train_lm_lowers_bits_per_byte(trained):
    _, result = trained
    assert set(result.metrics) == {"prose", "code", "csv"} and not result.pretrained
    for d, m in result.metrics.items():
        start = result.start_metrics[d]
        assert m["bits_per_byte"] < 0.7 * start["bits_per_byte"], d
        assert m["token_perplexity"] < start["token_perplexity"]
        assert m["n_tokens"] == start["n_tokens"] > 0 and m["n_bytes"] > m["n_tokens"]  # same eval set
    assert result.steps == 40 and result.tokens_seen > 0 and result.base_metrics == {}


def test_artifact_reloads_through_load_backbone_with_identical_logits(trained, tokenizer):
    import torch

    from segsllm.config.backbone import BackboneConfig
    from segsllm.data.tokenizer import tokenizer_fingerprint
    from segsllm.models.backbone import load_backbone
    from segsllm.train.checkpoint import load_model_weights

    cfg, result = trained
    out = result.out_dir
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "token_lm"
    assert manifest["lineage"]["tokenizer"]["fingerprint"] == tokenizer_fingerprint(tokenizer)
    assert manifest["lineage"]["backbone"]["kind"] == "tiny" and set(manifest["lineage"]["data"]) == {
        "prose", "code", "csv"}
    assert {"model.safetensors", "config.json", "tokenizer.json", "config.yaml", "metrics.json"} <= set(
        manifest["files"])
    from segsllm.io import file_mode

    for name in manifest["files"]:  # safetensors writes 0600: the artifact gets the umask's modes
        assert (out / name).stat().st_mode & 0o777 == file_mode(), name
    assert json.loads((out / "metrics.json").read_text())["final"]["code"]["bits_per_byte"] == pytest.approx(
        result.metrics["code"]["bits_per_byte"])

    loaded = load_backbone(BackboneConfig(spec=str(out)))
    assert loaded.tokenizer is not None and tokenizer_fingerprint(loaded.tokenizer) == tokenizer_fingerprint(tokenizer)
    # The same weights as the final training checkpoint, hence the same logits.
    fresh = load_backbone(cfg.backbone, tokenizer=tokenizer).model
    load_model_weights(fresh, result.checkpoint)
    ids = torch.tensor([tokenizer("def add(a, b):\n    return a + b\n")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(ids).logits, fresh.eval()(ids).logits)


def test_finetuning_the_artifact_reports_it_as_the_untouched_base(trained, tiny_data_dir, tmp_path):
    from segsllm.train.lm_stage import train_lm

    _, first = trained
    out = tmp_path / "ft"
    cfg2 = _cfg(tiny_data_dir, out, f"backbone.spec={first.out_dir}", "train.steps=2", "data.domains=[code]")
    result = train_lm(cfg2, progress=False)  # a pretrained folder brings its own tokenizer
    assert result.pretrained and set(result.base_metrics) == {"code"}
    # The untouched base is the first run's final model, on the same validation documents.
    assert result.base_metrics["code"]["bits_per_byte"] == pytest.approx(
        first.metrics["code"]["bits_per_byte"], rel=1e-5)
    assert json.loads((out / "metrics.json").read_text())["untouched_base"]["code"]["n_tokens"] > 0


def test_resume_continues_and_a_reused_folder_is_refused(trained, tiny_data_dir, tokenizer_dir, tmp_path):
    from segsllm.errors import ArtifactError
    from segsllm.train.lm_stage import train_lm

    out = tmp_path / "r"
    tok = f"tokenizer.path={tokenizer_dir}"
    train_lm(_cfg(tiny_data_dir, out, "train.steps=2", "data.domains=[csv]", tok), progress=False)
    with pytest.raises(ArtifactError):
        train_lm(_cfg(tiny_data_dir, out, "train.steps=2", "data.domains=[csv]", tok), progress=False)
    with pytest.warns(UserWarning, match="changed train settings"):  # steps 2 -> 4
        again = train_lm(_cfg(tiny_data_dir, out, "train.steps=4", "data.domains=[csv]", tok),
                         resume=True, progress=False)
    assert again.steps == 4 and "csv" in again.start_metrics  # the start comes from the checkpoint


def test_a_tokenizer_that_does_not_fit_a_pretrained_backbone_is_refused(trained, tokenizer, tmp_path):
    from segsllm.errors import ArtifactError
    from segsllm.train.lm_stage import load_lm

    _, first = trained
    bigger = tokenizer.__class__.from_pretrained(str(first.out_dir))
    bigger.add_tokens([f"<extra{i}>" for i in range(10)])
    bigger.save_pretrained(str(tmp_path / "big"))
    cfg2 = load_config(None, [f"backbone.spec={first.out_dir}", f"tokenizer.path={tmp_path / 'big'}"])
    with pytest.raises(ArtifactError, match="does not fit") as exc, pytest.warns(UserWarning, match="differs"):
        load_lm(cfg2)
    assert "\n" not in str(exc.value)


# --------------------------------------------------------------------------- CLI


def _invoke(args):
    from typer.testing import CliRunner

    from segsllm.cli.app import app

    return CliRunner().invoke(app, ["train-lm", *args])


def test_cli_train_lm_prints_a_table(tiny_data_dir, tokenizer_dir, tmp_path):
    from segsllm.config import read_config

    preset = tmp_path / "p.yaml"  # the preset's lm stage values, then the command line's --set
    preset.write_text("pipeline:\n  overrides:\n    lm: [train.steps=500, train.batch_size=4, lm.eval_bytes=500]\n")
    sets = [x for s in [*TINY, "train.steps=3"] for x in ("--set", s)]
    result = _invoke(["--config", str(preset), "--data-dir", str(tiny_data_dir), "--out", str(tmp_path / "o"),
                      "--no-track", "--tokenizer", str(tokenizer_dir), "--domains", "prose,csv", "--device", "cpu",
                      *sets])
    assert result.exit_code == 0, result.output
    assert "bits/byte" in result.output and "prose" in result.output and "csv" in result.output
    assert "3 steps" in result.output  # --set train.steps beats the preset's pipeline.overrides.lm
    saved = read_config(tmp_path / "o" / "config.yaml")
    assert (saved.train.steps, saved.train.batch_size, saved.lm.eval_bytes) == (3, 4, 500)
    assert "code" not in result.output.split("validation")[1]
    assert (tmp_path / "o" / "manifest.json").is_file()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [([], "tokenizer"), (["--tokenizer", "TOK", "--domains", "nosuchcorpus"], "nosuchcorpus")],
)
def test_cli_bad_input_is_one_line_exit_2(tiny_data_dir, tokenizer_dir, tmp_path, extra, needle):
    extra = [str(tokenizer_dir) if a == "TOK" else a for a in extra]
    result = _invoke(["--data-dir", str(tiny_data_dir), "--out", str(tmp_path / "o"), "--no-track", *extra])
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
