"""The ``train-splitter`` stage: teacher labels -> boundary predictor -> calibrated segmenter.

1. Documents of each domain are cut into chunks (``splitter.chunk_tokens``) spread over the
   corpus, within a per-teacher token budget; the teacher segments them (cached on disk,
   fitted per domain to the target mean length on train, applied as is to validation).
2. The :class:`~segsllm.models.boundary.BoundaryPredictor` learns the teacher's boundaries
   with the shared loop (binary cross-entropy per token; domains balanced per epoch).
3. Length control is calibrated on the validation documents: the threshold (streaming /
   ``decode=threshold``) and the Viterbi per-segment penalty are bisected so that the
   geometric mean over domains of the mean segment length is the target.
4. The folder (``learned:DIR``) is reloaded through the segmenter registry and evaluated:
   per domain mean / p95 segment length on validation (and test), boundary precision /
   recall / F1 against the teacher (torchmetrics), and the segmenter's tokens/s.

:func:`train_splitter` returns a :class:`SplitterStageResult`; the CLI only prints it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segsllm.errors import ConfigError, DataError

KIND = "boundary_predictor"
SUMMED = ("tp", "fp", "fn", "n_tokens", "n_pos")


@dataclass
class SplitterStageResult:
    """What the stage reports: where the segmenter is and how it cuts each domain."""

    out_dir: Path
    teacher: str
    target_len: float
    max_len: int
    metrics: dict[str, dict[str, float]]  # domain -> metric -> value (final, validation)
    calibration: dict[str, float]  # threshold, viterbi_penalty, target_len ...
    steps: int
    checkpoint: Path | None
    wall_time_s: float
    run_id: str | None = None
    lineage: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- batches


def collate_chunks(items: Sequence[tuple[np.ndarray, np.ndarray]], pad_id: int) -> dict[str, Any]:
    """(ids, labels) chunks -> right-padded tensors. ``loss_mask`` leaves out padding and
    each chunk's last token (its boundary is forced, not predicted)."""
    import torch

    lengths = np.array([len(ids) for ids, _ in items], dtype=np.int64)
    width = int(lengths.max())
    ids = np.full((len(items), width), pad_id, dtype=np.int64)  # (B, T)
    labels = np.zeros((len(items), width), dtype=np.float32)  # (B, T)
    for r, (chunk, lab) in enumerate(items):
        ids[r, : len(chunk)] = chunk
        labels[r, : len(chunk)] = lab
    mask = np.arange(width)[None, :] < lengths[:, None]  # (B, T)
    loss_mask = np.arange(width)[None, :] < (lengths - 1)[:, None]
    return {"ids": torch.from_numpy(ids), "mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(labels), "loss_mask": torch.from_numpy(loss_mask)}


class ChunkBatches:
    """Endless, resumable shuffled batches of labelled chunks (the loop's ``BatchSource``).

    With ``balanced``, each epoch draws as many chunks from every domain (the largest
    domain's count; smaller domains repeat), so one domain's volume does not decide what
    the predictor learns. State: (epoch, batches consumed).
    """

    def __init__(self, items: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]], batch_size: int,
                 pad_id: int, seed: int = 0, balanced: bool = True) -> None:
        from segsllm.runtime import dist_info

        self.items = {d: list(v) for d, v in items.items() if len(v)}
        if not self.items:
            raise DataError("no labelled chunks to train the splitter on")
        self.batch_size, self.pad_id, self.seed, self.balanced = int(batch_size), int(pad_id), int(seed), balanced
        self.rank, _, self.world = dist_info()
        self.epoch, self.position = 0, 0
        if len(self) == 0:
            raise DataError(f"{sum(map(len, self.items.values()))} chunks give no batch of {self.batch_size}; "
                            "use a smaller train.batch_size")

    def _order(self, epoch: int) -> list[tuple[str, int]]:
        rng = np.random.default_rng([self.seed, epoch])
        per = max(len(v) for v in self.items.values())
        pairs: list[tuple[str, int]] = []
        for d, v in self.items.items():
            n = per if self.balanced else len(v)
            idx = np.resize(rng.permutation(len(v)), n)
            pairs += [(d, int(i)) for i in idx]
        return [pairs[i] for i in rng.permutation(len(pairs))]

    def __len__(self) -> int:
        per = max(len(v) for v in self.items.values())
        n = per * len(self.items) if self.balanced else sum(len(v) for v in self.items.values())
        return (n // self.batch_size) // self.world

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            order = self._order(self.epoch)
            batches = [order[i : i + self.batch_size] for i in range(0, len(order) - self.batch_size + 1,
                                                                     self.batch_size)]
            mine = batches[self.rank :: self.world][: len(self)]
            for b in range(self.position, len(mine)):
                self.position = b + 1
                yield collate_chunks([self.items[d][i] for d, i in mine[b]], self.pad_id)
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "batch_size": self.batch_size}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.seed, self.epoch, self.position = int(state.get("seed", self.seed)), int(state["epoch"]), int(state["position"])


