"""`segsllm bench`: the segmenter × domain matrix of quality, speed and memory.

For every (segmenter, domain) cell on the test split (docs/DESIGN.md §7): bits/byte and token
perplexity of the SLLM and of the token baselines (+ the labelled paper-style perplexity),
generation cost (FLOPs/token, :mod:`segsllm.bench.flops`), interleaved wall-clock speedup and
its analytic bound (:mod:`segsllm.bench.speed`), KV bytes per context token and the KB/token slope,
compression (tokens per segment) and the VAE's exact-match rate. Baseline numbers are
computed once per domain and shared by every segmenter's cell; every model of a domain is
scored on the same documents and bytes (checked). Results go to ``results.json/csv/md``
and PNG plots (:mod:`segsllm.bench.report`), and to MLflow: one parent run (stage
``bench``) with one child run per cell.

The pipeline folder (``--from DIR``) is laid out as :mod:`segsllm.layout` says: ``DIR/lm``
-> baseline, ``DIR/base-lm`` -> base_lm, ``DIR/sllm-<slug>`` -> sllm[spec]. With no segmenter
list, every ``DIR/sllm-*`` folder is benched under the segmenter its manifest records.
Explicit ``--sllm``/``--baseline``/``--base-lm`` win over the folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

from segsllm.bench.intervals import MATCHED_PREFIX
from segsllm.bench.intervals import SLLM_PREFIX as SLLM_NAME
from segsllm.bench.units import drop_token_units, mismatch_message, same_tokenizer
from segsllm.errors import ArtifactError, ConfigError, DataError
from segsllm.layout import (
    BASE_LM_DIR,
    BASELINE_DIR,
    MATCHED_DIR,
    SLLM_PREFIX,
    VAE_PREFIX,
    budgets_path,
    matched_lm_dir,
    seed_dirs,
    segmenter_slug,
    sllm_name,
)

STAGE = "bench"


@dataclass
class BenchArtifacts:
    """The folders a bench reads."""

    sllm: dict[str, Path]  # segmenter spec -> SLLM folder, in bench order
    baseline: Path | None = None
    base_lm: Path | None = None
    matched: dict[str, Path] = field(default_factory=dict)  # segmenter spec -> token-matched LM folder
    seeds: list[Path] = field(default_factory=list)  # further seed folders (pipeline --seeds), the first excluded
    incomplete_seeds: list[Path] = field(default_factory=list)  # further seed folders missing a model: left out


def find_artifacts(from_dir: str | Path, segmenters: list[str]) -> BenchArtifacts:
    """Artifacts of a pipeline folder (layout in the module docstring); a folder of seeds
    (``seed-<k>/``) is read through its first seed, the others listed in ``seeds``."""
    from segsllm.models.artifact import read_manifest

    top = Path(from_dir)
    if not top.is_dir():
        raise ArtifactError(f"pipeline folder not found: {top}")
    root, *more = seed_dirs(top)
    sllm: dict[str, Path] = {}
    if segmenters:
        for spec in segmenters:
            path = root / sllm_name(spec)
            if path.is_dir():
                sllm[spec] = path
    else:
        for path in sorted(root.glob(f"{SLLM_PREFIX}*")):
            spec = (read_manifest(path).get("lineage") or {}).get("segmenter")
            if spec:
                sllm[str(spec)] = path
    # The matched LM shares its SLLM's folder slug (the pipeline's, not the manifest's full spec).
    matched = {spec: matched_lm_dir(root, path.name.removeprefix(SLLM_PREFIX)) for spec, path in sllm.items()}
    return BenchArtifacts(
        sllm=sllm,
        baseline=root / BASELINE_DIR if (root / BASELINE_DIR).is_dir() else None,
        base_lm=root / BASE_LM_DIR if (root / BASE_LM_DIR).is_dir() else None,
        matched={k: p for k, p in matched.items() if (p / "config.json").is_file()},
        seeds=more,
    )


def resolve_artifacts(bcfg: Any) -> tuple[list[str], BenchArtifacts]:
    """(segmenter specs, artifacts): explicit settings over ``from_dir``; one-line errors for
    a missing folder, an unknown segmenter or a segmenter without an SLLM."""
    from segsllm.config.bench import sllm_pairs
    from segsllm.models.artifact import read_manifest
    from segsllm.segment import build_segmenter

    segmenters = [s.strip() for s in bcfg.segmenters if s.strip()]
    found = find_artifacts(bcfg.from_dir, segmenters) if bcfg.from_dir else BenchArtifacts({})
    sllm = dict(found.sllm)
    sllm.update({k: Path(v) for k, v in sllm_pairs(bcfg.sllm).items()})
    if not segmenters:
        segmenters = list(sllm)
    if not segmenters:
        raise ConfigError("no segmenter to bench: pass --segmenters and --sllm SEG=DIR, or --from DIR")
    for spec in list(sllm) + segmenters:
        build_segmenter(spec)  # unknown name or bad parameter: SegmenterError (one line)
    for spec in sllm:
        if spec not in segmenters:
            raise ConfigError(f"--sllm names segmenter {spec!r}, which is not in --segmenters {segmenters}")
    missing = [s for s in segmenters if s not in sllm]
    if missing:
        where = f" (looked for {', '.join(sllm_name(s) for s in missing)} in {bcfg.from_dir})" \
            if bcfg.from_dir else ""
        raise ArtifactError(f"no SLLM for segmenter(s) {', '.join(missing)}: pass --sllm SEG=DIR{where}")
    for spec in segmenters:
        kind = read_manifest(sllm[spec]).get("kind")  # missing folder / manifest: ArtifactError
        if kind != "sllm":
            raise ArtifactError(f"{sllm[spec]} holds a {kind!r} artifact, not an SLLM (`segsllm finetune` output)")
    baseline = Path(bcfg.baseline) if bcfg.baseline else found.baseline
    base_lm = Path(bcfg.base_lm) if bcfg.base_lm else found.base_lm
    for what, path in (("baseline", baseline), ("base LM", base_lm)):
        if path is not None and not (path / "config.json").is_file():
            raise ArtifactError(f"{what} folder {path} is not a model folder (no config.json)"
                                if path.is_dir() else f"{what} folder not found: {path}")
    matched = {s: p for s, p in found.matched.items() if s in segmenters}
    seeds, incomplete = complete_seeds(found, segmenters)
    return segmenters, BenchArtifacts({s: sllm[s] for s in segmenters}, baseline, base_lm, matched, seeds, incomplete)


def complete_seeds(found: BenchArtifacts, segmenters: list[str]) -> tuple[list[Path], list[Path]]:
    """(further seed folders holding a finished model for every model of the first seed,
    those that do not): a seed whose pipeline was stopped part-way must not enter the
    intervals with some of its models missing, nor crash the bench on a half-trained one."""
    complete, incomplete = [], []
    for seed_dir in found.seeds:
        here = find_artifacts(seed_dir, segmenters)
        need = [*(here.sllm.get(s) for s in segmenters if s in found.sllm),
                *([here.baseline] if found.baseline else []),
                *(here.matched.get(s) for s in found.matched)]
        ok = all(p is not None and (p / "manifest.json").is_file() for p in need)
        (complete if ok else incomplete).append(seed_dir)
    return complete, incomplete


# --------------------------------------------------------------------------- results


@dataclass
class BenchResult:
    """Everything a bench produced (also written to ``out_dir``)."""

    rows: list[dict[str, Any]]  # one per (segmenter, domain) cell
    baselines: list[dict[str, Any]]  # one per (LM, domain): quality, speed, memory
    memory: list[dict[str, Any]]  # KV bytes per (model, domain, context length)
    meta: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)  # domain -> models, floors, differences (intervals)
    context_sweep: dict[str, Any] = field(default_factory=dict)  # domain -> {C: {model: interval}}
    out_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    run_id: str | None = None
    wall_time_s: float = 0.0


def _manifest_or_empty(path: Path | None) -> dict[str, Any]:
    from segsllm.models.artifact import read_manifest

    if path is None:
        return {}
    try:
        return read_manifest(path)
    except ArtifactError:
        return {}


def load_token_lm(path: str | Path, device: Any) -> tuple[Any, Any]:
    """(model in eval mode on ``device``, its tokenizer) of a token-LM folder."""
    from transformers.utils import logging as hf_logging

    from segsllm.config.backbone import BackboneConfig
    from segsllm.models.backbone import load_backbone

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar in the bench's output
    try:
        bb = load_backbone(BackboneConfig(spec=str(path)))
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    if bb.tokenizer is None:
        raise ArtifactError(f"{path} has no tokenizer files: the bench needs the LM's own tokenizer")
    return bb.model.to(device).eval(), bb.tokenizer


def _nan(x: float | None) -> float:
    return math.nan if x is None else float(x)


def run_bench(cfg: Any, *, log: Callable[[str], None] | None = None) -> BenchResult:
    """Run the bench described by ``cfg.bench`` over ``cfg.data.domains``; write the
    result files into ``cfg.run.out`` (default ``<from>/bench`` or ``./bench-results``)."""
    import numpy as np
    import torch

    from segsllm.bench import floors as fl
    from segsllm.bench import memory as mem
    from segsllm.bench import quality as q
    from segsllm.bench import speed as spd
    from segsllm.bench.intervals import domain_quality, sweep_point
    from segsllm.bench.report import write_outputs
    from segsllm.data.store import load_manifest
    from segsllm.generate import generate_sllm, load_sllm
    from segsllm.runtime import pick_device, seed_everything
    from segsllm.segment import build_segmenter
    from segsllm.tracking import bench_table, run_name, short_segmenter, start_run

    say = log or (lambda _m: None)
    started = time.perf_counter()
    bcfg = cfg.bench.validate()
    if not cfg.data.domains:
        raise ConfigError("data.domains is empty: name at least one corpus")
    segmenters, arts = resolve_artifacts(bcfg)
    for seed_dir in arts.incomplete_seeds:
        say(f"warning: {seed_dir} lacks a finished model the first seed has; left out of the intervals")
    domains = list(cfg.data.domains)
    data_dir = cfg.data.dir
    data_manifests = {d: load_manifest(data_dir, d) for d in domains}  # unknown domain: fail early
    device = pick_device(cfg.run.device)
    out_dir = Path(cfg.run.out or (Path(bcfg.from_dir) / "bench" if bcfg.from_dir else "bench-results"))
    caps = {"max_docs": cfg.data.max_docs, "max_doc_bytes": cfg.data.max_doc_bytes}

    docs = {d: q.scored_documents(data_dir, d, bcfg.split, target_bytes=bcfg.eval_bytes, min_docs=bcfg.min_docs,
                                  max_share=bcfg.max_doc_share, caps=caps) for d in domains}
    texts = {d: e.texts for d, e in docs.items()}
    C0 = bcfg.context_tokens
    budgets = _budgets(bcfg.from_dir)
    slugs = {spec: path.name.removeprefix(SLLM_PREFIX) for spec, path in arts.sllm.items()}  # budgets.json keys

    lm_dirs = {name: p for name, p in (("baseline", arts.baseline), ("base_lm", arts.base_lm)) if p is not None}
    speed_ref = "baseline" if "baseline" in lm_dirs else ("base_lm" if "base_lm" in lm_dirs else None)
    lineage: dict[str, Any] = {}
    for spec, path in arts.sllm.items():
        m = _manifest_or_empty(path)
        lineage[f"lineage.sllm.{segmenter_slug(spec)}.path"] = str(path.resolve())
        lineage[f"lineage.sllm.{segmenter_slug(spec)}.run_id"] = m.get("run_id")
        lineage[f"lineage.sllm.{segmenter_slug(spec)}.vae_run_id"] = ((m.get("lineage") or {}).get("vae") or {}).get(
            "run_id")
    for name, path in [*lm_dirs.items(), *((f"matched.{segmenter_slug(k)}", v) for k, v in arts.matched.items())]:
        m = _manifest_or_empty(path)
        lineage[f"lineage.{name}.path"] = str(path.resolve())
        lineage[f"lineage.{name}.run_id"] = m.get("run_id")

    ctx_lengths = sorted(set(bcfg.context_lengths))
    baselines: list[dict[str, Any]] = []
    memory_rows: list[dict[str, Any]] = []
    scored: dict[str, dict[str, q.QualityResult]] = {d: {} for d in domains}  # at the headline context C0
    sweep_cs = sorted({*bcfg.context_sweep, C0})
    sweep_docs = {d: q.subset(docs[d], bcfg.sweep_bytes) for d in domains}  # docs[d] itself when all fit
    swept: dict[str, dict[int, dict[str, q.QualityResult]]] = {d: {c: {} for c in sweep_cs} for d in domains}
    notes: list[str] = []  # what the sweep could not score, and why
    over: dict[tuple[int, str, int], int] = {}  # (C, SLLM, trained max_segments) -> most segments in a window
    speed_lm: tuple[Any, Any] | None = None  # the speed reference LM, kept loaded for the interleaved pairs
    base_mem: dict[str, list[mem.MemoryPoint]] = {}
    prompts: dict[str, list[str]] = {}
    lm_toks: dict[str, Any] = {}  # each baseline's tokenizer (token-unit columns need the SLLM's)
    rows: list[dict[str, Any]] = []
    cells: list[dict[str, Any]] = []  # what each row's MLflow child run records
    tags = {"segmenter": ",".join(segmenters), "domain": ",".join(domains), "device": str(device), **lineage,
            **(getattr(cfg.run, "tags", None) or {})}

    def score_token_lm(name: str, model: Any, tok: Any, d: str, sweep: bool = True,
                       path: Path | None = None) -> q.QualityResult:
        """The LM at the headline context, then at every context of the sweep; its headline result."""
        limit = q.lm_context_limit(model)
        trained = q.trained_context(path)
        for c in ([C0, *sweep_cs] if sweep else [C0]):
            if trained is not None and trained < c <= (limit or c):
                _note(notes, f"context {c}: more than the {trained} tokens {name} was trained on")
        if limit is not None and limit < C0:
            raise ConfigError(f"bench.context_tokens={C0} is more than {name} takes ({limit} positions); "
                              "lower bench.context_tokens")
        seed_everything(cfg.run.seed)
        res = scored[d][name] = q.score_lm(model, tok, docs[d], context_tokens=C0, stride=bcfg.stride_for(C0),
                                           name=name, batch_size=bcfg.lm_batch_size, device=device)
        for c in sweep_cs if sweep else []:
            if c == C0 and sweep_docs[d] is docs[d]:
                swept[d][c][name] = res
            elif limit is not None and c > limit:
                _note(notes, f"context {c}: {name} not scored (it takes at most {limit} positions)")
            else:
                seed_everything(cfg.run.seed)
                swept[d][c][name] = q.score_lm(model, tok, sweep_docs[d], context_tokens=c, stride=bcfg.stride_for(c),
                                               name=name, batch_size=bcfg.lm_batch_size, device=device)
        return res

    def score_sllm_all(name: str, model: Any, seg: Any, tok: Any, d: str,
                       sweep: bool = True) -> tuple[q.QualityResult, Any]:
        """The SLLM at the headline context, then at every context of the sweep; its headline
        result and the scored texts' segment table."""
        table = q.sllm_table(docs[d], tok, seg)
        seed_everything(cfg.run.seed)
        res = scored[d][name] = q.score_sllm(model, table, docs[d], context_tokens=C0, stride=bcfg.stride_for(C0),
                                             name=name, batch_size=bcfg.sllm_batch_size, device=device)
        sweep_table = table if sweep_docs[d] is docs[d] else q.sllm_table(sweep_docs[d], tok, seg) if sweep else None
        for c in sweep_cs if sweep else []:
            if c == C0 and sweep_docs[d] is docs[d]:
                swept[d][c][name] = res
                continue
            seed_everything(cfg.run.seed)
            try:
                swept[d][c][name] = q.score_sllm(model, sweep_table, sweep_docs[d], context_tokens=c,
                                                 stride=bcfg.stride_for(c), name=name,
                                                 batch_size=bcfg.sllm_batch_size, device=device)
            except DataError as e:  # a segment longer than a sweep context
                _note(notes, f"context {c}: {name} not scored ({e})")
        for c, r in [(C0, res), *((c, swept[d][c].get(name)) for c in sweep_cs)]:
            if r is not None and r.extra["max_window_segments"] > model.config.max_segments:
                key = (c, name, model.config.max_segments)
                over[key] = max(over.get(key, 0), int(r.extra["max_window_segments"]))
        return res, table

    with start_run(cfg, STAGE, tags=tags, manifests={f"data-{d}": m for d, m in data_manifests.items()},
                   run_name=run_name(STAGE, folder=bcfg.from_dir or out_dir)) as run:
        # ---- compressor floors on exactly the scored bytes
        floor_sets: dict[str, dict[str, float]] = {}
        floor_docs: dict[str, dict[str, Any]] = {}
        for d in domains:
            say(f"floors {d}: gzip -9, bzip2 -9, xz -9e on {docs[d].total_bytes} bytes"
                + (f", xz primed with {bcfg.prime_bytes} train bytes" if bcfg.prime_bytes else ""))
            prime = None
            if bcfg.prime_bytes:
                from segsllm.data.store import iter_documents

                prime = fl.fixed_prime([x.text for x in iter_documents(data_dir, d, "train", **caps)], bcfg.prime_bytes)
            floor_sets[d] = fl.floors(docs[d].texts, prime or None)
            floor_sets[d]["prime_bytes"] = len(prime or b"")
            floor_docs[d] = fl.per_document_bits(docs[d].texts)

        # ---- token baselines: once per domain, shared by every segmenter's cell
        for name, path in lm_dirs.items():
            say(f"scoring {name} ({path})")
            model, tok = load_token_lm(path, device)
            lm_toks[name] = tok
            for d in domains:
                res = score_token_lm(name, model, tok, d, path=path)
                entry: dict[str, Any] = {"model": name, "domain": d, "path": str(path), **res.as_dict()}
                entry.pop("extra", None)
                if name == speed_ref:
                    prompts[d] = spd.make_prompts(texts[d], tok, bcfg.prompts, bcfg.prompt_tokens)
                    if bcfg.speed:
                        speed_lm = (model, tok)
                        entry.update(spd.lm_cost(model, tok, prompts[d], bcfg.new_tokens))
                    if bcfg.memory:
                        samples = mem.context_samples(texts[d], tok, max(ctx_lengths), bcfg.memory_samples)
                        base_mem[d] = mem.average_points([mem.lm_curve(model, ids, ctx_lengths, name=name)
                                                          for ids in samples])
                        memory_rows += [{"domain": d, **p.as_dict()} for p in base_mem[d]]
                        entry["kv_kb_per_token_slope"] = mem.kb_per_token_slope(base_mem[d])
                baselines.append(entry)
            if speed_lm is None or speed_lm[0] is not model:
                del model
            if device.type == "cuda":
                torch.cuda.empty_cache()

        # ---- token-matched LMs: one per segmenter that has one
        for spec, path in arts.matched.items():
            name = f"{MATCHED_PREFIX}{spec}"
            say(f"scoring the token-matched LM of {spec} ({path})")
            model, tok = load_token_lm(path, device)
            for d in domains:  # the headline context only: the sweep compares the LM and the SLLMs
                res = score_token_lm(name, model, tok, d, sweep=False, path=path)
                baselines.append({"model": name, "domain": d, "path": str(path),
                                  **{k: v for k, v in res.as_dict().items() if k != "extra"}})
            del model

        # ---- one SLLM per segmenter: every domain's cell
        for spec in segmenters:
            path = arts.sllm[spec]
            say(f"scoring SLLM {spec} ({path})")
            model, tok, own_seg = load_sllm(path, device=device)
            seg = build_segmenter(spec, tokenizer=tok, max_len=model.vae.config.max_len)
            if model.free_boundaries and not seg.causal:
                raise ConfigError(f"the SLLM in {path} leaves segment ends to a causal segmenter "
                                  f"(sllm.boundaries=segmenter); {seg.spec()!r} is not causal")
            if seg.spec() != own_seg.spec():
                warnings.warn(f"benching the SLLM in {path} (trained with {own_seg.spec()!r}) with segmenter "
                              f"{seg.spec()!r}", stacklevel=2)
            man = model.manifest
            backbone = str(((man.get("lineage") or {}).get("backbone") or {}).get("spec") or
                           model.backbone.config.model_type)
            depth = int(model.vae.config.encoder_layers)
            other_units = [n for n, t in lm_toks.items() if not same_tokenizer(t, tok)]
            for n in other_units:
                warnings.warn(mismatch_message(n, lm_dirs[n], path), stacklevel=2)
            for d in domains:
                sq, table = score_sllm_all(f"{SLLM_NAME}{spec}", model, seg, tok, d)
                q.check_same_bytes(list(scored[d].values()))
                comp = q.compression(table)
                em, em_n = q.vae_exact_match(model.vae, table, np.arange(len(table)), bcfg.exact_match_segments,
                                             device=device)
                row: dict[str, Any] = {
                    "segmenter": spec, "segmenter_spec": seg.spec(), "domain": d, "backbone": backbone, "vae_depth": depth,
                    "boundaries": model.config.boundaries,  # eos: the SLLM pays for segment ends; segmenter: free
                    "device": str(device), "eval_docs": docs[d].n_docs, "eval_bytes": docs[d].total_bytes,
                    "context_tokens": C0, "stride_tokens": bcfg.stride_for(C0),
                    "sllm_bits_per_byte": sq.bits_per_byte, "sllm_token_perplexity": sq.token_perplexity,
                    "sllm_paper_style_perplexity": sq.paper_style_perplexity,
                    "sllm_bits_per_byte_boundaries": sq.extra["bits_per_byte_boundaries"],
                    "sllm_bits_per_byte_first_token": sq.extra["bits_per_byte_first_token"],
                    "sllm_max_window_tokens": sq.extra["max_window_tokens"],
                }
                for name in lm_dirs:
                    r = scored[d][name]
                    row[f"{name}_bits_per_byte"] = r.bits_per_byte
                    row[f"{name}_token_perplexity"] = r.token_perplexity
                matched = scored[d].get(f"{MATCHED_PREFIX}{spec}")
                if matched is not None:
                    row["matched_bits_per_byte"] = matched.bits_per_byte
                if bcfg.speed:
                    ps = prompts.get(d) or spd.make_prompts(texts[d], tok, bcfg.prompts, bcfg.prompt_tokens)
                    if speed_lm is not None:
                        row.update(spd.speed_cell(speed_lm[0], speed_lm[1], model, tok, seg, ps, bcfg.new_tokens,
                                                  pairs=bcfg.pairs, warmup=bcfg.warmup))
                    else:
                        row.update(spd.generation_stats([generate_sllm(model, tok, seg, p, bcfg.new_tokens,
                                                                       ignore_stop=True) for p in ps]))
                        row["speed_na"] = "no token LM to compare with"
                if bcfg.memory:
                    samples = mem.context_samples(texts[d], tok, max(ctx_lengths), bcfg.memory_samples)
                    pts = mem.average_points([mem.sllm_curve(model, seg, ids, ctx_lengths, name=f"sllm:{spec}")
                                              for ids in samples])
                    memory_rows += [{"domain": d, **p.as_dict()} for p in pts]
                    bpts = base_mem.get(d, [])
                    s_bpt = pts[-1].kv_bytes_per_token if pts else math.nan
                    b_bpt = bpts[-1].kv_bytes_per_token if bpts else math.nan
                    row.update({
                        "sllm_kv_bytes_per_token": s_bpt, "baseline_kv_bytes_per_token": b_bpt,
                        "kv_ratio": s_bpt / b_bpt if b_bpt and not math.isnan(b_bpt) else math.nan,
                        "sllm_decoder_kv_bytes": pts[-1].decoder_kv_bytes if pts else math.nan,
                        "kv_ideal_ratio": (pts[-1].positions - 1) / pts[-1].context_tokens if pts else math.nan,
                        "sllm_kv_kb_per_token_slope": mem.kb_per_token_slope(pts),
                        "baseline_kv_kb_per_token_slope": mem.kb_per_token_slope(bpts) if bpts else math.nan,
                        "sllm_peak_mem_bytes": _nan(pts[-1].peak_bytes) if pts else math.nan,
                        "baseline_peak_mem_bytes": _nan(bpts[-1].peak_bytes) if bpts else math.nan,
                    })
                row.update({"mean_segment_len": comp["mean"], "p95_segment_len": comp["p95"],
                            "segments": comp["segments"], "vae_exact_match": em, "vae_exact_match_n": em_n,
                            "segmenter_tokens_per_s": q.segmenter_tokens_per_s(seg, table)})
                for n in other_units:
                    drop_token_units(row, n, speed_ref=n == speed_ref)
                rows.append(row)
                cells.append({"path": path, "backbone": backbone, "segmenter_spec": seg.spec(), "depth": depth,
                              "run_id": man.get("run_id")})
                say(f"  {d}: SLLM {sq.bits_per_byte:.4f} bits/byte at C={C0}" + spd.speed_summary(row))
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
        speed_lm = None

        notes += [f"context {c}: {name} windows hold up to {n} segments, more than the {m} it was trained on"
                  for (c, name, m), n in sorted(over.items())]

        # ---- further seeds: every model's per-document NLL again, for intervals over seeds too
        seed_nats = {d: {name: [r.doc_nats] for name, r in scored[d].items()} for d in domains}
        seed_extra = {d: {name: [r.extra] for name, r in scored[d].items()} for d in domains}
        for k, seed_dir in enumerate(arts.seeds, 2):
            say(f"seed {k} of {len(arts.seeds) + 1}: {seed_dir}")
            _score_seed(find_artifacts(seed_dir, segmenters), segmenters, domains, seed_nats, score_token_lm,
                        score_sllm_all, device, extras=seed_extra)
        for row in rows:  # where the bits go, and the student's fidelity: means over seeds
            extras = seed_extra[row["domain"]][f"{SLLM_NAME}{row['segmenter']}"]
            for key in ("tokens", "first_token", "boundaries"):
                row[f"sllm_bits_per_byte_{key}"] = fmean(e[f"bits_per_byte_{key}"] for e in extras)
            row["splitter_teacher_f1"] = splitter_teacher_f1(row["segmenter"], row["domain"], arts.seeds)

        # ---- intervals: one paired bootstrap per domain over models and floors
        quality: dict[str, Any] = {}
        sweep: dict[str, Any] = {}
        for d in domains:
            quality[d] = domain_quality(scored[d], floor_docs[d], segmenters, n_resamples=bcfg.bootstrap_resamples,
                                        level=bcfg.level, seed=cfg.run.seed, seed_nats=seed_nats[d],
                                        budgets=_model_budgets(budgets, scored[d], slugs))
            quality[d].update({
                "context_tokens": C0, "stride_tokens": bcfg.stride_for(C0), "n_docs": docs[d].n_docs,
                "bytes": docs[d].total_bytes, "truncated_docs": docs[d].truncated, "doc_ids": docs[d].ids,
                "doc_bytes": docs[d].doc_bytes.tolist(), "n_seeds": len(arts.seeds) + 1,
                "floors_whole_set": floor_sets[d],
            })
            sweep[d] = {str(c): sweep_point(swept[d][c], bcfg.bootstrap_resamples, bcfg.level, cfg.run.seed)
                        for c in sweep_cs if swept[d][c]}
            quality[d]["sweep_docs"] = {"n_docs": sweep_docs[d].n_docs, "bytes": sweep_docs[d].total_bytes}
            quality[d]["segment_costs"] = {  # what a segment of each length costs each SLLM, all seeds
                spec: q.costs_by_length([e["cost_by_length"] for e in seed_extra[d][f"{SLLM_NAME}{spec}"]])
                for spec in segmenters if f"{SLLM_NAME}{spec}" in seed_extra[d]}
            for row in rows:
                if row["domain"] == d:
                    _interval_columns(row, quality[d])

        for row, cell in zip(rows, cells, strict=True):
            spec, d = row["segmenter"], row["domain"]
            with run.child(f"{d} · {short_segmenter(spec)}", tags={"stage": STAGE, "segmenter": spec, "domain": d,
                                                  "backbone": cell["backbone"], "sllm": str(cell["path"])}) as child:
                child.log_params({"segmenter": spec, "segmenter_spec": cell["segmenter_spec"], "domain": d,
                                  "backbone": cell["backbone"], "vae_depth": cell["depth"], "device": str(device),
                                  "sllm_dir": str(cell["path"]), "eval_docs": docs[d].n_docs,
                                  "eval_bytes": docs[d].total_bytes, "context_tokens": C0})
                child.log_metrics({k: v for k, v in row.items()
                                   if isinstance(v, (int, float)) and not isinstance(v, bool)
                                   and not (isinstance(v, float) and math.isnan(v))})
                child.set_tags({"run_id.sllm": cell["run_id"],
                                "run_id.baseline": lineage.get("lineage.baseline.run_id")})

        meta = {
            "segmenters": segmenters, "domains": domains, "split": bcfg.split, "device": str(device),
            "seed": cfg.run.seed, "settings": dataclasses.asdict(bcfg), "load_average": _load_average(),
            "cpu_count": os.cpu_count(), "context_tokens": C0, "stride_tokens": bcfg.stride_for(C0),
            "contexts": sweep_cs, "notes": notes, "budgets": budgets,
            "seeds": [str(p) for p in arts.seeds], "incomplete_seeds": [str(p) for p in arts.incomplete_seeds],
            "artifacts": {"sllm": {k: str(v) for k, v in arts.sllm.items()},
                          "matched": {k: str(v) for k, v in arts.matched.items()},
                          "baseline": str(arts.baseline) if arts.baseline else None,
                          "base_lm": str(arts.base_lm) if arts.base_lm else None},
            "lineage": lineage, "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "docs": {d: {"n_docs": e.n_docs, "bytes": e.total_bytes, "truncated": e.truncated,
                         "ids_sha": _digest("\n".join(e.ids))} for d, e in docs.items()},
        }
        result = BenchResult(rows=rows, baselines=baselines, memory=memory_rows, meta=meta, out_dir=out_dir,
                             run_id=run.run_id, quality=quality, context_sweep=sweep)
        result.files = write_outputs(result, out_dir, plots=bcfg.plots)
        result.wall_time_s = time.perf_counter() - started
        # <domain>.<metric>.<segmenter>: sorted by name, one domain's metric lists every segmenter
        run.log_metrics({f"{r['domain']}.{k}.{segmenter_slug(r['segmenter'])}": r[k] for r in rows
                         for k in ("sllm_bits_per_byte", "speedup", "speedup_flops", "gen_segment_len",
                                   "mean_segment_len")
                         if isinstance(r.get(k), float) and not math.isnan(r[k])})
        run.set_tags({"out_dir": str(out_dir.resolve())})
        run.log_table(bench_table(rows), "results_table.json")
        for p in result.files.values():
            run.log_artifact(p)
    return result


