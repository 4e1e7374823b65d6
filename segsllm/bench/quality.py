"""Quality on the test split: bits/byte per document, token perplexity, compression, VAE exact match.

Every model of a domain is scored on **the same bytes**: :func:`scored_documents` picks the
test documents and the prefix of each once per domain (:func:`segsllm.bench.selection.select_scored`:
at least ``min_docs`` documents, none more than ``max_share`` of the scored bytes), every
scorer tokenises exactly those texts, and every bits/byte divides by their exact UTF-8 bytes
(checked, docs/DESIGN.md §7). Every scorer returns the NLL **per document**, the unit the
paired bootstrap (:mod:`segsllm.stats`) resamples.

Both models see the same token context ``C`` (:mod:`segsllm.bench.context`):

- Token LM (:func:`score_lm`): each document is ``BOS d EOS``, a sliding window of ``C``
  positions and ``stride`` new ones per window; NLL over the document's tokens and its EOS.
- SLLM (:func:`score_sllm`): windows of whole segments whose tokens sum to at most ``C``,
  teacher-forced (:meth:`segsllm.models.sllm.SLLM.forward`), earlier segments carried as
  context; NLL over every scored segment's tokens and EOS plus its stop decision (and the
  document's final stop). ``extra`` splits it: segment tokens (of which each segment's first
  token, decoded from the predicted latent alone) and boundaries (EOS + stop); and
  ``cost_by_length`` sums each scored segment's NLL (tokens + EOS) and counts the segments
  by segment length: what a segment of each length costs this SLLM. Token perplexity
  divides by document tokens + 1 per document, the LM's denominator; the paper-style
  perplexity is reported for comparison only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segsllm.errors import DataError


@dataclass
class EvalDocs:
    """The scored documents of one domain/split: every model is scored on exactly these texts."""

    domain: str
    split: str
    ids: list[str]  # (D,) document ids
    texts: list[str]  # (D,) the scored text of each (a prefix when capped)
    doc_bytes: np.ndarray  # (D,) exact UTF-8 bytes of each scored text
    full_bytes: np.ndarray  # (D,) UTF-8 bytes of each whole document

    @property
    def n_docs(self) -> int:
        return len(self.ids)

    @property
    def total_bytes(self) -> int:
        return int(self.doc_bytes.sum())

    @property
    def truncated(self) -> int:
        """Documents scored as a prefix (cut to the share cap or the byte budget)."""
        return int((self.doc_bytes < self.full_bytes).sum())


@dataclass
class QualityResult:
    """Per-document NLL and the metrics derived from it, for one model on one :class:`EvalDocs`."""

    model: str  # "baseline" | "base_lm" | "matched:<spec>" | "sllm:<spec>"
    doc_nats: np.ndarray  # (D,) NLL per document, nats
    doc_bytes: np.ndarray  # (D,) bytes per document (the same for every model)
    doc_ids: list[str]
    n_tokens: int  # perplexity denominator: document tokens + 1 per document
    context_tokens: int
    stride_tokens: int
    paper_style_perplexity: float = math.nan  # SLLM only, "paper-style" (labelled everywhere)
    extra: dict[str, Any] = field(default_factory=dict)  # scorer-specific breakdowns (see each scorer)

    @property
    def nll_nats(self) -> float:
        return float(self.doc_nats.sum())

    @property
    def n_bytes(self) -> int:
        return int(self.doc_bytes.sum())

    @property
    def n_docs(self) -> int:
        return len(self.doc_ids)

    @property
    def bits_per_byte(self) -> float:
        from segsllm.metrics import bits_per_byte

        return bits_per_byte(self.nll_nats, self.n_bytes)

    @property
    def token_perplexity(self) -> float:
        from segsllm.metrics import token_perplexity

        return token_perplexity(self.nll_nats, self.n_tokens)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("doc_nats", "doc_bytes", "doc_ids"):
            d.pop(k)
        d.update(nll_nats=self.nll_nats, n_bytes=self.n_bytes, n_docs=self.n_docs, bits_per_byte=self.bits_per_byte,
                 token_perplexity=self.token_perplexity)
        return d


def scored_documents(data_dir: str | Path, domain: str, split: str, *, target_bytes: int | None, min_docs: int = 20,
                     max_share: float = 1 / 8, caps: Mapping[str, Any] | None = None) -> EvalDocs:
    """The documents (and prefixes) of a split every model is scored on (module docstring)."""
    from segsllm.bench.selection import select_scored
    from segsllm.data.store import iter_documents

    docs = [(d.id, d.text) for d in iter_documents(data_dir, domain, split, **dict(caps or {}))]
    chosen = select_scored(docs, target_bytes, min_docs=min_docs, max_share=max_share)
    if not chosen:
        raise DataError(f"{domain}: the {split} split has no non-empty document to evaluate")
    return EvalDocs(domain, split, [c.id for c in chosen], [c.text for c in chosen],
                    np.asarray([c.n_bytes for c in chosen], dtype=np.int64),
                    np.asarray([c.full_bytes for c in chosen], dtype=np.int64))


def subset(docs: EvalDocs, max_bytes: int | None) -> EvalDocs:
    """Whole scored documents, evenly spread, about ``max_bytes`` in all (``docs`` itself
    when they all fit): the cheaper sample a context sweep scores."""
    from segsllm.data.token_windows import pick_documents

    rows = pick_documents(docs.doc_bytes, max_bytes)
    if rows.size == docs.n_docs:
        return docs
    return EvalDocs(docs.domain, docs.split, [docs.ids[i] for i in rows], [docs.texts[i] for i in rows],
                    docs.doc_bytes[rows], docs.full_bytes[rows])


def _check_bytes(got: np.ndarray, docs: EvalDocs, who: str) -> None:
    if got.shape != docs.doc_bytes.shape or not np.array_equal(got, docs.doc_bytes):
        raise DataError(f"{docs.domain}: {who} covers {int(np.sum(got))} bytes in {got.size} documents, expected "
                        f"{docs.total_bytes} in {docs.n_docs} (same bytes for every model)")


# --------------------------------------------------------------------------- token LM


def trained_context(lm_dir: str | Path | None) -> int | None:
    """The window length the token LM was trained with (``lm.context_len`` of its
    config.yaml; None when unknown)."""
    path = Path(lm_dir) / "config.yaml" if lm_dir else None
    if path is None or not path.is_file():
        return None
    from omegaconf import OmegaConf

    value = (OmegaConf.load(path).get("lm") or {}).get("context_len")
    return int(value) if value else None


def lm_context_limit(model: Any) -> int | None:
    """The most input positions the token LM can take (None: unknown)."""
    from segsllm.models.token_lm import max_positions

    return max_positions(model)


def score_lm(model: Any, tokenizer: Any, docs: EvalDocs, *, context_tokens: int, stride: int, name: str = "baseline",
             batch_size: int = 8, device: Any = "cpu", per_token: bool = False) -> QualityResult:
    """Per-document NLL of a ``*ForCausalLM`` on ``docs``: sliding windows of ``context_tokens``.
    With ``per_token``, ``extra["token_nats"]`` holds each document's NLL per token ((n + 1,):
    its tokens, then its EOS)."""
    import torch
    import torch.nn.functional as F

    from segsllm.data.segments import build_segment_table
    from segsllm.data.token_windows import (
        IGNORE,
        DocumentSpans,
        TokenWindows,
        _WholeDocument,
        collate_windows,
    )
    from segsllm.data.vocab import vocab_bytes
    from segsllm.models.token_lm import special_ids

    limit = lm_context_limit(model)
    if limit is not None and context_tokens > limit:
        raise DataError(f"{name} takes at most {limit} positions, asked to score with a context of {context_tokens}")
    table = build_segment_table(docs.texts, tokenizer, _WholeDocument(), docs.domain)
    spans = DocumentSpans.from_table(table)
    if not np.array_equal(spans.doc_index, np.arange(docs.n_docs)):
        raise DataError(f"{docs.domain}: {name} found no tokens in some scored document")
    bos, eos, pad = special_ids(tokenizer)
    windows = TokenWindows(spans, context_len=context_tokens, bos_id=bos, eos_id=eos, stride=stride,
                           token_bytes=vocab_bytes(tokenizer).lengths.copy(), doc_bytes=docs.doc_bytes,
                           domain=docs.domain)
    _check_bytes(np.bincount(windows.row, weights=windows.n_bytes, minlength=docs.n_docs).astype(np.int64), docs, name)
    doc_nats = np.zeros(docs.n_docs, dtype=np.float64)  # (D,)
    token_nats = [np.zeros(n + 1) for n in spans.lengths.tolist()] if per_token else None
    was_training = model.training
    model.eval()
    dev = torch.device(device)
    try:
        with torch.no_grad():
            for start in range(0, len(windows), batch_size):
                rows = range(start, min(start + batch_size, len(windows)))
                batch = collate_windows([windows[i] for i in rows], pad_id=pad)
                logits = model(input_ids=batch["input_ids"].to(dev), use_cache=False).logits  # (B, T, V)
                labels = batch["labels"].to(dev)  # (B, T)
                nll = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE,
                                      reduction="none")  # (B, T)
                np.add.at(doc_nats, windows.row[list(rows)], nll.sum(1).double().cpu().numpy())
                if token_nats is not None:  # window w scores document positions [b, e)
                    per = nll.double().cpu().numpy()  # (B, T)
                    for r, w in enumerate(rows):
                        a, b, e = int(windows.a[w]), int(windows.b[w]), int(windows.e[w])
                        token_nats[int(windows.row[w])][b:e] = per[r, b - a : e - a]
    finally:
        model.train(was_training)
    n_tok = int(spans.lengths.sum()) + docs.n_docs
    if windows.n_targets != n_tok:  # pragma: no cover - window_bounds tiles by construction
        raise DataError(f"{docs.domain}: {name} scored {windows.n_targets} positions, expected {n_tok}")
    return QualityResult(model=name, doc_nats=doc_nats, doc_bytes=docs.doc_bytes.copy(), doc_ids=list(docs.ids),
                         n_tokens=n_tok, context_tokens=context_tokens, stride_tokens=stride,
                         extra={"token_nats": token_nats} if per_token else {})


# --------------------------------------------------------------------------- SLLM


def sllm_table(docs: EvalDocs, tokenizer: Any, segmenter: Any) -> Any:
    """The scored texts cut by ``segmenter`` (a :class:`~segsllm.data.segments.SegmentTable`,
    document ``i`` = ``docs.texts[i]``)."""
    from segsllm.data.segments import build_segment_table

    return build_segment_table(docs.texts, tokenizer, segmenter, docs.domain)


def segmenter_tokens_per_s(segmenter: Any, table: Any, repeats: int = 3) -> float:
    """Tokens/s of ``segmenter.segment_batch`` alone on the documents of ``table`` (their token
    ids as :func:`sllm_table` tokenized them; best of ``repeats``): what the segmenter costs per
    token in batch mode, on this machine."""
    import time

    from segsllm.data.segment_windows import document_bounds

    starts = np.asarray(table.starts, dtype=np.int64)
    lengths = np.asarray(table.lengths, dtype=np.int64)
    ids = [np.asarray(table.ids[starts[lo] : starts[hi - 1] + lengths[hi - 1]], dtype=np.int64)
           for lo, hi in document_bounds(table).tolist()]
    n_tokens = sum(len(x) for x in ids)
    best = math.inf
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        segmenter.segment_batch(ids)
        best = min(best, time.perf_counter() - t0)
    return n_tokens / max(best, 1e-9)


def sllm_windows(table: Any, context_tokens: int, stride: int, max_segments: int | None) -> list[dict[str, Any]]:
    """Every equal-context window of ``table`` as an item for
    :func:`segsllm.data.segment_windows.collate_windows` + ``doc``, ``offset`` (first scored
    slot), ``tokens`` (the window's segment tokens, at most ``context_tokens``) and
    ``segment`` (the table index of its first segment)."""
    from segsllm.bench.context import segment_window_bounds
    from segsllm.data.segment_windows import document_bounds

    lengths = np.asarray(table.lengths, dtype=np.int64)
    starts = np.asarray(table.starts, dtype=np.int64)
    seg_doc = np.asarray(table.doc_index)
    items = []
    for lo, hi in document_bounds(table).tolist():
        for a, b, e in segment_window_bounds(lengths[lo:hi], context_tokens, stride, max_segments):
            s0, s1 = lo + a, lo + e
            tok0, n_tok = int(starts[s0]), int(lengths[s0:s1].sum())
            items.append({"ids": np.asarray(table.ids[tok0 : tok0 + n_tok], dtype=np.int64),
                          "lengths": lengths[s0:s1], "n_bytes": int(np.asarray(table.n_bytes[lo + b : s1]).sum()),
                          "is_first": a == 0, "is_last": s1 == hi, "doc": int(seg_doc[lo]), "offset": b - a,
                          "tokens": n_tok, "segment": s0})
    return items


def score_sllm(model: Any, table: Any, docs: EvalDocs, *, context_tokens: int, stride: int, name: str = "sllm",
               batch_size: int = 4, device: Any = "cpu") -> QualityResult:
    """Per-document NLL of an SLLM on ``docs`` (``table``: the texts cut by its segmenter,
    :func:`sllm_table`) with windows of at most ``context_tokens`` segment tokens;
    ``extra["segment_nats"]`` is every segment's NLL (tokens + EOS, table order)."""
    import torch

    from segsllm.data.segment_windows import collate_windows

    limit = model.max_positions
    items = sllm_windows(table, context_tokens, stride, (limit - 1) if limit else None)
    seg_doc = np.asarray(table.doc_index)
    _check_bytes(np.bincount(seg_doc, weights=np.asarray(table.n_bytes), minlength=docs.n_docs).astype(np.int64),
                 docs, name)
    D = docs.n_docs
    doc_nats = np.zeros(D, dtype=np.float64)  # (D,)
    parts = dict.fromkeys(("tokens", "first", "seg_eos", "stop", "ps_ce", "ps_n"), 0.0)
    width = int(np.asarray(table.lengths).max(initial=0)) + 1
    segment_nats = np.zeros(len(table.lengths))  # (N,) every segment is scored in exactly one window
    len_nats, len_count = np.zeros(width), np.zeros(width, dtype=np.int64)  # by segment length
    pad = model.vae.config.pad_id
    dev = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                batch = collate_windows(chunk, pad)
                out = model(batch["ids"].to(dev), batch["lengths"].to(dev), is_last=batch["is_last"].to(dev),
                            return_details=True)
                seg_nll = out["seg_nll"].double().cpu().numpy()  # (B, S)
                eos_nll = out["seg_eos_nll"].double().cpu().numpy()  # (B, S)
                first_nll = out["seg_first_nll"].double().cpu().numpy()  # (B, S)
                stop_nll = out["stop_nll"].double().cpu().numpy()  # (B, S+1), 0 where not scored
                for r, it in enumerate(chunk):
                    o, k = it["offset"], len(it["lengths"])
                    seg = seg_nll[r, o:k]
                    stop = stop_nll[r, o : k + 1].sum()  # the decision before each scored segment (+ final stop)
                    doc_nats[it["doc"]] += seg.sum() + stop
                    parts["tokens"] += seg.sum() - eos_nll[r, o:k].sum()
                    parts["first"] += first_nll[r, o:k].sum()
                    parts["seg_eos"] += eos_nll[r, o:k].sum()
                    parts["stop"] += stop
                    segment_nats[it["segment"] + o : it["segment"] + k] = seg
                    scored_len = np.asarray(it["lengths"][o:k], dtype=np.int64)
                    len_nats += np.bincount(scored_len, weights=seg, minlength=width)
                    len_count += np.bincount(scored_len, minlength=width)
                    mean_ce = seg / (np.asarray(it["lengths"][o:k]) + 1.0)  # paper-style: per-segment mean CE
                    if it["is_first"] and o == 0:
                        mean_ce = mean_ce[1:]  # each document's first segment excluded
                    parts["ps_ce"] += mean_ce.sum()
                    parts["ps_n"] += mean_ce.size
    finally:
        model.train(was_training)
    from segsllm.metrics import bits_per_byte

    n_tok = int(np.asarray(table.lengths).sum()) + D
    return QualityResult(
        model=name, doc_nats=doc_nats, doc_bytes=docs.doc_bytes.copy(), doc_ids=list(docs.ids), n_tokens=n_tok,
        context_tokens=context_tokens, stride_tokens=stride,
        paper_style_perplexity=math.exp(min(parts["ps_ce"] / parts["ps_n"], 700.0)) if parts["ps_n"] else math.nan,
        extra={"bits_per_byte_tokens": bits_per_byte(parts["tokens"], docs.total_bytes),
               "bits_per_byte_first_token": bits_per_byte(parts["first"], docs.total_bytes),
               "bits_per_byte_boundaries": bits_per_byte(parts["seg_eos"] + parts["stop"], docs.total_bytes),
               "cost_by_length": {"nats": len_nats.tolist(), "segments": len_count.tolist()},
               "segment_nats": segment_nats,
               "windows": len(items), "max_window_tokens": max((it["tokens"] for it in items), default=0),
               "max_window_segments": max((len(it["lengths"]) for it in items), default=0)},
    )


def costs_by_length(parts: Sequence[Mapping[str, Sequence[float]]]) -> dict[str, list[float]]:
    """Merge :func:`score_sllm`'s ``cost_by_length`` of one SLLM over seeds: for each segment
    length that occurs, the segments scored, their mean NLL (nats, tokens + EOS) and bits per
    token (that NLL over ln 2 x length)."""
    width = max((len(p["segments"]) for p in parts), default=0)
    nats, count = np.zeros(width), np.zeros(width)
    for p in parts:
        nats[: len(p["nats"])] += np.asarray(p["nats"], dtype=np.float64)
        count[: len(p["segments"])] += np.asarray(p["segments"], dtype=np.float64)
    length = np.flatnonzero(count)
    per_segment = nats[length] / count[length]
    return {"length": length.tolist(), "segments": count[length].astype(int).tolist(),
            "nats_per_segment": per_segment.tolist(), "bits_per_token": (per_segment / (math.log(2) * length)).tolist()}


def check_same_bytes(results: list[QualityResult]) -> None:
    """Every model of a domain scored the same documents and the same bytes (docs/DESIGN.md §7)."""
    if not results:
        return
    ref = results[0]
    for r in results[1:]:
        if r.doc_ids != ref.doc_ids or not np.array_equal(r.doc_bytes, ref.doc_bytes):
            raise DataError(f"{r.model} and {ref.model} were scored on different documents or bytes "
                            f"({r.n_docs} docs/{r.n_bytes} B vs {ref.n_docs} docs/{ref.n_bytes} B)")


# --------------------------------------------------------------------------- compression, exact match


def compression(table: Any, sel: np.ndarray | None = None) -> dict[str, float]:
    """Mean, p50, p95, max tokens per segment over the selected segments (all when None)."""
    from segsllm.metrics import length_stats

    lengths = np.asarray(table.lengths)
    return length_stats(lengths if sel is None else lengths[sel])


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


__all__ = ["EvalDocs", "QualityResult", "check_same_bytes", "compression", "costs_by_length", "lm_context_limit",
           "score_lm", "score_sllm", "scored_documents", "sllm_table", "sllm_windows", "subset", "trained_context",
           "vae_exact_match"]