def eval_batches(items: Sequence[tuple[np.ndarray, np.ndarray]], batch_size: int, pad_id: int) -> list[dict[str, Any]]:
    """A fixed list of validation batches (cheap to re-iterate)."""
    return [collate_chunks(items[i : i + batch_size], pad_id) for i in range(0, len(items), batch_size)]


# --------------------------------------------------------------------------- objective


def splitter_loss(model: Any, batch: Mapping[str, Any]) -> tuple[Any, dict[str, float]]:
    """Per-token binary cross-entropy against the teacher's boundaries + summable counts
    (true/false positives and false negatives of ``logit > 0``, via torchmetrics)."""
    import torch.nn.functional as F
    from torchmetrics.functional.classification import binary_stat_scores

    logits = model(batch["ids"], batch["mask"])  # (B, T)
    keep = batch["loss_mask"]  # (B, T) bool
    z, y = logits[keep], batch["labels"][keep]  # (N,)
    loss = F.binary_cross_entropy_with_logits(z.float(), y)
    with_stats = binary_stat_scores((z.detach() > 0).long(), y.long())  # [tp, fp, tn, fn, support]
    tp, fp, _, fn, _ = (float(v) for v in with_stats)
    return loss, {"tp": tp, "fp": fp, "fn": fn, "n_tokens": float(y.numel()), "n_pos": float(y.sum())}


def reduce_splitter_metrics(sums: Mapping[str, float]) -> dict[str, float]:
    """Summed counts -> loss, boundary precision / recall / F1 (at logit 0), boundary rate."""
    tp, fp, fn = sums.get("tp", 0.0), sums.get("fp", 0.0), sums.get("fn", 0.0)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "loss": sums["loss"] / max(sums.get("batches", 1.0), 1.0),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "boundary_rate": sums.get("n_pos", 0.0) / max(sums.get("n_tokens", 0.0), 1.0),
    }


# --------------------------------------------------------------------------- evaluation


def boundary_prf(pred_ends: Sequence[np.ndarray], ref_ends: Sequence[np.ndarray], sizes: Sequence[int]) -> dict[str, float]:
    """Boundary precision / recall / F1 of ``pred_ends`` against ``ref_ends`` (torchmetrics);
    each document's final boundary is left out (it is never a decision)."""
    import torch
    from torchmetrics.classification import BinaryF1Score, BinaryPrecision, BinaryRecall

    from segsllm.train.teachers import ends_to_labels

    pred = np.concatenate([ends_to_labels(e, n)[:-1] for e, n in zip(pred_ends, sizes, strict=True)] or [[]])
    ref = np.concatenate([ends_to_labels(e, n)[:-1] for e, n in zip(ref_ends, sizes, strict=True)] or [[]])
    p, r = torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(ref.astype(np.int64))
    if p.numel() == 0:
        return {"precision": float("nan"), "recall": float("nan"), "f1": float("nan")}
    return {
        "precision": float(BinaryPrecision()(p, r)),
        "recall": float(BinaryRecall()(p, r)),
        "f1": float(BinaryF1Score()(p, r)),
    }


