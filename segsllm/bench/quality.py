"""Quality on the test split: bits/byte, token perplexity, compression, VAE exact match.

Every model of a domain is scored on **the same whole documents and the same bytes**:
:func:`choose_documents` picks them once per domain from the split's exact UTF-8 byte
counts (independent of any tokenizer or segmenter), each scorer maps them onto its own
segment table and checks that it covers exactly those documents, and bits/byte divides
every model's NLL by the same exact byte total (docs/DESIGN.md §7).

- Token LM (:func:`score_lm`): each document is ``BOS d EOS``, windows of the LM's own
  ``context_len``/stride (:mod:`segsllm.data.token_windows`); NLL over the document's tokens and
  its final EOS.
- SLLM (:func:`score_sllm`): windows of ``max_segments`` segments, teacher-forced
  (:meth:`segsllm.models.sllm.SLLM.forward`); NLL over every segment's tokens and EOS plus
  every stop decision. Token perplexity divides by document tokens + 1 per document, the
  LM's denominator; the paper-style perplexity is reported for comparison only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segsllm.errors import DataError


@dataclass
class EvalDocs:
    """The documents of one domain/split every model is scored on."""

    domain: str
    split: str
    doc_index: np.ndarray  # (D,) sorted indices of the documents in their split
    doc_bytes: np.ndarray  # (D,) their exact UTF-8 byte counts
    split_bytes: np.ndarray  # (N,) byte count of every document of the split (index = doc index)

    @property
    def n_docs(self) -> int:
        return int(self.doc_index.shape[0])

    @property
    def total_bytes(self) -> int:
        return int(self.doc_bytes.sum())


@dataclass
class QualityResult:
    """Summed NLL and the metrics derived from it, for one model on one :class:`EvalDocs`."""

    model: str  # "sllm" | "baseline" | "base_lm"
    nll_nats: float
    n_bytes: int  # exact UTF-8 bytes of the documents (the bits/byte denominator)
    n_tokens: int  # perplexity denominator: document tokens + 1 per document
    n_docs: int
    bits_per_byte: float
    token_perplexity: float
    paper_style_perplexity: float = math.nan  # SLLM only, "paper-style" (labelled everywhere)
    doc_index: list[int] = field(default_factory=list)  # the documents scored (for checks)
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("doc_index")
        return d


def split_doc_bytes(data_dir: str | Path, domain: str, split: str, max_docs: int | None = None,
                    max_doc_bytes: int | None = None) -> tuple[np.ndarray, list[str]]:
    """(N,) UTF-8 bytes of every document of a split, and their texts, in stored order
    (the order of ``doc_index`` in segment tables)."""
    from segsllm.data.store import iter_documents

    texts = [d.text for d in iter_documents(data_dir, domain, split, max_docs, max_doc_bytes)]
    return np.asarray([len(t.encode("utf-8")) for t in texts], dtype=np.int64), texts


def choose_documents(domain: str, split: str, split_bytes: np.ndarray, max_bytes: int | None) -> EvalDocs:
    """Whole non-empty documents, evenly spread over the split, about ``max_bytes`` in total
    (all when None). Deterministic; depends on byte counts only."""
    from segsllm.data.token_windows import pick_documents

    nonempty = np.flatnonzero(split_bytes > 0)
    if nonempty.size == 0:
        raise DataError(f"{domain}: the {split} split has no non-empty document to evaluate")
    rows = nonempty[pick_documents(split_bytes[nonempty], max_bytes)]
    return EvalDocs(domain, split, rows.astype(np.int64), split_bytes[rows], split_bytes)


def _check_same_docs(covered: np.ndarray, docs: EvalDocs, who: str) -> None:
    got = np.unique(covered)
    if not np.array_equal(got, docs.doc_index):
        raise DataError(f"{docs.domain}: {who} covers {got.size} documents, expected the {docs.n_docs} "
                        "chosen ones (same documents for every model)")


# --------------------------------------------------------------------------- token LM


def lm_eval_settings(lm_dir: str | Path | None, model: Any) -> tuple[int, int]:
    """(context_len, stride) the token LM was evaluated with by ``train-lm`` (its
    config.yaml), capped at its positions; defaults of :class:`LMConfig` otherwise."""
    from segsllm.config.lm import LMConfig
    from segsllm.models.token_lm import max_positions

    ctx, stride = LMConfig().context_len, None
    path = Path(lm_dir) / "config.yaml" if lm_dir else None
    if path is not None and path.is_file():
        from omegaconf import OmegaConf

        lm = OmegaConf.load(path).get("lm") or {}
        ctx = int(lm.get("context_len") or ctx)
        stride = lm.get("eval_stride")
    limit = max_positions(model)
    if limit is not None:
        ctx = min(ctx, limit)
    stride = min(int(stride), ctx) if stride else ctx
    return ctx, stride


def score_lm(model: Any, tokenizer: Any, data_dir: str | Path, docs: EvalDocs, *, name: str = "baseline",
             context_len: int = 256, stride: int | None = None, batch_size: int = 8, device: Any = "cpu",
             caps: Mapping[str, Any] | None = None) -> QualityResult:
    """bits/byte and token perplexity of a ``*ForCausalLM`` on ``docs``."""
    import torch

    from segsllm.data.batches import move_to
    from segsllm.data.token_windows import (
        DocumentSpans,
        TokenWindows,
        collate_windows,
        token_streams,
    )
    from segsllm.data.vocab import vocab_bytes
    from segsllm.metrics import bits_per_byte, token_perplexity
    from segsllm.models.token_lm import lm_loss, special_ids

    table = token_streams(data_dir, docs.domain, docs.split, tokenizer, **dict(caps or {}))
    spans = DocumentSpans.from_table(table)
    rows = np.flatnonzero(np.isin(spans.doc_index, docs.doc_index))
    spans = spans.subset(rows)
    _check_same_docs(spans.doc_index, docs, name)
    bos, eos, pad = special_ids(tokenizer)
    windows = TokenWindows(spans, context_len=context_len, bos_id=bos, eos_id=eos, stride=stride,
                              token_bytes=vocab_bytes(tokenizer).lengths.copy(), doc_bytes=docs.split_bytes,
                              domain=docs.domain)
    if int(windows.n_bytes.sum()) != docs.total_bytes:  # exact per-document bytes by construction
        raise DataError(f"{docs.domain}: {name} windows hold {int(windows.n_bytes.sum())} bytes, "
                        f"the documents {docs.total_bytes}")
    was_training = model.training
    model.eval()
    nll, n_tok = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(windows), batch_size):
                batch = collate_windows([windows[i] for i in range(start, min(start + batch_size, len(windows)))],
                                        pad_id=pad)
                _, stats = lm_loss(model, move_to(batch, torch.device(device)))
                nll += stats["nll_sum"]
                n_tok += int(stats["n_tokens"])
    finally:
        model.train(was_training)
    return QualityResult(model=name, nll_nats=nll, n_bytes=docs.total_bytes, n_tokens=n_tok, n_docs=docs.n_docs,
                         bits_per_byte=bits_per_byte(nll, docs.total_bytes),
                         token_perplexity=token_perplexity(nll, n_tok),
                         doc_index=spans.doc_index.tolist())


# --------------------------------------------------------------------------- SLLM


SLLM_SUMS = ("nll_tokens", "nll_seg_eos", "nll_stop", "n_tokens", "n_segments", "n_docs", "ps_ce_sum", "ps_count",
             "n_correct", "n_targets")


def sllm_table(data_dir: str | Path, docs: EvalDocs, tokenizer: Any, segmenter: Any,
               caps: Mapping[str, Any] | None = None) -> tuple[Any, np.ndarray]:
    """The split's segment table under ``segmenter`` and the (S',) indices of the segments
    of the chosen documents."""
    from segsllm.data.segments import load_segments

    table = load_segments(data_dir, docs.domain, docs.split, tokenizer, segmenter, **dict(caps or {}))
    sel = np.flatnonzero(np.isin(np.asarray(table.doc_index), docs.doc_index))
    return table, sel


def score_sllm(model: Any, table: Any, docs: EvalDocs, *, batch_size: int = 4, device: Any = "cpu") -> QualityResult:
    """bits/byte, token perplexity and the paper-style perplexity of an SLLM on ``docs``
    (``table``: the split cut by the SLLM's segmenter, see :func:`sllm_table`)."""
    import torch

    from segsllm.data.batches import move_to
    from segsllm.data.segment_windows import SegmentWindows, collate_windows
    from segsllm.metrics import bits_per_byte, token_perplexity

    data = SegmentWindows([table], model.config.max_segments)
    window_doc = np.asarray(table.doc_index)[data.index[:, 1]]  # (W,) document of each window
    keep = np.isin(window_doc, docs.doc_index)
    data.index = data.index[keep]
    _check_same_docs(window_doc[keep], docs, "the SLLM")
    pad = model.vae.config.pad_id
    sums = dict.fromkeys(SLLM_SUMS, 0.0)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(data), batch_size):
                batch = collate_windows([data[i] for i in range(start, min(start + batch_size, len(data)))], pad)
                batch = move_to(batch, torch.device(device))
                out = model(batch["ids"], batch["lengths"], is_last=batch["is_last"])
                for k in SLLM_SUMS:
                    sums[k] += float(out[k])
    finally:
        model.train(was_training)
    nll = sums["nll_tokens"] + sums["nll_seg_eos"] + sums["nll_stop"]
    n_tok = int(sums["n_tokens"] + sums["n_docs"])  # the token LM's denominator: tokens + final EOS
    return QualityResult(
        model="sllm", nll_nats=nll, n_bytes=docs.total_bytes, n_tokens=n_tok, n_docs=docs.n_docs,
        bits_per_byte=bits_per_byte(nll, docs.total_bytes), token_perplexity=token_perplexity(nll, n_tok),
        paper_style_perplexity=math.exp(min(sums["ps_ce_sum"] / sums["ps_count"], 700.0))
        if sums["ps_count"] else math.nan,
        doc_index=np.unique(window_doc[keep]).tolist(),
        extra={"bits_per_byte_tokens": bits_per_byte(sums["nll_tokens"], docs.total_bytes),
               "bits_per_byte_boundaries": bits_per_byte(sums["nll_seg_eos"] + sums["nll_stop"], docs.total_bytes),
               "decoder_token_accuracy": sums["n_correct"] / max(sums["n_targets"], 1.0)},
    )


