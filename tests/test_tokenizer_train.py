"""`segsllm train-tokenizer`: balanced mix, exact round-trip, HF folder, manifest, errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from segsllm.cli.app import app
from segsllm.data import store
from segsllm.data.store import RawDoc

runner = CliRunner()

TRICKY = [
    "Fellow-Citizens of the Senate:\r\nWe meet again.\r\n",
    "def f(x):\n\treturn {'a': [1, 2]}\t# tab\n",
    '"","mpg","cyl"\n"Mazda RX4",21,6\n',
    "你好，世界。这是一个测试！ naïve café — 🙂🚀 \u2028 \u00a0 \ufeffbom\n",
    "literal special tokens <s> </s> <pad> stay text\n",
    "   leading spaces and trailing   \n\n\n",
]


class ListSource:
    def __init__(self, name: str, texts: list[str]):
        self.name, self.texts, self.total = name, texts, len(texts)

    def records(self) -> Iterator[RawDoc]:
        for i, t in enumerate(self.texts):
            yield RawDoc(f"{self.name}-{i}", t.encode("utf-8"))

    def info(self) -> dict[str, Any]:
        return {"source": f"test:{self.name}", "version": "1", "sha256": "0" * 64}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    long_line = ",".join(str(i) for i in range(40_000))  # ~230 KB, one line
    for name in ("prose", "code", "csv"):
        texts = [f"{name} document number {i}: {t}" for i, t in enumerate(TRICKY * 4)]
        if name == "csv":
            texts.append(long_line)
        store.write_corpus(root, ListSource(name, texts), 0.2, 0.2)
    return root


def _train(data_dir, out, *extra: str):
    args = [
        "train-tokenizer",
        "--out",
        str(out),
        "--vocab-size",
        "320",
        "--data-dir",
        str(data_dir),
        "--no-track",
        "--set",
        "tokenizer.sample_bytes_per_domain=20000",
        *extra,
    ]
    return runner.invoke(app, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    r = _train(data_dir, out)
    assert r.exit_code == 0, r.output
    return out, r.output


def test_folder_contents_and_manifest(trained, data_dir):
    out, output = trained
    names = {p.name for p in out.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "config.yaml", "manifest.json"} <= names
    m = json.loads((out / "manifest.json").read_text())
    assert m["kind"] == "tokenizer" and m["vocab_size"] == 320 and len(m["fingerprint"]) == 16
    total_docs = sum(
        store.load_manifest(data_dir, d)["total_documents"] for d in ("prose", "code", "csv")
    )
    per_domain = {
        d: store.load_manifest(data_dir, d)["total_documents"] for d in ("prose", "code", "csv")
    }
    rt = m["roundtrip"]
    assert (rt["documents"], rt["mismatches"], rt["first_mismatches"]) == (total_docs, 0, [])
    assert rt["per_domain"] == per_domain and rt["complete"] is True
    # Lineage: the data manifests it was built from.
    for d in ("prose", "code", "csv"):
        dm = store.load_manifest(data_dir, d)
        assert m["data"][d]["sha256"] == dm["sha256"]
        assert m["data"][d]["files"] == dm["files"]
        assert m["bytes_per_token"][d] > 1.0
    assert all(v > 0 for v in m["sample_bytes"].values())
    assert "bytes/token" in output and "0 mismatches" in output
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_saved_config_reloads(trained):
    from segsllm.config import read_config

    cfg = read_config(trained[0] / "config.yaml")
    assert cfg.tokenizer.vocab_size == 320 and cfg.tokenizer.sample_bytes_per_domain == 20000
    assert cfg.data.domains == ["prose", "code", "csv"]


def test_autotokenizer_loads_with_specials_and_round_trips_every_document(trained, data_dir):
    from transformers import AutoTokenizer

    from segsllm.data.tokenizer import decode, encode

    tok = AutoTokenizer.from_pretrained(str(trained[0]))
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    assert None not in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    n = 0
    for d in ("prose", "code", "csv"):
        for split in store.SPLITS:
            for doc in store.iter_documents(data_dir, d, split):
                assert decode(tok, encode(tok, doc.text)) == doc.text, doc.id
                n += 1
    assert n == json.loads((trained[0] / "manifest.json").read_text())["roundtrip"]["documents"]
    for text in TRICKY:
        assert decode(tok, encode(tok, text)) == text


def test_domains_subset_and_small_preset_caps(data_dir, tmp_path):
    r = _train(data_dir, tmp_path / "t", "--domains", "code", "--set", "data.max_docs=2")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert m["domains"] == ["code"] and list(m["data"]) == ["code"]
    assert m["roundtrip"]["complete"] is False and m["roundtrip"]["documents"] <= 6


def test_existing_out_needs_force(data_dir, tmp_path):
    out = tmp_path / "t"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    r = _train(data_dir, out)
    assert r.exit_code == 2 and "--force" in r.output and (out / "keep.txt").exists()
    r = _train(data_dir, out, "--force")
    assert r.exit_code == 0 and not (out / "keep.txt").exists()


def test_missing_corpus_says_how_to_prepare(tmp_path):
    r = _train(tmp_path / "empty", tmp_path / "t")
    assert r.exit_code == 2 and "segsllm data prepare --corpus prose" in r.output
    assert not (tmp_path / "t").exists()


def test_too_small_vocab_is_one_line(data_dir, tmp_path):
    r = _train(data_dir, tmp_path / "t", "--vocab-size", "10")
    assert r.exit_code == 2 and "vocab_size" in r.output and "Traceback" not in r.output


def test_round_trip_mismatch_fails_loudly_and_writes_nothing(data_dir, tmp_path, monkeypatch):
    import segsllm.data.tokenizer as tk

    real = tk.load_tokenizer

    def broken(path):
        tok = real(path)
        orig = tok.batch_decode

        def bad_decode(ids, **kw):
            return [t.replace("\r\n", "\n") for t in orig(ids, **kw)]  # a lossy tokenizer

        tok.batch_decode = bad_decode
        return tok

    monkeypatch.setattr(tk, "load_tokenizer", broken)
    r = _train(data_dir, tmp_path / "t")
    assert r.exit_code == 2 and "round-trip failed" in r.output
    assert not (tmp_path / "t").exists() and list(tmp_path.iterdir()) == []


def test_run_is_tracked_in_mlflow(data_dir, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [
        "train-tokenizer",
        "--out",
        str(tmp_path / "t"),
        "--vocab-size",
        "300",
        "--data-dir",
        str(data_dir),
        "--tracking-uri",
        uri,
        "--domains",
        "prose",
        "--set",
        "tokenizer.sample_bytes_per_domain=5000",
    ]
    r = runner.invoke(app, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("segsllm/tokenizer")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.params["tokenizer.vocab_size"] == "300"
    assert run.data.metrics["vocab_size"] == 300 and run.data.metrics["roundtrip_mismatches"] == 0
    assert "bytes_per_token/prose" in run.data.metrics
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "manifests")}
    assert "manifests/prose.json" in arts


def test_literal_special_token_text_is_not_a_special_id(tokenizer):
    from segsllm.data.tokenizer import decode, encode

    text = "if tag == '<s>' or tag == '</s>': pad = '<pad>'\n"
    ids = encode(tokenizer, text)
    assert not {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id} & set(ids)
    assert decode(tokenizer, ids) == text
