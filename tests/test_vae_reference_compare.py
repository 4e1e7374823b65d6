"""The issue #17 comparison script, end to end at toy size (--quick) on tiny corpora."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "vae_reference_compare.py"


def _script():
    spec = importlib.util.spec_from_file_location("vae_reference_compare", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_comparison_trains_both_scores_the_same_segments_and_resumes(tiny_data_dir, tmp_path, capsys):
    mod = _script()
    argv = ["--quick", "--data-dir", str(tiny_data_dir), "--out", str(tmp_path / "cmp"),
            "--variants", "ours,reference,ours+norm=post+positions=sinusoidal", "--seeds", "0,1",
            "--test-segments", "12"]
    assert mod.main(argv) == 0
    rows = [json.loads(x) for x in (tmp_path / "cmp" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {r["steps"] for r in rows} == {6}
    for r in rows:
        assert set(r["scores"]) == {"prose", "code", "csv"}
        for s in r["scores"].values():
            assert 0 < s["nll_per_token"] < 20 and 0 <= s["exact_match"] <= 1
    # Different architectures give different numbers; the same one and seed is reproducible.
    by = {(r["variant"], r["seed"]): r["scores"]["prose"]["nll_per_token"] for r in rows}
    assert by["ours", 0] != by["reference", 0]
    table = capsys.readouterr().out
    assert "| reference | 2 | " in table and "csv exact %" in table and "±" in table
    # A rerun skips finished runs; a fresh folder reproduces seed 0 exactly.
    assert mod.main(argv) == 0
    assert len((tmp_path / "cmp" / "results.jsonl").read_text().splitlines()) == 6
    mod.main([*argv[:4], str(tmp_path / "again"), "--variants", "ours", "--seeds", "0", "--test-segments", "12"])
    again = json.loads((tmp_path / "again" / "results.jsonl").read_text().splitlines()[0])
    assert again["scores"]["prose"]["nll_per_token"] == pytest.approx(by["ours", 0], abs=1e-6)


def test_bad_variant_is_one_clear_error(tmp_path):
    mod = _script()
    with pytest.raises(SystemExit, match="must start with 'ours' or 'reference'"):
        mod.main(["--out", str(tmp_path), "--variants", "theirs"])
    with pytest.raises(SystemExit, match="expected key=value"):
        mod.main(["--out", str(tmp_path), "--variants", "ours+norm"])
