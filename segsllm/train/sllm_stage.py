"""The ``finetune`` stage: SentenceVAE + backbone -> SLLM, via the shared loop.

:func:`finetune_sllm` loads a trained SentenceVAE (and its tokenizer and segmenter), a
backbone (``tiny``, a ``train-lm`` folder, a pretrained model), grafts them into an
:class:`~segsllm.models.sllm.SLLM`, trains it on document windows of every domain
(decoder CE + stop loss), evaluates per domain and saves a self-describing folder that
``SLLM.from_pretrained`` and ``segsllm generate`` read.

Metrics (docs/DESIGN.md §7), per domain on the validation split:

- ``bits_per_byte`` = NLL / (ln 2 × UTF-8 bytes of the evaluated documents), where NLL (nats)
  sums every segment's decoder tokens **including its EOS**, and every stop decision
  (``-log p(continue)`` after each segment but the last — and before the first —, ``-log p(stop)``
  after the last). Split into ``bits_per_byte_tokens`` (segment tokens) and
  ``bits_per_byte_boundaries`` (segment EOS + stop decisions: what knowing where segments
  and documents end costs); ``bits_per_byte_first_token`` is the part of the tokens' share
  spent on each segment's first token, the one decoded from the predicted latent alone.
- ``token_perplexity`` = exp(that same NLL / (document tokens + 1 per document)). The
  denominator is the token count of ``train-lm``'s baseline, which scores each document's
  tokens and its final EOS: both perplexities divide the NLL of the same text by the same
  number, so they compare exactly as bits/byte do (the SLLM's segment EOS and stop decisions
  are its price for the same text, not extra tokens).
- ``paper_style_perplexity`` — *paper-style, for comparison with the paper's table only*:
  exp(mean over segments of each segment's mean decoder CE incl. EOS), the first segment of
  every window excluded, stop decisions ignored.
- ``segments_per_doc``, ``mean_segment_len``, ``decoder_token_accuracy``, ``stop_accuracy``.

Windows: each document is cut into windows of ``sllm.max_segments`` segments; every window
starts from the start vector and sees nothing of earlier windows (see ``SLLMConfig``).
Training batches hold one domain each, domains balanced (``data.balance_domains``).
Evaluation covers whole documents: all of them, or with ``train.eval_batches`` an evenly
spread subset of at most ``eval_batches × batch_size`` windows, the same before training and
after (the loop's last evaluation gives the final metrics).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segsllm.errors import ArtifactError, ConfigError
from segsllm.train import stage

KIND = "sllm"
SUMMED = ("nll_tokens", "nll_first", "nll_seg_eos", "nll_stop", "n_tokens", "n_segments", "n_targets", "n_stop",
          "n_docs", "n_correct", "stop_correct", "ps_ce_sum", "ps_count")


@dataclass
class SLLMStageResult:
    """What the stage reports: where the model is and how well it models each domain."""

    out_dir: Path
    metrics: dict[str, dict[str, float]]  # domain -> metric -> value (validation, after training)
    start_loss: dict[str, float]  # domain -> validation loss before training
    samples: dict[str, tuple[str, str]]  # domain -> (prompt, greedy continuation)
    steps: int
    checkpoint: Path | None
    wall_time_s: float
    segmenter: str = ""
    backbone: dict[str, Any] = field(default_factory=dict)  # lineage of the backbone
    num_parameters: int = 0
    trainable_parameters: int = 0
    run_id: str | None = None
    lineage: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- objective


def sllm_loss(model: Any, batch: Mapping[str, Any]) -> tuple[Any, dict[str, float]]:
    """Loss for the loop: forward through ``model(...)`` (DDP-safe) + summable statistics."""
    out = model(batch["ids"], batch["lengths"], is_last=batch["is_last"])
    stats = {k: float(out[k]) for k in SUMMED}
    stats["n_bytes"] = float(batch["n_bytes"].sum())
    stats["n_windows"] = float(batch["ids"].size(0))
    return out["loss"], stats


def reduce_sllm_metrics(sums: Mapping[str, float]) -> dict[str, float]:
    """Summed statistics -> the metrics of the module docstring."""
    from segsllm.metrics import bits_per_byte, token_perplexity

    g = sums.get
    nll = g("nll_tokens", 0.0) + g("nll_seg_eos", 0.0) + g("nll_stop", 0.0)
    n_bytes = int(g("n_bytes", 0.0))
    ps_count = g("ps_count", 0.0)
    return {
        "loss": g("loss", 0.0) / max(g("batches", 1.0), 1.0),
        "bits_per_byte": bits_per_byte(nll, n_bytes),
        "bits_per_byte_tokens": bits_per_byte(g("nll_tokens", 0.0), n_bytes),
        "bits_per_byte_boundaries": bits_per_byte(g("nll_seg_eos", 0.0) + g("nll_stop", 0.0), n_bytes),
        "bits_per_byte_first_token": bits_per_byte(g("nll_first", 0.0), n_bytes),
        "token_perplexity": token_perplexity(nll, int(g("n_tokens", 0.0) + g("n_docs", 0.0))),
        "paper_style_perplexity": math.exp(min(g("ps_ce_sum", 0.0) / ps_count, 700.0)) if ps_count else math.nan,
        "decoder_token_accuracy": g("n_correct", 0.0) / max(g("n_targets", 0.0), 1.0),
        # nan when no stop decision was scored
        "stop_accuracy": g("stop_correct", 0.0) / g("n_stop") if g("n_stop", 0.0) else math.nan,
        "mean_segment_len": g("n_tokens", 0.0) / max(g("n_segments", 0.0), 1.0),
        "segments_per_window": g("n_segments", 0.0) / max(g("n_windows", 0.0), 1.0),
    }


# --------------------------------------------------------------------------- inputs


def resolve_segmenter(vae: Any, tokenizer: Any, requested: str | None, fallback: str) -> Any:
    """The segmenter the VAE was trained with (its manifest's lineage) unless ``requested``
    names another — allowed, with a warning: the encoder then sees segments unlike its
    training data. Capped at the VAE's max_len (longer segments cannot be encoded)."""
    from segsllm.segment import build_segmenter

    max_len = vae.config.max_len
    trained = (vae.manifest.get("lineage") or {}).get("segmenter")
    seg = build_segmenter(requested or trained or fallback, tokenizer=tokenizer, max_len=max_len)
    if seg.max_len > max_len:
        raise ConfigError(f"segmenter {seg.spec()!r} allows segments of {seg.max_len} tokens, the "
                          f"SentenceVAE at most {max_len}")
    if requested and trained:
        ref = build_segmenter(trained, tokenizer=tokenizer, max_len=max_len)
        if ref.spec() != seg.spec():
            warnings.warn(f"segmenter {seg.spec()!r} differs from the one the SentenceVAE was trained with "
                          f"({ref.spec()!r}); its encoder/decoder will see unfamiliar segments", stacklevel=2)
    return seg


def resolve_boundaries(sllm_cfg: Any, seg: Any) -> Any:
    """``sllm_cfg`` with ``boundaries=auto`` resolved for ``seg`` (segmenter when it is causal,
    else eos); ``segmenter`` with a segmenter that is not causal is a one-line error."""
    if sllm_cfg.boundaries == "auto":
        return dataclasses.replace(sllm_cfg, boundaries="segmenter" if seg.causal else "eos")
    if sllm_cfg.boundaries == "segmenter" and not seg.causal:
        raise ConfigError(f"sllm.boundaries=segmenter needs a causal segmenter (lookahead 0: fixed, lines, a "
                          f"lookahead-0 threshold or hazard splitter); {seg.spec()!r} is not (use eos or auto)")
    return sllm_cfg


def check_backbone_tokenizer(backbone: Any, tokenizer: Any, vae_dir: str | Path) -> None:
    """Refuse a pretrained backbone whose tokenizer is not the VAE's (docs/DESIGN.md §5: same tokenizer)."""
    from segsllm.data.tokenizer import tokenizer_fingerprint

    own = backbone.tokenizer
    if own is None:
        if backbone.vocab_size < len(tokenizer):
            raise ArtifactError(f"backbone {backbone.spec!r} has a vocabulary of {backbone.vocab_size}, the "
                                f"SentenceVAE's tokenizer {len(tokenizer)} tokens; use the same tokenizer for both")
        warnings.warn(f"backbone {backbone.spec!r} ships no tokenizer: cannot check it matches the VAE's",
                      stacklevel=2)
        return
    if own is tokenizer:
        return
    fp_own, fp_vae = tokenizer_fingerprint(own), tokenizer_fingerprint(tokenizer)
    if fp_own != fp_vae:
        raise ArtifactError(
            f"backbone {backbone.spec!r} uses another tokenizer ({len(own)} tokens, fingerprint {fp_own}) than "
            f"the SentenceVAE in {vae_dir} ({len(tokenizer)} tokens, {fp_vae}); train the VAE on the "
            "backbone's tokenizer (train-vae --tokenizer <its folder>)"
        )


def sample_continuation(model: Any, tokenizer: Any, segmenter: Any, table: Any, max_new_tokens: int = 48,
                        prompt_segments: int = 2) -> tuple[str, str]:
    """(prompt, greedy continuation): the first segments of the first validation document."""
    from segsllm.data.segment_windows import document_bounds
    from segsllm.data.tokenizer import decode
    from segsllm.generate import generate_sllm

    bounds = document_bounds(table)
    if len(bounds) == 0:
        return "", ""
    lo, hi = (int(v) for v in bounds[0])
    ids = [int(t) for i in range(lo, min(hi, lo + prompt_segments)) for t in table.segment(i)]
    prompt = decode(tokenizer, ids)
    out = generate_sllm(model, tokenizer, segmenter, prompt, max_new_tokens=max_new_tokens)
    return prompt, out.text


# --------------------------------------------------------------------------- the stage


DEFINITIONS = {
    "bits_per_byte": "NLL(segment tokens + segment EOS + stop decisions) / (ln2 * UTF-8 bytes)",
    "token_perplexity": "exp(same NLL / (document tokens + 1 per document))",
    "paper_style_perplexity": "paper-style: exp(mean over segments of mean decoder CE), "
                              "first segment of each window excluded",
}


def _build_sllm(cfg: Any, sllm_cfg: Any, vae: Any, tokenizer: Any, vae_dir: str | Path) -> tuple[Any, Any]:
    """(SLLM, backbone): ``cfg.backbone`` grafted onto the VAE, checked for tokenizer and positions."""
    from segsllm.models.backbone import load_backbone
    from segsllm.models.sllm import SLLM

    backbone = load_backbone(cfg.backbone, vocab_size=vae.config.vocab_size, tokenizer=tokenizer)
    check_backbone_tokenizer(backbone, tokenizer, vae_dir)
    model = SLLM(sllm_cfg, vae, backbone.model)
    if model.max_positions is not None and sllm_cfg.max_segments + 1 > model.max_positions:
        raise ConfigError(f"sllm.max_segments={sllm_cfg.max_segments} needs {sllm_cfg.max_segments + 1} backbone "
                          f"positions, the backbone has {model.max_positions}")
    return model, backbone


def _sllm_batches(cfg: Any, sllm_cfg: Any, tokenizer: Any, seg: Any, pad: int
                  ) -> tuple[dict[tuple[str, str], Any], Any, dict[str, Any]]:
    """(tables, train source, domain -> eval batches). Evaluation covers whole documents, an
    evenly spread subset of at most ``train.eval_batches`` batches."""
    from segsllm.data.segment_windows import eval_windows, train_windows
    from segsllm.data.segments import load_segments

    caps = {"max_docs": cfg.data.max_docs, "max_doc_bytes": cfg.data.max_doc_bytes}
    tables = {(split, d): load_segments(cfg.data.dir, d, split, tokenizer, seg, **caps)
              for split in ("train", "validation") for d in cfg.data.domains}
    bs, max_segments = cfg.train.batch_size, sllm_cfg.max_segments
    train_source = train_windows([tables["train", d] for d in cfg.data.domains], max_segments, bs, pad,
                                 seed=cfg.run.seed, balanced=cfg.data.balance_domains)
    budget = cfg.train.eval_batches * bs if cfg.train.eval_batches else None
    eval_sources = {}
    for d in cfg.data.domains:
        if len(tables["validation", d]) == 0:
            warnings.warn(f"{d}: the validation split is empty; not evaluated", stacklevel=3)
            continue
        eval_sources[d] = eval_windows(tables["validation", d], max_segments, bs, pad, max_windows=budget)
    return tables, train_source, eval_sources


def _sllm_lineage(vae: Any, vae_dir: str | Path, backbone: Any, tok_fp: str, seg: Any, manifests: Any) -> dict:
    """What the SLLM was built from: the VAE's weights and run, the backbone, tokenizer, data."""
    vae_files = (vae.manifest.get("files") or {}).get("model.safetensors") or {}
    return {
        "vae": {"path": str(Path(vae_dir).resolve()), "weights_sha256": vae_files.get("sha256"),
                "run_id": vae.manifest.get("run_id"), "segmenter": (vae.manifest.get("lineage") or {}).get("segmenter")},
        "backbone": backbone.source,
        "tokenizer": {"path": str(Path(vae_dir).resolve()), "fingerprint": tok_fp},
        "segmenter": seg.spec(),
        "data": stage.data_lineage(manifests),
    }


def _sllm_report(model: Any, result: Any, tables: Any, eval_sources: Mapping[str, Any], tokenizer: Any, seg: Any,
                 sample_tokens: int) -> tuple[dict[str, dict[str, float]], dict[str, tuple[str, str]]]:
    """Final metrics per domain (the loop's last evaluation, on the same whole documents as
    at the start, + segment counts) and a greedy continuation per domain."""
    import torch

    from segsllm.data.segment_windows import document_bounds

    metrics = stage.per_domain(result.final_eval, eval_sources)
    samples: dict[str, tuple[str, str]] = {}
    model.eval()
    for d in eval_sources:
        table = tables["validation", d]
        n_docs = len(document_bounds(table))
        metrics[d]["segments_per_doc"] = len(table) / max(n_docs, 1)  # the whole split
        metrics[d]["val_docs"] = float(n_docs)
        metrics[d]["eval_docs"] = float(eval_sources[d].dataset.n_docs)  # those evaluated
        if sample_tokens > 0:
            with torch.no_grad():
                samples[d] = sample_continuation(model, tokenizer, seg, table, sample_tokens)
    return metrics, samples


def finetune_sllm(cfg: Any, vae_dir: str | Path, *, segmenter: str | None = None, resume: bool = False,
                  progress: bool = True, sample_tokens: int = 48) -> SLLMStageResult:
    """Train an SLLM of the VAE in ``vae_dir`` and ``cfg.backbone`` on ``cfg.data.domains``;
    save it to ``cfg.run.out``. ``segmenter`` defaults to the VAE's own (another one is
    allowed with a warning)."""
    from segsllm.data.tokenizer import tokenizer_fingerprint
    from segsllm.models.loading import load_artifact
    from segsllm.tracking import start_run
    from segsllm.train.loop import train

    started = time.perf_counter()
    manifests = stage.check_inputs(cfg, "finetune")
    sllm_cfg = cfg.sllm.validate()
    out_dir = Path(cfg.run.out)
    loaded = load_artifact("sentence_vae", vae_dir)
    vae, tokenizer = loaded.model, loaded.tokenizer
    seg = resolve_segmenter(vae, tokenizer, segmenter, cfg.segmenter.spec)
    sllm_cfg = resolve_boundaries(sllm_cfg, seg)
    device = stage.start_compute(cfg)
    model, backbone = _build_sllm(cfg, sllm_cfg, vae, tokenizer, vae_dir)
    # Record what was actually used, so config.yaml reproduces the run.
    cfg = dataclasses.replace(
        cfg, segmenter=dataclasses.replace(cfg.segmenter, spec=seg.spec(), max_len=seg.max_len), sllm=sllm_cfg,
    )
    tables, train_source, eval_sources = _sllm_batches(cfg, sllm_cfg, tokenizer, seg, vae.config.pad_id)
    tok_fp = tokenizer_fingerprint(tokenizer)
    lineage = _sllm_lineage(vae, vae_dir, backbone, tok_fp, seg, manifests)
    tags = {"segmenter": seg.spec(), "domain": ",".join(cfg.data.domains), "backbone": cfg.backbone.spec,
            "backbone_family": backbone.family}
    n_params, n_train = model.num_parameters(), model.num_parameters(trainable_only=True)
    with start_run(cfg, "sllm", tags=tags, manifests=manifests, resume=resume) as run:
        run.log_params({"sllm.num_parameters": n_params, "sllm.trainable_parameters": n_train,
                        "lineage.vae": lineage["vae"]["path"],
                        "lineage.backbone": str(backbone.source.get("path") or cfg.backbone.spec)})
        result = train(model, sllm_loss, train_source, cfg.train, out_dir, eval_data=eval_sources,
                       reduce_metrics=reduce_sllm_metrics, device=device, tracker=run,
                       count_tokens=stage.segment_targets, progress=progress, resume=resume,
                       meta={"kind": KIND, "tokenizer": tok_fp, "segmenter": seg.spec(), "backbone": cfg.backbone.spec,
                             "vae": lineage["vae"]["weights_sha256"], "max_segments": sllm_cfg.max_segments})
        model = model.to(device)
        metrics, samples = _sllm_report(model, result, tables, eval_sources, tokenizer, seg, sample_tokens)
        start_loss = stage.first_losses(result.eval_history, eval_sources)
        windows = f"max_segments={sllm_cfg.max_segments}, each window restarts from the start vector"
        stage.finish_stage(
            run, out_dir, cfg, result,
            save_model=lambda d: model.to("cpu").save_pretrained(d, tokenizer=tokenizer, lineage=lineage, extra_manifest={
                "metrics": metrics, "steps": result.step, "run_id": run.run_id}),
            metrics_doc={"final": metrics, "start_loss": start_loss, "steps": result.step,
                         "tokens_seen": result.tokens_seen,  # segment tokens + their EOS (lm-matched's budget)
                         "definitions": {**DEFINITIONS, "windows": windows}},
            logged=stage.flat_metrics("final", metrics),
            dicts={"samples.json": {d: {"prompt": p, "continuation": c} for d, (p, c) in samples.items()}},
        )
    return SLLMStageResult(out_dir=out_dir, metrics=metrics, start_loss=start_loss, samples=samples, steps=result.step,
                           checkpoint=result.checkpoint, wall_time_s=time.perf_counter() - started,
                           segmenter=seg.spec(), backbone=backbone.source, num_parameters=n_params,
                           trainable_parameters=n_train, run_id=run.run_id, lineage=lineage)