def _note(notes: list[str], text: str) -> None:
    if text not in notes:
        notes.append(text)


def _score_seed(arts: BenchArtifacts, segmenters: list[str], domains: list[str],
                values: dict[str, dict[str, list[Any]]], score_lm: Callable[..., Any], score_sllm: Callable[..., Any],
                device: Any, extras: dict[str, dict[str, list[Any]]] | None = None) -> None:
    """Per-document NLL of every model of one further seed folder, on the same documents,
    appended to ``values`` (and each SLLM's bits/byte breakdown to ``extras``)."""
    from segsllm.generate import load_sllm
    from segsllm.segment import build_segmenter

    lms = [("baseline", arts.baseline), ("base_lm", arts.base_lm),
           *((f"{MATCHED_PREFIX}{s}", p) for s, p in arts.matched.items())]
    for name, path in lms:
        if path is None:
            continue
        model, tok = load_token_lm(path, device)
        for d in domains:
            values[d].setdefault(name, []).append(score_lm(name, model, tok, d, sweep=False).doc_nats)
        del model
    for spec in segmenters:
        if spec not in arts.sllm:
            continue
        model, tok, _ = load_sllm(arts.sllm[spec], device=device)
        seg = build_segmenter(seed_segmenter(spec, arts.sllm[spec].parent), tokenizer=tok,
                              max_len=model.vae.config.max_len)
        for d in domains:
            name = f"{SLLM_NAME}{spec}"
            res, _ = score_sllm(name, model, seg, tok, d, sweep=False)
            values[d].setdefault(name, []).append(res.doc_nats)
            if extras is not None:
                extras[d].setdefault(name, []).append(res.extra)
        del model


