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
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segsllm.bench.units import drop_token_units, mismatch_message, same_tokenizer
from segsllm.errors import ArtifactError, ConfigError
from segsllm.layout import BASE_LM_DIR, BASELINE_DIR, SLLM_PREFIX, segmenter_slug, sllm_name

STAGE = "bench"


@dataclass
class BenchArtifacts:
    """The folders a bench reads."""

    sllm: dict[str, Path]  # segmenter spec -> SLLM folder, in bench order
    baseline: Path | None = None
    base_lm: Path | None = None


def find_artifacts(from_dir: str | Path, segmenters: list[str]) -> BenchArtifacts:
    """Artifacts of a pipeline folder (layout in the module docstring)."""
    from segsllm.models.artifact import read_manifest

    root = Path(from_dir)
    if not root.is_dir():
        raise ArtifactError(f"pipeline folder not found: {root}")
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
    return BenchArtifacts(
        sllm=sllm,
        baseline=root / BASELINE_DIR if (root / BASELINE_DIR).is_dir() else None,
        base_lm=root / BASE_LM_DIR if (root / BASE_LM_DIR).is_dir() else None,
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
    return segmenters, BenchArtifacts({s: sllm[s] for s in segmenters}, baseline, base_lm)


# --------------------------------------------------------------------------- results


@dataclass
class BenchResult:
    """Everything a bench produced (also written to ``out_dir``)."""

    rows: list[dict[str, Any]]  # one per (segmenter, domain) cell
    baselines: list[dict[str, Any]]  # one per (LM, domain): quality, speed, memory
    memory: list[dict[str, Any]]  # KV bytes per (model, domain, context length)
    meta: dict[str, Any] = field(default_factory=dict)
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


def _load_lm(path: Path, device: Any) -> tuple[Any, Any]:
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

    from segsllm.bench import memory as mem
    from segsllm.bench import quality as q
    from segsllm.bench import speed as spd
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
    domains = list(cfg.data.domains)
    data_dir = cfg.data.dir
    data_manifests = {d: load_manifest(data_dir, d) for d in domains}  # unknown domain: fail early
    device = pick_device(cfg.run.device)
    out_dir = Path(cfg.run.out or (Path(bcfg.from_dir) / "bench" if bcfg.from_dir else "bench-results"))
    caps = {"max_docs": cfg.data.max_docs, "max_doc_bytes": cfg.data.max_doc_bytes}

    docs: dict[str, q.EvalDocs] = {}
    texts: dict[str, list[str]] = {}
    for d in domains:
        split_bytes, all_texts = q.split_doc_bytes(data_dir, d, bcfg.split, **caps)
        docs[d] = q.choose_documents(d, bcfg.split, split_bytes, bcfg.eval_bytes)
        texts[d] = [all_texts[int(i)] for i in docs[d].doc_index]

    lm_dirs = {name: p for name, p in (("baseline", arts.baseline), ("base_lm", arts.base_lm)) if p is not None}
    speed_ref = "baseline" if "baseline" in lm_dirs else ("base_lm" if "base_lm" in lm_dirs else None)
    lineage: dict[str, Any] = {}
    for spec, path in arts.sllm.items():
        m = _manifest_or_empty(path)
        lineage[f"lineage.sllm.{segmenter_slug(spec)}.path"] = str(path.resolve())
        lineage[f"lineage.sllm.{segmenter_slug(spec)}.run_id"] = m.get("run_id")
        lineage[f"lineage.sllm.{segmenter_slug(spec)}.vae_run_id"] = ((m.get("lineage") or {}).get("vae") or {}).get(
            "run_id")
    for name, path in lm_dirs.items():
        m = _manifest_or_empty(path)
        lineage[f"lineage.{name}.path"] = str(path.resolve())
        lineage[f"lineage.{name}.run_id"] = m.get("run_id")

    ctx_lengths = sorted(set(bcfg.context_lengths))
    baselines: list[dict[str, Any]] = []
    memory_rows: list[dict[str, Any]] = []
    base_q: dict[str, dict[str, q.QualityResult]] = {d: {} for d in domains}
    speed_lm: tuple[Any, Any] | None = None  # the speed reference LM, kept loaded for the interleaved pairs
    base_mem: dict[str, list[mem.MemoryPoint]] = {}
    prompts: dict[str, list[str]] = {}
    lm_toks: dict[str, Any] = {}  # each baseline's tokenizer (token-unit columns need the SLLM's)
    rows: list[dict[str, Any]] = []
    tags = {"segmenter": ",".join(segmenters), "domain": ",".join(domains), "device": str(device), **lineage,
            **(getattr(cfg.run, "tags", None) or {})}
    with start_run(cfg, STAGE, tags=tags, manifests={f"data-{d}": m for d, m in data_manifests.items()},
                   run_name=run_name(STAGE, folder=bcfg.from_dir or out_dir)) as run:
        # ---- token baselines: once per domain, shared by every segmenter's cell
        for name, path in lm_dirs.items():
            say(f"scoring {name} ({path})")
            model, tok = _load_lm(path, device)
            lm_toks[name] = tok
            ctx, stride = q.lm_eval_settings(path, model)
            for d in domains:
                seed_everything(cfg.run.seed)
                res = q.score_lm(model, tok, data_dir, docs[d], name=name, context_len=ctx, stride=stride,
                                 batch_size=bcfg.lm_batch_size, device=device, caps=caps)
                base_q[d][name] = res
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

        # ---- one SLLM per segmenter: every domain's cell
        for spec in segmenters:
            path = arts.sllm[spec]
            say(f"scoring SLLM {spec} ({path})")
            model, tok, own_seg = load_sllm(path, device=device)
            seg = build_segmenter(spec, tokenizer=tok, max_len=model.vae.config.max_len)
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
                seed_everything(cfg.run.seed)
                table, sel = q.sllm_table(data_dir, docs[d], tok, seg, caps=caps)
                sq = q.score_sllm(model, table, docs[d], batch_size=bcfg.sllm_batch_size, device=device)
                q.check_same_bytes([sq, *base_q[d].values()])
                comp = q.compression(table, sel)
                em, em_n = q.vae_exact_match(model.vae, table, sel, bcfg.exact_match_segments, device=device)
                row: dict[str, Any] = {
                    "segmenter": spec, "segmenter_spec": seg.spec(), "domain": d, "backbone": backbone, "vae_depth": depth,
                    "device": str(device), "eval_docs": docs[d].n_docs, "eval_bytes": docs[d].total_bytes,
                    "sllm_bits_per_byte": sq.bits_per_byte, "sllm_token_perplexity": sq.token_perplexity,
                    "sllm_paper_style_perplexity": sq.paper_style_perplexity,
                    "sllm_bits_per_byte_boundaries": sq.extra["bits_per_byte_boundaries"],
                }
                for name, r in base_q[d].items():
                    row[f"{name}_bits_per_byte"] = r.bits_per_byte
                    row[f"{name}_token_perplexity"] = r.token_perplexity
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
                            "segments": comp["segments"], "vae_exact_match": em, "vae_exact_match_n": em_n})
                for n in other_units:
                    drop_token_units(row, n, speed_ref=n == speed_ref)
                rows.append(row)
                say(f"  {d}: SLLM {sq.bits_per_byte:.4f} bits/byte" + spd.speed_summary(row))
                with run.child(f"{d} · {short_segmenter(spec)}", tags={"stage": STAGE, "segmenter": spec, "domain": d,
                                                      "backbone": backbone, "sllm": str(path)}) as child:
                    child.log_params({"segmenter": spec, "segmenter_spec": seg.spec(), "domain": d, "backbone": backbone,
                                      "vae_depth": depth, "device": str(device), "sllm_dir": str(path),
                                      "eval_docs": docs[d].n_docs, "eval_bytes": docs[d].total_bytes})
                    child.log_metrics({k: v for k, v in row.items()
                                       if isinstance(v, (int, float)) and not isinstance(v, bool)
                                       and not (isinstance(v, float) and math.isnan(v))})
                    child.set_tags({"run_id.sllm": man.get("run_id"),
                                    "run_id.baseline": lineage.get("lineage.baseline.run_id")})
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
        speed_lm = None

        meta = {
            "segmenters": segmenters, "domains": domains, "split": bcfg.split, "device": str(device),
            "seed": cfg.run.seed, "settings": dataclasses.asdict(bcfg), "load_average": _load_average(),
            "cpu_count": os.cpu_count(),
            "artifacts": {"sllm": {k: str(v) for k, v in arts.sllm.items()},
                          "baseline": str(arts.baseline) if arts.baseline else None,
                          "base_lm": str(arts.base_lm) if arts.base_lm else None},
            "lineage": lineage, "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "docs": {d: {"n_docs": e.n_docs, "bytes": e.total_bytes,
                         "doc_index_sha": _digest(np.asarray(e.doc_index))} for d, e in docs.items()},
        }
        result = BenchResult(rows=rows, baselines=baselines, memory=memory_rows, meta=meta, out_dir=out_dir,
                             run_id=run.run_id)
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


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _digest(arr: Any) -> str:
    import hashlib

    return hashlib.sha256(arr.astype("int64").tobytes()).hexdigest()[:16]


__all__ = ["BenchArtifacts", "BenchResult", "find_artifacts", "resolve_artifacts", "run_bench"]
