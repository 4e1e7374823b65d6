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
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segsllm.data.chunks import ChunkBatches, eval_batches
from segsllm.errors import ConfigError, DataError
from segsllm.runtime import is_rank_zero
from segsllm.train.stage import (
    check_inputs,
    data_lineage,
    finish_stage,
    flat_metrics,
    start_compute,
)

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


def epoch_capped(train_cfg: Any, max_epochs: float | None, label_tokens: int) -> Any:
    """``train_cfg`` with its token budget capped at ``max_epochs`` passes over the
    ``label_tokens`` labelled train tokens (the smaller of that and its own budget)."""
    if max_epochs is None:
        return train_cfg
    cap = max(1, int(max_epochs * label_tokens))
    return dataclasses.replace(train_cfg, tokens=min(train_cfg.tokens or cap, cap))


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
    """Bisect the threshold, the Viterbi penalty and the hazard threshold of ``seg`` (a
    LearnedSegmenter) so that the geometric mean over domains of the mean segment length is
    ``target_len``."""
    from segsllm.segment.learned import (
        balanced_mean,
        bisect_parameter,
        hazard_decode,
        mean_length,
        threshold_decode,
        viterbi_decode,
    )

    cfg = seg.config
    flat = np.concatenate([z for zs in logits.values() for z in zs])
    flat = flat[np.isfinite(flat)]  # -inf: a cut the rule of cut_at forbids
    if not flat.size:
        flat = np.zeros(1, dtype=np.float32)

    def threshold_mean(tau: float) -> float:
        return balanced_mean({d: mean_length(threshold_decode(zs, tau, seg.max_len)) for d, zs in logits.items()})

    def viterbi_mean(pen: float) -> float:
        return balanced_mean({d: mean_length(viterbi_decode(zs, seg.max_len, seg._log_prior, cfg.prior_weight, pen))
                              for d, zs in logits.items()})

    def hazard_mean(tau: float) -> float:
        return balanced_mean({d: mean_length(hazard_decode(zs, tau, seg.max_len, seg._log_odds, cfg.prior_weight))
                              for d, zs in logits.items()})

    tau, tau_mean = bisect_parameter(threshold_mean, target_len, float(flat.min()) - 1, float(flat.max()) + 1)
    pen, pen_mean = bisect_parameter(viterbi_mean, target_len, -10.0, 10.0, iters=25)
    out = {"threshold": tau, "threshold_mean": tau_mean, "viterbi_penalty": pen, "viterbi_mean": pen_mean,
           "target_len": target_len}
    if cfg.decode == "hazard":  # a loop over segments: only when it is the decode in use
        hz, hz_mean = bisect_parameter(hazard_mean, target_len, float(flat.min()) - 1, float(flat.max()) + 1)
        out.update(hazard_threshold=hz, hazard_mean=hz_mean)
    return out


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


