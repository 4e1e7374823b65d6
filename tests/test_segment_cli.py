"""`segsllm segment` and `segsllm segmenters`: exact JSON segments and one-line errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from segsllm.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def tok_dir(tokenizer, tmp_path_factory):
    from segsllm.data.tokenizer import save_tokenizer

    return str(save_tokenizer(tokenizer, tmp_path_factory.mktemp("tok")))


def run(*args: str):
    return runner.invoke(app, ["segment", *args])


def as_json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


@pytest.mark.parametrize("spec", ["punctuation", "punctuation:max_len=8", "fixed:k=4", "fixed"])
@pytest.mark.parametrize("domain", ["prose", "code", "csv", "cjk"])
def test_json_segments_join_back_exactly(spec, domain, sample_texts, tok_dir, tmp_path):
    path = tmp_path / f"{domain}.txt"
    path.write_bytes(sample_texts[domain].encode("utf-8"))
    data = as_json(run(str(path), "--segmenter", spec, "--tokenizer", tok_dir, "--json"))
    assert "".join(data["segments"]) == sample_texts[domain]
    stats = data["stats"]
    assert stats["max_tokens_per_segment"] <= stats["max_len"]
    assert stats["segments"] == len(data["segments"]) and stats["documents"] == 1
    assert set(data) == {"segments", "stats"}


def test_fixed_k4_counts(tok_dir, tmp_path, tokenizer):
    from segsllm.data.tokenizer import encode

    text = "one two three four five six seven eight nine ten"
    (tmp_path / "f.txt").write_text(text)
    stats = as_json(run(str(tmp_path / "f.txt"), "--segmenter", "fixed:k=4", "-t", tok_dir, "--json"))["stats"]
    n = len(encode(tokenizer, text))
    assert stats["tokens"] == n and stats["segments"] == -(-n // 4) and stats["max_tokens_per_segment"] == 4
    assert stats["compression_ratio"] == pytest.approx(n / stats["segments"], rel=1e-3)


def test_crlf_is_kept(tok_dir, tmp_path):
    text = "First line.\r\nSecond line\r\n\r\nThird.\r\n"
    (tmp_path / "crlf.txt").write_bytes(text.encode())
    data = as_json(run(str(tmp_path / "crlf.txt"), "-t", tok_dir, "--json"))
    assert "".join(data["segments"]) == text
    assert data["segments"][0] == "First line.\r\n"


def test_invalid_utf8_is_replaced_with_a_warning(tok_dir, tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 ok.\n\xff\xfe end\n")
    result = run(str(tmp_path / "bad.txt"), "-t", tok_dir, "--json")
    data = as_json(result)
    assert "".join(data["segments"]) == "caf\ufffd ok.\n\ufffd\ufffd end\n"
    assert "not valid UTF-8: 3 invalid byte sequence(s)" in result.stderr


def test_default_output_draws_segments_and_a_table(tok_dir, tmp_path):
    (tmp_path / "t.txt").write_text("Hello there. How are you?\n")
    result = run(str(tmp_path / "t.txt"), "-t", tok_dir, "--set", "segmenter.max_len=8")
    assert result.exit_code == 0, result.output
    for word in ("Hello there.", "tokens / segment (p95)", "compression ratio", "segmenter tokens/s"):
        assert word in result.stdout


def test_long_single_line_is_split_at_max_len(tok_dir, tmp_path):
    # Same code path as a 10 MB line, kept small so the test stays fast.
    text = "word " * 60_000 + "end"
    (tmp_path / "long.txt").write_text(text)
    data = as_json(run(str(tmp_path / "long.txt"), "-t", tok_dir, "--segmenter", "punctuation:max_len=32", "--json"))
    assert "".join(data["segments"]) == text
    assert data["stats"]["max_tokens_per_segment"] == 32


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "is empty"), (b"text\x00with a NUL", "looks binary")],
)
def test_empty_and_binary_files(content, message, tok_dir, tmp_path):
    (tmp_path / "f").write_bytes(content)
    assert message in one_line_error(run(str(tmp_path / "f"), "-t", tok_dir))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--segmenter", "nope"], "unknown segmenter 'nope'; available: fixed, learned, lines, punctuation"),
        (["--segmenter", "fixed:k=x"], "k expects int"),
        (["--segmenter", "learned:some/dir"], "no splitter folder at some/dir"),
        (["--segmenter", "fixed:k=100"], "larger than max_len=64"),
        (["--set", "segmenter.nope=1"], "nope"),
    ],
)
def test_bad_segmenter_or_config(args, message, tok_dir, tmp_path):
    (tmp_path / "t.txt").write_text("Hi.\n")
    assert message in one_line_error(run(str(tmp_path / "t.txt"), "-t", tok_dir, *args))


def test_missing_tokenizer_file_and_folder(tmp_path, tok_dir):
    (tmp_path / "t.txt").write_text("Hi.\n")
    assert "train-tokenizer" in one_line_error(run(str(tmp_path / "t.txt")))
    assert "no tokenizer at" in one_line_error(run(str(tmp_path / "t.txt"), "-t", str(tmp_path)))
    assert "file not found" in one_line_error(run(str(tmp_path / "missing.txt"), "-t", tok_dir))
    assert "folder" in one_line_error(run(str(tmp_path), "-t", tok_dir))


def test_segmenters_lists_builtins():
    result = runner.invoke(app, ["segmenters"])
    assert result.exit_code == 0, result.output
    for word in ("punctuation", "fixed", "learned", "max_len: int = 64", "k: int = 16"):
        assert word in result.stdout
    rows = json.loads(runner.invoke(app, ["segmenters", "--json"]).stdout)
    assert {r["name"] for r in rows} >= {"punctuation", "fixed", "learned"}


def test_piped_output_separates_segments_and_shows_the_spec_as_given(tok_dir, tmp_path):
    (tmp_path / "t.txt").write_text("Hello there. How are you?\n")
    result = run(str(tmp_path / "t.txt"), "-t", tok_dir, "--segmenter", "fixed:k=16")
    assert result.exit_code == 0, result.output
    assert "│ segmenter               │            fixed:k=16 │" in result.stdout
    plain = run(str(tmp_path / "t.txt"), "-t", tok_dir, "--show", "-1")
    first = plain.stdout.split("\n")[0]
    assert first == "Hello there. │How are you?"  # CliRunner is a pipe: │ between segments
    custom = run(str(tmp_path / "t.txt"), "-t", tok_dir, "--separator", " / ")
    assert custom.stdout.startswith("Hello there.  / How are you?")
    stats = as_json(run(str(tmp_path / "t.txt"), "-t", tok_dir, "--segmenter", "fixed:k=16", "--json"))["stats"]
    assert stats["segmenter"] == "fixed:k=16" and stats["spec"] == "fixed:k=16,max_len=64"
