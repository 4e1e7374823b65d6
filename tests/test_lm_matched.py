"""The lm-matched stage: snapshots at each token budget, exact resume, budgets.json."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from segsllm.config import load_config
from segsllm.data.tokenizer import save_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["backbone.spec=tiny", "backbone.hidden_size=32", "backbone.num_layers=1", "backbone.num_heads=4",
        "backbone.max_positions=64", "lm.context_len=32"]


def _cfg(data_dir, out, *extra):
    return load_config(
        None,
        [f"data.dir={data_dir}", f"run.out={out}", "run.track=false", "run.device=cpu", *TINY,
         "train.steps=3", "train.batch_size=4", "train.lr=3e-3", "train.warmup_steps=1",
         "train.eval_every=0", "lm.eval_bytes=600", "train.log_every=10", "train.ckpt_every=1",
         "train.keep_last=0", *extra],
    )


@pytest.fixture(scope="module")
def start_lm(tiny_data_dir, tokenizer, tmp_path_factory):
    """The ``lm`` stage's model every matched LM continues from."""
    from segsllm.train.lm_stage import train_lm

    tok = save_tokenizer(tokenizer, tmp_path_factory.mktemp("tok"))
    out = tmp_path_factory.mktemp("lm") / "lm"
    result = train_lm(_cfg(tiny_data_dir, out, f"tokenizer.path={tok}"), progress=False)
    return tok, result


def _matched_cfg(tiny_data_dir, start_lm, out):
    tok, lm = start_lm
    return _cfg(tiny_data_dir, out, f"tokenizer.path={tok}", f"backbone.spec={lm.out_dir}")


def _step_tokens(out):
    """Tokens seen after each optimizer step, from the run's checkpoints (ckpt_every=1)."""
    from segsllm.train.checkpoint import list_checkpoints, read_trainer_state

    return {int(p.name.split("-")[1]): read_trainer_state(p)["tokens_seen"] for p in list_checkpoints(out)}


def test_segment_models_count_every_segments_tokens_and_its_eos():
    import torch

    from segsllm.data.segment_windows import windows_from_segments
    from segsllm.train.stage import segment_targets

    window = windows_from_segments([[5, 6, 7], [8], [9, 10]], pad_id=0)  # (1, S=3, T=3)
    assert segment_targets(window) == 6 + 3  # 6 tokens, 3 segment EOS
    padded = {"lengths": torch.tensor([[3, 1, 0], [2, 0, 0]])}  # 0 = a padded segment slot
    assert segment_targets(padded) == 6 + 3
    assert segment_targets({"lengths": torch.tensor([4, 2])}) == 6 + 2  # VAE batches: (B,)


def test_plan_steps_and_the_snapshot_hook_take_the_first_step_at_each_budget():
    from segsllm.train.lm_matched import SnapshotAtBudgets, plan_steps

    assert plan_steps(1000, 100.0, margin=1.0) == 10 and plan_steps(1001, 100.0, margin=1.0) == 11
    saved, evals = [], []
    hook = SnapshotAtBudgets({"b": 250, "a": 100, "c": 250}, lambda n, r, m: saved.append((n, r["tokens_seen"])),
                             lambda: evals.append(1) or {})
    state = SimpleNamespace(tokens_seen=0, step=0, stop=False)
    for seen in (60, 120, 180, 240, 300, 360):
        state.tokens_seen, state.step = seen, state.step + 1
        hook.on_step_end(state)
        if state.stop:
            break
    assert saved == [("a", 120), ("b", 300), ("c", 300)]  # the first step reaching each budget
    assert len(evals) == 2  # one evaluation per step that snapshots, however many budgets it meets
    assert state.stop and state.tokens_seen == 300  # no step past the last budget
    assert hook.done["a"] == {"target_tokens": 100, "tokens_seen": 120, "steps": 2}