def cap_tokens(docs: Sequence[np.ndarray], max_tokens: int | None) -> list[np.ndarray]:
    """Whole documents in order until ``max_tokens`` (the last one truncated)."""
    out, total = [], 0
    for d in docs:
        if max_tokens is not None and total >= max_tokens:
            break
        take = d if max_tokens is None else d[: max_tokens - total]
        if len(take):
            out.append(take)
            total += len(take)
    return out


def calibrate(seg: Any, logits: Mapping[str, Sequence[np.ndarray]], target_len: float) -> dict[str, Any]:
    """Bisect the threshold and the Viterbi penalty of ``seg`` (a LearnedSegmenter) so that
    the geometric mean over domains of the mean segment length is ``target_len``."""
    from segsllm.segment.learned import (
        balanced_mean,
        bisect_parameter,
        mean_length,
        threshold_decode,
        viterbi_decode,
    )

    cfg = seg.config
    flat = np.concatenate([z for zs in logits.values() for z in zs])

    def threshold_mean(tau: float) -> float:
        return balanced_mean({d: mean_length(threshold_decode(zs, tau, seg.max_len)) for d, zs in logits.items()})

    def viterbi_mean(pen: float) -> float:
        return balanced_mean({d: mean_length(viterbi_decode(zs, seg.max_len, seg._log_prior, cfg.prior_weight, pen))
                              for d, zs in logits.items()})

    tau, tau_mean = bisect_parameter(threshold_mean, target_len, float(flat.min()) - 1, float(flat.max()) + 1)
    pen, pen_mean = bisect_parameter(viterbi_mean, target_len, -10.0, 10.0, iters=25)
    return {"threshold": tau, "threshold_mean": tau_mean, "viterbi_penalty": pen, "viterbi_mean": pen_mean,
            "target_len": target_len}


def measure_speed(seg: Any, docs: Sequence[np.ndarray], min_seconds: float = 1.0) -> float:
    """Tokens/s of ``seg.segment_batch`` over ``docs`` (best of a few repeats, after warm-up)."""
    n = sum(len(d) for d in docs)
    if n == 0:
        return float("nan")
    seg.segment_batch(docs[:2])
    best, spent = 0.0, 0.0
    while spent < min_seconds or best == 0.0:
        t0 = time.perf_counter()
        seg.segment_batch(docs)
        dt = time.perf_counter() - t0
        best, spent = max(best, n / dt), spent + dt
    return best


# --------------------------------------------------------------------------- the stage


def resolve_target(cfg: Any) -> tuple[float | None, int]:
    """(target_len or None for the rule's own rate, max_len) from the ``splitter`` section."""
    from segsllm.train.teachers import DEFAULT_TARGET_LEN

    sp = cfg.splitter
    max_len = int(sp.max_len if sp.max_len is not None else cfg.segmenter.max_len)
    target = sp.target_len
    if target is None and sp.teacher != "punctuation":
        target = min(DEFAULT_TARGET_LEN, float(max_len))
    if target is not None and not 1 <= target <= max_len:
        raise ConfigError(f"--target-len {target} must be between 1 and --max-len {max_len}")
    return (None if target is None else float(target)), max_len


