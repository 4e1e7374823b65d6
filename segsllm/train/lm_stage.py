"""The ``train-lm`` stage: the token-level baseline (docs/DESIGN.md §7's fair baseline).

Pre-trains a ``tiny`` backbone from scratch on our tokenizer, or fine-tunes a pretrained one
(a folder, ``smollm2-135m``, a GGUF file, a hub id) on its own tokenizer, with the shared
loop, on per-document windows of the train splits (:mod:`segsllm.data.token_windows`). Token ids
come from the same cached segment tables the SLLM reads, so both model the same tokens.

Evaluation per domain on the validation split: bits/byte = NLL (nats) of every evaluated
document's tokens and its final EOS, each predicted from BOS + the preceding tokens in its
window, / (ln 2 × the documents' UTF-8 bytes); token perplexity = exp(NLL / those tokens).
It runs before training (for a pretrained backbone: the untouched base) and at the end,
over the same whole documents (an evenly spread subset of about ``lm.eval_bytes`` bytes,
chosen by bytes so that models with other tokenizers are scored on the same documents).

The artifact is a Hugging Face folder (``load_backbone(BackboneConfig(spec=OUT))`` and
``finetune --backbone OUT`` read it) + ``config.yaml`` + ``metrics.json`` + ``manifest.json``
(kind ``token_lm``, lineage, checksums), the manifest written last.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segsllm.errors import ArtifactError, ConfigError
from segsllm.models.token_lm import is_from_scratch, lm_loss, max_positions, special_ids
from segsllm.train.stage import (
    check_inputs,
    data_lineage,
    finish_stage,
    flat_metrics,
    per_domain,
    start_compute,
)

KIND = "token_lm"
FORMAT_VERSION = 1


@dataclass
class LMStageResult:
    """What the stage reports: where the model is and its validation metrics per domain."""

    out_dir: Path
    metrics: dict[str, dict[str, float]]  # domain -> metric -> value, after training
    start_metrics: dict[str, dict[str, float]]  # domain -> metric -> value, before training
    pretrained: bool  # True: start_metrics are the untouched base (docs/DESIGN.md §7)
    steps: int
    tokens_seen: int  # scored target tokens trained on (all ranks)
    checkpoint: Path | None
    wall_time_s: float
    run_id: str | None = None
    lineage: dict[str, Any] = field(default_factory=dict)

    @property
    def base_metrics(self) -> dict[str, dict[str, float]]:
        """The untouched base's metrics (pretrained backbones only; else empty)."""
        return self.start_metrics if self.pretrained else {}


# --------------------------------------------------------------------------- objective


def reduce_lm_metrics(sums: Mapping[str, float]) -> dict[str, float]:
    """Summed statistics -> docs/DESIGN.md §7 metrics; ``loss`` is the token-weighted mean NLL."""
    from segsllm.metrics import bits_per_byte, token_perplexity

    nll, n_tok, n_bytes = sums.get("nll_sum", 0.0), sums.get("n_tokens", 0.0), sums.get("n_bytes", 0.0)
    return {
        "loss": nll / n_tok if n_tok else math.nan,
        "bits_per_byte": bits_per_byte(nll, int(n_bytes)),
        "token_perplexity": token_perplexity(nll, int(n_tok)),
        "n_tokens": n_tok,
        "n_bytes": n_bytes,
    }


def evaluate_windows(
    model: Any, windows: Any, *, pad_id: int, batch_size: int = 16, device: Any = "cpu", bf16: bool = True
) -> dict[str, float]:
    """bits/byte, token perplexity ... of ``model`` over eval windows (e.g. for the bench)."""
    import torch

    from segsllm.train.loop import evaluate

    got = evaluate(model, lm_loss, {"x": eval_source(windows, batch_size, pad_id)}, device=torch.device(device),
                   reduce_metrics=reduce_lm_metrics, bf16=bf16)
    return {k.split("/", 2)[2]: v for k, v in got.items()}


def eval_source(windows: Any, batch_size: int, pad_id: int) -> Any:
    """Finite, re-iterable batches of eval windows, sharded over ranks."""
    from functools import partial

    from segsllm.data.batches import SequentialBatches
    from segsllm.data.token_windows import collate_windows

    return SequentialBatches(windows, batch_size, partial(collate_windows, pad_id=pad_id))


