"""The ``train-lm`` stage: the token-level baseline (docs/DESIGN.md §7's fair baseline).

Pre-trains a ``tiny`` backbone from scratch on our tokenizer, or fine-tunes a pretrained one
(a folder, ``smollm2-135m``, a GGUF file, a hub id) on its own tokenizer, with the shared
loop, on per-document windows of the train splits (:mod:`segsllm.data.windows`). Token ids
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

KIND = "token_lm"
FORMAT_VERSION = 1
# The LM needs documents' token streams, not segments; any segmenter gives the same tokens.
# A cheap fixed one keys the shared segment-table cache.
LM_SEGMENTER = "fixed:k=256"


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


def lm_loss(model: Any, batch: Mapping[str, Any]) -> tuple[Any, dict[str, float]]:
    """Next-token CE for the loop, through ``model(...)`` (DDP-safe), + summable statistics.

    ``labels`` are already aligned with ``input_ids`` (``labels[:, p]`` is the token after
    ``input_ids[:, p]``), so no shift here; ``-100`` marks context and padding. Windows are
    right-padded, so the causal mask alone keeps pads out of every real token's view and
    positions count from 0 as without padding: no attention mask is passed, which keeps
    the fast causal attention path (a padded batch gives the same real-token logits).
    """
    import torch.nn.functional as F

    out = model(input_ids=batch["input_ids"], use_cache=False)
    logits = out.logits  # (B, T, V)
    labels = batch["labels"]  # (B, T)
    nll = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
    )  # summed over scored tokens, in nats
    n = (labels != -100).sum()
    stats = {"nll_sum": float(nll.detach()), "n_tokens": float(n), "n_bytes": float(batch["n_bytes"].sum())}
    return nll / n.clamp(min=1), stats


def reduce_lm_metrics(sums: Mapping[str, float]) -> dict[str, float]:
    """Summed statistics -> docs/DESIGN.md §7 metrics; ``loss`` is the token-weighted mean NLL."""
    from segsllm.bench.metrics import bits_per_byte, token_perplexity

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

    from segsllm.data.windows import collate_windows
    from segsllm.train.loop import SequentialBatches

    return SequentialBatches(windows, batch_size, partial(collate_windows, pad_id=pad_id))


# --------------------------------------------------------------------------- model + tokenizer


def is_tiny(spec: str) -> bool:
    spec = (spec or "").strip()
    return spec == "tiny" or spec.startswith("tiny:")


def load_lm(cfg: Any, tokenizer_dir: str | Path | None) -> tuple[Any, Any, dict[str, Any]]:
    """(backbone, tokenizer, tokenizer lineage) for ``cfg.backbone``.

    ``tiny``: our tokenizer (``tokenizer_dir``, else ``cfg.tokenizer.path``) is required and
    sizes the vocabulary. Pretrained: ``tokenizer_dir`` if given, else the backbone's own,
    else ``cfg.tokenizer.path``; a tokenizer larger than the model's vocabulary is refused.
    """
    from segsllm.data.tokenizer import load_tokenizer, tokenizer_fingerprint
    from segsllm.models.backbone import load_backbone

    spec = cfg.backbone.spec
    if is_tiny(spec):
        path = tokenizer_dir or cfg.tokenizer.path
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
        path = tokenizer_dir
        if tokenizer_dir:
            tokenizer = load_tokenizer(tokenizer_dir)
            origin = "given"
            own = backbone.tokenizer
            if own is not None and tokenizer_fingerprint(own) != tokenizer_fingerprint(tokenizer):
                warnings.warn(
                    f"--tokenizer {tokenizer_dir} differs from the tokenizer of backbone {spec!r}: "
                    "its pretrained embeddings will not match these ids",
                    stacklevel=2,
                )
        elif backbone.tokenizer is not None:
            tokenizer, origin = backbone.tokenizer, "backbone"
        elif cfg.tokenizer.path:
            path, origin = cfg.tokenizer.path, "config"
            tokenizer = load_tokenizer(path)
        else:
            raise ArtifactError(f"backbone {spec!r} has no tokenizer of its own: pass --tokenizer DIR")
        if len(tokenizer) > backbone.vocab_size:
            raise ArtifactError(
                f"tokenizer has {len(tokenizer)} tokens but backbone {spec!r} has a vocabulary of "
                f"{backbone.vocab_size}: it does not fit this model"
            )
    lineage = {
        "path": str(Path(path).resolve()) if path else None,
        "origin": origin,  # given | backbone | config
        "fingerprint": tokenizer_fingerprint(tokenizer),
        "size": len(tokenizer),
    }
    return backbone, tokenizer, lineage


def special_ids(tokenizer: Any) -> tuple[int, int, int]:
    """(bos, eos, pad) for document streams: BOS falls back to EOS (GPT-2 style end-of-text
    separator), PAD to EOS (padded positions are never scored)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ArtifactError("the tokenizer has no EOS token: the LM must predict each document's end")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return int(bos), int(eos), int(pad)