def learned_folder(spec: str) -> Path | None:
    """The splitter folder a ``learned:DIR`` / ``learned:path=DIR,...`` spec names; None for
    any other segmenter."""
    from segsllm.segment.spec import parse_args

    name, _, rest = spec.partition(":")
    if name.strip().lower() != "learned":
        return None
    positional, kwargs = parse_args(rest, spec)
    folder = kwargs.get("path", positional)
    return Path(folder.rstrip("/")) if folder else None


def seed_segmenter(spec: str, seed_dir: Path) -> str:
    """The spec as this seed trained it: a ``learned:`` splitter is the one in ``seed_dir``
    (each seed trains its own), rule segmenters are the same in every seed."""
    folder = learned_folder(spec)
    return spec if folder is None else f"learned:{seed_dir / folder.name}"


def splitter_teacher_f1(spec: str, domain: str, seed_dirs: Sequence[Path] = ()) -> float:
    """Boundary F1 of a learned segmenter against its teacher's labels on ``domain``'s
    validation chunks (its ``metrics.json``), the mean over the first seed's splitter and
    each further seed's own; NaN for a rule segmenter or a splitter that records none."""
    first = learned_folder(spec)
    if first is None:
        return math.nan
    folders = [first, *(Path(d) / first.name for d in seed_dirs)]
    values = []
    for folder in folders:
        try:
            final = json.loads((folder / "metrics.json").read_text(encoding="utf-8")).get("final", {})
        except (OSError, ValueError):
            return math.nan
        value = (final.get(domain) or {}).get("teacher_f1")
        if value is None:
            return math.nan
        values.append(float(value))
    return fmean(values)