def test_snapshots_continue_the_lm_to_each_budget(tiny_data_dir, start_lm, tmp_path):
    import torch

    from segsllm.config.backbone import BackboneConfig
    from segsllm.models.backbone import load_backbone
    from segsllm.train.lm_matched import train_matched_lm

    _, lm = start_lm
    out = tmp_path / "lm-matched"
    per_step = lm.tokens_seen / lm.steps
    budgets = {"small": int(1.5 * per_step), "large": int(4.5 * per_step)}
    result = train_matched_lm(_matched_cfg(tiny_data_dir, start_lm, out), budgets, progress=False)
    seen = _step_tokens(out)
    for name, target in budgets.items():
        folder = out / name
        assert (folder / "manifest.json").is_file()
        doc = json.loads((folder / "metrics.json").read_text())
        rec = doc["budget"]
        assert rec["target_tokens"] == target and rec["tokens_seen"] == seen[rec["steps"]] >= target
        assert seen.get(rec["steps"] - 1, 0) < target  # the first step at the budget, not a later one
        assert set(doc["final"]) == {"prose", "code", "csv"} and doc["final"]["code"]["bits_per_byte"] > 0
        assert result.snapshots[name]["tokens_seen"] == rec["tokens_seen"]
    assert result.steps == json.loads((out / "large" / "metrics.json").read_text())["budget"]["steps"]
    # The lm's schedule continued where it ended: a constant rate at its final lr, no warm-up.
    lm_train = load_config(str(lm.out_dir / "config.yaml")).train
    ran = load_config(str(out / "large" / "config.yaml")).train
    assert ran.lr == pytest.approx(lm_train.lr * lm_train.min_lr_ratio) and lm_train.min_lr_ratio < 1
    assert (ran.warmup_steps, ran.min_lr_ratio) == (0, 1.0)
    # Each snapshot is a train-lm folder that starts from the lm's weights and moved away from them.
    start = load_backbone(BackboneConfig(spec=str(lm.out_dir))).model
    small = load_backbone(BackboneConfig(spec=str(out / "small"))).model
    large = load_backbone(BackboneConfig(spec=str(out / "large"))).model
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        logits = [m.eval()(ids).logits for m in (start, small, large)]
    assert not torch.allclose(logits[0], logits[1]) and not torch.allclose(logits[1], logits[2])


def test_an_interrupted_run_resumes_to_the_same_snapshots(tiny_data_dir, start_lm, tmp_path, monkeypatch):
    import torch

    from segsllm.config.backbone import BackboneConfig
    from segsllm.models.backbone import load_backbone
    from segsllm.train import lm_matched

    _, lm = start_lm
    per_step = lm.tokens_seen / lm.steps
    budgets = {"a": int(1.5 * per_step), "b": int(3.5 * per_step)}
    whole = lm_matched.train_matched_lm(_matched_cfg(tiny_data_dir, start_lm, tmp_path / "whole"), budgets,
                                        progress=False)
    out = tmp_path / "cut"
    save = lm_matched.SnapshotWriter.save

    def crash_after_a(self, name, record, metrics):
        save(self, name, record, metrics)
        if name == "a":
            raise KeyboardInterrupt  # killed right after the first snapshot, before that step's checkpoint

    monkeypatch.setattr(lm_matched.SnapshotWriter, "save", crash_after_a)
    with pytest.raises(KeyboardInterrupt):
        lm_matched.train_matched_lm(_matched_cfg(tiny_data_dir, start_lm, out), budgets, progress=False)
    monkeypatch.setattr(lm_matched.SnapshotWriter, "save", save)
    assert (out / "a" / "manifest.json").is_file() and not (out / "b").exists()
    resumed = lm_matched.train_matched_lm(_matched_cfg(tiny_data_dir, start_lm, out), budgets, resume=True,
                                          progress=False)
    assert resumed.snapshots["b"]["tokens_seen"] == whole.snapshots["b"]["tokens_seen"]
    a, b = (load_backbone(BackboneConfig(spec=str(d / "b"))).model for d in (tmp_path / "whole", out))
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(v, w), k
    # Resuming a finished run trains nothing more.
    again = lm_matched.train_matched_lm(_matched_cfg(tiny_data_dir, start_lm, out), budgets, resume=True,
                                        progress=False)
    assert again.steps == resumed.steps and again.snapshots == resumed.snapshots