def max_positions(model: Any) -> int | None:
    """The longest input the model's position scheme was built for (None if unknown)."""
    c = model.config
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(c, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# --------------------------------------------------------------------------- artifact


def _file_entry(path: Path) -> dict[str, Any]:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def save_lm_artifact(
    out_dir: str | Path, model: Any, tokenizer: Any, cfg: Any, metrics_doc: Mapping[str, Any],
    manifest: Mapping[str, Any],
) -> Path:
    """Write the HF folder + config.yaml + metrics.json, then manifest.json last.

    The old manifest is removed first and every file is written into a temp folder and
    moved into place, so a crash leaves a folder without a manifest (incomplete), never a
    manifest that describes half-written files. The manifest carries their checksums.
    """
    import os
    import shutil
    import tempfile
    from datetime import datetime, timezone

    from segsllm import __version__
    from segsllm.config import save_config
    from segsllm.io import atomic_write_json

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
        save_config(cfg, tmp / "config.yaml")
        atomic_write_json(tmp / "metrics.json", dict(metrics_doc))
        files: dict[str, Any] = {}
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
        "files": files,
    }
    atomic_write_json(out / "manifest.json", doc)
    return out


# --------------------------------------------------------------------------- the stage


def _doc_bytes(data_dir: Any, domain: str, split: str, max_docs: int | None, max_doc_bytes: int | None) -> list[int]:
    """Exact UTF-8 byte count of every document of a split, in the table's doc order."""
    from segsllm.data.store import iter_documents

    return [len(d.text.encode("utf-8")) for d in iter_documents(data_dir, domain, split, max_docs, max_doc_bytes)]


def _per_domain(entry: Mapping[str, float], domains: Any) -> dict[str, dict[str, float]]:
    return {d: {k.split("/", 2)[2]: v for k, v in entry.items() if k.startswith(f"val/{d}/")} for d in domains}


