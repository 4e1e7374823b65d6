"""The skeleton every training stage (VAE, token LM, SLLM, splitter) is written on.

A stage: :func:`check_inputs` (output folder, domains, their data manifests) →
:func:`start_compute` (DDP, seed, device) → builds its tokenizer, segmenter, tables and
batches → runs the shared loop (:func:`segsllm.train.loop.train`) → reads per-domain
metrics out of the loop's history (:func:`per_domain`, :func:`first_losses`) →
:func:`finish_stage` (config.yaml, metrics.json, weights + manifest, tracker).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from segsllm.errors import ConfigError


def check_inputs(cfg: Any, command: str) -> dict[str, dict[str, Any]]:
    """One-line errors for a missing output folder or domain list; the domains' data
    manifests (an unknown domain fails here, before any model is built)."""
    from segsllm.data.store import load_manifest

    if not cfg.run.out:
        raise ConfigError(f"{command} needs an output folder: --out DIR (or run.out)")
    if not cfg.data.domains:
        raise ConfigError("data.domains is empty: name at least one corpus")
    return {d: load_manifest(cfg.data.dir, d) for d in cfg.data.domains}


def start_compute(cfg: Any) -> Any:
    """Join the process group (under torchrun), seed everything, pick the device."""
    from segsllm.runtime import pick_device, seed_everything
    from segsllm.train.distributed import maybe_init_distributed

    maybe_init_distributed()
    seed_everything(cfg.run.seed)
    return pick_device(cfg.run.device)


def data_lineage(manifests: Mapping[str, Mapping[str, Any]], keys: Iterable[str] = ("sha256", "source")
                 ) -> dict[str, dict[str, Any]]:
    """Which corpus versions a model was trained on: ``keys`` of each domain's manifest."""
    return {d: {k: m.get(k) for k in keys} for d, m in manifests.items()}


def per_domain(entry: Mapping[str, float], domains: Iterable[str], prefix: str = "val") -> dict[str, dict[str, float]]:
    """``{prefix}/<domain>/<metric>`` keys of one evaluation -> domain -> metric -> value."""
    return {d: {k.split("/", 2)[2]: v for k, v in entry.items() if k.startswith(f"{prefix}/{d}/")} for d in domains}


def first_losses(history: Iterable[Mapping[str, float]], domains: Iterable[str]) -> dict[str, float]:
    """Each domain's first evaluated loss (the start of training; NaN if never evaluated)."""
    history = list(history)
    return {d: next((h[f"val/{d}/loss"] for h in history if f"val/{d}/loss" in h), math.nan) for d in domains}


def segment_targets(batch: Mapping[str, Any]) -> int:
    """Training tokens of a batch of segments (VAE) or segment windows (SLLM): every
    segment's tokens + its EOS, the decoder's targets. The count ``tokens_seen`` reports, so
    a token LM can be matched to it (docs/DESIGN.md §2, ``lm-matched``)."""
    lengths = batch["lengths"]  # (B,) or (B, S); 0 = a padded segment slot
    return int(lengths.sum()) + int((lengths > 0).sum())


def flat_metrics(prefix: str, metrics: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """domain -> metric -> value as ``{prefix}/<domain>/<metric>`` for the tracker."""
    return {f"{prefix}/{d}/{k}": v for d, m in metrics.items() for k, v in m.items()}


def finish_stage(run: Any, out_dir: Path, cfg: Any, result: Any, *, save_model: Callable[[Path], Any] | None,
                 metrics_doc: Mapping[str, Any], logged: Mapping[str, float],
                 dicts: Mapping[str, Any] | None = None) -> None:
    """On rank 0: write ``config.yaml`` and ``metrics.json``, then the model with
    ``save_model(out_dir)`` (weights, then the manifest, last: a crash leaves a folder that
    reads as incomplete); log the final metrics, the artifact/checkpoint tags, ``dicts``
    (name -> JSON-able object) and the manifest to the tracker. ``save_model=None``: the
    stage saved the model itself (the splitter measures its saved folder); the manifest is then
    rewritten to list config.yaml and metrics.json, so it is again the last file written."""
    from segsllm.config import save_config
    from segsllm.io import atomic_write_json
    from segsllm.runtime import is_rank_zero

    if not is_rank_zero():
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    if save_model is not None:
        (out_dir / "manifest.json").unlink(missing_ok=True)  # incomplete until the new one lands
    save_config(cfg, out_dir / "config.yaml")
    atomic_write_json(out_dir / "metrics.json", dict(metrics_doc))
    if save_model is not None:
        save_model(out_dir)
    else:  # the model was saved before its metrics: rewrite the manifest so it is again last
        from segsllm.models.artifact import record_files

        record_files(out_dir, ["config.yaml", "metrics.json"])
    run.log_metrics(dict(logged), step=result.step)
    run.set_tags({"artifact": str(out_dir.resolve()),
                  "checkpoint": str(result.checkpoint) if result.checkpoint else None})
    for name, obj in (dicts or {}).items():
        run.log_dict(obj, name)
    run.log_artifact(out_dir / "manifest.json")


__all__ = ["check_inputs", "data_lineage", "finish_stage", "first_losses", "flat_metrics", "per_domain",
           "segment_targets", "start_compute"]