def check_same_bytes(results: list[QualityResult]) -> None:
    """Every model of a domain scored the same documents and the same bytes (docs/DESIGN.md §7)."""
    if not results:
        return
    ref = results[0]
    for r in results[1:]:
        if r.doc_index != ref.doc_index or r.n_bytes != ref.n_bytes:
            raise DataError(f"{r.model} and {ref.model} were scored on different documents or bytes "
                            f"({r.n_docs} docs/{r.n_bytes} B vs {ref.n_docs} docs/{ref.n_bytes} B)")


# --------------------------------------------------------------------------- compression, exact match


def compression(table: Any, sel: np.ndarray) -> dict[str, float]:
    """Mean, p50, p95, max tokens per segment over the selected segments."""
    from segsllm.metrics import length_stats

    return length_stats(np.asarray(table.lengths)[sel])


def vae_exact_match(vae: Any, table: Any, sel: np.ndarray, max_segments: int, *, batch_size: int = 64,
                    device: Any = "cpu") -> tuple[float, int]:
    """(rate, n): greedy reconstruction exact-match rate over at most ``max_segments``
    evenly spread selected segments (deterministic)."""
    import torch

    from segsllm.metrics import exact_match_count

    if max_segments <= 0 or sel.size == 0:
        return math.nan, 0
    pick = sel[np.unique(np.linspace(0, sel.size - 1, min(max_segments, sel.size)).round().astype(np.int64))]
    refs = [list(map(int, table.segment(int(i)))) for i in pick]
    hits = 0
    for a in range(0, len(refs), batch_size):
        chunk = refs[a : a + batch_size]
        T = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), T), vae.config.pad_id, dtype=torch.long)  # (B, T)
        for i, s in enumerate(chunk):
            ids[i, : len(s)] = torch.as_tensor(s)
        lengths = torch.tensor([len(s) for s in chunk])
        got = vae.reconstruct(ids.to(device), lengths=lengths.to(device), max_len=vae.config.max_len)
        hits += exact_match_count(got, chunk)
    return hits / len(refs), len(refs)


__all__ = ["EvalDocs", "QualityResult", "check_same_bytes", "choose_documents", "compression", "lm_eval_settings",
           "score_lm", "score_sllm", "sllm_table", "split_doc_bytes", "vae_exact_match"]
