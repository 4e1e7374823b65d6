"""Teachers of the learned segmenter: where should segments end? (docs/DESIGN.md §6)

A teacher turns token chunks into reference segmentations (end offsets) that the boundary
predictor learns to imitate:

- ``punctuation`` — the built-in rule, distilled (a sanity check and warm start).
- ``entropy`` — Byte Latent Transformer style: a new segment starts where the base LM is
  unsure of the next token. Score of token ``j`` = entropy (nats) of the LM's distribution
  predicting it, with the LM context reset at every newline (each line starts again from
  BOS, so entropy does not drift over long documents). ``global``: cut before ``j`` when
  its entropy exceeds a threshold; ``monotonic``: when it rises by more than a threshold
  over the previous token's. The threshold is the quantile (top-k) that hits the target
  mean length on each domain (bisection, with ``max_len`` enforced).
- ``vae`` — reconstruction-optimal segments: every candidate span ``[s, s+l)`` with
  ``l <= max_span`` is scored by the trained SentenceVAE's reconstruction NLL (teacher
  forced, EOS included), and a dynamic programme picks the segmentation minimising total
  NLL + ``penalty`` per segment; the penalty is bisected per domain to hit the target
  mean length. Spans are scored in batches of equal length (no padding); chunk and token
  budgets keep it tractable on a CPU. **Unbiased by default**: the VAE is one trained on
  random spans (:func:`teacher_vae_segmenter`, every length 1..max_len at every offset)
  and candidate spans reach ``max_len``, so neither a rule's boundaries nor a short span
  cap shape the labels. ``vae-rule`` is the earlier behaviour, kept for the ablation: the
  VAE of a rule segmenter (the pipeline's first, usually punctuation) and spans of at most
  ``min(max_len, 2 * target_len)``.
- ``sllm`` — what the SLLM pays (:mod:`segsllm.train.sllm_teacher`), iterated by hard EM
  (:mod:`segsllm.train.sllm_em`).
- ``joint`` — no labels: the predictor trained end to end with an SLLM's loss
  (:mod:`segsllm.train.joint`); its own decisions become the labels.

Expensive per-token scores (entropies, span costs) and the labels are cached on disk,
keyed by the teacher and its model's weights, the tokenizer, the corpus and the chunking,
so changing ``--target-len`` re-calibrates without re-running the LM or the VAE.
"""

from __future__ import annotations

import abc
import hashlib
import json
import math
import shutil
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segsllm.errors import ArtifactError, ConfigError
from segsllm.io import make_temp_dir
from segsllm.segment.learned import (
    best_segmentation,
    bisect_parameter,
    mean_length,
    threshold_decode,
)
from segsllm.segment.random_span import RandomSpanSegmenter  # old spec strings name it here

CACHE_VERSION = 1
DEFAULT_TARGET_LEN = 8.0
# Labelled tokens per domain (train, validation) when splitter.teacher_[eval_]tokens is unset.
DEFAULT_BUDGETS = {
    "punctuation": (1_000_000, 100_000),
    "entropy": (300_000, 40_000),
    "vae": (12_000, 3_000),
    "vae-rule": (12_000, 3_000),
    "sllm": (12_000, 3_000),
    "joint": (300_000, 40_000),
}
VAE_TEACHERS = ("vae", "vae-rule")


def teacher_vae_segmenter(max_len: int) -> str:
    """Spec of the segmenter the unbiased teachers' SentenceVAE is trained on: random spans
    of every length up to ``max_len`` (so it can score any candidate span)."""
    return RandomSpanSegmenter(max_len=int(max_len)).spec()


def default_max_span(teacher: str, max_len: int, target_len: float | None) -> int:
    """Longest candidate span of a span-scoring teacher: ``max_len``, except ``vae-rule``
    (the earlier default, ``min(max_len, 2 * target_len)``)."""
    if teacher == "vae-rule":
        return int(min(max_len, math.ceil(2 * (target_len or max_len))))
    return int(max_len)


# --------------------------------------------------------------------------- data


