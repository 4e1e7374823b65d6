"""The ``joint`` teacher: a boundary module trained end to end with the SLLM (docs/DESIGN.md §6).

No teacher labels go in. The learned segmenter's own network (a
:class:`~segsllm.models.boundary.BoundaryPredictor`) proposes segmentations, an SLLM (the
random-span VAE + the pipeline's token LM, the start hard EM uses) is trained
on them, and the predictor is rewarded by what that SLLM pays. Per batch of B token chunks:

1. logits ℓ (B, T), shifted per chunk by τ (no gradient) so that mean σ(ℓ − τ) over the
   chunk is 1/``target_len``; K segmentations per chunk, b_t ~ Bernoulli(σ(ℓ_t − τ))
   independently, with a boundary forced after the chunk's last token and wherever a
   segment would exceed ``max_len`` (forced decisions are not the policy's);
2. the SLLM scores each sample teacher-forced: cost = decoder NLL of every segment (tokens +
   EOS) + its continue decisions, in nats for the chunk — the quantity the bench scores
   (the K samples of a chunk cover the same bytes);
3. REINFORCE with a leave-one-out baseline, ∇ Σ_k (c_k − mean_{j≠k} c_j) / T · log π(b_k):
   boundaries move toward the segmentations the SLLM pays less for;
4. the rate is fixed by the shift τ, so the policy decides only *where* the boundaries go,
   never how many: the number of segments is the FLOP budget (one backbone step each), a
   constraint rather than part of the score. Two earlier versions priced segments in the
   reward instead (λ nats per segment, by dual ascent): a one-sided price let the policy
   collapse to no sampled boundary (logits ≈ −26, cuts only at ``max_len``, no gradient
   left); a two-sided one oscillated (λ ≈ −150 nats, the advantage all segment count, the
   SLLM's NLL at 8.3 nats/token);
5. the SLLM's own loss on the sampled segmentations, so predictor and SLLM co-adapt.

This is Dynamic-Token-Pooling / H-Net-style end-to-end chunking with a score-function
gradient instead of a straight-through one: a segmentation decides which vectors exist and
where the decoder's targets start, not only how vectors are weighted, so there is no
continuous relaxation of the SLLM's loss to differentiate.

The trained predictor's logits are the teacher's scores: threshold decoding bisected to the
target mean length per domain (like the ``entropy`` teacher) gives labels that
train-splitter distils into a fresh predictor of the same architecture and calibrates like
every learned segmenter. The result is an ordinary ``learned:DIR`` folder with hard
boundaries; the pipeline trains its own VAE and SLLM on it from the same start as every
other segmenter (the jointly trained SLLM is dropped, so budgets stay equal).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from segsllm.errors import ConfigError
from segsllm.segment.learned import ends_from_cuts, threshold_decode
from segsllm.train.teachers import Teacher, module_fingerprint


def sample_ends(draws: np.ndarray, sizes: np.ndarray, max_len: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Sampled cut masks -> (segment ends of every row, which decisions were the policy's).

    draws (R, T) bool (``draws[r, t]``: a segment ends after token t), sizes (R,) real
    tokens per row. A row's last real token always ends a segment and a segment longer than
    ``max_len`` is split greedily from its start; ``free`` (R, T) is True where the sampled
    value stands (real tokens before the last, not forced by ``max_len``).
    """
    R, T = draws.shape
    sizes = np.asarray(sizes, dtype=np.int64)
    flat = np.concatenate([draws[r, : sizes[r]] for r in range(R)])
    ends = ends_from_cuts(flat, sizes, max_len)
    free = np.arange(T)[None, :] < (sizes - 1)[:, None]  # (R, T)
    for r, e in enumerate(ends):
        cut = np.zeros(T, dtype=bool)
        cut[e - 1] = True
        free[r] &= cut == draws[r]  # a forced end differs from the draw
    return ends, free


def chunk_windows(ids: np.ndarray, ends: Sequence[np.ndarray], pad_id: int) -> dict[str, Any]:
    """Rows of token ids (R, T) + their segment ends -> one SLLM window per row (is_last False:
    a chunk is a piece of a document, so only its continue decisions are scored)."""
    from segsllm.data.segment_windows import collate_windows

    items = []
    for r, e in enumerate(ends):
        lengths = np.diff(np.concatenate([[0], e]))
        items.append({"ids": ids[r, : int(e[-1])], "lengths": lengths, "n_bytes": 0, "is_first": True,
                      "is_last": False})
    return collate_windows(items, pad_id)


def rate_shift(logits: torch.Tensor, mask: torch.Tensor, rate: float, iters: int = 30) -> torch.Tensor:
    """Per row the τ with mean σ(logits − τ) over its real positions = ``rate`` (bisection,
    no gradient). logits, mask (B, T) -> τ (B, 1)."""
    with torch.no_grad():
        z = logits.detach()
        m = mask.float()
        n = m.sum(1, keepdim=True).clamp(min=1)  # (B, 1)
        lo = (z.masked_fill(~mask, float("inf")).min(1, keepdim=True).values - 30.0).clamp(min=-1e4)
        hi = (z.masked_fill(~mask, float("-inf")).max(1, keepdim=True).values + 30.0).clamp(max=1e4)
        for _ in range(iters):
            mid = (lo + hi) / 2
            too_many = (torch.sigmoid(z - mid) * m).sum(1, keepdim=True) / n > rate  # raise τ
            lo, hi = torch.where(too_many, mid, lo), torch.where(too_many, hi, mid)
        return (lo + hi) / 2