def _budgets(from_dir: str | None) -> dict[str, Any]:
    """``budgets.json`` of the run folder as stage folder -> training tokens, {} when absent."""
    if not from_dir:
        return {}
    path = budgets_path(from_dir)
    if not path.is_file():
        first = seed_dirs(from_dir)[0]
        path = budgets_path(first)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        warnings.warn(f"{path} is not readable JSON; budgets left out", stacklevel=2)
        return {}
    return _flat_budgets(data) if isinstance(data, dict) else {}


def _flat_budgets(data: dict[str, Any]) -> dict[str, Any]:
    """segsllm.budgets' document (lm + per-slug vae/sllm/lm_matched entries, each with its
    folder ``path``) as stage folder -> training tokens."""
    entries = [data.get("lm")]
    for model in (data.get("models") or {}).values():
        if isinstance(model, dict):
            entries += [model.get(k) for k in ("vae", "sllm", "lm_matched")]
    return {e["path"]: e.get("tokens_seen") for e in entries
            if isinstance(e, dict) and e.get("path") and e.get("tokens_seen") is not None}


def _model_budgets(budgets: dict[str, Any], results: dict[str, Any], slugs: dict[str, str]) -> dict[str, Any]:
    """Training tokens of each scored model, looked up by its stage folder name
    (``slugs``: segmenter spec -> the slug of its SLLM folder)."""
    out: dict[str, Any] = {}
    for name in results:
        if name == "baseline":
            keys = [BASELINE_DIR]
        elif name.startswith(SLLM_NAME):
            spec = name[len(SLLM_NAME):]
            slug = slugs.get(spec) or segmenter_slug(spec)
            keys = [f"{SLLM_PREFIX}{slug}"]
            if f"{VAE_PREFIX}{slug}" in budgets:
                out[f"{name}.vae"] = budgets[f"{VAE_PREFIX}{slug}"]
        elif name.startswith(MATCHED_PREFIX):
            spec = name[len(MATCHED_PREFIX):]
            slug = slugs.get(spec) or segmenter_slug(spec)
            keys = [f"{MATCHED_DIR}/{slug}", f"{MATCHED_DIR}-{slug}"]
        else:
            keys = [BASE_LM_DIR]
        for k in keys:
            if k in budgets:
                out[name] = budgets[k]
                break
    return out