def test_budgets_json_collects_every_models_tokens(tmp_path):
    from segsllm.budgets import collect_budgets, read_budgets, write_budgets
    from segsllm.layout import PipelineLayout

    layout = PipelineLayout(tmp_path, seed=2)
    for folder, doc in ((layout.lm, {"tokens_seen": 1000, "steps": 10}),
                        (layout.vae("fixed:k=8"), {"tokens_seen": 700, "steps": 7}),
                        (layout.sllm("fixed:k=8"), {"tokens_seen": 500, "steps": 5}),
                        (layout.lm_matched("fixed:k=8"), {"tokens_seen": 520, "steps": 6,
                                                          "budget": {"target_tokens": 500}})):
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(doc))
    path = write_budgets(layout, ["fixed:k=8", "punctuation"])
    assert path == tmp_path / "seed-2" / "budgets.json"
    got = read_budgets(path.parent)
    assert got == collect_budgets(layout, ["fixed:k=8", "punctuation"])
    assert got["lm"] == {"path": "lm", "tokens_seen": 1000, "steps": 10}
    m = got["models"]["fixed-k-8"]
    assert m["segmenter"] == "fixed:k=8" and m["sllm"]["tokens_seen"] == 500 and m["vae"]["path"] == "vae-fixed-k-8"
    assert m["lm_matched"] == {"path": "lm-matched/fixed-k-8", "tokens_seen": 520, "steps": 6, "target_tokens": 500}
    assert got["models"]["punctuation"]["sllm"] is None  # not trained (yet)


def _fake_sllm(folder, spec, tokens):
    """The two files ``train-lm --match`` reads from an SLLM folder (its weights are not needed)."""
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"kind": "sllm", "lineage": {"segmenter": spec}}))
    (folder / "metrics.json").write_text(json.dumps({"tokens_seen": tokens, "steps": 3}))
    return folder


def test_cli_train_lm_match_snapshots_each_sllm_budget(tiny_data_dir, start_lm, tmp_path):
    from typer.testing import CliRunner

    from segsllm.cli.app import app

    tok, lm = start_lm
    per_step = int(lm.tokens_seen / lm.steps)
    a = _fake_sllm(tmp_path / "sllm-a", "fixed:k=8", per_step)
    b = _fake_sllm(tmp_path / "sllm-b", "punctuation", 2 * per_step)
    sets = [x for s in [*TINY, "train.batch_size=4", "lm.eval_bytes=600", "train.ckpt_every=0"] for x in ("--set", s)]
    out = tmp_path / "matched"
    result = CliRunner().invoke(app, ["train-lm", "--data-dir", str(tiny_data_dir), "--out", str(out), "--no-track",
                                      "--device", "cpu", "--tokenizer", str(tok), "--backbone", str(lm.out_dir),
                                      "--match", str(a), "--match", str(b), *sets])
    assert result.exit_code == 0, result.output
    assert "matched to SLLM budgets" in result.output and f"{2 * per_step:,}" in result.output
    for slug, target in (("fixed-k-8", per_step), ("punctuation", 2 * per_step)):
        rec = json.loads((out / slug / "metrics.json").read_text())["budget"]
        assert rec["target_tokens"] == target <= rec["tokens_seen"]
    bad = CliRunner().invoke(app, ["train-lm", "--data-dir", str(tiny_data_dir), "--out", str(tmp_path / "x"),
                                   "--no-track", "--tokenizer", str(tok), "--backbone", str(lm.out_dir),
                                   "--match", str(tmp_path / "nowhere"), *sets])
    assert bad.exit_code != 0 and "not a finished SLLM folder" in bad.output and "Traceback" not in bad.output
