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
  and documents end costs).
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

KIND = "sllm"
SUMMED = ("nll_tokens", "nll_seg_eos", "nll_stop", "n_tokens", "n_segments", "n_targets", "n_stop",
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
    from segsllm.bench.metrics import bits_per_byte, token_perplexity

    g = sums.get
    nll = g("nll_tokens", 0.0) + g("nll_seg_eos", 0.0) + g("nll_stop", 0.0)
    n_bytes = int(g("n_bytes", 0.0))
    ps_count = g("ps_count", 0.0)
    return {
        "loss": g("loss", 0.0) / max(g("batches", 1.0), 1.0),
        "bits_per_byte": bits_per_byte(nll, n_bytes),
        "bits_per_byte_tokens": bits_per_byte(g("nll_tokens", 0.0), n_bytes),
        "bits_per_byte_boundaries": bits_per_byte(g("nll_seg_eos", 0.0) + g("nll_stop", 0.0), n_bytes),
        "token_perplexity": token_perplexity(nll, int(g("n_tokens", 0.0) + g("n_docs", 0.0))),
        "paper_style_perplexity": math.exp(min(g("ps_ce_sum", 0.0) / ps_count, 700.0)) if ps_count else math.nan,
        "decoder_token_accuracy": g("n_correct", 0.0) / max(g("n_targets", 0.0), 1.0),
        "stop_accuracy": g("stop_correct", 0.0) / max(g("n_stop", 0.0), 1.0),
        "mean_segment_len": g("n_tokens", 0.0) / max(g("n_segments", 0.0), 1.0),
        "segments_per_window": g("n_segments", 0.0) / max(g("n_windows", 0.0), 1.0),
    }


# --------------------------------------------------------------------------- inputs


def load_vae_dir(vae_dir: str | Path) -> tuple[Any, Any]:
    """(SentenceVAE, its tokenizer) from a ``train-vae`` folder; one-line errors otherwise."""
    from segsllm.data.tokenizer import load_tokenizer
    from segsllm.models.artifact import read_manifest
    from segsllm.models.vae import KIND as VAE_KIND
    from segsllm.models.vae import SentenceVAE

    root = Path(vae_dir)
    if not root.is_dir():
        raise ArtifactError(f"no SentenceVAE folder at {root} (train one with `segsllm train-vae`)")
    kind = read_manifest(root).get("kind")
    if kind != VAE_KIND:
        raise ArtifactError(f"{root} holds a {kind!r} artifact, not a SentenceVAE (`segsllm train-vae` output)")
    if not (root / "tokenizer.json").is_file():
        raise ArtifactError(f"{root} has no tokenizer files: the SLLM needs the tokenizer the VAE was trained with")
    tokenizer = load_tokenizer(root)
    return SentenceVAE.from_pretrained(root, tokenizer=tokenizer), tokenizer


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
    from segsllm.data.documents import document_bounds
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


def finetune_sllm(
    cfg: Any,
    vae_dir: str | Path,
    backbone_spec: str | None = None,
    *,
    segmenter: str | None = None,
    resume: bool = False,
    progress: bool = True,
    sample_tokens: int = 48,
) -> SLLMStageResult:
    """Train an SLLM on ``cfg.data.domains``; save it to ``cfg.run.out``.

    ``backbone_spec`` defaults to ``cfg.backbone.spec``; ``segmenter`` to the VAE's own
    (a different one is allowed with a warning).
    """
    import torch

    from segsllm.config import save_config
    from segsllm.data.documents import document_bounds, eval_windows, train_windows
    from segsllm.data.segments import load_segments
    from segsllm.data.store import load_manifest
    from segsllm.data.tokenizer import tokenizer_fingerprint
    from segsllm.io import atomic_write_json
    from segsllm.models.backbone import load_backbone
    from segsllm.models.sllm import SLLM
    from segsllm.runtime import is_rank_zero, pick_device, seed_everything
    from segsllm.tracking import start_run
    from segsllm.train.loop import maybe_init_distributed, train

    if not cfg.run.out:
        raise ConfigError("finetune needs an output folder: --out DIR (or run.out)")
    if not cfg.data.domains:
        raise ConfigError("data.domains is empty: name at least one corpus")
    sllm_cfg = cfg.sllm.validate()
    out_dir = Path(cfg.run.out)
    started = time.perf_counter()
    data_dir = cfg.data.dir
    manifests = {d: load_manifest(data_dir, d) for d in cfg.data.domains}  # unknown domain: fail early

    vae, tokenizer = load_vae_dir(vae_dir)
    seg = resolve_segmenter(vae, tokenizer, segmenter, cfg.segmenter.spec)
    maybe_init_distributed()
    seed_everything(cfg.run.seed)
    device = pick_device(cfg.run.device)

    bb_cfg = dataclasses.replace(cfg.backbone, spec=backbone_spec or cfg.backbone.spec)
    backbone = load_backbone(bb_cfg, vocab_size=vae.config.vocab_size, tokenizer=tokenizer)
    check_backbone_tokenizer(backbone, tokenizer, vae_dir)
    model = SLLM(sllm_cfg, vae, backbone.model)
    if model.max_positions is not None and sllm_cfg.max_segments + 1 > model.max_positions:
        raise ConfigError(f"sllm.max_segments={sllm_cfg.max_segments} needs {sllm_cfg.max_segments + 1} backbone "
                          f"positions, the backbone has {model.max_positions}")
    # Record what was actually used, so config.yaml reproduces the run.
    cfg = dataclasses.replace(
        cfg, backbone=bb_cfg, segmenter=dataclasses.replace(cfg.segmenter, spec=seg.spec(), max_len=seg.max_len),
    )

    caps = {"max_docs": cfg.data.max_docs, "max_doc_bytes": cfg.data.max_doc_bytes}
    tables = {(split, d): load_segments(data_dir, d, split, tokenizer, seg, **caps)
              for split in ("train", "validation") for d in cfg.data.domains}
    pad = vae.config.pad_id
    bs = cfg.train.batch_size
    train_source = train_windows([tables["train", d] for d in cfg.data.domains], sllm_cfg.max_segments, bs, pad,
                                 seed=cfg.run.seed, balanced=cfg.data.balance_domains)
    # Evaluation: whole documents, an evenly spread subset of at most eval_batches batches.
    budget = cfg.train.eval_batches * bs if cfg.train.eval_batches else None
    eval_sources = {}
    for d in cfg.data.domains:
        if len(tables["validation", d]) == 0:
            warnings.warn(f"{d}: the validation split is empty; not evaluated", stacklevel=2)
            continue
        eval_sources[d] = eval_windows(tables["validation", d], sllm_cfg.max_segments, bs, pad, max_windows=budget)

    tok_fp = tokenizer_fingerprint(tokenizer)
    vae_files = (vae.manifest.get("files") or {}).get("model.safetensors") or {}
    lineage = {
        "vae": {"path": str(Path(vae_dir).resolve()), "weights_sha256": vae_files.get("sha256"),
                "run_id": vae.manifest.get("run_id"), "segmenter": (vae.manifest.get("lineage") or {}).get("segmenter")},
        "backbone": backbone.source,
        "tokenizer": {"path": str(Path(vae_dir).resolve()), "fingerprint": tok_fp},
        "segmenter": seg.spec(),
        "data": {d: {"sha256": m.get("sha256"), "source": m.get("source")} for d, m in manifests.items()},
    }
    tags = {"segmenter": seg.spec(), "domain": ",".join(cfg.data.domains), "backbone": bb_cfg.spec,
            "backbone_family": backbone.family}
    n_params, n_train = model.num_parameters(), model.num_parameters(trainable_only=True)

    with start_run(cfg, "sllm", tags=tags, manifests=manifests, resume=resume) as run:
        run.log_params({"sllm.num_parameters": n_params, "sllm.trainable_parameters": n_train,
                        "lineage.vae": lineage["vae"]["path"], "lineage.backbone": str(backbone.source.get("path") or
                                                                                        bb_cfg.spec)})
        result = train(
            model,
            sllm_loss,
            train_source,
            cfg.train,
            out_dir,
            eval_data=eval_sources,
            reduce_metrics=reduce_sllm_metrics,
            device=device,
            tracker=run,
            count_tokens=lambda b: int(b["lengths"].sum()),
            progress=progress,
            resume=resume,
            meta={"kind": KIND, "tokenizer": tok_fp, "segmenter": seg.spec(), "backbone": bb_cfg.spec,
                  "vae": lineage["vae"]["weights_sha256"], "max_segments": sllm_cfg.max_segments},
        )
        model = model.to(device)
        # The loop always evaluates after the last step (the same whole documents as at the
        # start): those are the final metrics.
        final = result.final_eval
        metrics: dict[str, dict[str, float]] = {}
        samples: dict[str, tuple[str, str]] = {}
        model.eval()
        for d in eval_sources:
            table = tables["validation", d]
            metrics[d] = {k.split("/", 2)[2]: v for k, v in final.items() if k.startswith(f"val/{d}/")}
            n_docs = len(document_bounds(table))
            metrics[d]["segments_per_doc"] = len(table) / max(n_docs, 1)  # the whole split
            metrics[d]["val_docs"] = float(n_docs)
            metrics[d]["eval_docs"] = float(eval_sources[d].dataset.n_docs)  # those evaluated
            if sample_tokens > 0:
                with torch.no_grad():
                    samples[d] = sample_continuation(model, tokenizer, seg, table, sample_tokens)
        start_loss = {
            d: next((h[f"val/{d}/loss"] for h in result.eval_history if f"val/{d}/loss" in h), math.nan)
            for d in eval_sources
        }
        if is_rank_zero():
            out_dir.mkdir(parents=True, exist_ok=True)
            model.to("cpu").save_pretrained(
                out_dir, tokenizer=tokenizer, lineage=lineage,
                extra_manifest={"metrics": metrics, "steps": result.step, "run_id": run.run_id},
            )
            save_config(cfg, out_dir / "config.yaml")
            atomic_write_json(out_dir / "metrics.json", {
                "final": metrics, "start_loss": start_loss, "steps": result.step,
                "definitions": {
                    "bits_per_byte": "NLL(segment tokens + segment EOS + stop decisions) / (ln2 * UTF-8 bytes)",
                    "token_perplexity": "exp(same NLL / (document tokens + 1 per document))",
                    "paper_style_perplexity": "paper-style: exp(mean over segments of mean decoder CE), "
                                              "first segment of each window excluded",
                    "windows": f"max_segments={sllm_cfg.max_segments}, each window restarts from the start vector",
                },
            })
            run.log_metrics({f"final/{d}/{k}": v for d, m in metrics.items() for k, v in m.items()},
                            step=result.step)
            run.set_tags({"artifact": str(out_dir.resolve()),
                          "checkpoint": str(result.checkpoint) if result.checkpoint else None})
            run.log_dict({d: {"prompt": p, "continuation": c} for d, (p, c) in samples.items()}, "samples.json")
            run.log_artifact(out_dir / "manifest.json")
    return SLLMStageResult(
        out_dir=out_dir,
        metrics=metrics,
        start_loss=start_loss,
        samples=samples,
        steps=result.step,
        checkpoint=result.checkpoint,
        wall_time_s=time.perf_counter() - started,
        segmenter=seg.spec(),
        backbone=backbone.source,
        num_parameters=n_params,
        trainable_parameters=n_train,
        run_id=run.run_id,
        lineage=lineage,
    )
