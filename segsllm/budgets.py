"""Every model's training budget in tokens, in one JSON a bench can read (``budgets.json``).

A comparison is only fair between models trained on the same number of tokens, so a
pipeline run records, per segmenter (docs/DESIGN.md §2)::

    {"unit": "tokens",
     "lm":   {"path": "lm", "tokens_seen": N, "steps": s},            # the start of every SLLM
     "models": {"<slug>": {
         "segmenter": "<spec>",
         "vae":        {"path": "vae-<slug>", "tokens_seen": ..., "steps": ...},   # VAE pre-training
         "sllm":       {"path": "sllm-<slug>", "tokens_seen": ..., "steps": ...},  # on top of the lm's
         "lm_matched": {"path": "lm-matched/<slug>", "target_tokens": ..., "tokens_seen": ..., "steps": ...}}}}

Paths are relative to the file's folder. Counts are the training loop's ``tokens_seen``:
the token LM's scored targets (document tokens + each document's EOS); the VAE's and the
SLLM's decoder targets (segment tokens + each segment's EOS). ``lm_matched.target_tokens`` is
the SLLM's count, ``tokens_seen`` what the matched LM actually trained on after the ``lm``
(at most one optimizer step more). Each entry is read from the folder's ``metrics.json``;
a missing folder gives ``null``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segsllm.layout import BUDGETS_FILE, PipelineLayout, segmenter_slug


def _entry(folder: Path, base: Path) -> dict[str, Any] | None:
    """``tokens_seen`` and ``steps`` (and a matched LM's budget record) of one artifact folder."""
    try:
        doc = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    entry: dict[str, Any] = {"path": folder.relative_to(base).as_posix(), "tokens_seen": doc.get("tokens_seen"),
                             "steps": doc.get("steps")}
    budget = doc.get("budget")
    if isinstance(budget, dict):
        entry["target_tokens"] = budget.get("target_tokens")
    return entry


def sllm_tokens(layout: PipelineLayout, spec: str) -> int | None:
    """The training tokens of the SLLM of segmenter ``spec`` (its metrics.json), or None."""
    got = _entry(layout.sllm(spec), layout.models)
    return None if got is None or got["tokens_seen"] is None else int(got["tokens_seen"])


def sllm_budget(folder: str | Path) -> tuple[str, int]:
    """(slug of its segmenter, training tokens) of an SLLM folder, for ``train-lm --match``."""
    from segsllm.errors import ArtifactError

    path = Path(folder)
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        tokens = json.loads((path / "metrics.json").read_text(encoding="utf-8")).get("tokens_seen")
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: not a finished SLLM folder (manifest.json, metrics.json): {exc}") from None
    spec = (manifest.get("lineage") or {}).get("segmenter")
    if manifest.get("kind") != "sllm" or not spec:
        raise ArtifactError(f"{path} is not an SLLM folder (manifest kind {manifest.get('kind')!r})")
    if not isinstance(tokens, int) or tokens < 1:
        raise ArtifactError(f"{path}/metrics.json records no training tokens (tokens_seen); retrain it with "
                            "this version to match a token LM to it")
    return segmenter_slug(spec), tokens


def collect_budgets(layout: PipelineLayout, segmenters: Sequence[str]) -> dict[str, Any]:
    """The document of the module docstring for the models of ``layout``."""
    base = layout.models
    models = {
        segmenter_slug(spec): {
            "segmenter": spec,
            "vae": _entry(layout.vae(spec), base),
            "sllm": _entry(layout.sllm(spec), base),
            "lm_matched": _entry(layout.lm_matched(spec), base),
        }
        for spec in segmenters
    }
    return {"unit": "tokens", "lm": _entry(layout.lm, base), "models": models}


def write_budgets(layout: PipelineLayout, segmenters: Sequence[str]) -> Path:
    """Write ``budgets.json`` beside the models of ``layout``; return its path."""
    from segsllm.io import atomic_write_json

    atomic_write_json(layout.budgets, collect_budgets(layout, segmenters))
    return layout.budgets


def read_budgets(path: str | Path) -> dict[str, Any]:
    """A ``budgets.json`` (a file, or the folder holding it)."""
    p = Path(path)
    return json.loads((p / BUDGETS_FILE if p.is_dir() else p).read_text(encoding="utf-8"))


__all__ = ["collect_budgets", "read_budgets", "sllm_budget", "sllm_tokens", "write_budgets"]
