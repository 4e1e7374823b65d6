"""The ``learned`` segmenter: a trained boundary predictor + explicit length control.

``learned:DIR`` loads a folder written by ``segsllm train-splitter`` (docs/DESIGN.md §6). The
predictor (:mod:`segsllm.models.boundary`) gives each token a logit "a segment ends after
this token"; how logits become cuts is the length control:

- **threshold** — cut after token ``t`` when its logit exceeds a threshold calibrated on
  validation data to hit the target mean length; segments longer than ``max_len`` are
  split. This is also the **streaming** rule (``mode=stream``): the decision for token
  ``t`` needs only tokens ``<= t + lookahead`` (the predictor's receptive field) and the
  earlier decisions, so :class:`StreamingSplitter` commits it as soon as token
  ``t + lookahead`` arrives and never revises it.
- **hazard** — causal and length-aware: after token ``t`` ending a segment of ``l`` tokens so
  far, cut when ``logit_t + prior_weight * log(h(l) / (1 - h(l)))`` exceeds a calibrated
  threshold, ``h`` the length prior's hazard (the chance a segment ends at ``l`` given that it
  reached ``l``; 1 at ``max_len``). With lookahead 0 each decision needs tokens ``<= t`` only,
  so the splitter is causal (``sllm.boundaries=segmenter`` can use it) yet keeps its segments
  near the prior's length, as Viterbi does for the whole document.
- **viterbi** (batch default) — the segmentation that maximises the sum of the cut
  logits, a log length prior (a discretised Gamma with the target mean) per segment and a
  per-segment penalty calibrated to hit the target mean length; segments are at most
  ``max_len`` by construction. Whole-document, so batch mode only.

The semi-Markov dynamic programme (:func:`best_segmentation`) is shared with the ``vae``
teacher, which scores candidate spans by reconstruction loss instead of logits.

This module imports torch only when a predictor is loaded (``segsllm --help`` stays light).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segsllm.segment.base import EMPTY, Cutter, Segmenter, SegmenterError, as_ids, enforce_max_len

MODES = ("batch", "stream")
DECODES = ("threshold", "viterbi", "hazard")


# --------------------------------------------------------------------------- length prior


def length_prior(target_len: float, max_len: int, shape: float = 2.0) -> np.ndarray:
    """log pi(l) for l = 1..max_len: a Gamma(shape, mean=target_len) discretised and
    renormalised over 1..max_len (shape 1 is geometric; larger is more peaked)."""
    lengths = np.arange(1, max_len + 1, dtype=np.float64)
    logp = (shape - 1.0) * np.log(lengths) - shape * lengths / float(target_len)
    logp -= logp.max()
    return logp - math.log(np.exp(logp).sum())


# --------------------------------------------------------------------------- decoding


def ends_from_cuts(cut: np.ndarray, sizes: np.ndarray, max_len: int) -> list[np.ndarray]:
    """Per-document end offsets from a flat boolean ``cut`` mask over concatenated documents
    (``cut[i]``: a segment ends after token ``i``); document ends are always cuts and
    segments longer than ``max_len`` are split (greedily from their start)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    stops = np.cumsum(sizes)
    starts = stops - sizes
    total = int(stops[-1]) if sizes.size else 0
    mark = np.zeros(total + 1, dtype=bool)
    mark[1:] = cut
    mark[stops] = True
    mark[0] = False
    ends = enforce_max_len(np.flatnonzero(mark), max_len) if total else EMPTY
    lo = np.searchsorted(ends, starts, side="right")
    hi = np.searchsorted(ends, stops, side="right")
    return [ends[a:b] - s for a, b, s in zip(lo.tolist(), hi.tolist(), starts.tolist(), strict=True)]


CUT_AT_RULES = ("fixed", "punctuation", "lines")  # the rules a splitter may be restricted to
# The rules whose cut after token t depends on tokens <= t only (and restarts at each of its
# own cuts): a splitter restricted to them can stream. Punctuation moves a boundary past the
# whitespace and closing punctuation after it, so its cut depends on later tokens: batch only.
CAUSAL_CUT_AT = ("fixed", "lines")