def _teacher_labels(cfg: Any, tokenizer: Any, manifests: Mapping[str, Any], target_len: float | None, max_len: int,
                    device: Any, say: Callable[[str], None], *, resume: bool = False,
                    progress: bool = True) -> tuple[Any, dict, dict, int]:
    """(teacher, split -> domain -> documents, split -> domain -> LabelSet, the VAE teacher's
    max span): documents cut into chunks within the teacher's token budgets, then labelled
    (cached by corpus, tokenizer, chunking and budget)."""
    from segsllm.data.tokenizer import tokenizer_fingerprint
    from segsllm.train.teachers import (
        DEFAULT_BUDGETS,
        build_teacher,
        default_max_span,
        make_chunks,
        teacher_labels,
    )

    sp, domains = cfg.splitter, cfg.data.domains
    max_span = sp.vae_max_span or default_max_span(sp.teacher, max_len, target_len)
    caps = {"max_docs": cfg.data.max_docs, "max_doc_bytes": cfg.data.max_doc_bytes}
    docs = {split: {d: _documents(cfg.data.dir, d, split, tokenizer, caps) for d in domains}
            for split in ("train", "validation")}
    if sp.teacher == "joint":
        from segsllm.train.joint import train_joint_teacher

        pcfg = sp.predictor_config(vocab_size=len(tokenizer), pad_id=int(tokenizer.pad_token_id), max_len=max_len,
                                   target_len=min(target_len or max_len, max_len), decode="threshold")
        teacher = train_joint_teacher(cfg, tokenizer, docs, predictor_config=pcfg, device=device,
                                      resume=resume, progress=progress, say=say)
    elif sp.teacher == "sllm":
        from segsllm.train.sllm_teacher import load_sllm_teacher

        if not sp.sllm:
            raise ConfigError("one sllm-teacher step needs a trained SLLM: splitter.sllm (--sllm DIR); "
                              "hard EM trains its own (segsllm.train.sllm_em)")
        teacher = load_sllm_teacher(sp.sllm, tokenizer, max_span=max_span, target_len=target_len,
                                    prior_weight=sp.sllm_prior_weight, prior_shape=sp.predictor.prior_shape,
                                    device=device, cut_at=sp.sllm_cut_at)
    else:
        teacher = build_teacher(sp.teacher, tokenizer, base_lm=sp.base_lm, vae=sp.vae, entropy_mode=sp.entropy_mode,
                                entropy_context=sp.entropy_context, max_span=max_span, device=device)
    budget_train, budget_eval = DEFAULT_BUDGETS[sp.teacher]
    budget = {"train": sp.teacher_tokens or budget_train, "validation": sp.teacher_eval_tokens or budget_eval}
    chunks = {split: {d: make_chunks(docs[split][d], sp.chunk_tokens, budget[split]) for d in domains}
              for split in ("train", "validation")}
    key_parts = {d: {"corpus_sha256": m.get("sha256"), "corpus_created": m.get("created"),
                     "tokenizer": tokenizer_fingerprint(tokenizer), "chunk_tokens": sp.chunk_tokens,
                     "budget": budget, **caps} for d, m in manifests.items()}
    cache_dir = Path(sp.cache_dir) if sp.cache_dir else Path(cfg.data.dir) / ".cache" / "teachers"
    labels = teacher_labels(teacher, chunks, target_len=target_len, max_len=max_len, key_parts=key_parts,
                            cache_dir=cache_dir, progress=say)
    return teacher, docs, labels, max_span


def _chunk_sources(cfg: Any, labels: Mapping[str, Any], pad_id: int) -> tuple[ChunkBatches, dict[str, Any]]:
    """(train batches, domain -> validation batches) of the labelled chunks."""
    items = {split: {d: list(zip(ls.chunks, ls.labels(), strict=True)) for d, ls in labels[split].items()}
             for split in labels}
    train_source = ChunkBatches(items["train"], cfg.train.batch_size, pad_id, seed=cfg.run.seed,
                                balanced=cfg.data.balance_domains)
    return train_source, {d: eval_batches(v, cfg.train.batch_size, pad_id) for d, v in items["validation"].items() if v}


def _splitter_lineage(cfg: Any, teacher: Any, labels: Mapping[str, Any], max_span: int, fingerprint: str,
                      manifests: Mapping[str, Any]) -> dict[str, Any]:
    """What the learned segmenter was taught from: tokenizer, teacher (and its models), data."""
    sp = cfg.splitter
    teacher_lineage: dict[str, Any] = {"name": sp.teacher, **teacher.describe(),
                                       "params": {d: labels["train"][d].param for d in cfg.data.domains}}
    if sp.teacher == "entropy":
        teacher_lineage.update(base_lm=str(Path(sp.base_lm).resolve()), mode=sp.entropy_mode)
    if sp.teacher in ("vae", "vae-rule"):
        teacher_lineage.update(vae=str(Path(sp.vae).resolve()), max_span=max_span)
    if sp.teacher == "joint":
        teacher_lineage.update(vae=str(Path(sp.vae).resolve()),
                               base_lm=str(Path(sp.base_lm).resolve()) if sp.base_lm else cfg.backbone.spec,
                               steps=sp.joint_steps, samples=sp.joint_samples, chunk_tokens=sp.joint_chunk_tokens,
                               validation=teacher.metrics)
    if sp.teacher == "sllm":
        teacher_lineage.update(sllm=str(Path(sp.sllm).resolve()), max_span=max_span,
                               segmentation=teacher.segmenter.spec(), prior_weight=sp.sllm_prior_weight)
    return {"tokenizer": {"path": str(Path(cfg.tokenizer.path).resolve()), "fingerprint": fingerprint},
            "teacher": teacher_lineage, "data": data_lineage(manifests)}