def _interval_columns(row: dict[str, Any], quality: dict[str, Any]) -> None:
    """Copy a cell's intervals and paired differences into its row (results.csv, MLflow)."""
    spec = row["segmenter"]
    models = quality["models"]
    for col, name in (("sllm", f"{SLLM_NAME}{spec}"), ("baseline", "baseline"), ("base_lm", "base_lm"),
                      ("matched", f"{MATCHED_PREFIX}{spec}")):
        if name in models:
            row[f"{col}_bits_per_byte_low"] = models[name]["low"]
            row[f"{col}_bits_per_byte_high"] = models[name]["high"]
            if models[name].get("seeds"):
                row[f"{col}_bits_per_byte_seed_sd"] = models[name]["seeds"]["sd"]
    for diff in quality["differences"]:
        if diff["a"] != f"{SLLM_NAME}{spec}" or diff["kind"] not in ("sllm-lm", "sllm-matched"):
            continue
        col = "diff_vs_lm" if diff["kind"] == "sllm-lm" else "diff_vs_matched"
        row.update({col: diff["estimate"], f"{col}_low": diff["low"], f"{col}_high": diff["high"],
                    f"{col}_significant": diff["significant"]})


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


__all__ = ["BenchArtifacts", "BenchResult", "find_artifacts", "load_token_lm", "resolve_artifacts", "run_bench"]
