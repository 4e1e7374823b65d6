"""The ``sllm`` teacher: segment where the SLLM itself pays least (docs/DESIGN.md §6).

An SLLM trained on a segmentation S_t prices a candidate segment ``[s, s+l)`` of a chunk as

    cost(s, l) = -log p_dec(tokens[s:s+l], EOS | z_s)  +  -log(1 - p_stop(h_{s+l}))
                 (decoder NLL of the span and its EOS)     (continuing after it; not after the
                                                            chunk's last token)

where ``h_s`` is the backbone's output after reading everything before token ``s`` and
``z_s = P_out(h_s)`` the latent it hands the decoder. A semi-Markov DP
(:func:`segsllm.segment.learned.best_segmentation`) then picks the segmentation minimising
total cost − ``prior_weight`` · log π(l) (π a Gamma length prior with the target mean)
+ λ per segment, λ bisected per domain to hit the target mean length. With λ = 0 and no
prior this is the SLLM's own NLL of the chunk (up to the approximation below): the labels
optimise the quantity the SLLM is scored on.

**The approximation.** The exact ``h_s`` would depend on how the DP itself segmented
``[0, s)``, which makes the search non-Markov. Instead ``h_s`` is computed under the
*current* segmentation S_t: the backbone reads the S_t segments that end at or before
``s`` (from the start of their SLLM window, as in training) plus, when ``s`` falls inside an
S_t segment, the piece of that segment before ``s`` as one more segment. So ``h_s`` has seen
every token before ``s`` and nothing from ``s`` on (``tests/test_sllm_teacher.py`` checks
it): the prefix is segmented as S_t would, not as the candidate segmentation would. One
decoder pass per start ``s`` over ``tokens[s : s+max_span]`` gives the costs of every length
at once, because the decoder is causal (token NLLs are prefix sums; the EOS cost after ``l``
tokens is read at position ``l``). Hard EM (:mod:`segsllm.train.sllm_em`) retrains the SLLM
on the new segmentation and repeats.

**Merge-only cuts** (``cut_at``, ``splitter.sllm_cut_at``). Unrestricted, the DP's cheapest
cuts carry no local structure a student can learn (docs/DESIGN.md §6, measured). With a
rule segmenter as ``cut_at`` the DP may end a segment only where that rule does (or at the
chunk's end), so every teacher segment is a run of whole rule segments: the DP decides which
rule boundaries to keep, and the student learns a choice among positions it can recognise.

S_t's boundaries are taken as given: a rule that looks ahead (punctuation keeps trailing
whitespace, a learned splitter has ``lookahead``) decided them, so the *position* of the
last S_t boundary before ``s`` may reflect a few tokens after it; the tokens themselves
never enter ``h_s``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segsllm.errors import ConfigError
from segsllm.segment.learned import best_segmentation, length_prior
from segsllm.train.teachers import Teacher, TeacherFit, end_indexed, module_fingerprint


class SLLMTeacher(Teacher):
    """Span costs from a trained SLLM under the segmentation ``segmenter`` (S_t); see the module docstring."""

    name = "sllm"

    def __init__(self, model: Any, segmenter: Any, max_span: int, target_len: float | None = None,
                 prior_weight: float = 1.0, prior_shape: float = 2.0, batch_tokens: int = 4096,
                 device: Any = "cpu", fingerprint: str | None = None, cut_at: Any | None = None) -> None:
        vae_max = model.vae.config.max_len
        if max_span > vae_max:
            raise ConfigError(f"sllm teacher: max_span {max_span} exceeds the SentenceVAE's max_len {vae_max}")
        if segmenter.max_len > vae_max:
            raise ConfigError(f"sllm teacher: segmenter {segmenter.spec()!r} allows {segmenter.max_len} tokens, "
                              f"the SentenceVAE at most {vae_max}")
        if cut_at is not None and cut_at.max_len > max_span:
            raise ConfigError(f"sllm teacher: cut_at {cut_at.spec()!r} allows {cut_at.max_len}-token segments, "
                              f"longer than max_span {max_span}: no merge of them could be a candidate")
        self.model, self.segmenter, self.max_span = model, segmenter, int(max_span)
        self.cut_at = cut_at
        self.target_len, self.prior_weight, self.prior_shape = target_len, float(prior_weight), float(prior_shape)
        self.batch_tokens, self.device = int(batch_tokens), device
        self.fingerprint = fingerprint or module_fingerprint(model)

    def describe(self) -> dict[str, Any]:
        out = {"teacher": self.name, "model": self.fingerprint, "segmentation": self.segmenter.spec(),
               "max_span": self.max_span, "prior_weight": self.prior_weight, "prior_shape": self.prior_shape}
        if self.cut_at is not None:  # only when set: unrestricted teachers keep their label-cache keys
            out["cut_at"] = self.cut_at.spec()
        return out

    # ---------------------------------------------------------------- the SLLM's view

    def _embed(self, pieces: Sequence[np.ndarray]) -> Any:
        """Token pieces -> backbone input vectors (N, H), encoded in length-sorted batches."""
        import torch

        model = self.model
        out = torch.zeros(len(pieces), model.hidden_size, device=self.device)  # (N, H)
        if not len(pieces):
            return out
        lengths = np.array([len(p) for p in pieces], dtype=np.int64)
        order = np.argsort(lengths, kind="stable")
        step = max(1, self.batch_tokens // int(lengths.max()))
        for i in range(0, len(order), step):
            group = order[i : i + step]
            T = int(lengths[group].max())
            ids = np.zeros((len(group), T), dtype=np.int64)  # (B, T) right-padded
            for r, g in enumerate(group.tolist()):
                ids[r, : lengths[g]] = pieces[g]
            out[torch.from_numpy(group).to(self.device)] = model.embed_segments(
                torch.from_numpy(ids).to(self.device), torch.from_numpy(lengths[group]).to(self.device)).float()
        return out

    def prefix_states(self, chunks: Sequence[np.ndarray], ends: Sequence[np.ndarray]
                      ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per chunk: latents ``z_s`` (n, D) and continue costs ``-log(1 - p_stop(h_s))`` (n,)
        for s = 0..n-1, where ``h_s`` reads ``chunk[:s]`` segmented as ``ends`` (S_t) and
        nothing from ``s`` on (the module docstring's approximation).

        Every position inside one S_t segment shares its prefix (the start vector and the
        window's earlier segments) and differs only in the partial piece after it: the
        prefix runs once with a KV cache, each partial piece is one more step on a copy of
        it (the same outputs as one backbone call per position, ~P times fewer positions)."""
        import torch
        import torch.nn.functional as F

        from segsllm.models.backbone import select_cache_rows

        model, M = self.model, self.model.config.max_segments
        # Vector table: row 0 the start vector, then every S_t segment, then every partial piece.
        full: list[np.ndarray] = []
        partial: list[np.ndarray] = []
        groups: list[tuple[list[int], list[tuple[int, int, int | None]]]] = []  # (prefix rows, [(c, s, piece)])
        base = 1
        for c, (ids, e) in enumerate(zip(chunks, ends, strict=True)):
            e = np.asarray(e, dtype=np.int64)
            starts = np.concatenate([[0], e[:-1]])
            full.extend(ids[a:b] for a, b in zip(starts.tolist(), e.tolist(), strict=True))
            k_of = np.searchsorted(e, np.arange(len(ids)), side="right")  # (n,) S_t segments ending <= s
            by_k: dict[int, list[tuple[int, int, int | None]]] = {}
            for s, k in enumerate(k_of.tolist()):
                b = int(e[k - 1]) if k else 0
                piece = None
                if s > b:
                    piece = len(partial)
                    partial.append(ids[b:s])
                by_k.setdefault(k, []).append((c, s, piece))
            for k, members in by_k.items():
                ws = (k // M) * M  # this SLLM window's first segment
                groups.append(([0, *range(base + ws, base + k)], members))
            base += len(e)
        latents = [np.zeros((len(ids), model.vae.config.latent_width), dtype=np.float32) for ids in chunks]
        stops = [np.zeros(len(ids), dtype=np.float32) for ids in chunks]

        def emit(members: list[tuple[int, int, int | None]], h: Any) -> None:  # h (m, H)
            z = model.predict_latent(h).float().cpu().numpy()  # (m, D)
            cont = F.softplus(model.stop_logits(h)).float().cpu().numpy()  # (m,)
            for r, (c, s, _) in enumerate(members):
                latents[c][s], stops[c][s] = z[r], cont[r]

        with torch.inference_mode():
            table = torch.cat([model.start_inputs(1)[0].float(), self._embed(full), self._embed(partial)])  # (R, H)
            first_piece = 1 + len(full)
            by_len: dict[int, list[int]] = {}
            for g, (prefix, _) in enumerate(groups):
                by_len.setdefault(len(prefix), []).append(g)
            for P, gs in sorted(by_len.items()):
                step = max(1, self.batch_tokens // P)
                for i in range(0, len(gs), step):
                    batch = gs[i : i + step]
                    prefix = torch.tensor([groups[g][0] for g in batch], device=self.device)  # (G, P)
                    h, cache = model.run_backbone(table[prefix], use_cache=True)  # (G, P, H)
                    ends_here = [(j, m) for j, g in enumerate(batch) for m in groups[g][1] if m[2] is None]
                    if ends_here:  # s on an S_t boundary: h_s is the prefix's last output
                        emit([m for _, m in ends_here], h[[j for j, _ in ends_here], -1])
                    inside = [(j, m) for j, g in enumerate(batch) for m in groups[g][1] if m[2] is not None]
                    for a in range(0, len(inside), step):
                        part = inside[a : a + step]
                        rows = torch.tensor([j for j, _ in part], device=self.device)
                        pieces = torch.tensor([first_piece + m[2] for _, m in part], device=self.device)
                        h_in, _ = model.run_backbone(table[pieces][:, None], cache=select_cache_rows(cache, rows))
                        emit([m for _, m in part], h_in[:, -1])  # (m, H): one step after the prefix
        return latents, stops

    def span_costs(self, chunks: Sequence[np.ndarray], latents: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per chunk (n, max_span): decoder NLL of ``[s, s+l)`` + its EOS given ``z_s``
        (inf past the chunk's end). One causal decoder pass per start covers every length."""
        import torch

        vae = self.model.vae
        eos, L = int(vae.config.eos_id), self.max_span
        out = [np.full((len(c), L), np.inf, dtype=np.float32) for c in chunks]
        groups: dict[int, list[tuple[int, int]]] = {}
        for c, ids in enumerate(chunks):
            for s in range(len(ids)):
                groups.setdefault(min(L, len(ids) - s), []).append((c, s))
        with torch.inference_mode():
            for width, members in groups.items():
                step = max(1, self.batch_tokens // (width + 1))
                for i in range(0, len(members), step):
                    part = members[i : i + step]
                    ids = torch.from_numpy(np.stack([chunks[c][s : s + width] for c, s in part]).astype(np.int64))
                    z = torch.from_numpy(np.stack([latents[c][s] for c, s in part])).to(self.device)  # (B, D)
                    ids = ids.to(self.device)  # (B, w)
                    dec_in, dec_mask, _ = vae.teacher_forcing(ids, torch.ones_like(ids, dtype=torch.bool))  # (B, w+1)
                    logits = vae.decoder(dec_in, z, attention_mask=dec_mask).float()  # (B, w+1, V)
                    norm = torch.logsumexp(logits, -1)  # (B, w+1): only two log-probs per position are read
                    tok = norm[:, :width] - logits[:, :width].gather(-1, ids[..., None]).squeeze(-1)  # (B, w): token NLL
                    cost = tok.cumsum(1) + norm[:, 1:] - logits[:, 1:, eos]  # (B, w): tokens up to l, then EOS after l
                    cost = cost.cpu().numpy()
                    for r, (c, s) in enumerate(part):
                        out[c][s, :width] = cost[r]
        return out

    def scores(self, chunks: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per chunk (n, max_span + 1) float32: span costs by start (columns 0..max_span-1,
        inf past the end) and the continue cost after token t (last column)."""
        chunks = [np.asarray(c, dtype=np.int64) for c in chunks]
        was_training = self.model.training
        self.model.eval()
        try:
            ends = self.segmenter.segment_batch(chunks)
            latents, stops = self.prefix_states(chunks, ends)
            costs = self.span_costs(chunks, latents)
        finally:
            self.model.train(was_training)
        out = []
        for cost, stop in zip(costs, stops, strict=True):
            after = np.append(stop[1:], 0.0).astype(np.float32)  # continuing after token t = stop cost at s = t+1
            out.append(np.concatenate([cost, after[:, None]], axis=1))
        return out

    # ---------------------------------------------------------------- the DP

    def apply(self, chunks, scores, param, max_len):
        L = min(self.max_span, max_len)
        if self.target_len is None:
            raise ConfigError("the sllm teacher needs a target length for its length prior (--target-len)")
        prior = self.prior_weight * length_prior(self.target_len, L, self.prior_shape)
        return best_segmentation([len(c) for c in chunks], L, end_score=self.end_scores(chunks, scores, L),
                                 len_score=prior, span_score=[end_indexed(s[:, :L]) for s in scores],
                                 penalty=param)

    def end_scores(self, chunks: Sequence[np.ndarray], scores: Sequence[np.ndarray], max_len: int) -> list[np.ndarray]:
        """Per chunk (n,): minus the cost of continuing after each token; ``-inf`` where
        ``cut_at`` does not cut (the chunk's own end is forced by the DP either way)."""
        ends = [-s[:, self.max_span].astype(np.float64) for s in scores]
        if self.cut_at is None:
            return ends
        if self.cut_at.max_len > max_len:
            raise ConfigError(f"sllm teacher: cut_at {self.cut_at.spec()!r} allows {self.cut_at.max_len}-token "
                              f"segments, the search at most {max_len}")
        rule = self.cut_at.segment_batch([np.asarray(c, dtype=np.int64) for c in chunks])
        out = []
        for score, rule_ends in zip(ends, rule, strict=True):
            allowed = np.zeros(score.shape, dtype=bool)
            allowed[np.asarray(rule_ends, dtype=np.int64) - 1] = True
            out.append(np.where(allowed, score, -np.inf))
        return out

    def fit(self, chunks, scores, target_len, max_len) -> TeacherFit:
        if target_len is not None:
            self.target_len = float(target_len)
        return super().fit(chunks, scores, target_len, max_len)

    def bracket(self, scores):
        finite = np.concatenate([s[np.isfinite(s)] for s in scores] or [np.zeros(1)])
        top = float(np.abs(finite).max()) if finite.size else 1.0
        return -top - 1.0, 2.0 * top + 1.0


def segmentation_cost(span_cost: np.ndarray, after_cost: np.ndarray, ends: np.ndarray, penalty: float = 0.0,
                      len_score: np.ndarray | None = None) -> float:
    """Total cost of one segmentation ``ends`` of a chunk under the table the DP minimises:
    ``span_cost[s, l-1]`` per segment ``[s, s+l)``, ``after_cost[e-1]`` after every segment
    but the last, ``penalty`` per segment, minus ``len_score[l-1]``. For tests and reports."""
    total, start = 0.0, 0
    for e in np.asarray(ends).tolist():
        length = e - start
        total += float(span_cost[start, length - 1]) + penalty
        if len_score is not None:
            total -= float(len_score[length - 1])
        if e != len(after_cost):
            total += float(after_cost[e - 1])
        start = e
    return total


def load_sllm_teacher(path: str | Path, tokenizer: Any, *, max_span: int, segmenter: str | None = None,
                      target_len: float | None = None, prior_weight: float = 1.0, prior_shape: float = 2.0,
                      device: Any = "cpu", fingerprint: str | None = None, cut_at: str | None = None) -> SLLMTeacher:
    """The sllm teacher of the SLLM folder ``path``; S_t defaults to the segmenter it was trained on.
    ``cut_at``: a rule segmenter spec whose boundaries are the only places the DP may cut;
    ``prior_shape``: the Gamma shape of the DP's length prior (the student decodes with the same)."""
    from segsllm.data.tokenizer import tokenizer_fingerprint
    from segsllm.models.loading import load_artifact
    from segsllm.segment import build_segmenter

    if not Path(path).is_dir():
        raise ConfigError(f"no SLLM folder at {path}")
    loaded = load_artifact("sllm", path, device=device)
    model = loaded.model
    if loaded.tokenizer is not None and tokenizer_fingerprint(loaded.tokenizer) != tokenizer_fingerprint(tokenizer):
        raise ConfigError(f"{path} was trained with another tokenizer; use the SLLM of this tokenizer")
    spec = segmenter or (model.manifest.get("lineage") or {}).get("segmenter")
    if not spec:
        raise ConfigError(f"{path} does not record its segmenter; name the segmentation S_t explicitly")
    vae_max = model.vae.config.max_len
    seg = build_segmenter(spec, tokenizer=tokenizer, max_len=vae_max)
    span = min(int(max_span), vae_max)
    rule = build_segmenter(cut_at, tokenizer=tokenizer, max_len=span) if cut_at else None
    sha = ((loaded.manifest.get("files") or {}).get("model.safetensors") or {}).get("sha256")
    return SLLMTeacher(model, seg, span, target_len=target_len, prior_weight=prior_weight, prior_shape=prior_shape,
                       device=device, fingerprint=fingerprint or sha, cut_at=rule)


__all__ = ["SLLMTeacher", "load_sllm_teacher", "segmentation_cost"]