def _calibrate_model(model: Any, pcfg: Any, val_docs: Mapping[str, Sequence[np.ndarray]], calibration_tokens: int,
                     max_len: int, target: float, tokenizer: Any) -> dict[str, Any]:
    """Calibrate the length control on the validation documents and set it in ``model.config``
    (on the logits the segmenter decodes: ``-inf`` where ``pcfg.cut_at`` does not cut)."""
    from segsllm.segment.learned import mask_logits, rule_cuts, rule_segmenter

    calib_docs = {d: cap_tokens(v, calibration_tokens) for d, v in val_docs.items()}
    calib_docs = {d: v for d, v in calib_docs.items() if v}
    if not calib_docs:
        raise DataError("every validation split is empty: nothing to calibrate the length on")
    calib_logits = {d: model.document_logits(v) for d, v in calib_docs.items()}
    if pcfg.cut_at:
        rule = rule_segmenter(pcfg.cut_at, tokenizer, max_len)
        calib_logits = {d: mask_logits(z, rule_cuts(rule, calib_docs[d])) for d, z in calib_logits.items()}
    calibration = calibrate(_Probe(model, max_len, pcfg), calib_logits, target)
    model.config = dataclasses.replace(pcfg, threshold=float(calibration["threshold"]),
                                       viterbi_penalty=float(calibration["viterbi_penalty"]),
                                       hazard_threshold=float(calibration.get("hazard_threshold", 0.0))).validate()
    return calibration


def _domain_metrics(seg: Any, stream: Any, rule: Any, val_docs: list[np.ndarray], test_docs: list[np.ndarray],
                    ls: Any) -> dict[str, float]:
    """One domain's lengths (batch and, when ``stream``, streaming; validation and test), speed, and agreement
    with the teacher's (and the punctuation rule's, when ``rule``) boundaries."""
    from segsllm.metrics import length_stats
    from segsllm.segment.learned import mean_length

    m: dict[str, float] = {}
    if val_docs:
        ends = seg.segment_batch(val_docs)
        st = length_stats(np.concatenate([np.diff(e, prepend=0) for e in ends]))
        m.update(mean_len=st["mean"], p95_len=st["p95"], max_seg_len=float(st["max"]),
                 val_tokens=float(sum(map(len, val_docs))))
        if stream is not None:
            m["mean_len_stream"] = mean_length(stream.segment_batch(val_docs))
        m["tokens_per_s"] = measure_speed(seg, cap_tokens(val_docs, 100_000), min_seconds=0.5)
    if test_docs:
        m["mean_len_test"] = mean_length(seg.segment_batch(test_docs))
    chunk_ends = seg.segment_batch(ls.chunks) if ls.chunks else []
    sizes = [len(c) for c in ls.chunks]
    if ls.chunks:
        m.update({f"teacher_{k}": v for k, v in boundary_prf(chunk_ends, ls.ends, sizes).items()})
        if stream is not None:
            m.update({f"stream_teacher_{k}": v for k, v in
                      boundary_prf(stream.segment_batch(ls.chunks), ls.ends, sizes).items()})
    if rule is not None and val_docs:
        m.update({f"punct_{k}": v for k, v in boundary_prf(chunk_ends, rule.segment_batch(ls.chunks), sizes).items()})
    return m