class JointChunker(nn.Module):
    """A boundary predictor and an SLLM trained together (see the module docstring)."""

    def __init__(self, predictor: nn.Module, sllm: nn.Module, *, max_len: int, target_len: float,
                 samples: int = 2, pad_id: int = 0) -> None:
        super().__init__()
        if samples < 2:
            raise ConfigError(f"splitter.joint_samples must be >= 2 (each sample's baseline is the others' mean), "
                              f"got {samples}")
        if not 1.0 <= target_len <= max_len:
            raise ConfigError(f"joint teacher: target_len {target_len} must be in [1, max_len={max_len}]")
        self.predictor, self.sllm = predictor, sllm
        self.max_len, self.target_len, self.samples = int(max_len), float(target_len), int(samples)
        self.pad_id = int(pad_id)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, **_: Any) -> dict[str, torch.Tensor]:
        """ids (B, T), mask (B, T) (True = real, right-padded) -> ``loss`` and detached sums."""
        B, T = ids.shape
        K = self.samples
        raw = self.predictor(ids, mask).float()  # (B, T)
        logits = raw - rate_shift(raw, mask, 1.0 / self.target_len)  # (B, T): mean σ = 1/target per chunk
        sizes = mask.sum(1)  # (B,)
        with torch.no_grad():
            draws = torch.rand(K, B, T, device=ids.device) < torch.sigmoid(logits)[None]  # (K, B, T)
        ends, free = sample_ends(draws.reshape(K * B, T).cpu().numpy(), np.tile(sizes.cpu().numpy(), K),
                                 self.max_len)
        batch = chunk_windows(np.tile(ids.cpu().numpy(), (K, 1)), ends, self.pad_id)
        batch = {k: v.to(ids.device) for k, v in batch.items()}
        out = self.sllm(batch["ids"], batch["lengths"], is_last=batch["is_last"], return_details=True)
        n_seg = torch.tensor([len(e) for e in ends], device=ids.device, dtype=torch.float32).view(K, B)
        cost = (out["seg_nll"].sum(1) + out["stop_nll"].sum(1)).detach().view(K, B)  # (K, B) nats per chunk
        baseline = (cost.sum(0, keepdim=True) - cost) / (K - 1)  # (K, B): the other samples' mean
        advantage = (cost - baseline) / sizes.clamp(min=1)[None].float()  # (K, B) nats per token
        policy_mask = torch.from_numpy(free).to(ids.device).view(K, B, T).float()
        logp = torch.where(draws, F.logsigmoid(logits)[None], F.logsigmoid(-logits)[None])  # (K, B, T)
        policy_loss = (advantage[..., None] * logp * policy_mask).sum((1, 2)).mean() / B
        return {
            "loss": out["loss"] + policy_loss,
            "sllm_loss": out["loss"].detach(),
            "nll_nats": cost.sum(),
            "n_tokens": sizes.sum().float() * K,
            "n_segments": n_seg.sum(),
            "advantage_abs": advantage.abs().sum() / K,
            "n_chunks": torch.tensor(float(B)),
        }


def joint_loss(model: Any, batch: Mapping[str, Any]) -> tuple[Any, dict[str, float]]:
    """The train loop's loss: the joint objective + summable counts."""
    out = model(batch["ids"], batch["mask"])
    stats = {k: float(v) for k, v in out.items() if k not in ("loss",)}
    return out["loss"], stats


def reduce_joint_metrics(sums: Mapping[str, float]) -> dict[str, float]:
    """Summed counts -> loss, the SLLM's nats/token on sampled segmentations, their mean
    length, and the mean |advantage| (nats/token: how much the samples of a chunk differ)."""
    batches = max(sums.get("batches", 1.0), 1.0)
    return {
        "loss": sums["loss"] / batches,
        "sllm_loss": sums.get("sllm_loss", 0.0) / batches,
        "nll_per_token": sums.get("nll_nats", 0.0) / max(sums.get("n_tokens", 0.0), 1.0),
        "mean_len": sums.get("n_tokens", 0.0) / max(sums.get("n_segments", 0.0), 1.0),
        "advantage_abs": sums.get("advantage_abs", 0.0) / max(sums.get("n_chunks", 0.0), 1.0),
    }