def train_splitter(
    cfg: Any,
    tokenizer_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> SplitterStageResult:
    """Train a learned segmenter on ``cfg.data.domains`` from ``cfg.splitter.teacher``; save to ``cfg.run.out``."""
    from segsllm.bench.metrics import length_stats
    from segsllm.config import save_config
    from segsllm.data.store import load_manifest
    from segsllm.data.tokenizer import load_tokenizer, tokenizer_fingerprint
    from segsllm.io import atomic_write_json
    from segsllm.models.boundary import BoundaryPredictor
    from segsllm.runtime import is_rank_zero, pick_device, seed_everything
    from segsllm.segment import build_segmenter
    from segsllm.segment.learned import mean_length
    from segsllm.tracking import start_run
    from segsllm.train.loop import maybe_init_distributed, train
    from segsllm.train.teachers import DEFAULT_BUDGETS, build_teacher, make_chunks, teacher_labels

    say = log or (lambda msg: None)
    sp = cfg.splitter.validate()
    if not cfg.run.out:
        raise ConfigError("train-splitter needs an output folder: --out DIR (or run.out)")
    if not cfg.data.domains:
        raise ConfigError("data.domains is empty: name at least one corpus")
    target_len, max_len = resolve_target(cfg)
    out_dir = Path(cfg.run.out)
    started = time.perf_counter()
    data_dir = cfg.data.dir
    manifests = {d: load_manifest(data_dir, d) for d in cfg.data.domains}
    maybe_init_distributed()
    seed_everything(cfg.run.seed)
    device = pick_device(cfg.run.device)

    tokenizer = load_tokenizer(tokenizer_dir)
    fingerprint = tokenizer_fingerprint(tokenizer)
    max_span = sp.vae_max_span or int(min(max_len, math.ceil(2 * (target_len or max_len))))
    teacher = build_teacher(sp.teacher, tokenizer, base_lm=sp.base_lm, vae=sp.vae, entropy_mode=sp.entropy_mode,
                            entropy_context=sp.entropy_context, max_span=max_span, device=device)

    # ---- 1. chunks and teacher labels
    budget_train, budget_eval = DEFAULT_BUDGETS[sp.teacher]
    budget = {"train": sp.teacher_tokens or budget_train, "validation": sp.teacher_eval_tokens or budget_eval}
    caps = {"max_docs": cfg.data.max_docs, "max_doc_bytes": cfg.data.max_doc_bytes}
    docs = {split: {d: _documents(data_dir, d, split, tokenizer, caps) for d in cfg.data.domains}
            for split in ("train", "validation")}
    chunks = {split: {d: make_chunks(docs[split][d], sp.chunk_tokens, budget[split]) for d in cfg.data.domains}
              for split in ("train", "validation")}
    key_parts = {d: {"corpus_sha256": m.get("sha256"), "corpus_created": m.get("created"), "tokenizer": fingerprint,
                     "chunk_tokens": sp.chunk_tokens, "budget": budget, **caps} for d, m in manifests.items()}
    cache_dir = Path(sp.cache_dir) if sp.cache_dir else Path(data_dir) / ".cache" / "teachers"
    labels = teacher_labels(teacher, chunks, target_len=target_len, max_len=max_len, key_parts=key_parts,
                            cache_dir=cache_dir, progress=say)
    teacher_means = {d: labels["validation"][d].mean_len for d in cfg.data.domains}
    teacher_train_means = {d: labels["train"][d].mean_len for d in cfg.data.domains}
    if target_len is None:  # the rule's own rate: match the teacher's lengths on validation
        from segsllm.segment.learned import balanced_mean

        calib_target = balanced_mean(teacher_means)
        decode = "threshold"
    else:
        calib_target, decode = target_len, sp.predictor.decode

    # ---- 2. the predictor, through the shared loop
    pad_id = int(tokenizer.pad_token_id)
    pcfg = sp.predictor_config(vocab_size=len(tokenizer), pad_id=pad_id, max_len=max_len,
                               target_len=min(calib_target, max_len), decode=decode)
    model = BoundaryPredictor(pcfg)
    items = {split: {d: list(zip(ls.chunks, ls.labels(), strict=True)) for d, ls in labels[split].items()}
             for split in labels}
    train_source = ChunkBatches(items["train"], cfg.train.batch_size, pad_id, seed=cfg.run.seed,
                                balanced=cfg.data.balance_domains)
    eval_sources = {d: eval_batches(v, cfg.train.batch_size, pad_id) for d, v in items["validation"].items() if v}
    teacher_lineage: dict[str, Any] = {"name": sp.teacher, **teacher.describe(),
                                       "params": {d: labels["train"][d].param for d in cfg.data.domains}}
    if sp.teacher == "entropy":
        teacher_lineage.update(base_lm=str(Path(sp.base_lm).resolve()), mode=sp.entropy_mode)
    if sp.teacher == "vae":
        teacher_lineage.update(vae=str(Path(sp.vae).resolve()), max_span=max_span)
    lineage = {
        "tokenizer": {"path": str(Path(tokenizer_dir).resolve()), "fingerprint": fingerprint},
        "teacher": teacher_lineage,
        "data": {d: {"sha256": m.get("sha256"), "source": m.get("source")} for d, m in manifests.items()},
    }
    tags = {"segmenter": f"learned:{out_dir}", "teacher": sp.teacher, "domain": ",".join(cfg.data.domains),
            "backbone": sp.base_lm or "none"}

    with start_run(cfg, "splitter", tags=tags, manifests=manifests, resume=resume) as run:
        run.log_params({"splitter.num_parameters": model.num_parameters(), "splitter.target_len_resolved": calib_target,
                        "splitter.max_len_resolved": max_len, "splitter.left_context": pcfg.left_context,
                        **{f"teacher/{d}/param": labels["train"][d].param for d in cfg.data.domains},
                        **{f"teacher/{d}/train_tokens": labels["train"][d].n_tokens for d in cfg.data.domains}})
        run.log_metrics({f"teacher/{d}/mean_len": v for d, v in teacher_means.items()}, step=0)
        result = train(
            model, splitter_loss, train_source, cfg.train, out_dir,
            eval_data=eval_sources, reduce_metrics=reduce_splitter_metrics, device=device, tracker=run,
            count_tokens=lambda b: int(b["mask"].sum()), progress=progress, resume=resume,
            meta={"kind": KIND, "tokenizer": fingerprint, "teacher": sp.teacher, "target_len": calib_target},
        )
        model = model.to("cpu").eval()

        # ---- 3. length control, calibrated on the validation documents
        say("calibrating length control on validation documents")
        calib_docs = {d: cap_tokens(docs["validation"][d], sp.calibration_tokens) for d in cfg.data.domains}
        calib_docs = {d: v for d, v in calib_docs.items() if v}
        if not calib_docs:
            raise DataError("every validation split is empty: nothing to calibrate the length on")
        probe = _Probe(model, max_len, pcfg)
        calib_logits = {d: model.document_logits(v) for d, v in calib_docs.items()}
        calibration = calibrate(probe, calib_logits, calib_target)
        model.config = dataclasses.replace(pcfg, threshold=float(calibration["threshold"]),
                                           viterbi_penalty=float(calibration["viterbi_penalty"])).validate()

        metrics: dict[str, dict[str, float]] = {}
        if is_rank_zero():
            extra = {"teacher": sp.teacher, "calibration": calibration, "steps": result.step,
                     "teacher_mean_len": {"train": teacher_train_means, "validation": teacher_means}}
            model.save_pretrained(out_dir, tokenizer=tokenizer, lineage=lineage, extra_manifest=extra)
            save_config(cfg, out_dir / "config.yaml")

            # ---- 4. evaluate the folder as every command will load it
            say("evaluating the saved segmenter")
            seg = build_segmenter(f"learned:{out_dir}", tokenizer=tokenizer, max_len=max_len)
            stream = build_segmenter(f"learned:{out_dir},mode=stream", tokenizer=tokenizer, max_len=max_len)
            final = {k.split("/", 1)[1]: v for k, v in (result.final_eval or {}).items() if k.startswith("val/")}
            for d in cfg.data.domains:
                m: dict[str, float] = {}
                val_docs = docs["validation"][d]
                if val_docs:
                    ends = seg.segment_batch(val_docs)
                    st = length_stats(np.concatenate([np.diff(e, prepend=0) for e in ends]))
                    m.update(mean_len=st["mean"], p95_len=st["p95"], max_seg_len=float(st["max"]),
                             val_tokens=float(sum(map(len, val_docs))))
                    m["mean_len_stream"] = mean_length(stream.segment_batch(val_docs))
                    m["tokens_per_s"] = measure_speed(seg, cap_tokens(val_docs, 100_000), min_seconds=0.5)
                test_docs = _documents(data_dir, d, "test", tokenizer, caps)
                if test_docs:
                    m["mean_len_test"] = mean_length(seg.segment_batch(test_docs))
                ls = labels["validation"][d]
                if ls.chunks:
                    sizes = [len(c) for c in ls.chunks]
                    m.update({f"teacher_{k}": v for k, v in boundary_prf(seg.segment_batch(ls.chunks), ls.ends,
                                                                          sizes).items()})
                    m.update({f"stream_teacher_{k}": v for k, v in
                              boundary_prf(stream.segment_batch(ls.chunks), ls.ends, sizes).items()})
                if sp.teacher != "punctuation" and val_docs:
                    from segsllm.segment.punctuation import PunctuationSegmenter

                    rule = PunctuationSegmenter(max_len=max_len).bind(tokenizer)
                    m.update({f"punct_{k}": v for k, v in boundary_prf(
                        seg.segment_batch(ls.chunks), rule.segment_batch(ls.chunks), [len(c) for c in ls.chunks]
                    ).items()})
                m["teacher_mean_len"] = teacher_means[d]
                m["target_len"] = calib_target if target_len is not None else teacher_means[d]
                for k in ("loss", "f1"):
                    if f"{d}/{k}" in final:
                        m[f"val_{k}"] = final[f"{d}/{k}"]
                metrics[d] = m
            atomic_write_json(out_dir / "metrics.json", {"final": metrics, "calibration": calibration,
                                                         "steps": result.step, "teacher": sp.teacher})
            run.log_metrics({f"final/{d}/{k}": v for d, mm in metrics.items() for k, v in mm.items()},
                            step=result.step)
            run.log_metrics({f"calibration/{k}": v for k, v in calibration.items()}, step=result.step)
            run.set_tags({"artifact": str(out_dir.resolve()),
                          "checkpoint": str(result.checkpoint) if result.checkpoint else None})
            run.log_artifact(out_dir / "manifest.json")
            run.log_artifact(out_dir / "metrics.json")
    return SplitterStageResult(
        out_dir=out_dir, teacher=sp.teacher, target_len=calib_target, max_len=max_len, metrics=metrics,
        calibration=calibration, steps=result.step, checkpoint=result.checkpoint,
        wall_time_s=time.perf_counter() - started, run_id=run.run_id, lineage=lineage,
    )


class _Probe:
    """The bits of a LearnedSegmenter that calibration needs, before the folder exists."""

    def __init__(self, model: Any, max_len: int, config: Any) -> None:
        from segsllm.segment.learned import length_prior

        self.model, self.max_len, self.config = model, max_len, config
        self._log_prior = length_prior(config.target_len, max_len, config.prior_shape)


def _documents(data_dir: Any, domain: str, split: str, tokenizer: Any, caps: Mapping[str, Any]) -> list[np.ndarray]:
    from segsllm.train.teachers import load_documents

    try:
        return [d for d in load_documents(data_dir, domain, split, tokenizer, **caps) if len(d)]
    except DataError as exc:
        if "no tokens" in str(exc):  # an empty split
            return []
        raise