def _evaluate_folder(cfg: Any, out_dir: Path, tokenizer: Any, max_len: int, docs: Mapping[str, Any],
                     labels: Mapping[str, Any], final_eval: Mapping[str, float], teacher_means: Mapping[str, float],
                     target: float | None) -> dict[str, dict[str, float]]:
    """Metrics per domain of the saved folder, loaded as every command will load it."""
    from segsllm.segment import build_segmenter
    from segsllm.segment.learned import CAUSAL_CUT_AT
    from segsllm.segment.punctuation import PunctuationSegmenter

    seg = build_segmenter(f"learned:{out_dir}", tokenizer=tokenizer, max_len=max_len)
    cut_at = seg.config.cut_at
    streams = not cut_at or cut_at.split(":", 1)[0] in CAUSAL_CUT_AT  # a batch-only splitter has no stream metrics
    stream = build_segmenter(f"learned:{out_dir},mode=stream", tokenizer=tokenizer, max_len=max_len) if streams else None
    rule = PunctuationSegmenter(max_len=max_len).bind(tokenizer) if cfg.splitter.teacher != "punctuation" else None
    caps = {"max_docs": cfg.data.max_docs, "max_doc_bytes": cfg.data.max_doc_bytes}
    final = {k.split("/", 1)[1]: v for k, v in (final_eval or {}).items() if k.startswith("val/")}
    metrics: dict[str, dict[str, float]] = {}
    for d in cfg.data.domains:
        test_docs = _documents(cfg.data.dir, d, "test", tokenizer, caps)
        m = _domain_metrics(seg, stream, rule, docs["validation"][d], test_docs, labels["validation"][d])
        m["teacher_mean_len"] = teacher_means[d]
        m["target_len"] = target if target is not None else teacher_means[d]
        m.update({f"val_{k}": final[f"{d}/{k}"] for k in ("loss", "f1") if f"{d}/{k}" in final})
        metrics[d] = m
    return metrics