def load_documents(data_dir: str | Path, domain: str, split: str, tokenizer: Any, *,
                   max_docs: int | None = None, max_doc_bytes: int | None = None) -> list[np.ndarray]:
    """Token ids of every document of one split (through the shared segment-table cache)."""
    from segsllm.data.token_windows import token_streams

    table = token_streams(data_dir, domain, split, tokenizer, max_docs=max_docs, max_doc_bytes=max_doc_bytes)
    ids = np.asarray(table.ids, dtype=np.int64)
    doc_index = np.asarray(table.doc_index)
    first_seg = np.flatnonzero(np.diff(doc_index, prepend=-1))  # first segment of each document
    starts = np.asarray(table.starts)[first_seg]
    return list(np.split(ids, starts[1:]))


def make_chunks(docs: Sequence[np.ndarray], chunk_tokens: int, max_tokens: int | None) -> list[np.ndarray]:
    """Cut documents into chunks of at most ``chunk_tokens``; with ``max_tokens``, keep
    chunks spread evenly over the whole list (so many documents are represented)."""
    chunks = [d[i : i + chunk_tokens] for d in docs for i in range(0, len(d), chunk_tokens) if len(d)]
    total = sum(len(c) for c in chunks)
    if max_tokens is None or total <= max_tokens or not chunks:
        return chunks
    mean = total / len(chunks)
    n = max(1, min(len(chunks), round(max_tokens / mean)))
    pick = np.unique(np.linspace(0, len(chunks) - 1, n).round().astype(int))
    return [chunks[i] for i in pick]


def ends_to_labels(ends: np.ndarray, n: int) -> np.ndarray:
    """(n,) uint8: 1 where a segment ends after the token."""
    lab = np.zeros(n, dtype=np.uint8)
    lab[np.asarray(ends, dtype=np.int64) - 1] = 1
    return lab


def labels_to_ends(labels: np.ndarray) -> np.ndarray:
    """Inverse of :func:`ends_to_labels` (the last token always ends a segment)."""
    lab = np.asarray(labels).astype(bool).copy()
    if lab.size:
        lab[-1] = True
    return np.flatnonzero(lab).astype(np.int64) + 1


# --------------------------------------------------------------------------- teachers


@dataclass
class TeacherFit:
    """What a teacher decided for one domain: its parameter and the resulting segmentations."""

    param: float  # threshold (entropy) or per-segment penalty (vae); nan for punctuation
    ends: list[np.ndarray]
    mean_len: float