def train_lm(
    cfg: Any,
    tokenizer_dir: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
) -> LMStageResult:
    """Train (tiny) or fine-tune (pretrained) the token-level LM on ``cfg.data.domains``;
    evaluate before and after; save the model folder to ``cfg.run.out``."""
    import time

    import numpy as np

    from segsllm.data.segments import ConcatTables, load_segments
    from segsllm.data.store import load_manifest
    from segsllm.data.vocab import vocab_bytes
    from segsllm.data.windows import IGNORE, WindowBatches, eval_windows, train_windows
    from segsllm.models.backbone import count_parameters, freeze_layers
    from segsllm.runtime import is_rank_zero, pick_device, seed_everything
    from segsllm.segment import build_segmenter
    from segsllm.tracking import start_run
    from segsllm.train.loop import maybe_init_distributed, train

    if not cfg.run.out:
        raise ConfigError("train-lm needs an output folder: --out DIR (or run.out)")
    if not cfg.data.domains:
        raise ConfigError("data.domains is empty: name at least one corpus")
    lm_cfg = cfg.lm.validate()
    train_base = cfg.train  # with pipeline.overrides.lm applied when the config was loaded
    out_dir = Path(cfg.run.out)
    started = time.perf_counter()
    data_dir = cfg.data.dir
    manifests = {d: load_manifest(data_dir, d) for d in cfg.data.domains}  # unknown domain: fail early

    maybe_init_distributed()
    seed_everything(cfg.run.seed)
    device = pick_device(cfg.run.device)
    backbone, tokenizer, tok_lineage = load_lm(cfg, tokenizer_dir)
    pretrained = not is_tiny(cfg.backbone.spec)
    model = backbone.model
    bos, eos, pad = special_ids(tokenizer)
    limit = max_positions(model)
    ctx = lm_cfg.context_len
    if limit is not None and ctx > limit:
        raise ConfigError(f"lm.context_len {ctx} exceeds the backbone's {limit} positions")
    if lm_cfg.train_first_layers or lm_cfg.train_last_layers:
        freeze_layers(model, lm_cfg.train_first_layers, lm_cfg.train_last_layers)
    # Record what was actually used, so config.yaml reproduces the run.
    cfg = dataclasses.replace(cfg, tokenizer=dataclasses.replace(cfg.tokenizer, path=tok_lineage["path"]))

    segmenter = build_segmenter(LM_SEGMENTER)
    token_bytes = vocab_bytes(tokenizer).lengths.copy()  # (V,) UTF-8 bytes per token id
    caps = {"max_docs": cfg.data.max_docs, "max_doc_bytes": cfg.data.max_doc_bytes}
    train_sets = [
        train_windows(load_segments(data_dir, d, "train", tokenizer, segmenter, **caps), ctx, bos, eos, token_bytes)
        for d in cfg.data.domains
    ]
    eval_bs = lm_cfg.eval_batch_size or train_base.batch_size
    eval_sets = {}
    for d in cfg.data.domains:
        table = load_segments(data_dir, d, "validation", tokenizer, segmenter, **caps)
        if len(table) == 0:
            warnings.warn(f"{d}: the validation split is empty; not evaluated", stacklevel=2)
            continue
        doc_bytes = _doc_bytes(data_dir, d, "validation", cfg.data.max_docs, cfg.data.max_doc_bytes)
        eval_sets[d] = eval_windows(table, ctx, bos, eos, stride=lm_cfg.stride, token_bytes=token_bytes,
                                    doc_bytes=np.asarray(doc_bytes, dtype=np.int64), max_bytes=lm_cfg.eval_bytes)
    train_source = WindowBatches(ConcatTables(train_sets), train_base.batch_size, pad, seed=cfg.run.seed,
                                 balanced=cfg.data.balance_domains)
    eval_sources = {d: eval_source(w, eval_bs, pad) for d, w in eval_sets.items()}
    # The stage always reports the start (the untouched base when pretrained), and caps
    # the eval set itself by whole documents (lm.eval_bytes), so the loop must not cut it.
    train_cfg = dataclasses.replace(train_base, eval_at_start=True, eval_batches=None)

    lineage = {
        "tokenizer": tok_lineage,
        "backbone": backbone.source,
        "data": {d: {"sha256": m.get("sha256"), "source": m.get("source"), "version": m.get("version")}
                 for d, m in manifests.items()},
    }
    tags = {"backbone": cfg.backbone.spec, "domain": ",".join(cfg.data.domains), "segmenter": "none",
            "pretrained": str(pretrained).lower()}
    with start_run(cfg, "lm", tags=tags, manifests=manifests, resume=resume) as run:
        run.log_params({"lm.num_parameters": count_parameters(model),
                        "lm.trainable_parameters": count_parameters(model, trainable_only=True)})
        result = train(
            model,
            lm_loss,
            train_source,
            train_cfg,
            out_dir,
            eval_data=eval_sources,
            reduce_metrics=reduce_lm_metrics,
            device=device,
            tracker=run,
            count_tokens=lambda b: int((b["labels"] != IGNORE).sum()),
            progress=progress,
            resume=resume,
            meta={"kind": KIND, "tokenizer": tok_lineage["fingerprint"], "backbone": cfg.backbone.spec,
                  "context_len": ctx},
        )
        history = result.eval_history
        start = _per_domain(next((h for h in history if h["step"] == 0), {}), eval_sets)
        final = _per_domain(history[-1] if history else {}, eval_sets)
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
                                  "end are not comparable", stacklevel=2)
        if is_rank_zero():
            metrics_doc = {"final": final, "start": start, "untouched_base": start if pretrained else None,
                           "steps": result.step, "tokens_seen": result.tokens_seen,
                           "eval": {"context_len": ctx, "stride": lm_cfg.stride, "split": "validation"}}
            manifest = {"lineage": lineage, "tokenizer_fingerprint": tok_lineage["fingerprint"],
                        "metrics": metrics_doc, "steps": result.step, "run_id": run.run_id}
            save_lm_artifact(out_dir, model, tokenizer, cfg, metrics_doc, manifest)
            logged = {f"final/{d}/{k}": v for d, m in final.items() for k, v in m.items()}
            logged.update({f"start/{d}/{k}": v for d, m in start.items() for k, v in m.items()})
            if pretrained:
                logged.update({f"base/{d}/{k}": v for d, m in start.items() for k, v in m.items()})
            run.log_metrics(logged, step=result.step)
            run.set_tags({"artifact": str(out_dir.resolve()),
                          "checkpoint": str(result.checkpoint) if result.checkpoint else None})
            run.log_artifact(out_dir / "manifest.json")
    return LMStageResult(
        out_dir=out_dir,
        metrics=final,
        start_metrics=start,
        pretrained=pretrained,
        steps=result.step,
        tokens_seen=result.tokens_seen,
        checkpoint=result.checkpoint,
        wall_time_s=time.perf_counter() - started,
        run_id=run.run_id,
        lineage=lineage,
    )