class JointTeacher(Teacher):
    """Scores = the jointly trained predictor's logits; threshold decoding, bisected per
    domain to the target mean length (see the module docstring)."""

    name = "joint"

    def __init__(self, predictor: Any, fingerprint: str | None = None,
                 metrics: Mapping[str, float] | None = None) -> None:
        self.predictor = predictor.to("cpu").eval()
        self.fingerprint = fingerprint or module_fingerprint(self.predictor)
        self.metrics = dict(metrics or {})  # the joint objective on validation chunks

    def describe(self) -> dict[str, Any]:
        return {"teacher": self.name, "model": self.fingerprint}

    def scores(self, chunks: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(z, dtype=np.float32) for z in self.predictor.document_logits(list(chunks))]

    def apply(self, chunks, scores, param, max_len):
        return threshold_decode(scores, param, max_len)

    def bracket(self, scores):
        flat = np.concatenate([np.asarray(s, dtype=np.float32) for s in scores] or [np.zeros(1)])
        return (float(flat.min()) - 1.0, float(flat.max()) + 1.0) if flat.size else (-1.0, 1.0)


def train_joint_teacher(cfg: Any, tokenizer: Any, docs: Mapping[str, Mapping[str, Sequence[np.ndarray]]], *,
                        predictor_config: Any, device: Any, resume: bool = False, progress: bool = True,
                        say: Callable[[str], None] = lambda msg: None) -> JointTeacher:
    """Train predictor + SLLM jointly on chunks of ``docs["train"]`` (checkpoints in
    ``<run.out>/joint``), evaluated on ``docs["validation"]`` at the end; the teacher that
    reads the trained predictor, with those validation metrics in ``teacher.metrics``."""
    from segsllm.config.backbone import BackboneConfig
    from segsllm.data.chunks import ChunkBatches, eval_batches
    from segsllm.models.boundary import BoundaryPredictor
    from segsllm.models.loading import load_artifact
    from segsllm.train.loop import train
    from segsllm.train.sllm_stage import _build_sllm
    from segsllm.train.teachers import make_chunks

    sp = cfg.splitter
    if not sp.vae:
        raise ConfigError("the joint teacher needs a SentenceVAE (--vae DIR, the random-span one) for the SLLM it "
                          "trains with")
    vae = load_artifact("sentence_vae", sp.vae)
    if vae.model.config.max_len < predictor_config.max_len:
        raise ConfigError(f"joint teacher: the SentenceVAE takes segments of at most {vae.model.config.max_len} "
                          f"tokens, the splitter allows {predictor_config.max_len}")
    # Boundaries eos: the segmentations it samples are the predictor's, not a causal rule's.
    sllm_cfg = dataclasses.replace(cfg.sllm, max_segments=sp.joint_chunk_tokens, boundaries="eos")
    # The backbone: the token LM (--base-lm), else cfg.backbone (a from-scratch one, as hard EM allows).
    stage_cfg = dataclasses.replace(cfg, backbone=BackboneConfig(spec=str(sp.base_lm))) if sp.base_lm else cfg
    sllm, _ = _build_sllm(stage_cfg, sllm_cfg.validate(), vae.model, tokenizer, sp.vae)
    predictor = BoundaryPredictor(predictor_config)
    model = JointChunker(predictor, sllm, max_len=predictor_config.max_len, target_len=predictor_config.target_len,
                         samples=sp.joint_samples, pad_id=int(tokenizer.pad_token_id))
    pad = int(tokenizer.pad_token_id)

    def chunked(split: str, budget: int | None) -> dict[str, list]:
        return {d: [(c, np.zeros(len(c), np.float32)) for c in make_chunks(v, sp.joint_chunk_tokens, budget)
                    if len(c) > 1] for d, v in docs[split].items()}

    source = ChunkBatches(chunked("train", None), sp.joint_batch_size, pad, seed=cfg.run.seed,
                          balanced=cfg.data.balance_domains)
    val = {d: eval_batches(v, sp.joint_batch_size, pad) for d, v in chunked("validation", 8 * 1024).items() if v}
    train_cfg = dataclasses.replace(cfg.train, steps=sp.joint_steps, tokens=None, batch_size=sp.joint_batch_size,
                                    lr=sp.joint_lr,
                                    warmup_steps=min(cfg.train.warmup_steps, max(sp.joint_steps // 10, 1)),
                                    eval_every=sp.joint_steps if val else 0)
    say(f"joint teacher: {sp.joint_steps} steps x {sp.joint_batch_size} chunks of <= {sp.joint_chunk_tokens} tokens, "
        f"{sp.joint_samples} samples each")
    result = train(model, joint_loss, source, train_cfg, Path(cfg.run.out) / "joint", eval_data=val,
                   reduce_metrics=reduce_joint_metrics, device=device, count_tokens=lambda b: int(b["mask"].sum()),
                   progress=progress, resume=resume,
                   meta={"kind": "joint_teacher", "vae": str(Path(sp.vae).resolve()), "backbone": stage_cfg.backbone.spec})
    metrics = {k.removeprefix("val/"): v for k, v in result.final_eval.items() if k.startswith("val/")}
    for d in val:
        say(f"joint teacher, validation {d}: sampled mean length {metrics.get(f'{d}/mean_len', float('nan')):.1f}, "
            f"SLLM {metrics.get(f'{d}/nll_per_token', float('nan')):.3f} nats/token")
    return JointTeacher(predictor, metrics=metrics)


__all__ = ["JointChunker", "JointTeacher", "chunk_windows", "joint_loss", "rate_shift", "reduce_joint_metrics",
           "sample_ends", "train_joint_teacher"]
