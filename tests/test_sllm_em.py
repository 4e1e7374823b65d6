"""Hard EM with the sllm teacher at toy size: rounds run, record bits/byte, chain S_t -> S_{t+1}."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segsllm.config import load_config

pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("one_thread")

COMMON = ["run.track=false", "run.device=cpu", "train.eval_every=0", "train.eval_batches=1", "train.ckpt_every=0",
          "train.log_every=100", "train.warmup_steps=2"]


def _em_config(teacher_vae, data_dir, out, *extra):
    return load_config(None, [
        f"data.dir={data_dir}", f"run.out={out}", f"tokenizer.path={teacher_vae / 'tok'}", *COMMON,
        "segmenter.max_len=8", "splitter.teacher=sllm", f"splitter.vae={teacher_vae / 'vae'}", "splitter.em_rounds=2",
        "splitter.target_len=4", "splitter.chunk_tokens=48", "splitter.teacher_tokens=300",
        "splitter.teacher_eval_tokens=120", "splitter.calibration_tokens=600", "splitter.predictor.d_model=8",
        "splitter.predictor.n_layers=2", "splitter.predictor.prior_shape=3", "train.steps=6", "train.batch_size=8", "train.lr=5e-3",
        "backbone.hidden_size=16", "backbone.num_layers=1", "backbone.num_heads=2", "backbone.max_positions=32",
        "sllm.max_segments=8", "splitter.em_sllm=[train.steps=6,train.batch_size=4]", *extra,
    ])


def test_em_rounds_run_chain_and_record_bits_per_byte(teacher_vae, tiny_data_dir, tokenizer, tmp_path):
    from segsllm.segment import build_segmenter
    from segsllm.train.sllm_em import EM_FILE, run_splitter_stage

    out = tmp_path / "splitter-sllm"
    cfg = _em_config(teacher_vae, tiny_data_dir, out)
    result, rounds = run_splitter_stage(cfg, progress=False)
    assert len(rounds) == 2 and rounds[0].segmentation == "punctuation"
    first_splitter = out / "em" / "round-0" / "splitter"
    assert rounds[1].segmentation == f"learned:{first_splitter.resolve()}"  # S_1 is what round 0 taught
    for r in rounds:
        assert set(r.bits_per_byte) == {"prose", "code", "csv"}, r
        assert all(np.isfinite(v) and v > 0 for v in r.bits_per_byte.values())
        assert set(r.next_mean_len) == {"prose", "code", "csv"}
    sllm_cfg = json.loads((out / "em" / "round-0" / "sllm" / "metrics.json").read_text())
    assert sllm_cfg["steps"] == 6  # splitter.em_sllm reached the SLLM's training, not the splitter's
    em = json.loads((out / EM_FILE).read_text())
    assert [r["bits_per_byte"] for r in em["rounds"]] == [r.bits_per_byte for r in rounds]
    manifest = json.loads((out / "manifest.json").read_text())
    teacher = manifest["lineage"]["teacher"]
    assert teacher["name"] == "sllm" and str(first_splitter.resolve()) in teacher["segmentation"]
    assert teacher["sllm"].endswith("round-1/sllm")
    # One length prior: the teacher's DP and the student's Viterbi decode share its shape.
    assert teacher["prior_shape"] == 3.0
    assert json.loads((out / "config.json").read_text())["prior_shape"] == 3.0
    seg = build_segmenter(f"learned:{out}", tokenizer=tokenizer)
    text = "x = 1\nprint(x)\n"
    assert "".join(seg.split_text(text)) == text
    assert result.teacher == "sllm" and result.metrics["csv"]["max_seg_len"] <= 8


def test_em_rounds_of_another_configuration_are_refused(tmp_path):
    from segsllm.errors import ConfigError
    from segsllm.train.sllm_em import _claim, em_key

    a = load_config(None, ["splitter.teacher=sllm"])
    b = load_config(None, ["splitter.teacher=sllm", "splitter.em_sllm=[train.steps=3]"])
    assert em_key(a) != em_key(b) and em_key(a) == em_key(load_config(None, ["splitter.teacher=sllm", "run.out=x"]))
    _claim(tmp_path, em_key(a))
    _claim(tmp_path, em_key(a))  # the same configuration resumes
    with pytest.raises(ConfigError, match="another configuration"):
        _claim(tmp_path, em_key(b))


def test_a_merge_only_student_cuts_only_where_its_rule_does(teacher_vae, tiny_data_dir, tokenizer, tmp_path):
    """splitter.sllm_cut_at: the deployed student keeps the restriction (config.json), is
    calibrated on it, cuts only at punctuation's boundaries, and records no stream metrics
    (punctuation looks past its boundaries: a batch-only splitter)."""
    from segsllm.data.tokenizer import encode
    from segsllm.segment import build_segmenter
    from segsllm.train.sllm_em import run_splitter_stage

    out = tmp_path / "splitter-merge"
    result, _ = run_splitter_stage(_em_config(teacher_vae, tiny_data_dir, out, "splitter.em_rounds=1",
                                              "splitter.sllm_cut_at=punctuation"), progress=False)
    assert json.loads((out / "config.json").read_text())["cut_at"] == "punctuation"
    seg = build_segmenter(f"learned:{out}", tokenizer=tokenizer)
    rule = build_segmenter("punctuation", tokenizer=tokenizer, max_len=seg.max_len)
    ids = np.array(encode(tokenizer, "x = 1, y = 2.\nprint(x, y); z = [1, 2, 3]\nAnd so, on it goes. Yes!\n"))
    assert set(seg.segment(ids).tolist()) <= set(rule.segment(ids).tolist())
    assert all("mean_len_stream" not in m and "stream_teacher_f1" not in m for m in result.metrics.values())
    assert all(m["mean_len"] > 1 for m in result.metrics.values())  # calibrated over the allowed cuts