def rule_segmenter(spec: str, tokenizer: Any = None, max_len: int | None = None) -> Segmenter:
    """A built-in rule (:data:`CUT_AT_RULES`) from its spec, bound to ``tokenizer``: the
    boundaries a ``cut_at`` splitter may cut at. Built here rather than by the registry,
    which builds the learned segmenter itself."""
    from segsllm.segment.fixed import FixedSegmenter
    from segsllm.segment.lines import LinesSegmenter
    from segsllm.segment.punctuation import PunctuationSegmenter
    from segsllm.segment.spec import bind_params, parse_spec

    rules: dict[str, Any] = {"fixed": FixedSegmenter, "punctuation": PunctuationSegmenter, "lines": LinesSegmenter}
    parsed = parse_spec(spec, rules)
    if parsed.name not in rules:
        raise SegmenterError(f"cut_at {spec!r}: a splitter can be restricted to {', '.join(CUT_AT_RULES)} only")
    factory = rules[parsed.name]
    seg = factory(**bind_params(factory, parsed.name, parsed.positional, parsed.kwargs,
                                {"max_len": max_len} if max_len is not None else None))
    return seg.bind(tokenizer) if tokenizer is not None else seg


def rule_cuts(rule: Segmenter, docs: Sequence[Any]) -> list[np.ndarray]:
    """(n,) bool per document: ``True`` after the tokens where ``rule`` ends a segment."""
    out = []
    for ids, ends in zip(docs, rule.segment_batch([as_ids(d) for d in docs]), strict=True):
        allowed = np.zeros(len(as_ids(ids)), dtype=bool)
        allowed[np.asarray(ends, dtype=np.int64) - 1] = True
        out.append(allowed)
    return out


