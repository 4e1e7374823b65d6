"""The ``train-vae`` stage: segments of every domain -> SentenceVAE, via the shared loop.

The stage is a library function so the CLI, the pipeline and notebooks call the same code:
:func:`train_vae` returns a :class:`VAEStageResult` with per-domain validation metrics and a
few sample reconstructions; the trained model is a self-describing folder.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segsllm.errors import ConfigError

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
    from segsllm.bench.metrics import bits_per_byte

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

    from segsllm.bench.metrics import exact_match_count
    from segsllm.data.segments import collate_segments
    from segsllm.data.tokenizer import decode

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


def train_vae(
    cfg: Any,
    tokenizer_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    n_samples: int = 4,
    exact_match_segments: int = 256,
) -> VAEStageResult:
    """Train a SentenceVAE on ``cfg.data.domains`` cut by ``cfg.segmenter``; save to ``cfg.run.out``."""
    import time

    from segsllm.config import save_config
    from segsllm.data.segments import BucketedBatches, ConcatTables, load_segments
    from segsllm.data.store import load_manifest
    from segsllm.data.tokenizer import load_tokenizer, tokenizer_fingerprint
    from segsllm.io import atomic_write_json
    from segsllm.models.vae import SentenceVAE
    from segsllm.runtime import is_rank_zero, pick_device, seed_everything
    from segsllm.segment import build_segmenter
    from segsllm.tracking import start_run
    from segsllm.train.loop import maybe_init_distributed, train

    if not cfg.run.out:
        raise ConfigError("train-vae needs an output folder: --out DIR (or run.out)")
    if not cfg.data.domains:
        raise ConfigError("data.domains is empty: name at least one corpus")
    out_dir = Path(cfg.run.out)
    started = time.perf_counter()
    maybe_init_distributed()
    seed_everything(cfg.run.seed)
    device = pick_device(cfg.run.device)

    tokenizer = load_tokenizer(tokenizer_dir)
    segmenter = build_segmenter(cfg.segmenter.spec, tokenizer=tokenizer, max_len=cfg.segmenter.max_len)
    vae_cfg = build_vae_config(cfg, tokenizer, segmenter.max_len)

    data_dir = cfg.data.dir
    manifests = {d: load_manifest(data_dir, d) for d in cfg.data.domains}
    tables = {}
    for split in ("train", "validation"):
        for d in cfg.data.domains:
            tables[split, d] = load_segments(
                data_dir, d, split, tokenizer, segmenter,
                max_docs=cfg.data.max_docs, max_doc_bytes=cfg.data.max_doc_bytes,
            )

    model = SentenceVAE(vae_cfg)
    if vae_cfg.embeddings_from_backbone:
        init_embeddings_from_backbone(model, cfg, tokenizer)
    train_source = BucketedBatches(
        ConcatTables([tables["train", d] for d in cfg.data.domains]),
        cfg.train.batch_size,
        vae_cfg.pad_id,
        seed=cfg.run.seed,
        balanced=cfg.data.balance_domains,
    )
    eval_sources = {
        d: EvalBatches(tables["validation", d], cfg.train.batch_size, vae_cfg.pad_id, cfg.train.eval_batches)
        for d in cfg.data.domains
        if len(tables["validation", d])
    }
    lineage = {
        "tokenizer": {"path": str(Path(tokenizer_dir).resolve()), "fingerprint": tokenizer_fingerprint(tokenizer)},
        "segmenter": segmenter.spec(),
        "data": {d: {"sha256": m.get("sha256"), "source": m.get("source")} for d, m in manifests.items()},
    }
    tags = {"segmenter": segmenter.spec(), "domain": ",".join(cfg.data.domains), "backbone": "none"}

    with start_run(cfg, "vae", tags=tags, manifests=manifests, resume=resume) as run:
        run.log_params({"vae.num_parameters": sum(p.numel() for p in model.parameters())})
        result = train(
            model,
            vae_loss,
            train_source,
            cfg.train,
            out_dir,
            eval_data=eval_sources,
            reduce_metrics=reduce_vae_metrics,
            device=device,
            tracker=run,
            count_tokens=lambda b: int(b["lengths"].sum()),
            progress=progress,
            resume=resume,
            meta={"tokenizer": lineage["tokenizer"]["fingerprint"], "segmenter": segmenter.spec(),
                  "kind": KIND},
        )
        model = model.to(device)
        # The loop always evaluates after the last step (on up to train.eval_batches batches
        # per domain, spread evenly over segment lengths): those are the final metrics.
        final = result.final_eval
        metrics: dict[str, dict[str, float]] = {}
        samples: dict[str, list[tuple[str, str]]] = {}
        model.eval()
        for d in eval_sources:
            metrics[d] = {k.split("/", 2)[2]: v for k, v in final.items() if k.startswith(f"val/{d}/")}
            pairs, exact = sample_reconstructions(
                model, tables["validation", d], tokenizer, exact_match_segments, device
            )
            metrics[d]["exact_match"] = exact
            metrics[d]["val_segments"] = float(len(tables["validation", d]))
            samples[d] = pairs[:: max(1, len(pairs) // max(n_samples, 1))][:n_samples]
        start_loss = {
            d: next((h[f"val/{d}/loss"] for h in result.eval_history if f"val/{d}/loss" in h), math.nan)
            for d in eval_sources
        }
        if is_rank_zero():
            out_dir.mkdir(parents=True, exist_ok=True)
            model.to("cpu").save_pretrained(out_dir, tokenizer=tokenizer, lineage=lineage,
                                            extra_manifest={"metrics": metrics, "steps": result.step})
            save_config(cfg, out_dir / "config.yaml")
            atomic_write_json(out_dir / "metrics.json", {"final": metrics, "start_loss": start_loss,
                                                         "steps": result.step})
            run.log_metrics({f"final/{d}/{k}": v for d, m in metrics.items() for k, v in m.items()},
                            step=result.step)
            run.set_tags({"artifact": str(out_dir.resolve()),
                          "checkpoint": str(result.checkpoint) if result.checkpoint else None})
            run.log_dict({d: [{"segment": a, "reconstruction": b} for a, b in s] for d, s in samples.items()},
                         "samples.json")
            run.log_artifact(out_dir / "manifest.json")
    return VAEStageResult(
        out_dir=out_dir,
        metrics=metrics,
        start_loss=start_loss,
        samples=samples,
        steps=result.step,
        checkpoint=result.checkpoint,
        wall_time_s=time.perf_counter() - started,
        run_id=run.run_id,
        lineage=lineage,
    )
