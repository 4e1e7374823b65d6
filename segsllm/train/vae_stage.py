"""The ``train-vae`` stage: segments of every domain -> SentenceVAE, via the shared loop.

The stage is a library function so the CLI, the pipeline and notebooks call the same code:
:func:`train_vae` returns a :class:`VAEStageResult` with per-domain validation metrics and a
few sample reconstructions; the trained model is a self-describing folder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segsllm.errors import ConfigError
from segsllm.train import stage

KIND = "sentence_vae"
SUMMED = ("nll_sum", "n_tokens", "n_correct", "n_exact", "n_segments", "n_bytes")


@dataclass
class VAEStageResult:
    """What the stage reports: where the model is and how well it reconstructs."""

    out_dir: Path
    metrics: dict[str, dict[str, float]]  # domain -> metric -> value
    start_loss: dict[str, float]  # domain -> validation loss before training
    samples: dict[str, list[tuple[str, str]]]  # domain -> (segment, greedy reconstruction)
    steps: int
    checkpoint: Path | None
    wall_time_s: float
    run_id: str | None = None
    lineage: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- objective


def vae_loss(model: Any, batch: Mapping[str, Any]) -> tuple[Any, dict[str, float]]:
    """Loss for the loop: forward through ``model(...)`` (DDP-safe) + summable statistics."""
    out = model(batch["ids"], lengths=batch["lengths"])
    stats = {k: float(out[k]) for k in ("nll_sum", "n_tokens", "n_correct", "n_exact", "n_segments")}
    stats["n_bytes"] = float(batch["n_bytes"].sum())
    return out["loss"], stats


def reduce_vae_metrics(sums: Mapping[str, float]) -> dict[str, float]:
    """Summed statistics -> docs/DESIGN.md §7 metrics (token accuracy, exact match, bits/byte)."""
    from segsllm.metrics import bits_per_byte

    n_tok = max(sums.get("n_tokens", 0.0), 1.0)
    n_seg = max(sums.get("n_segments", 0.0), 1.0)
    out = {
        "loss": sums["loss"] / max(sums.get("batches", 1.0), 1.0),
        "token_accuracy": sums.get("n_correct", 0.0) / n_tok,
        "exact_match_teacher_forced": sums.get("n_exact", 0.0) / n_seg,
        "bits_per_byte": bits_per_byte(sums.get("nll_sum", 0.0), int(sums.get("n_bytes", 0))),
        # n_tokens counts each segment's EOS too.
        "mean_segment_len": (sums.get("n_tokens", 0.0) - sums.get("n_segments", 0.0)) / n_seg,
    }
    return out


class EvalBatches:
    """Re-iterable, length-sorted validation batches of one domain, split across ranks."""

    def __init__(self, table: Any, batch_size: int, pad_id: int, max_batches: int | None) -> None:
        from segsllm.data.segments import eval_batches
        from segsllm.runtime import dist_info

        rank, _, world = dist_info()
        self.table = table
        self.pad_id = pad_id
        self.index_batches = eval_batches(table, batch_size, pad_id, max_batches)[rank::world]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from segsllm.data.segments import collate_segments

        for idx in self.index_batches:
            yield collate_segments([self.table[int(i)] for i in idx], self.pad_id)

    def __len__(self) -> int:
        return len(self.index_batches)


# --------------------------------------------------------------------------- the stage


def build_vae_config(cfg: Any, tokenizer: Any, max_len: int) -> Any:
    """The model config: the ``vae`` section, with vocabulary, specials and max_len taken
    from the tokenizer and segmenter (they must agree, so they are not user settings)."""
    from segsllm.config.vae import SentenceVAEConfig

    vae_cfg = dataclasses.replace(
        cfg.vae,
        vocab_size=len(tokenizer),
        max_len=int(max_len),
        pad_id=int(tokenizer.pad_token_id),
        bos_id=int(tokenizer.bos_token_id),
        eos_id=int(tokenizer.eos_token_id),
    )
    if not isinstance(vae_cfg, SentenceVAEConfig):  # pragma: no cover - defensive
        raise ConfigError("vae section is not a SentenceVAEConfig")
    return vae_cfg.validate()


def init_embeddings_from_backbone(model: Any, cfg: Any, tokenizer: Any) -> None:
    """docs/DESIGN.md §5: start the VAE's token embeddings from the backbone's when they share
    the tokenizer (a backbone may pad its matrix past the tokenizer's size: extra rows are
    dropped). A different vocabulary is a one-line ArtifactError."""
    import torch

    from segsllm.errors import ArtifactError
    from segsllm.models.backbone import load_backbone

    backbone = load_backbone(cfg.backbone, vocab_size=len(tokenizer), tokenizer=tokenizer)
    weight = backbone.model.get_input_embeddings().weight.detach().float()  # (V_backbone, W)
    if weight.shape[0] < len(tokenizer):
        raise ArtifactError(
            f"backbone {cfg.backbone.spec} has {weight.shape[0]} embeddings but the tokenizer "
            f"{len(tokenizer)} tokens; vae.embeddings_from_backbone needs the backbone's tokenizer"
        )
    with torch.no_grad():
        model.init_embeddings_from(weight[: len(tokenizer)])
    del backbone


def sample_reconstructions(model: Any, table: Any, tokenizer: Any, n: int, device: Any) -> tuple[
    list[tuple[str, str]], float
]:
    """Greedy reconstructions of ``n`` evenly spread validation segments, and the exact-match
    rate under generation over them."""
    import numpy as np
    import torch

    from segsllm.data.segments import collate_segments
    from segsllm.data.tokenizer import decode
    from segsllm.metrics import exact_match_count

    if len(table) == 0 or n <= 0:
        return [], float("nan")
    picks = np.unique(np.linspace(0, len(table) - 1, min(n, len(table))).round().astype(int))
    items = [table[int(i)] for i in picks]
    refs = [list(map(int, it["ids"])) for it in items]
    generated: list[list[int]] = []
    with torch.no_grad():
        for lo in range(0, len(items), 64):
            batch = collate_segments(items[lo : lo + 64], model.config.pad_id)
            generated += model.reconstruct(batch["ids"].to(device), lengths=batch["lengths"].to(device))
    exact = exact_match_count(generated, refs) / len(refs)
    pairs = [(decode(tokenizer, r), decode(tokenizer, g)) for r, g in zip(refs, generated, strict=True)]
    return pairs, exact


def _vae_inputs(cfg: Any) -> tuple[Any, Any, dict[tuple[str, str], Any]]:
    """(tokenizer, segmenter, (split, domain) -> segment table) for ``cfg``."""
    from segsllm.data.segments import load_segments
    from segsllm.data.tokenizer import load_tokenizer
    from segsllm.segment import build_segmenter

    tokenizer = load_tokenizer(cfg.tokenizer.path)
    segmenter = build_segmenter(cfg.segmenter.spec, tokenizer=tokenizer, max_len=cfg.segmenter.max_len)
    caps = {"max_docs": cfg.data.max_docs, "max_doc_bytes": cfg.data.max_doc_bytes}
    tables = {(split, d): load_segments(cfg.data.dir, d, split, tokenizer, segmenter, **caps)
              for split in ("train", "validation") for d in cfg.data.domains}
    return tokenizer, segmenter, tables


def _vae_batches(cfg: Any, tables: Mapping[tuple[str, str], Any], pad_id: int) -> tuple[Any, dict[str, Any]]:
    """(train source, domain -> eval batches): bucketed train segments of every domain, and
    the validation batches of each domain whose validation split is not empty."""
    from segsllm.data.segments import BucketedBatches, ConcatTables

    domains = cfg.data.domains
    train_source = BucketedBatches(ConcatTables([tables["train", d] for d in domains]), cfg.train.batch_size,
                                   pad_id, seed=cfg.run.seed, balanced=cfg.data.balance_domains)
    eval_sources = {d: EvalBatches(tables["validation", d], cfg.train.batch_size, pad_id, cfg.train.eval_batches)
                    for d in domains if len(tables["validation", d])}
    return train_source, eval_sources


def _vae_report(model: Any, result: Any, tables: Mapping[tuple[str, str], Any], tokenizer: Any, device: Any,
                domains: Iterable[str], n_samples: int, exact_match_segments: int
                ) -> tuple[dict[str, dict[str, float]], dict[str, list[tuple[str, str]]]]:
    """Final metrics per domain (the loop's last evaluation + the greedy exact-match rate)
    and a few sample reconstructions."""
    metrics = stage.per_domain(result.final_eval, domains)
    samples: dict[str, list[tuple[str, str]]] = {}
    model.eval()
    for d in domains:
        pairs, exact = sample_reconstructions(model, tables["validation", d], tokenizer, exact_match_segments, device)
        metrics[d]["exact_match"] = exact
        metrics[d]["val_segments"] = float(len(tables["validation", d]))
        samples[d] = pairs[:: max(1, len(pairs) // max(n_samples, 1))][:n_samples]
    return metrics, samples


def train_vae(cfg: Any, *, resume: bool = False, progress: bool = True, n_samples: int = 4,
              exact_match_segments: int = 256) -> VAEStageResult:
    """Train a SentenceVAE on ``cfg.data.domains`` cut by ``cfg.segmenter``, with the
    tokenizer at ``cfg.tokenizer.path``; save it to ``cfg.run.out``."""
    import time

    from segsllm.data.tokenizer import tokenizer_fingerprint
    from segsllm.models.vae import SentenceVAE
    from segsllm.tracking import start_run
    from segsllm.train.loop import train

    started = time.perf_counter()
    manifests = stage.check_inputs(cfg, "train-vae")
    if not cfg.tokenizer.path:
        raise ConfigError("no tokenizer: pass --tokenizer DIR (see `segsllm train-tokenizer`) or set tokenizer.path")
    out_dir = Path(cfg.run.out)
    device = stage.start_compute(cfg)
    tokenizer, segmenter, tables = _vae_inputs(cfg)
    model = SentenceVAE(build_vae_config(cfg, tokenizer, segmenter.max_len))
    if model.config.embeddings_from_backbone:
        init_embeddings_from_backbone(model, cfg, tokenizer)
    train_source, eval_sources = _vae_batches(cfg, tables, model.config.pad_id)
    lineage = {
        "tokenizer": {"path": str(Path(cfg.tokenizer.path).resolve()), "fingerprint": tokenizer_fingerprint(tokenizer)},
        "segmenter": segmenter.spec(),
        "data": stage.data_lineage(manifests),
    }
    tags = {"segmenter": segmenter.spec(), "domain": ",".join(cfg.data.domains), "backbone": "none"}
    with start_run(cfg, "vae", tags=tags, manifests=manifests, resume=resume) as run:
        run.log_params({"vae.num_parameters": sum(p.numel() for p in model.parameters())})
        result = train(model, vae_loss, train_source, cfg.train, out_dir, eval_data=eval_sources,
                       reduce_metrics=reduce_vae_metrics, device=device, tracker=run,
                       count_tokens=stage.segment_targets, progress=progress, resume=resume,
                       meta={"tokenizer": lineage["tokenizer"]["fingerprint"], "segmenter": segmenter.spec(),
                             "kind": KIND})
        model = model.to(device)
        # The loop always evaluates after the last step (on up to train.eval_batches batches
        # per domain, spread evenly over segment lengths): those are the final metrics.
        metrics, samples = _vae_report(model, result, tables, tokenizer, device, list(eval_sources), n_samples,
                                       exact_match_segments)
        start_loss = stage.first_losses(result.eval_history, eval_sources)
        stage.finish_stage(
            run, out_dir, cfg, result,
            save_model=lambda d: model.to("cpu").save_pretrained(
                d, tokenizer=tokenizer, lineage=lineage, extra_manifest={"metrics": metrics, "steps": result.step}),
            metrics_doc={"final": metrics, "start_loss": start_loss, "steps": result.step,
                         "tokens_seen": result.tokens_seen},  # segment tokens + their EOS
            logged=stage.flat_metrics("final", metrics),
            dicts={"samples.json": {d: [{"segment": a, "reconstruction": b} for a, b in s]
                                    for d, s in samples.items()}},
        )
    return VAEStageResult(out_dir=out_dir, metrics=metrics, start_loss=start_loss, samples=samples,
                          steps=result.step, checkpoint=result.checkpoint,
                          wall_time_s=time.perf_counter() - started, run_id=run.run_id, lineage=lineage)