def train_splitter(cfg: Any, *, resume: bool = False, progress: bool = True,
                   log: Callable[[str], None] | None = None) -> SplitterStageResult:
    """Train a learned segmenter on ``cfg.data.domains`` from ``cfg.splitter.teacher``, with
    the tokenizer at ``cfg.tokenizer.path``; save it to ``cfg.run.out``."""
    from segsllm.data.tokenizer import load_tokenizer, tokenizer_fingerprint
    from segsllm.models.boundary import BoundaryPredictor
    from segsllm.segment.learned import balanced_mean
    from segsllm.tracking import start_run
    from segsllm.train.loop import train

    say, started = log or (lambda msg: None), time.perf_counter()
    sp = cfg.splitter.validate()
    manifests = check_inputs(cfg, "train-splitter")
    target_len, max_len = resolve_target(cfg)
    out_dir, device = Path(cfg.run.out), start_compute(cfg)
    tokenizer = load_tokenizer(cfg.tokenizer.path)
    fingerprint = tokenizer_fingerprint(tokenizer)
    teacher, docs, labels, max_span = _teacher_labels(cfg, tokenizer, manifests, target_len, max_len, device, say,
                                                      resume=resume, progress=progress)
    teacher_means = {d: labels["validation"][d].mean_len for d in cfg.data.domains}
    # Without a target the rule's own rate: match the teacher's lengths on validation.
    calib_target, decode = (balanced_mean(teacher_means), "threshold") if target_len is None else (target_len, sp.predictor.decode)
    pad_id = int(tokenizer.pad_token_id)
    pcfg = sp.predictor_config(vocab_size=len(tokenizer), pad_id=pad_id, max_len=max_len,
                               target_len=min(calib_target, max_len), decode=decode)
    model = BoundaryPredictor(pcfg)
    train_source, eval_sources = _chunk_sources(cfg, labels, pad_id)
    label_tokens = sum(labels["train"][d].n_tokens for d in cfg.data.domains)
    train_cfg = epoch_capped(cfg.train, sp.max_epochs, label_tokens)
    if train_cfg.tokens != cfg.train.tokens:
        say(f"student: at most {sp.max_epochs:g} passes over {label_tokens:,} labelled tokens "
            f"= {train_cfg.tokens:,} training tokens (splitter.max_epochs)")
    lineage = _splitter_lineage(cfg, teacher, labels, max_span, fingerprint, manifests)
    tags = {"segmenter": f"learned:{out_dir}", "teacher": sp.teacher, "domain": ",".join(cfg.data.domains),
            "backbone": sp.base_lm or "none"}
    with start_run(cfg, "splitter", tags=tags, manifests=manifests, resume=resume) as run:
        run.log_params({"splitter.num_parameters": model.num_parameters(), "splitter.target_len_resolved": calib_target,
                        "splitter.max_len_resolved": max_len, "splitter.left_context": pcfg.left_context,
                        "splitter.label_tokens": label_tokens, "splitter.train_tokens": train_cfg.tokens,
                        **{f"teacher/{d}/{k}": v for d, ls in labels["train"].items()
                           for k, v in (("param", ls.param), ("train_tokens", ls.n_tokens))}})
        run.log_metrics({f"teacher/{d}/mean_len": v for d, v in teacher_means.items()}, step=0)
        result = train(model, splitter_loss, train_source, train_cfg, out_dir, eval_data=eval_sources,
                       reduce_metrics=reduce_splitter_metrics, device=device, tracker=run,
                       count_tokens=lambda b: int(b["mask"].sum()), progress=progress, resume=resume,
                       meta={"kind": KIND, "tokenizer": fingerprint, "teacher": sp.teacher, "target_len": calib_target})
        model = model.to("cpu").eval()
        say("calibrating length control on validation documents")
        calibration = _calibrate_model(model, pcfg, docs["validation"], sp.calibration_tokens, max_len, calib_target,
                                       tokenizer)
        metrics: dict[str, dict[str, float]] = {}
        if is_rank_zero():
            # The folder is saved first: its metrics are measured as every command will load it.
            extra = {"teacher": sp.teacher, "calibration": calibration, "steps": result.step, "teacher_mean_len": {
                "train": {d: labels["train"][d].mean_len for d in cfg.data.domains}, "validation": teacher_means}}
            model.save_pretrained(out_dir, tokenizer=tokenizer, lineage=lineage, extra_manifest=extra)
            say("evaluating the saved segmenter")
            metrics = _evaluate_folder(cfg, out_dir, tokenizer, max_len, docs, labels, result.final_eval,
                                       teacher_means, calib_target if target_len is not None else None)
            metrics_doc = {"final": metrics, "calibration": calibration, "steps": result.step, "teacher": sp.teacher}
            finish_stage(run, out_dir, cfg, result, save_model=None, metrics_doc=metrics_doc,
                         logged={**flat_metrics("final", metrics),
                                 **{f"calibration/{k}": v for k, v in calibration.items()}},
                         dicts={"metrics.json": metrics_doc})
    return SplitterStageResult(out_dir=out_dir, teacher=sp.teacher, target_len=calib_target, max_len=max_len,
                               metrics=metrics, calibration=calibration, steps=result.step,
                               checkpoint=result.checkpoint, wall_time_s=time.perf_counter() - started,
                               run_id=run.run_id, lineage=lineage)


class _Probe:
    """The bits of a LearnedSegmenter that calibration needs, before the folder exists."""

    def __init__(self, model: Any, max_len: int, config: Any) -> None:
        from segsllm.segment.learned import length_prior, log_hazard_odds

        self.model, self.max_len, self.config = model, max_len, config
        self._log_prior = length_prior(config.target_len, max_len, config.prior_shape)
        self._log_odds = log_hazard_odds(self._log_prior)


def _documents(data_dir: Any, domain: str, split: str, tokenizer: Any, caps: Mapping[str, Any]) -> list[np.ndarray]:
    from segsllm.train.teachers import load_documents

    try:
        return [d for d in load_documents(data_dir, domain, split, tokenizer, **caps) if len(d)]
    except DataError as exc:
        if "no tokens" in str(exc):  # an empty split
            return []
        raise