def mask_logits(logits: Sequence[np.ndarray], allowed: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Logits with ``-inf`` wherever a cut is not ``allowed``: neither decode cuts there."""
    return [np.where(a, z, -np.inf).astype(np.float32) for z, a in zip(logits, allowed, strict=True)]


def threshold_decode(logits: Sequence[np.ndarray], threshold: float, max_len: int) -> list[np.ndarray]:
    """Cut where logit > ``threshold``, then split segments longer than ``max_len``."""
    if not len(logits):
        return []
    sizes = np.array([len(z) for z in logits], dtype=np.int64)
    if sizes.sum() == 0:
        return [EMPTY for _ in logits]
    flat = np.concatenate([np.asarray(z, dtype=np.float32) for z in logits])
    return ends_from_cuts(flat > threshold, sizes, max_len)


def log_hazard_odds(log_prior: np.ndarray) -> np.ndarray:
    """log(h(l) / (1 - h(l))) for l = 1..len(log_prior), ``h(l) = pi(l) / sum_{l' >= l} pi(l')``
    the prior's hazard; +inf at the last length (a segment must end there)."""
    lp = np.asarray(log_prior, dtype=np.float64)
    tail = np.logaddexp.accumulate(lp[::-1])[::-1]  # log sum_{l' >= l} pi(l')
    later = np.append(tail[1:], -np.inf)  # log sum_{l' > l} pi(l')
    with np.errstate(divide="ignore"):
        return lp - later


def hazard_decode(logits: Sequence[np.ndarray], threshold: float, max_len: int, log_odds: np.ndarray,
                  weight: float = 1.0) -> list[np.ndarray]:
    """Cut after token ``t`` when ``logit_t + weight * log_odds[l - 1] > threshold``, ``l`` the
    length of the segment so far (a segment of ``max_len`` always ends). Causal: each cut
    depends on the logits up to ``t`` and the earlier cuts. One vectorised step per segment:
    from a segment's start, its end is the first position of the next ``max_len`` that clears
    the threshold."""
    bonus = weight * np.asarray(log_odds[:max_len], dtype=np.float64)  # (max_len,)
    out = []
    with np.errstate(invalid="ignore"):  # -inf (a cut cut_at forbids) + inf (at max_len): forced anyway
        for zi in logits:
            z = np.asarray(zi, dtype=np.float64)
            n, start, ends = len(z), 0, []
            while start < n:
                span = min(max_len, n - start)
                hit = np.flatnonzero(z[start : start + span] + bonus[:span] > threshold)
                start += int(hit[0]) + 1 if hit.size else span  # no cut: max_len or the document's end
                ends.append(start)
            out.append(np.asarray(ends, dtype=np.int64))
    return out


def best_segmentation(
    sizes: Sequence[int],
    max_len: int,
    end_score: Sequence[np.ndarray] | None = None,
    len_score: np.ndarray | None = None,
    span_score: Sequence[np.ndarray] | None = None,
    penalty: float = 0.0,
    rows: int = 256,
) -> list[np.ndarray]:
    """Maximum-score segmentation of each document (a semi-Markov Viterbi search).

    A segment ``[s, e)`` of length ``l = e - s <= max_len`` scores
    ``end_score[e-1] + len_score[l-1] + span_score[e-1, l-1] - penalty``, except that the
    document's last segment gets no ``end_score`` (its end is not a decision). Per
    document: ``end_score`` (n,), ``span_score`` (n, max_len) indexed by *end* position
    (missing terms are 0). Returns the end offsets of the best segmentation; ties go to
    the shorter last segment. Documents are processed ``rows`` at a time, sorted by length,
    with one vectorised step per position over the documents still running: O(n * max_len)
    work, O(longest document) Python steps per group.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    L = int(max_len)
    out: list[np.ndarray] = [EMPTY] * len(sizes)
    ls = np.zeros(L) if len_score is None else np.asarray(len_score, dtype=np.float64)[:L]
    if ls.size < L:
        raise ValueError(f"len_score needs {L} values, got {ls.size}")
    order = np.argsort(sizes, kind="stable")
    order = order[sizes[order] > 0]
    for g in range(0, len(order), rows):
        idx = order[g : g + rows]  # ascending sizes: the documents still running at j are a suffix
        n = sizes[idx]
        D, n_max = len(idx), int(n[-1])
        # Time-major layouts: each step reads contiguous memory.
        end = np.zeros((n_max, D), dtype=np.float64)  # (n, D)
        for r, i in enumerate(idx.tolist()):
            if end_score is not None:
                end[: n[r], r] = end_score[i]
            end[n[r] - 1, r] = 0.0  # the document's end is forced, not scored
        end -= penalty  # every segment pays the penalty
        span = None
        if span_score is not None:
            span = np.full((n_max, L, D), -np.inf)  # (n, L, D)
            for r, i in enumerate(idx.tolist()):
                span[: n[r], :, r] = span_score[i]
        # Time runs backwards in ``rb``: rb[R - j] = best score of the first j tokens (per
        # document), so that best[j-1], best[j-2] ... best[j-L] is the contiguous block
        # rb[R-j+1 : R-j+1+L] (row l-1 <-> a last segment of length l); rows past R hold
        # -inf (j - l < 0).
        R = n_max
        rb = np.full((R + L + 1, D), -np.inf)
        rb[R] = 0.0
        first = np.searchsorted(n, np.arange(n_max + 1), side="left")  # first document with n >= j
        cand = np.empty((L, D))
        lsc = ls[:, None]
        for j in range(1, n_max + 1):  # forward pass: scores only (back pointers are recomputed below)
            lo = int(first[j])
            c = cand[:, lo:]
            np.add(rb[R - j + 1 : R - j + 1 + L, lo:], lsc, out=c)  # (L, D')
            if span is not None:
                c += span[j - 1, :, lo:]
            np.add(c.max(axis=0), end[j - 1, lo:], out=rb[R - j, lo:])
        for r, i in enumerate(idx.tolist()):
            if not np.isfinite(rb[R - n[r], r]):
                raise ValueError("no valid segmentation (all spans scored -inf?)")
            col = np.ascontiguousarray(rb[:, r])
            pos, ends = int(n[r]), []
            while pos > 0:  # one step per segment: the same sums as the forward pass, first max
                c = col[R - pos + 1 : R - pos + 1 + L] + ls
                if span is not None:
                    c += span[pos - 1, :, r]
                ends.append(pos)
                pos -= int(c.argmax()) + 1
            out[i] = np.array(ends[::-1], dtype=np.int64)
    return out


def viterbi_decode(logits: Sequence[np.ndarray], max_len: int, log_prior: np.ndarray, prior_weight: float,
                   penalty: float) -> list[np.ndarray]:
    """Length-prior Viterbi over boundary logits (see :func:`best_segmentation`)."""
    return best_segmentation([len(z) for z in logits], max_len, end_score=logits,
                             len_score=prior_weight * np.asarray(log_prior[:max_len]), penalty=penalty)


# --------------------------------------------------------------------------- calibration


def mean_length(ends: Sequence[np.ndarray]) -> float:
    """Tokens per segment over several documents (total tokens / total segments)."""
    n_seg = sum(len(e) for e in ends)
    n_tok = sum(int(e[-1]) for e in ends if len(e))
    return n_tok / n_seg if n_seg else float("nan")


def balanced_mean(per_domain: Mapping[str, float]) -> float:
    """Geometric mean of per-domain mean lengths: what calibration aims at, so that no
    domain is far off the target on either side."""
    vals = [v for v in per_domain.values() if v == v and v > 0]
    return float(np.exp(np.mean(np.log(vals)))) if vals else float("nan")


def bisect_parameter(mean_at: Callable[[float], float], target: float, lo: float, hi: float,
                     iters: int = 30, tol: float = 0.002) -> tuple[float, float]:
    """The parameter value in [lo, hi] whose (non-decreasing) ``mean_at`` is closest to
    ``target``; the bracket is widened when the target lies outside it. Returns (value, mean)."""
    m_lo, m_hi = mean_at(lo), mean_at(hi)
    for _ in range(12):  # widen
        if m_lo <= target <= m_hi:
            break
        width = hi - lo
        if m_lo > target:
            lo, m_lo = lo - width, mean_at(lo - width)
        if m_hi < target:
            hi, m_hi = hi + width, mean_at(hi + width)
    best = min(((abs(m_lo - target), lo, m_lo), (abs(m_hi - target), hi, m_hi)))
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        m = mean_at(mid)
        best = min(best, (abs(m - target), mid, m))
        if abs(m - target) <= tol * target:
            break
        if m < target:
            lo = mid
        else:
            hi = mid
    return best[1], best[2]


# --------------------------------------------------------------------------- the segmenter


class LearnedSegmenter(Segmenter):
    """Trained boundary predictor loaded from a train-splitter folder (learned:DIR)."""

    name = "learned"

    def __init__(
        self,
        path: str,
        mode: str = "batch",
        decode: str | None = None,
        max_len: int | None = None,
        threshold: float | None = None,
        device: str = "cpu",
    ) -> None:
        if mode not in MODES:
            raise SegmenterError(f"learned: mode must be one of {', '.join(MODES)}, got {mode!r}")
        if decode is not None and decode not in DECODES:
            raise SegmenterError(f"learned: decode must be one of {', '.join(DECODES)}, got {decode!r}")
        if mode == "stream" and decode == "viterbi":
            raise SegmenterError("learned: the streaming mode decodes by threshold (viterbi needs the whole document)")
        self.path = str(path)
        self.mode = mode
        self.device = device
        self.model = _load_predictor(self.path, device)
        cfg = self.model.config
        self.config = cfg
        self.max_len = int(cfg.max_len if max_len is None else max_len)
        if self.max_len < 1:
            raise SegmenterError(f"learned: max_len must be >= 1, got {max_len}")
        self.decode = decode
        self.threshold = threshold
        self.tokenizer = _folder_tokenizer(self.path)
        self._fingerprint = self.model.manifest.get("tokenizer_fingerprint")
        self._log_prior = length_prior(cfg.target_len, self.max_len, cfg.prior_shape)
        self._log_odds = log_hazard_odds(self._log_prior)
        self._rule = self._build_rule()
        if mode == "stream" and self._rule is not None and cfg.cut_at.split(":", 1)[0] not in CAUSAL_CUT_AT:
            raise SegmenterError(f"learned: cut_at={cfg.cut_at} looks past its own boundaries, so this splitter "
                                 f"decodes in batch mode only (streaming needs cut_at in {', '.join(CAUSAL_CUT_AT)})")

    def _build_rule(self) -> Segmenter | None:
        """The rule whose boundaries are the only allowed cuts (``config.cut_at``), if any."""
        cut_at = getattr(self.config, "cut_at", None)
        return rule_segmenter(cut_at, self.tokenizer, self.max_len) if cut_at else None

    # ---- description: keep specs short (only what differs from the folder's defaults)

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path}
        if self.mode != "batch":
            out["mode"] = self.mode
        if self.decode is not None:
            out["decode"] = self.decode
        if self.max_len != self.config.max_len:
            out["max_len"] = self.max_len
        if self.threshold is not None:
            out["threshold"] = self.threshold
        if self.device != "cpu":
            out["device"] = self.device
        return out

    def spec(self) -> str:
        from segsllm.segment.spec import format_spec

        return format_spec(self.name or "learned", self.params())

    @property
    def effective_decode(self) -> str:
        """How logits become cuts in this configuration."""
        return "threshold" if self.mode == "stream" else (self.decode or self.config.decode)

    @property
    def effective_threshold(self) -> float:
        return float(self.config.threshold if self.threshold is None else self.threshold)

    @property
    def lookahead(self) -> int:
        """Tokens after ``t`` that the decision for ``t`` may depend on (streaming mode)."""
        return int(self.config.lookahead)

    @property
    def causal(self) -> bool:  # type: ignore[override]
        """Lookahead 0 and threshold or hazard decoding (and a causal ``cut_at`` rule): the cut
        after token ``t`` is then a function of tokens ``<= t`` and the earlier cuts."""
        rule_causal = self._rule is None or bool(self._rule.causal)
        return self.lookahead == 0 and self.effective_decode in ("threshold", "hazard") and rule_causal

    def bind(self, tokenizer: Any) -> LearnedSegmenter:
        """Refuse a tokenizer other than the one the predictor was trained with."""
        from segsllm.models.artifact import fingerprint_of

        given = fingerprint_of(tokenizer)
        if self._fingerprint is not None and given is not None and given != self._fingerprint:
            raise SegmenterError(
                f"learned:{self.path} was trained with another tokenizer (fingerprint {self._fingerprint}, "
                f"given {given}); use the tokenizer it was trained with"
            )
        self.tokenizer = tokenizer
        self._rule = self._build_rule()
        return self

    # ---- segmentation

    def logits(self, docs: Sequence[Any]) -> list[np.ndarray]:
        """Boundary logits (float32) of each document, ``-inf`` where ``config.cut_at`` does not cut."""
        raw = self.raw_logits(docs)
        return raw if self._rule is None else mask_logits(raw, rule_cuts(self._rule, docs))

    def raw_logits(self, docs: Sequence[Any]) -> list[np.ndarray]:
        """The predictor's boundary logits (float32); ids are checked against the vocabulary."""
        arrays = [as_ids(d) for d in docs]
        vocab = self.config.vocab_size
        for a in arrays:
            if a.size and (int(a.min()) < 0 or int(a.max()) >= vocab):
                bad = int(a.min()) if int(a.min()) < 0 else int(a.max())
                raise SegmenterError(
                    f"token id {bad} is outside the vocabulary (size {vocab}) of learned:{self.path}: wrong tokenizer?"
                )
        return self.model.document_logits(arrays)

    def decode_logits(self, logits: Sequence[np.ndarray], penalty: float | None = None,
                      threshold: float | None = None) -> list[np.ndarray]:
        """End offsets from logits under this segmenter's length control (overridable for calibration)."""
        if self.effective_decode == "threshold":
            tau = self.effective_threshold if threshold is None else threshold
            return threshold_decode(logits, tau, self.max_len)
        if self.effective_decode == "hazard":
            tau = float(self.config.hazard_threshold) if threshold is None else threshold
            return hazard_decode(logits, tau, self.max_len, self._log_odds, self.config.prior_weight)
        cfg = self.config
        pen = cfg.viterbi_penalty if penalty is None else penalty
        return viterbi_decode(logits, self.max_len, self._log_prior, cfg.prior_weight, pen)

    def segment(self, ids: Any) -> np.ndarray:
        return self.segment_batch([ids])[0]

    def segment_batch(self, docs: Sequence[Any]) -> list[np.ndarray]:
        if not len(docs):
            return []
        return self.decode_logits(self.logits(docs))

    def cutter(self) -> Cutter:
        """Token-by-token decisions for generation: one incremental predictor step per token
        (cached per-block states, :class:`segsllm.models.boundary.LogitStream`)."""
        if not self.causal:
            raise SegmenterError(f"segmenter {self.spec()!r} is not causal: its cuts depend on later tokens "
                                 "(a causal learned splitter has lookahead 0 and decodes by threshold or hazard)")
        return _LearnedCutter(self)

    def stream(self) -> StreamingSplitter:
        """An incremental, causal splitter over one token stream (threshold rule)."""
        return StreamingSplitter(self)


class StreamingSplitter:
    """Segment a token stream as it arrives: :meth:`push` ids, get the ends that are final.

    The decision after token ``t`` is taken once token ``t + lookahead`` has arrived (or the
    stream ends), from the predictor's logit over tokens ``<= t + lookahead`` and the
    length of the current segment; it is never revised. Only the last ``left_context``
    tokens are kept. ``push`` + ``finish`` give exactly ``segment(all ids)`` of the
    segmenter in ``mode=stream`` (up to float rounding of the logits).
    """

    def __init__(self, segmenter: LearnedSegmenter) -> None:
        self.seg = segmenter
        self.model = segmenter.model
        self.left = self.model.left_context
        self.la = segmenter.lookahead
        self.tau = segmenter.effective_threshold
        self.max_len = segmenter.max_len
        self.buffer = EMPTY  # the last tokens: [buffer_start, n)
        self.buffer_start = 0
        # cut_at: the tokens since the rule's last cut before `decided` (a causal rule restarts there)
        self.history: list[np.ndarray] | None = [] if segmenter._rule is not None else None
        self.history_start = 0
        self.n = 0  # tokens received
        self.decided = 0  # tokens whose "cut after" decision is final
        self.last_end = 0  # end offset of the last committed segment
        self.finished = False

    def _decide(self, upto: int, at_end: bool) -> np.ndarray:
        """Decide tokens [decided, upto); logits from buffer tokens [decided - left, n)."""
        if upto <= self.decided:
            return EMPTY
        lo = max(self.decided - self.left, self.buffer_start)
        window = self.buffer[lo - self.buffer_start :]
        z = self.seg.raw_logits([window])[0][self.decided - lo : upto - lo]
        if self.history is not None:
            z = np.where(self._rule_allowed(upto), z, -np.inf)
        ends = []
        for t, zt in enumerate(z.tolist(), start=self.decided):
            if zt > self.tau or (t + 1) - self.last_end >= self.max_len or (at_end and t == self.n - 1):
                ends.append(t + 1)
                self.last_end = t + 1
        self.decided = upto
        keep = max(self.decided - self.left, 0)  # drop what no later logit can see
        self.buffer = self.buffer[keep - self.buffer_start :]
        self.buffer_start = keep
        return np.asarray(ends, dtype=np.int64)

    def _rule_allowed(self, upto: int) -> np.ndarray:
        """Whether the ``cut_at`` rule cuts after each token in [decided, upto). The rule is
        causal and restarts at its own cuts (CAUSAL_CUT_AT), so it runs on the tokens since
        its last cut: its phase (fixed:k) and max_len count from there, as over the whole stream."""
        seen = np.concatenate(self.history) if len(self.history) > 1 else self.history[0]
        self.history = [seen]
        # One token more (a copy of the last): the rule's cut after token n-1 is its own
        # decision, not the forced end of a document that has not ended.
        cuts = rule_cuts(self.seg._rule, [np.append(seen, seen[-1:])])[0][: len(seen)]
        start = self.history_start
        allowed = cuts[self.decided - start : upto - start]
        last = np.flatnonzero(cuts[: upto - start])  # drop what precedes the rule's last cut
        if last.size:
            keep = int(last[-1]) + 1
            self.history = [seen[keep:]]
            self.history_start = start + keep
        return allowed

    def push(self, ids: Any) -> np.ndarray:
        """Add tokens; returns the end offsets (in the stream) that became final."""
        if self.finished:
            raise SegmenterError("this stream is finished; start a new one with segmenter.stream()")
        arr = as_ids(ids)
        if arr.size == 0:
            return EMPTY
        self.buffer = np.concatenate([self.buffer, arr])
        if self.history is not None:
            self.history.append(arr)
        self.n += arr.size
        return self._decide(self.n - self.la, at_end=False)

    def finish(self) -> np.ndarray:
        """End of stream: the remaining end offsets (the last one is ``n``)."""
        self.finished = True
        ends = self._decide(self.n, at_end=True)
        if self.last_end < self.n:  # the last token was decided before the end was known
            ends = np.append(ends, self.n).astype(np.int64)
            self.last_end = self.n
        return ends


class _LearnedCutter(Cutter):
    """A causal learned splitter one token at a time: the predictor's logit of the newest token
    (:class:`segsllm.models.boundary.LogitStream`), the ``cut_at`` rule's own cutter, then the
    threshold or hazard rule at the current run length (as the batch decodes)."""

    def __init__(self, seg: LearnedSegmenter) -> None:
        self.logits = seg.model.logit_stream()
        self.left = seg.model.left_context
        self.vocab = int(seg.config.vocab_size)
        self.max_len = seg.max_len
        self.rule = seg._rule.cutter() if seg._rule is not None else None
        self.hazard = seg.effective_decode == "hazard"
        self.tau = float(seg.config.hazard_threshold) if self.hazard else seg.effective_threshold
        self.bonus = float(seg.config.prior_weight) * np.asarray(seg._log_odds, dtype=np.float64)  # (max_len,)
        self.run = 0

    def _logit(self, token: int) -> float:
        token = int(token)
        if not 0 <= token < self.vocab:
            raise SegmenterError(f"token id {token} is outside the vocabulary (size {self.vocab}) of this splitter")
        return self.logits.push(token)

    def push(self, token: int) -> bool:
        z = self._logit(token)  # every token: the next logits see it
        self.run += 1
        allowed = self.rule.push(token) if self.rule is not None else True
        if self.run >= self.max_len:
            cut = True
        elif not allowed:
            cut = False
        else:
            cut = z + self.bonus[self.run - 1] > self.tau if self.hazard else z > self.tau
        if cut:
            self.run = 0
        return cut

    def end_segment(self) -> None:
        self.run = 0
        if self.rule is not None:
            self.rule.end_segment()

    def start(self, context: Sequence[int]) -> int:
        """Only the last ``left_context`` tokens reach a later logit: those fill the histories."""
        self.logits.reset()
        recent = list(context)[-self.left :] if self.left else []
        for t in recent:
            self._logit(t)
        self.end_segment()
        return len(recent)


# --------------------------------------------------------------------------- loading


def _load_predictor(path: str, device: str) -> Any:
    from segsllm.errors import ArtifactError
    from segsllm.models.loading import load_artifact

    try:
        return load_artifact("boundary_predictor", path, device=device).model
    except ArtifactError as exc:
        raise SegmenterError(f"learned: {exc}") from None


def _folder_tokenizer(path: str) -> Any:
    if not (Path(path) / "tokenizer.json").is_file():
        return None
    from segsllm.data.tokenizer import load_tokenizer

    return load_tokenizer(path)


__all__ = [
    "CAUSAL_CUT_AT",
    "CUT_AT_RULES",
    "DECODES",
    "MODES",
    "LearnedSegmenter",
    "StreamingSplitter",
    "balanced_mean",
    "best_segmentation",
    "bisect_parameter",
    "ends_from_cuts",
    "hazard_decode",
    "length_prior",
    "log_hazard_odds",
    "mask_logits",
    "mean_length",
    "rule_cuts",
    "rule_segmenter",
    "threshold_decode",
    "viterbi_decode",
]
