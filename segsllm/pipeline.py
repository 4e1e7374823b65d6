"""`segsllm pipeline`: every stage of the study from one preset, resumable.

Stages run in order — data, tokenizer, token-level LM (the baseline, and the backbone the
SLLMs start from), a VAE and an SLLM per segmenter, learned splitters per teacher (each
then gets its own VAE and SLLM), the token-matched LMs (``lm-matched``: the LM trained on as
many more tokens as each SLLM, docs/DESIGN.md §2), bench — each into ``OUT/<stage>``, or with
``pipeline.seeds`` everything after the tokenizer once per seed into ``OUT/seed-<k>/<stage>``. A stage's *key* hashes
its resolved config and the keys of the stages it consumes; ``OUT/<stage>/pipeline.json``
records the key and whether the stage finished. On a rerun a finished stage with the same
key is skipped, an unfinished one resumes from its last checkpoint, and a finished stage
whose key changed is refused (so results never silently mix configurations).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from segsllm.errors import SegsllmError
from segsllm.layout import PipelineLayout
from segsllm.models.token_lm import is_from_scratch

MARKER = "pipeline.json"
# Stage kinds that continue from their last checkpoint when interrupted.
RESUMABLE = ("lm", "vae", "sllm", "splitter", "lm-matched")


@dataclass
class Stage:
    """One step of the pipeline: what it is, where it writes, how to run it."""

    name: str  # folder under OUT, e.g. "vae-punctuation", "seed-1/lm-matched"
    kind: str  # data | tokenizer | lm | vae | sllm | splitter | lm-matched | bench
    cfg: Any  # the stage's resolved Config
    run: Callable[[Any, bool], Any]  # (cfg, resume) -> result
    after: list[str] = field(default_factory=list)  # stages whose outputs it reads
    key: str = ""


@dataclass
class StageOutcome:
    name: str
    status: str  # done | skipped | resumed
    seconds: float
    out: Path


# The config sections each kind of stage reads: a change elsewhere (say, bench settings)
# must not invalidate a trained model.
STAGE_SECTIONS = {
    "data": ("data",),
    "tokenizer": ("data", "tokenizer", "backbone"),
    "lm": ("data", "tokenizer", "backbone", "lm", "train"),
    "lm-matched": ("data", "tokenizer", "backbone", "lm", "train"),
    "vae": ("data", "tokenizer", "segmenter", "train", "vae", "backbone"),
    "sllm": ("data", "tokenizer", "segmenter", "train", "sllm", "backbone"),
    "splitter": ("data", "tokenizer", "segmenter", "train", "splitter"),
    "bench": ("data", "tokenizer", "segmenter", "bench"),
}


def _stage_key(cfg: Any, kind: str, upstream: list[str]) -> str:
    """Hash of the config sections the stage reads (plus seed and device) and upstream keys."""
    from segsllm.config.root import key_dict

    resolved = key_dict(cfg)
    sections = STAGE_SECTIONS.get(kind, tuple(k for k in resolved if k not in ("run", "pipeline")))
    picked = {k: resolved[k] for k in sections}
    picked["run"] = {k: resolved["run"][k] for k in ("seed", "device", "out")}
    blob = json.dumps({"cfg": picked, "upstream": upstream}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_marker(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_marker(out: Path, stage: Stage, done: bool, seconds: float | None = None,
                  cpu_seconds: float | None = None) -> None:
    from segsllm.io import atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / MARKER, {
        "stage": stage.name, "kind": stage.kind, "key": stage.key, "done": done,
        "after": stage.after, "seconds": seconds,
        "cpu_seconds": cpu_seconds,  # the stage's CPU time (all threads): a load-independent cost
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "started_at": None if seconds is None else time.time() - seconds,  # epoch seconds (with jobs: overlaps)
    })


def plan_stages(base: Any, preset: str | None, overrides: list[str], out: Path) -> list[Stage]:
    """The ordered stages for ``base`` (the resolved pipeline config).

    Each stage's config is loaded afresh for its kind: preset < the preset's
    ``pipeline.overrides.<kind>`` < ``overrides`` (the command line's ``--set``) < the
    planner's wiring (output folder, seed, segmenter, upstream folders). Data and tokenizer
    come once; the models and the bench once per seed of ``pipeline.seeds`` (each in
    ``OUT/seed-<k>/``), or once in ``OUT/`` with ``run.seed`` when that list is empty.
    """
    from segsllm.config import load_config

    def stage_cfg(kind: str, folder: Path, extra: Sequence[str] = (), seed: int | None = None) -> Any:
        sets = [*overrides, *extra, f"run.out={folder}", f"data.dir={base.data.dir}"]
        cfg = load_config(preset, sets, stage=kind)
        # Flags given on the command line (seed, device, tracking) win over everything.
        run = dataclasses.replace(base.run, out=str(folder), seed=base.run.seed if seed is None else seed)
        return dataclasses.replace(cfg, run=run)

    def name(folder: Path) -> str:
        return folder.relative_to(out).as_posix()

    shared = PipelineLayout(out)
    stages: list[Stage] = [Stage("data", "data", stage_cfg("data", shared.data), _run_data)]
    pretrained = not is_from_scratch(base.backbone.spec)
    stages.append(Stage("tokenizer", "tokenizer", stage_cfg("tokenizer", shared.tokenizer),
                        _run_backbone_tokenizer if pretrained else _run_tokenizer, ["data"]))
    seeds = base.pipeline.seeds or [None]
    bench_after: list[str] = []
    for seed in seeds:
        seed_stages, after = _model_stages(base, PipelineLayout(out, seed), partial(stage_cfg, seed=seed), name)
        stages += seed_stages
        bench_after += after
    # One bench over every seed (OUT/bench, or OUT/seed-<k>/bench for a single listed seed): it
    # scores each seed's models on the same documents, so its intervals span seeds (§7).
    first = PipelineLayout(out, seeds[0])
    bench_layout = first if len(seeds) == 1 else PipelineLayout(out)
    seg_list = "[" + ",".join(json.dumps(x) for x in _segmenter_specs(base, first)) + "]"
    stages.append(Stage(name(bench_layout.bench), "bench",
                        stage_cfg("bench", bench_layout.bench, [f"bench.from_dir={bench_layout.models}",
                                                                f"bench.segmenters={seg_list}"]),
                        _run_bench, bench_after))

    keys: dict[str, str] = {}
    for st in stages:
        st.key = _stage_key(st.cfg, st.kind, [keys[a] for a in st.after])
        keys[st.name] = st.key
    return stages


# pipeline.teachers entries that are a teacher with settings (their own splitter folder),
# so an ablation can hold both: e.g. the entropy teacher's two modes.
TEACHER_VARIANTS = {
    "entropy-monotonic": ("entropy", ["splitter.entropy_mode=monotonic"]),
    "entropy-global": ("entropy", ["splitter.entropy_mode=global"]),
    # Hard EM started from the strongest rule (lines) at its segment scale: a learned splitter
    # that can only win against lines at equal FLOPs if it cuts about as long (#13).
    # The student learns from 40k labelled tokens per domain (the teacher prices every span
    # with the SLLM: ~600 tokens/s on 2 cores) in small batches, so 600 steps stay within
    # splitter.max_epochs passes instead of memorising the labels.
    "sllm-lines": ("sllm", ["splitter.em_init=lines", "splitter.target_len=16", "splitter.teacher_tokens=40000",
                            "splitter.teacher_eval_tokens=6000", "train.batch_size=8"]),
    # The same, but the DP may only merge punctuation segments (cut where punctuation cuts):
    # unrestricted DP cuts have no local structure a student can learn (docs/DESIGN.md §6).
    "sllm-merge": ("sllm", ["splitter.em_init=lines", "splitter.sllm_cut_at=punctuation", "splitter.target_len=16",
                            "splitter.teacher_tokens=40000", "splitter.teacher_eval_tokens=6000",
                            "train.batch_size=8"]),
    # Hard EM from fixed:k=16 with a peaked length prior (Gamma shape 32: 16 ± 3 tokens) in
    # both the DP and the student's decode: "cut about every 16 tokens, where the SLLM pays
    # least". Seed 0 of the research run: beats punctuation on code and CSV and sllm-merge on
    # CSV, still loses to fixed:k=16 (README).
    "sllm-fixed": ("sllm", ["splitter.em_init=fixed:k=16", "splitter.predictor.prior_shape=32",
                            "splitter.target_len=16", "splitter.teacher_tokens=40000",
                            "splitter.teacher_eval_tokens=6000", "train.batch_size=8"]),
    # sllm-fixed with a causal student (lookahead 0, hazard decode: the peaked length prior
    # applied token by token): its cuts are a function of the tokens so far, so with
    # sllm.boundaries=segmenter (or auto) its SLLM pays nothing for segment ends, like
    # fixed:k=16's; the price is a student that sees no later token.
    "sllm-fixed-causal": ("sllm", ["splitter.em_init=fixed:k=16", "splitter.predictor.prior_shape=32",
                                   "splitter.target_len=16", "splitter.teacher_tokens=40000",
                                   "splitter.teacher_eval_tokens=6000", "train.batch_size=8",
                                   "splitter.predictor.lookahead=0", "splitter.predictor.decode=hazard"]),
    # The entropy teacher's global rule (cut after t when the base LM is unsure of token
    # t + 1: a function of tokens <= t, so a lookahead-0 student can learn it) under the same
    # peaked 16 ± 3 length prior, decoded token by token: "cut about every 16 tokens, where
    # the next token depends least on what came before". Causal, so free boundaries apply.
    "entropy-causal": ("entropy", ["splitter.entropy_mode=global", "splitter.predictor.prior_shape=32",
                                   "splitter.target_len=16", "splitter.predictor.lookahead=0",
                                   "splitter.predictor.decode=hazard"]),
    # One round of hard EM from fixed:k=16 that may only merge fixed:k=16's blocks (segments
    # of 16, 32 or 48 tokens, 20 on average): boundaries as predictable as fixed:k=16's, fewer
    # of them where the SLLM pays least for a longer segment. Its student decodes at multiples of 16 too.
    "sllm-blocks": ("sllm", ["splitter.em_init=fixed:k=16", "splitter.sllm_cut_at=fixed:k=16", "splitter.em_rounds=1",
                             "splitter.target_len=20", "splitter.teacher_tokens=40000",
                             "splitter.teacher_eval_tokens=6000", "train.batch_size=8"]),
}


def teacher_variant(entry: str) -> tuple[str, list[str]]:
    """(teacher, the splitter settings it implies) of one ``pipeline.teachers`` entry."""
    return TEACHER_VARIANTS.get(entry, (entry, []))


def _segmenter_specs(base: Any, layout: PipelineLayout) -> list[str]:
    """The rule segmenters, then one ``learned:<splitter folder>`` per teacher."""
    return [*base.pipeline.segmenters, *(f"learned:{layout.splitter(t)}" for t in base.pipeline.teachers)]


def _model_stages(base: Any, layout: PipelineLayout, stage_cfg: Callable[..., Any],
                  name: Callable[[Path], str]) -> tuple[list[Stage], list[str]]:
    """One seed's stages: lm, VAE + SLLM per segmenter, the teachers' random-span VAE,
    splitters (+ their VAE and SLLM), the matched LMs, all in ``layout.models``; and the
    names of the stages the bench reads."""
    tok = f"tokenizer.path={layout.tokenizer}"
    lm = name(layout.lm)
    stages = [Stage(lm, "lm", stage_cfg("lm", layout.lm, [tok]), _run_lm, ["tokenizer"])]

    def model_pair(spec: str, after: list[str]) -> list[Stage]:
        vae_dir, sllm_dir = layout.vae(spec), layout.sllm(spec)
        vae = Stage(name(vae_dir), "vae", stage_cfg("vae", vae_dir, [f"segmenter.spec={spec}", tok]),
                    _run_vae, ["tokenizer", *after])
        sllm = Stage(name(sllm_dir), "sllm",
                     stage_cfg("sllm", sllm_dir, [f"segmenter.spec={spec}", f"backbone.spec={layout.lm}", tok]),
                     partial(_run_sllm, vae_dir=vae_dir), [vae.name, lm])
        return [vae, sllm]

    for spec in base.pipeline.segmenters:
        stages += model_pair(spec, [])
    learned: list[str] = []
    first = base.pipeline.segmenters[0] if base.pipeline.segmenters else None
    teacher_vae = _teacher_vae_stage(base, layout, stage_cfg, model_pair, stages)
    for entry in base.pipeline.teachers:
        teacher, variant = teacher_variant(entry)
        extra, after = [tok, *variant], ["tokenizer"]
        if teacher in ("entropy", "sllm", "joint"):
            extra.append(f"splitter.base_lm={layout.lm}")
            after.append(lm)
        if teacher in ("vae", "sllm", "joint"):  # unbiased: the VAE trained on random spans
            extra.append(f"splitter.vae={teacher_vae}")
            after.append(name(teacher_vae))
        if teacher == "vae-rule":
            if first is None:
                raise SegsllmError("the vae-rule teacher needs a VAE: list a rule segmenter in pipeline.segmenters")
            extra.append(f"splitter.vae={layout.vae(first)}")
            after.append(name(layout.vae(first)))
        folder = layout.splitter(entry)
        stages.append(Stage(name(folder), "splitter",
                            stage_cfg("splitter", folder, [*extra, f"splitter.teacher={teacher}"]),
                            _run_splitter, after))
        learned.append(f"learned:{folder}")
    for spec, teacher in zip(learned, base.pipeline.teachers, strict=True):
        stages += model_pair(spec, [name(layout.splitter(teacher))])
    segs = _segmenter_specs(base, layout)  # the rules, then `learned`
    sllms = [name(layout.sllm(s)) for s in segs]
    bench_after = [lm, *sllms]
    if segs:  # the token LM continued for each SLLM's budget (kind "lm": the lm's own recipe)
        matched = Stage(name(layout.matched_root), "lm-matched",
                        stage_cfg("lm", layout.matched_root, [tok, f"backbone.spec={layout.lm}"]),
                        partial(_run_matched, layout=layout, segmenters=segs), [lm, *sllms])
        stages.append(matched)
        bench_after.append(matched.name)
    return stages, bench_after


def _teacher_vae_stage(base: Any, layout: PipelineLayout, stage_cfg: Callable[..., Any],
                       model_pair: Callable[..., list[Stage]], stages: list[Stage]) -> Path | None:
    """Add the VAE stage the ``vae``, ``sllm`` and ``joint`` teachers share: a SentenceVAE trained on
    random spans up to the splitter's max_len (docs/DESIGN.md §6); its folder."""
    if not {"vae", "sllm", "joint"} & {teacher_variant(t)[0] for t in base.pipeline.teachers}:
        return None
    from segsllm.train.teachers import teacher_vae_segmenter

    probe = stage_cfg("splitter", layout.splitter("vae"))
    spec = teacher_vae_segmenter(probe.splitter.max_len or probe.segmenter.max_len)
    stages.append(model_pair(spec, [])[0])
    return layout.vae(spec)


def run_pipeline(base: Any, preset: str | None, overrides: list[str], *, progress: bool = True,
                 on_stage: Callable[[str, str], None] | None = None) -> list[StageOutcome]:
    """Run (or resume) every stage; ``on_stage(name, status)`` reports progress. With
    ``pipeline.jobs`` > 1 independent stages run at once (:mod:`segsllm.pipeline_jobs`)."""
    from segsllm.tracking import run_name, start_run

    if not base.run.out:
        raise SegsllmError("pipeline needs an output folder: --out DIR (or run.out)")
    jobs = base.pipeline.jobs
    if jobs > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SegsllmError("pipeline.jobs > 1 runs stages in worker processes; under torchrun use --jobs 1")
    out = Path(base.run.out)
    stages = plan_stages(base, preset, overrides, out)
    markers = {st.name: _read_marker(Path(st.cfg.run.out)) for st in stages}
    for st in stages:  # refuse before any work, not after the stages in front of it ran
        marker = markers[st.name]
        if marker and marker.get("done") and marker.get("key") != st.key:
            raise SegsllmError(
                f"{st.cfg.run.out} holds a finished '{st.name}' built with another configuration; "
                "use a new --out (or delete that folder) to rebuild it"
            )
    outcomes: dict[str, StageOutcome] = {}
    with start_run(base, "pipeline", tags={"segmenter": ",".join(base.pipeline.segmenters),
                                           "domain": ",".join(base.data.domains),
                                           "backbone": base.backbone.spec},
                   run_name=run_name("pipeline", folder=out), resume=True) as parent:

        def begin(st: Stage) -> bool:
            """Mark ``st`` started; whether it resumes from a checkpoint."""
            marker, stage_out = markers[st.name], Path(st.cfg.run.out)
            resume = bool(marker and marker.get("key") == st.key and st.kind in RESUMABLE)
            resume = resume and (stage_out / "checkpoints").is_dir()
            if on_stage:
                on_stage(st.name, "resuming" if resume else "running")
            _write_marker(stage_out, st, done=False)
            st.cfg.run.tags = {**st.cfg.run.tags, "pipeline.run_id": parent.run_id or "",
                               "pipeline.stage": st.name}
            return resume

        def end(st: Stage, resume: bool, seconds: float, cpu_seconds: float) -> None:
            stage_out = Path(st.cfg.run.out)
            _write_marker(stage_out, st, done=True, seconds=seconds, cpu_seconds=cpu_seconds)
            parent.log_metrics({f"stage_seconds/{st.name}": seconds})
            outcomes[st.name] = StageOutcome(st.name, "resumed" if resume else "done", seconds, stage_out)
            if on_stage and jobs > 1:
                on_stage(st.name, f"finished in {seconds:.0f} s")

        todo = []
        for st in stages:
            marker = markers[st.name]
            if marker and marker.get("done") and marker.get("key") == st.key:
                outcomes[st.name] = StageOutcome(st.name, "skipped", 0.0, Path(st.cfg.run.out))
                if on_stage:
                    on_stage(st.name, "skipped (already done with the same config)")
            else:
                todo.append(st)
        if jobs > 1:
            from segsllm.pipeline_jobs import run_stages_parallel

            run_stages_parallel(todo, jobs, start=begin, finish=end)
        else:
            for st in todo:
                resume = begin(st)
                started, cpu_started = time.perf_counter(), time.process_time()
                st.run(st.cfg, resume)
                end(st, resume, time.perf_counter() - started, time.process_time() - cpu_started)
        ordered = [outcomes[st.name] for st in stages]
        parent.log_dict([dataclasses.asdict(o) for o in ordered], "stages.json")
        for st in stages:
            if st.kind != "bench":
                continue
            for name in ("results.md", "results.json", "results.csv", "speed_quality.png", "memory.png"):
                if (Path(st.cfg.run.out) / name).is_file():
                    parent.log_artifact(Path(st.cfg.run.out) / name, st.name if st.name != "bench" else None)
    return ordered


# --------------------------------------------------------------------------- stage runners


def _run_data(cfg: Any, resume: bool) -> None:
    from segsllm.data.corpora import BUILTIN_SOURCES, prepare_builtin
    from segsllm.data.store import require_prepared

    for name in cfg.data.domains:
        if name in BUILTIN_SOURCES:
            prepare_builtin(cfg.data.dir, name, cfg.data.validation_fraction, cfg.data.test_fraction)
        else:
            require_prepared(cfg.data.dir, name)  # a user corpus must be prepared beforehand


def _run_tokenizer(cfg: Any, resume: bool) -> None:
    import shutil

    from segsllm.data.tokenizer_build import build_tokenizer, data_manifests

    target = Path(cfg.run.out)
    marker = (target / MARKER).read_bytes() if (target / MARKER).is_file() else None
    if target.exists():
        shutil.rmtree(target)  # a tokenizer is rebuilt whole (it is written atomically)
    build_tokenizer(cfg, target, data_manifests(cfg))
    if marker is not None:
        (target / MARKER).write_bytes(marker)


def _run_backbone_tokenizer(cfg: Any, resume: bool) -> None:
    """A pretrained backbone brings its own tokenizer: save it as the pipeline's tokenizer."""
    from segsllm.data.tokenizer import save_tokenizer
    from segsllm.models.backbone import load_backbone

    backbone = load_backbone(cfg.backbone)
    if backbone.tokenizer is None:
        raise SegsllmError(f"backbone {cfg.backbone.spec} has no tokenizer; give tokenizer.path")
    save_tokenizer(backbone.tokenizer, cfg.run.out)


def _run_lm(cfg: Any, resume: bool) -> None:
    from segsllm.train.lm_stage import train_lm

    train_lm(cfg, resume=resume, progress=True)


def _run_vae(cfg: Any, resume: bool) -> None:
    from segsllm.train.vae_stage import train_vae

    train_vae(cfg, resume=resume, progress=True)


def _run_sllm(cfg: Any, resume: bool, *, vae_dir: Path) -> None:
    from segsllm.train.sllm_stage import finetune_sllm

    finetune_sllm(cfg, vae_dir, segmenter=cfg.segmenter.spec, resume=resume, progress=True)


def _run_splitter(cfg: Any, resume: bool) -> None:
    from segsllm.train.sllm_em import run_splitter_stage

    run_splitter_stage(cfg, resume=resume, progress=True)


def _run_matched(cfg: Any, resume: bool, *, layout: PipelineLayout, segmenters: Sequence[str]) -> None:
    """Continue the lm for each SLLM's training tokens (read from its metrics.json), then
    write ``budgets.json`` (every model's tokens) beside the models."""
    from segsllm.budgets import sllm_tokens, write_budgets
    from segsllm.layout import segmenter_slug
    from segsllm.train.lm_matched import train_matched_lm

    budgets = {}
    for spec in segmenters:
        tokens = sllm_tokens(layout, spec)
        if tokens is None:
            raise SegsllmError(f"{layout.sllm(spec)} records no training tokens (metrics.json: tokens_seen); "
                               "retrain that SLLM with this version to match a token LM to it")
        budgets[segmenter_slug(spec)] = tokens
    train_matched_lm(cfg, budgets, resume=resume, progress=True)
    write_budgets(layout, segmenters)


def _run_bench(cfg: Any, resume: bool) -> None:
    """The bench; on a pretrained backbone it also scores the untouched backbone (``base_lm``)
    beside the fine-tuned ``lm`` and the matched LMs, unless a base LM is named already."""
    from segsllm.bench.run import run_bench
    from segsllm.models.backbone import pretrained_folder

    if not cfg.bench.base_lm:
        folder = pretrained_folder(cfg.backbone)
        if folder is not None:
            cfg = dataclasses.replace(cfg, bench=dataclasses.replace(cfg.bench, base_lm=str(folder)))
    # One line per model scored, like the training stages' step lines: a long bench is not silent.
    run_bench(cfg, log=lambda msg: print(msg, file=sys.stderr, flush=True))