# --------------------------------------------------------------------------- model + tokenizer


def load_lm(cfg: Any) -> tuple[Any, Any, dict[str, Any]]:
    """(backbone, tokenizer, tokenizer lineage) for ``cfg.backbone``.

    ``tiny``: our tokenizer (``cfg.tokenizer.path``) is required and sizes the vocabulary.
    Pretrained: ``cfg.tokenizer.path`` if set (with a warning when it is not the backbone's
    own), else the backbone's own; a tokenizer larger than the model's vocabulary is refused.
    """
    from segsllm.data.tokenizer import load_tokenizer, tokenizer_fingerprint
    from segsllm.models.backbone import load_backbone

    spec, path = cfg.backbone.spec, cfg.tokenizer.path
    if is_from_scratch(spec):
        if not path:
            raise ConfigError(
                "a tiny backbone is trained on our tokenizer: pass --tokenizer DIR "
                "(see `segsllm train-tokenizer`) or set tokenizer.path"
            )
        tokenizer = load_tokenizer(path)
        backbone = load_backbone(cfg.backbone, vocab_size=len(tokenizer), tokenizer=tokenizer)
        origin = "given"
    else:
        backbone = load_backbone(cfg.backbone)
        if path:
            tokenizer, origin = load_tokenizer(path), "given"
            own = backbone.tokenizer
            if own is not None and tokenizer_fingerprint(own) != tokenizer_fingerprint(tokenizer):
                warnings.warn(
                    f"--tokenizer {path} differs from the tokenizer of backbone {spec!r}: "
                    "its pretrained embeddings will not match these ids",
                    stacklevel=2,
                )
        elif backbone.tokenizer is not None:
            tokenizer, origin = backbone.tokenizer, "backbone"
        else:
            raise ArtifactError(f"backbone {spec!r} has no tokenizer of its own: pass --tokenizer DIR")
        if len(tokenizer) > backbone.vocab_size:
            raise ArtifactError(
                f"tokenizer has {len(tokenizer)} tokens but backbone {spec!r} has a vocabulary of "
                f"{backbone.vocab_size}: it does not fit this model"
            )
    lineage = {
        "path": str(Path(path).resolve()) if path else None,
        "origin": origin,  # given | backbone
        "fingerprint": tokenizer_fingerprint(tokenizer),
        "size": len(tokenizer),
    }
    return backbone, tokenizer, lineage


# --------------------------------------------------------------------------- artifact