class Teacher(abc.ABC):
    """Base class: ``scores`` (expensive, cached), ``fit`` (calibrate on a domain's chunks),
    ``apply`` (segment chunks with a fitted parameter)."""

    name = ""

    def describe(self) -> dict[str, Any]:
        """What determines the scores (part of the cache key)."""
        return {"teacher": self.name}

    def scores(self, chunks: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [np.zeros(0, dtype=np.float32) for _ in chunks]

    @abc.abstractmethod
    def apply(self, chunks: Sequence[np.ndarray], scores: Sequence[np.ndarray], param: float,
              max_len: int) -> list[np.ndarray]:
        """Segment ends of every chunk for the length parameter ``param``."""

    def fit(self, chunks: Sequence[np.ndarray], scores: Sequence[np.ndarray], target_len: float | None,
            max_len: int) -> TeacherFit:
        """The parameter whose segmentations have mean length ``target_len`` on these chunks."""
        if target_len is None:
            raise ConfigError(f"the {self.name} teacher needs a target length (--target-len)")
        lo, hi = self.bracket(scores)
        param, mean = bisect_parameter(lambda p: mean_length(self.apply(chunks, scores, p, max_len)),
                                       float(target_len), lo, hi)
        return TeacherFit(param, self.apply(chunks, scores, param, max_len), mean)

    def bracket(self, scores: Sequence[np.ndarray]) -> tuple[float, float]:
        return -1.0, 1.0


class PunctuationTeacher(Teacher):
    """The punctuation rule itself (no parameter: its own mean length)."""

    name = "punctuation"

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def apply(self, chunks, scores, param, max_len):
        from segsllm.segment.punctuation import PunctuationSegmenter

        return PunctuationSegmenter(max_len=max_len).bind(self.tokenizer).segment_batch(list(chunks))

    def fit(self, chunks, scores, target_len, max_len):
        ends = self.apply(chunks, scores, float("nan"), max_len)
        return TeacherFit(float("nan"), ends, mean_length(ends))


class EntropyTeacher(Teacher):
    """Cut where the base LM's next-token entropy is high (see the module docstring)."""

    name = "entropy"

    def __init__(self, model: Any, tokenizer: Any, mode: str = "global", context: int = 256,
                 batch_tokens: int = 8192, device: Any = "cpu", fingerprint: str | None = None) -> None:
        if mode not in ("global", "monotonic"):
            raise ConfigError(f"entropy teacher: mode must be global or monotonic, got {mode!r}")
        self.model, self.tokenizer, self.mode = model, tokenizer, mode
        self.context, self.batch_tokens, self.device = int(context), int(batch_tokens), device
        self.fingerprint = fingerprint or module_fingerprint(model)
        from segsllm.data.vocab import vocab_bytes

        table = vocab_bytes(tokenizer).table
        self.newline = np.array([b"\n" in t for t in table], dtype=bool)  # (V,)
        self.bos = int(tokenizer.bos_token_id)

    def describe(self) -> dict[str, Any]:
        return {"teacher": self.name, "model": self.fingerprint, "context": self.context}

    def _pieces(self, chunks: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
        """Line pieces (a line ends with a newline token; long lines are cut at ``context - 1``)
        and where each sits: (chunk index, start)."""
        pieces, where = [], []
        for c, ids in enumerate(chunks):
            nl = self.newline[np.minimum(ids, self.newline.size - 1)]
            starts = np.concatenate([[0], np.flatnonzero(nl[:-1]) + 1])
            stops = np.append(starts[1:], len(ids))
            for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
                for s in range(a, b, self.context - 1):
                    e = min(b, s + self.context - 1)
                    pieces.append(ids[s:e])
                    where.append((c, s))
        return pieces, where

    def scores(self, chunks: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per chunk (n,) float32: entropy (nats) of the LM's prediction of each token, given
        BOS + the earlier tokens of its line."""
        import torch

        out = [np.zeros(len(c), dtype=np.float32) for c in chunks]
        pieces, where = self._pieces(chunks)
        order = np.argsort([len(p) for p in pieces], kind="stable")
        model = self.model.eval()
        i = 0
        with torch.inference_mode():
            while i < len(order):
                # Longest piece of a sorted group is the last: grow while it fits the budget.
                j = i + 1
                while j < len(order) and (j - i + 1) * (len(pieces[order[j]]) + 1) <= self.batch_tokens:
                    j += 1
                group = order[i:j]
                width = len(pieces[group[-1]]) + 1
                ids = np.full((len(group), width), self.bos, dtype=np.int64)  # (B, T) right-padded
                for r, g in enumerate(group.tolist()):
                    ids[r, 1 : len(pieces[g]) + 1] = pieces[g]
                logits = model(input_ids=torch.from_numpy(ids).to(self.device), use_cache=False).logits
                logp = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
                ent = -(logp.exp() * logp).sum(-1).cpu().numpy()  # (B, T): H of the next token
                for r, g in enumerate(group.tolist()):
                    c, s = where[g]
                    out[c][s : s + len(pieces[g])] = ent[r, : len(pieces[g])]
                i = j
        return out

    def cut_scores(self, scores: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Score of "cut after t" = score of starting anew at t + 1 (the last is forced)."""
        out = []
        for s in scores:
            nxt = np.append(s[1:], np.inf).astype(np.float32)
            if self.mode == "monotonic":
                nxt = nxt - s  # rise of entropy from t to t + 1
            out.append(nxt)
        return out

    def apply(self, chunks, scores, param, max_len):
        return threshold_decode(self.cut_scores(scores), param, max_len)

    def bracket(self, scores):
        flat = np.concatenate([c[np.isfinite(c)] for c in self.cut_scores(scores)] or [np.zeros(1)])
        return (float(flat.min()) - 1.0, float(flat.max()) + 1.0) if flat.size else (-1.0, 1.0)


class VAETeacher(Teacher):
    """Reconstruction-optimal segments under a trained SentenceVAE (see the module docstring)."""

    name = "vae"

    def __init__(self, vae: Any, max_span: int, batch_tokens: int = 4096, device: Any = "cpu",
                 fingerprint: str | None = None, name: str = "vae") -> None:
        if max_span > vae.config.max_len:
            raise ConfigError(f"{name} teacher: max_span {max_span} exceeds the VAE's max_len {vae.config.max_len}")
        self.name = name  # vae (unbiased) | vae-rule: the cache keys them apart
        self.vae, self.max_span = vae, int(max_span)
        self.batch_tokens, self.device = int(batch_tokens), device
        self.fingerprint = fingerprint or module_fingerprint(vae)

    def describe(self) -> dict[str, Any]:
        return {"teacher": self.name, "model": self.fingerprint, "max_span": self.max_span}

    def span_nll(self, spans: np.ndarray) -> np.ndarray:
        """spans (B, l) token ids -> (B,) reconstruction NLL in nats (tokens + EOS)."""
        import torch
        import torch.nn.functional as F

        ids = torch.from_numpy(np.ascontiguousarray(spans, dtype=np.int64)).to(self.device)  # (B, l)
        mask = torch.ones_like(ids, dtype=torch.bool)
        with torch.inference_mode():
            latent = self.vae.encoder(ids, mask)  # (B, D)
            dec_in, dec_mask, targets = self.vae.teacher_forcing(ids, mask)  # (B, l+1) each
            logits = self.vae.decoder(dec_in, latent, attention_mask=dec_mask)  # (B, l+1, V)
            B, T, V = logits.shape
            nll = F.cross_entropy(logits.float().reshape(B * T, V), targets.reshape(B * T), reduction="none")
        return nll.view(B, T).sum(1).cpu().numpy()  # (B,)

    def scores(self, chunks: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per chunk (n, max_span) float32: cost[s, l-1] = NLL of span [s, s+l) (inf past the end)."""
        import torch
        from numpy.lib.stride_tricks import sliding_window_view

        out = [np.full((len(c), self.max_span), np.inf, dtype=np.float32) for c in chunks]
        self.vae.eval()
        with torch.inference_mode():
            for length in range(1, self.max_span + 1):
                owners, windows = [], []
                for c, ids in enumerate(chunks):
                    if len(ids) >= length:
                        w = sliding_window_view(np.asarray(ids, dtype=np.int64), length)  # (n-l+1, l)
                        windows.append(w)
                        owners.append(np.full(len(w), c))
                if not windows:
                    continue
                spans = np.concatenate(windows)  # (S, l)
                owner = np.concatenate(owners)
                start = np.concatenate([np.arange(len(w)) for w in windows])
                step = max(1, self.batch_tokens // (length + 1))
                nll = np.concatenate([self.span_nll(spans[i : i + step]) for i in range(0, len(spans), step)])
                for c in np.unique(owner).tolist():
                    sel = owner == c
                    out[c][start[sel], length - 1] = nll[sel]
        return out

    @staticmethod
    def end_indexed(cost: np.ndarray) -> np.ndarray:
        """(n, L) cost by span start -> (n, L) score (-cost) by span end position."""
        return end_indexed(cost)

    def apply(self, chunks, scores, param, max_len):
        L = min(self.max_span, max_len)
        spans = [end_indexed(s[:, :L]) for s in scores]
        return best_segmentation([len(c) for c in chunks], L, span_score=spans, penalty=param)

    def bracket(self, scores):
        finite = np.concatenate([s[np.isfinite(s)] for s in scores] or [np.zeros(1)])
        top = float(finite.max()) if finite.size else 1.0
        return 0.0, 2.0 * top + 1.0


def end_indexed(cost: np.ndarray) -> np.ndarray:
    """(n, L) cost of span ``[s, s+l)`` by start ``s`` -> (n, L) score (-cost) by end
    position ``s + l - 1`` (what :func:`best_segmentation` reads); -inf where no span fits."""
    n, L = cost.shape
    score = np.full((n, L), -np.inf)
    for length in range(1, min(L, n) + 1):
        score[length - 1 :, length - 1] = -cost[: n - length + 1, length - 1]
    return score


# --------------------------------------------------------------------------- building


def module_fingerprint(module: Any) -> str:
    """sha256 (16 hex) of a module's parameters: the cache key of an in-memory teacher model."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _weights_sha(folder: str | Path) -> str | None:
    """The weights' sha256 recorded in a segsllm artifact manifest, if any."""
    try:
        manifest = json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))
        return (manifest.get("files") or {}).get("model.safetensors", {}).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None


def _check_teacher_vae(name: str, folder: str, model: Any) -> None:
    """Warn when the unbiased ``vae`` teacher is given a VAE that was not trained on random
    spans (its scores then favour the boundaries of the segmenter it was trained on)."""
    trained = str((model.manifest.get("lineage") or {}).get("segmenter") or "")
    if name == "vae" and "RandomSpanSegmenter" not in trained:
        warnings.warn(f"the vae teacher expects a SentenceVAE trained on random spans (train-vae --segmenter "
                      f"{teacher_vae_segmenter(model.config.max_len)}); {folder} was trained on "
                      f"{trained or 'an unknown segmenter'} (use --teacher vae-rule for that on purpose)",
                      stacklevel=3)


def build_teacher(name: str, tokenizer: Any, *, base_lm: str | None = None, vae: str | None = None,
                  entropy_mode: str = "global", entropy_context: int = 256, max_span: int = 24,
                  device: Any = "cpu") -> Teacher:
    """The teacher called ``name``, loading its model from a folder; one-line errors (the
    ``sllm`` teacher: :func:`segsllm.train.sllm_teacher.load_sllm_teacher`)."""
    if name == "punctuation":
        return PunctuationTeacher(tokenizer)
    if name == "entropy":
        if not base_lm:
            raise ConfigError("the entropy teacher needs the base LM: --base-lm DIR (a `segsllm train-lm` folder)")
        from segsllm.config.backbone import BackboneConfig
        from segsllm.models.backbone import load_backbone

        if not Path(base_lm).is_dir():
            raise ArtifactError(f"no base LM folder at {base_lm}")
        backbone = load_backbone(BackboneConfig(spec=str(base_lm)))
        if backbone.vocab_size < len(tokenizer):
            raise ArtifactError(f"{base_lm} has a vocabulary of {backbone.vocab_size}, the tokenizer {len(tokenizer)}: "
                                "use the base LM trained with this tokenizer")
        if backbone.tokenizer is not None:
            from segsllm.data.tokenizer import tokenizer_fingerprint

            if tokenizer_fingerprint(backbone.tokenizer) != tokenizer_fingerprint(tokenizer):
                raise ArtifactError(f"{base_lm} was trained with another tokenizer; use the base LM of this tokenizer")
        model = backbone.model.to(device)
        return EntropyTeacher(model, tokenizer, entropy_mode, entropy_context, device=device,
                              fingerprint=_weights_sha(base_lm) or module_fingerprint(model))
    if name in VAE_TEACHERS:
        if not vae:
            raise ConfigError(f"the {name} teacher needs a trained SentenceVAE: --vae DIR (a `segsllm train-vae` folder)")
        from segsllm.models.vae import SentenceVAE

        model = SentenceVAE.from_pretrained(vae, tokenizer=tokenizer, map_location=device)
        _check_teacher_vae(name, vae, model)
        return VAETeacher(model, min(max_span, model.config.max_len), device=device,
                          fingerprint=_weights_sha(vae) or module_fingerprint(model), name=name)
    if name == "sllm":  # it needs an SLLM and a segmentation: built by its own module
        raise ConfigError("the sllm teacher is built by segsllm.train.sllm_teacher.load_sllm_teacher")
    if name == "joint":  # it trains first: built by its own module
        raise ConfigError("the joint teacher is built by segsllm.train.joint.train_joint_teacher")
    raise ConfigError(f"unknown teacher {name!r}; teachers: punctuation, entropy, vae, vae-rule, sllm, joint")


# --------------------------------------------------------------------------- labels + cache


@dataclass
class LabelSet:
    """Teacher segmentations of one domain/split's chunks."""

    domain: str
    split: str
    chunks: list[np.ndarray]
    ends: list[np.ndarray]
    param: float
    mean_len: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return int(sum(len(c) for c in self.chunks))

    def labels(self) -> list[np.ndarray]:
        return [ends_to_labels(e, len(c)) for c, e in zip(self.chunks, self.ends, strict=True)]


def _key(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _save_arrays(folder: Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    """Write arrays + meta.json atomically (temp folder + rename)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(folder.parent, prefix=f".{folder.name}.")
    try:
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", arr)
        (tmp / "meta.json").write_text(json.dumps(dict(meta), indent=2, default=str), encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _load_arrays(folder: Path, names: Sequence[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    if not (folder / "meta.json").is_file():
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        return {n: np.load(folder / f"{n}.npy") for n in names}, meta
    except (OSError, ValueError, KeyError):
        shutil.rmtree(folder, ignore_errors=True)  # a damaged cache entry is rebuilt
        return None


def _flat_scores(scores: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32)


def cached_scores(teacher: Teacher, chunks: Sequence[np.ndarray], key_parts: Mapping[str, Any],
                  cache_dir: Path | None) -> list[np.ndarray]:
    """``teacher.scores(chunks)``, read from / written to ``cache_dir`` when given."""
    sizes = np.array([len(c) for c in chunks], dtype=np.int64)
    folder = None
    if cache_dir is not None:
        folder = cache_dir / f"scores-{teacher.name}-{_key({**key_parts, **teacher.describe(), 'v': CACHE_VERSION})}"
        hit = _load_arrays(folder, ("scores", "sizes"))
        if hit is not None and np.array_equal(hit[0]["sizes"], sizes):
            return list(np.split(hit[0]["scores"], np.cumsum(sizes)[:-1]))
    scores = teacher.scores(chunks)
    if folder is not None:
        _save_arrays(folder, {"scores": _flat_scores(scores), "sizes": sizes}, {**key_parts, **teacher.describe()})
    return scores


def teacher_labels(
    teacher: Teacher,
    chunks: Mapping[str, Mapping[str, list[np.ndarray]]],
    *,
    target_len: float | None,
    max_len: int,
    key_parts: Mapping[str, Mapping[str, Any]] | None = None,
    cache_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, LabelSet]]:
    """Teacher segmentations of ``chunks[split][domain]``.

    The teacher is fitted (threshold / penalty bisected to ``target_len``) on each domain's
    ``train`` chunks and applied with that parameter to the other splits. ``key_parts[domain]``
    (corpus checksum, tokenizer, chunking ...) keys the on-disk cache under ``cache_dir``.
    """
    cache = Path(cache_dir) if cache_dir is not None else None
    out: dict[str, dict[str, LabelSet]] = {split: {} for split in chunks}
    splits = ["train", *[s for s in chunks if s != "train"]] if "train" in chunks else list(chunks)
    fitted: dict[str, float] = {}
    for split in splits:
        for domain, cs in chunks[split].items():
            parts = {**(key_parts or {}).get(domain, {}), "domain": domain, "split": split,
                     "n_chunks": len(cs), "n_tokens": int(sum(len(c) for c in cs))}
            label_key = {**parts, **teacher.describe(), "target_len": target_len, "max_len": max_len,
                         "mode": getattr(teacher, "mode", None), "v": CACHE_VERSION,
                         "fit_on": fitted.get(domain)}
            folder = cache / f"labels-{teacher.name}-{domain}-{split}-{_key(label_key)}" if cache else None
            hit = _load_arrays(folder, ("labels", "sizes")) if folder is not None else None
            sizes = np.array([len(c) for c in cs], dtype=np.int64)
            if hit is not None and np.array_equal(hit[0]["sizes"], sizes):
                labels = np.split(hit[0]["labels"], np.cumsum(sizes)[:-1])
                ends = [labels_to_ends(lab) for lab in labels]
                param, mean = float(hit[1]["param"]), float(hit[1]["mean_len"])
            else:
                if progress is not None:
                    progress(f"teacher {teacher.name}: labelling {domain}/{split} ({int(sizes.sum()):,} tokens)")
                scores = cached_scores(teacher, cs, parts, cache)
                if split == "train" or domain not in fitted:
                    fit = teacher.fit(cs, scores, target_len, max_len)
                    param, ends, mean = fit.param, fit.ends, fit.mean_len
                else:
                    param = fitted[domain]
                    ends = teacher.apply(cs, scores, param, max_len)
                    mean = mean_length(ends)
                if folder is not None:
                    flat = np.concatenate([ends_to_labels(e, len(c)) for c, e in zip(cs, ends, strict=True)])
                    _save_arrays(folder, {"labels": flat, "sizes": sizes},
                                 {**label_key, "param": param, "mean_len": mean})
            fitted.setdefault(domain, param)
            out[split][domain] = LabelSet(domain, split, list(cs), list(ends), param, mean,
                                          {"fit_on_train": split != "train"})
    return out


__all__ = [
    "DEFAULT_BUDGETS",
    "DEFAULT_TARGET_LEN",
    "VAE_TEACHERS",
    "EntropyTeacher",
    "LabelSet",
    "PunctuationTeacher",
    "RandomSpanSegmenter",
    "Teacher",
    "TeacherFit",
    "VAETeacher",
    "build_teacher",
    "cached_scores",
    "default_max_span",
    "end_indexed",
    "ends_to_labels",
    "labels_to_ends",
    "load_documents",
    "make_chunks",
    "module_fingerprint",
    "teacher_labels",
    "teacher_vae_segmenter",
]