def _file_entry(path: Path) -> dict[str, Any]:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def save_lm_artifact(out_dir: str | Path, model: Any, tokenizer: Any, manifest: Mapping[str, Any],
                     written: tuple[str, ...] = ("config.yaml", "metrics.json")) -> Path:
    """Write the HF folder, then manifest.json last, listing it and the ``written`` files
    already in ``out_dir`` (the stage's config.yaml and metrics.json) with checksums.

    The old manifest is removed first and every file is written into a temp folder and
    moved into place, so a crash leaves a folder without a manifest (incomplete), never a
    manifest that describes half-written files.
    """
    import os
    import shutil
    import tempfile
    from datetime import datetime, timezone

    from segsllm import __version__
    from segsllm.io import atomic_write_json, share_tree

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    for stale in out.glob(".tmp-artifact-*"):
        shutil.rmtree(stale, ignore_errors=True)
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar in our output
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-artifact-", dir=out))
    try:
        model.save_pretrained(str(tmp))  # config.json, generation_config.json, model.safetensors
        tokenizer.save_pretrained(str(tmp))
        share_tree(tmp)  # safetensors writes 0600 files: give them the umask's permissions
        files: dict[str, Any] = {name: _file_entry(out / name) for name in written if (out / name).is_file()}
        for p in sorted(tmp.iterdir()):
            if p.is_file() and not p.name.startswith("."):
                files[p.name] = _file_entry(p)
                os.replace(p, out / p.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if bar:
            hf_logging.enable_progress_bar()
    doc = {
        **{k: v for k, v in manifest.items()},
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "segsllm_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": dict(sorted(files.items())),
    }
    atomic_write_json(out / "manifest.json", doc)
    return out


# --------------------------------------------------------------------------- the stage


def _doc_bytes(data_dir: Any, domain: str, split: str, max_docs: int | None, max_doc_bytes: int | None) -> list[int]:
    """Exact UTF-8 byte count of every document of a split, in the table's doc order."""
    from segsllm.data.store import iter_documents

    return [len(d.text.encode("utf-8")) for d in iter_documents(data_dir, domain, split, max_docs, max_doc_bytes)]


def _lm_windows(cfg: Any, lm_cfg: Any, tokenizer: Any, ctx: int, bos: int, eos: int) -> tuple[list[Any], dict[str, Any]]:
    """(train windows per domain, domain -> eval windows over whole validation documents,
    about ``lm.eval_bytes`` of them, chosen by bytes so other tokenizers score the same ones)."""
    import numpy as np

    from segsllm.data.token_windows import eval_windows, token_streams, train_windows
    from segsllm.data.vocab import vocab_bytes
    data_dir = cfg.data.dir
    token_bytes = vocab_bytes(tokenizer).lengths.copy()  # (V,) UTF-8 bytes per token id
    caps = {"max_docs": cfg.data.max_docs, "max_doc_bytes": cfg.data.max_doc_bytes}
    train_sets = [train_windows(token_streams(data_dir, d, "train", tokenizer, **caps), ctx, bos, eos, token_bytes)
                  for d in cfg.data.domains]
    eval_sets = {}
    for d in cfg.data.domains:
        table = token_streams(data_dir, d, "validation", tokenizer, **caps)
        if len(table) == 0:
            warnings.warn(f"{d}: the validation split is empty; not evaluated", stacklevel=3)
            continue
        doc_bytes = _doc_bytes(data_dir, d, "validation", cfg.data.max_docs, cfg.data.max_doc_bytes)
        eval_sets[d] = eval_windows(table, ctx, bos, eos, stride=lm_cfg.stride, token_bytes=token_bytes,
                                    doc_bytes=np.asarray(doc_bytes, dtype=np.int64), max_bytes=lm_cfg.eval_bytes)
    return train_sets, eval_sets


def _lm_model(cfg: Any, lm_cfg: Any) -> tuple[Any, Any, dict[str, Any], int]:
    """(backbone, tokenizer, tokenizer lineage, context length), layers frozen as asked."""
    from segsllm.models.backbone import freeze_layers

    backbone, tokenizer, tok_lineage = load_lm(cfg)
    limit = max_positions(backbone.model)
    ctx = lm_cfg.context_len
    if limit is not None and ctx > limit:
        raise ConfigError(f"lm.context_len {ctx} exceeds the backbone's {limit} positions")
    if lm_cfg.train_first_layers or lm_cfg.train_last_layers:
        freeze_layers(backbone.model, lm_cfg.train_first_layers, lm_cfg.train_last_layers)
    return backbone, tokenizer, tok_lineage, ctx


def _lm_report(result: Any, eval_sets: Mapping[str, Any]) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """(start, final) metrics per domain from the loop's history, with the documents counted;
    a warning when restored start metrics come from another evaluation set."""
    history = result.eval_history
    start = per_domain(next((h for h in history if h["step"] == 0), {}), eval_sets)
    final = per_domain(history[-1] if history else {}, eval_sets)
    for d, w in eval_sets.items():
        total = int(w.n_bytes.sum())
        for when, m in (("start", start[d]), ("final", final[d])):
            if not m:
                continue
            if int(m.get("n_bytes", -1)) == total:
                m["n_docs"] = float(len(w.docs))
            else:  # e.g. resumed with another lm.eval_bytes: history from the old eval set
                warnings.warn(f"{d}: the {when} metrics restored from the checkpoint were measured on "
                              "another evaluation set (lm.eval_bytes or the data changed); start and "
                              "end are not comparable", stacklevel=3)
    return start, final


def train_lm(cfg: Any, *, resume: bool = False, progress: bool = True) -> LMStageResult:
    """Train (tiny) or fine-tune (pretrained) the token-level LM on ``cfg.data.domains``
    (tokenizer: ``cfg.tokenizer.path``, else a pretrained backbone's own); evaluate before
    and after; save the model folder to ``cfg.run.out``."""
    import time

    from segsllm.data.segments import ConcatTables
    from segsllm.data.token_windows import IGNORE, TokenWindowBatches
    from segsllm.models.backbone import count_parameters
    from segsllm.tracking import start_run
    from segsllm.train.loop import train

    started = time.perf_counter()
    manifests = check_inputs(cfg, "train-lm")
    lm_cfg = cfg.lm.validate()
    train_base = cfg.train  # with pipeline.overrides.lm applied when the config was loaded
    out_dir = Path(cfg.run.out)
    device = start_compute(cfg)
    backbone, tokenizer, tok_lineage, ctx = _lm_model(cfg, lm_cfg)
    model, pretrained = backbone.model, not is_from_scratch(cfg.backbone.spec)
    bos, eos, pad = special_ids(tokenizer)
    # Record what was actually used, so config.yaml reproduces the run.
    cfg = dataclasses.replace(cfg, tokenizer=dataclasses.replace(cfg.tokenizer, path=tok_lineage["path"]))
    train_sets, eval_sets = _lm_windows(cfg, lm_cfg, tokenizer, ctx, bos, eos)
    train_source = TokenWindowBatches(ConcatTables(train_sets), train_base.batch_size, pad, seed=cfg.run.seed,
                                 balanced=cfg.data.balance_domains)
    eval_bs = lm_cfg.eval_batch_size or train_base.batch_size
    eval_sources = {d: eval_source(w, eval_bs, pad) for d, w in eval_sets.items()}
    # The stage always reports the start (the untouched base when pretrained), and caps
    # the eval set itself by whole documents (lm.eval_bytes), so the loop must not cut it.
    train_cfg = dataclasses.replace(train_base, eval_at_start=True, eval_batches=None)
    lineage = {"tokenizer": tok_lineage, "backbone": backbone.source,
               "data": data_lineage(manifests, ("sha256", "source", "version"))}
    tags = {"backbone": cfg.backbone.spec, "domain": ",".join(cfg.data.domains), "segmenter": "none",
            "pretrained": str(pretrained).lower()}
    with start_run(cfg, "lm", tags=tags, manifests=manifests, resume=resume) as run:
        run.log_params({"lm.num_parameters": count_parameters(model),
                        "lm.trainable_parameters": count_parameters(model, trainable_only=True)})
        result = train(model, lm_loss, train_source, train_cfg, out_dir, eval_data=eval_sources,
                       reduce_metrics=reduce_lm_metrics, device=device, tracker=run,
                       count_tokens=lambda b: int((b["labels"] != IGNORE).sum()), progress=progress, resume=resume,
                       meta={"kind": KIND, "tokenizer": tok_lineage["fingerprint"], "backbone": cfg.backbone.spec,
                             "context_len": ctx})
        start, final = _lm_report(result, eval_sets)
        metrics_doc = {"final": final, "start": start, "untouched_base": start if pretrained else None,
                       "steps": result.step, "tokens_seen": result.tokens_seen,
                       "eval": {"context_len": ctx, "stride": lm_cfg.stride, "split": "validation"}}
        manifest = {"lineage": lineage, "tokenizer_fingerprint": tok_lineage["fingerprint"],
                    "metrics": metrics_doc, "steps": result.step, "run_id": run.run_id}
        logged = {**flat_metrics("final", final), **flat_metrics("start", start),
                  **(flat_metrics("base", start) if pretrained else {})}
        finish_stage(run, out_dir, cfg, result, save_model=lambda d: save_lm_artifact(d, model, tokenizer, manifest),
                     metrics_doc=metrics_doc, logged=logged)
    return LMStageResult(out_dir=out_dir, metrics=final, start_metrics=start, pretrained=pretrained, steps=result.step,
                         tokens_seen=result.tokens_seen, checkpoint=result.checkpoint,
                         wall_time_s=time.perf_counter() - started, run_id=run.run_id, lineage=lineage)
