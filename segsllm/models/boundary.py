"""The boundary predictor of the learned segmenter (docs/DESIGN.md §6).

A small, fast network that gives every token one logit, "a segment ends after this
token". It has its own embeddings and a few residual blocks of depthwise convolutions over
time + a pointwise MLP (Dynamic Token Pooling / ByT5-style local mixing, no attention):

    ids (B, T) ──► embedding ──► block 0: kernel over [t-(k-1), t+lookahead] ──►
                   blocks 1..n-1: causal dilated kernels over [t-(k-1)d, t] ──► head ──► (B, T)

Every block zeroes padded positions again, so a document sees exact zeros outside itself
whatever sits beside it in a batch; and the receptive field is bounded on both sides:
the logit of token ``t`` depends on tokens ``t - left_context .. t + lookahead`` only. That
is what makes the streaming mode causal (decide ``t`` once ``t + lookahead`` has arrived)
and lets :meth:`BoundaryPredictor.document_logits` cut long documents into pieces with
margins and run everything as one convolution pass (hundreds of thousands of tokens/s on
two CPU cores).

The folder format is :mod:`segsllm.models.artifact` (kind ``boundary_predictor``);
``config.json`` holds the architecture *and* the calibrated length control.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from segsllm.config.splitter import BoundaryPredictorConfig
from segsllm.models.artifact import config_errors, read_artifact, save_artifact

KIND = "boundary_predictor"


class ConvBlock(nn.Module):
    """Depthwise conv over time (reach ``left`` / ``right`` tokens) + pointwise MLP, residual."""

    def __init__(self, C: int, kernel: int, dilation: int, left: int, right: int, ratio: int, dropout: float):
        super().__init__()
        self.left, self.right = left, right
        self.pad = max(left, right)
        self.dw = nn.Conv1d(C, C, kernel_size=kernel, dilation=dilation, groups=C)
        self.pw1 = nn.Conv1d(C, ratio * C, 1)
        self.pw2 = nn.Conv1d(ratio * C, C, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, C, T), mask (B, 1, T) float -> (B, C, T), zero where mask is 0."""
        T, p = x.size(-1), self.pad
        # Symmetric zero padding p >= left, right; output t (after the shift) sees [t-left, t+right].
        h = F.conv1d(x, self.dw.weight, self.dw.bias, padding=p, dilation=self.dw.dilation,
                     groups=self.dw.groups)[..., p - self.left : p - self.left + T]  # (B, C, T)
        h = self.pw2(self.drop(F.relu_(self.pw1(h))))  # (B, C, T); in place: cache-friendly at inference
        h = self.drop(h)
        h += x
        return h.mul_(mask)


class BoundaryPredictor(nn.Module):
    """Token ids -> one boundary logit per token; see the module docstring."""

    def __init__(self, config: BoundaryPredictorConfig):
        super().__init__()
        self.config = config.validate()
        C, k = config.d_model, config.kernel_size
        self.tok_emb = nn.Embedding(config.vocab_size, C)
        blocks = [ConvBlock(C, k + config.lookahead, 1, k - 1, config.lookahead, config.mlp_ratio, config.dropout)]
        for d in config.dilations[1 : config.n_layers]:
            blocks.append(ConvBlock(C, k, int(d), (k - 1) * int(d), 0, config.mlp_ratio, config.dropout))
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv1d(C, 1, 1)
        self.manifest: dict[str, Any] = {}
        nn.init.normal_(self.tok_emb.weight, std=0.5)
        for block in self.blocks:  # start each residual branch small: a stable deep stack
            nn.init.normal_(block.pw2.weight, std=0.02)
            nn.init.zeros_(block.pw2.bias)
        nn.init.zeros_(self.head.bias)

    @property
    def left_context(self) -> int:
        return self.config.left_context

    @property
    def lookahead(self) -> int:
        return self.config.lookahead

    @property
    def gap(self) -> int:
        """Zero positions needed between two documents laid side by side in one stream."""
        return max(max(b.left, b.right) for b in self.blocks)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, T) right- or otherwise padded, mask (B, T) (True = real) -> logits (B, T).

        Padded positions act as exact zeros for their neighbours (masked after every block).
        """
        m = torch.ones_like(ids, dtype=torch.float32) if mask is None else mask.to(torch.float32)
        m = m[:, None, :]  # (B, 1, T)
        x = self.tok_emb(ids).transpose(1, 2) * m  # (B, C, T)
        for block in self.blocks:
            x = block(x, m)
        return self.head(x)[:, 0, :]  # (B, T)

    # ------------------------------------------------------------------ fast inference

    @torch.inference_mode()
    def document_logits(self, docs: Sequence[np.ndarray], piece_tokens: int = 2048,
                        stream_tokens: int = 4096) -> list[np.ndarray]:
        """Boundary logits (float32, one per token) of each document, in eval mode.

        Documents are cut into pieces of at most ``piece_tokens`` with ``left_context`` /
        ``lookahead`` margins of real tokens, the pieces laid into streams of about
        ``stream_tokens`` separated by ``gap`` zeros, and each stream is one forward pass
        (small streams keep every activation in the CPU cache: several times faster).
        The result for a document does not depend on the other documents (up to float
        rounding) nor on where it was cut: the receptive field is inside the margins.
        """
        was_training = self.training
        self.eval()
        try:
            return self._document_logits(docs, piece_tokens, stream_tokens)
        finally:
            self.train(was_training)

    def _document_logits(self, docs: Sequence[np.ndarray], piece_tokens: int, stream_tokens: int) -> list[np.ndarray]:
        sizes = np.array([len(d) for d in docs], dtype=np.int64)
        out = [np.zeros(int(n), dtype=np.float32) for n in sizes]
        if sizes.sum() == 0:
            return out
        flat = np.concatenate([np.asarray(d, dtype=np.int64) for d in docs])
        doc_start = np.cumsum(sizes) - sizes
        # Pieces: [a, b) kept, [a - ml, b + mr) computed; all in flat coordinates.
        n_pieces = -(-sizes // piece_tokens)  # ceil; 0 for empty documents
        doc_of = np.repeat(np.arange(len(docs)), n_pieces)
        rank = np.arange(int(n_pieces.sum())) - np.repeat(np.cumsum(n_pieces) - n_pieces, n_pieces)
        a = doc_start[doc_of] + rank * piece_tokens
        b = np.minimum(a + piece_tokens, doc_start[doc_of] + sizes[doc_of])
        lo = np.maximum(a - self.left_context, doc_start[doc_of])
        hi = np.minimum(b + self.lookahead, doc_start[doc_of] + sizes[doc_of])
        span = hi - lo + self.gap  # each piece is followed by a gap of zeros
        device = self.tok_emb.weight.device
        result = np.empty(flat.size, dtype=np.float32)
        first = 0
        while first < len(a):
            last = first + max(1, int(np.searchsorted(np.cumsum(span[first:]), stream_tokens, side="right")))
            sl = slice(first, last)
            width = int(span[sl].sum()) + self.gap
            pos0 = self.gap + np.cumsum(span[sl]) - span[sl]  # stream position of each piece's lo
            n_real = hi[sl] - lo[sl]
            # Stream index of every real token, and its flat index.
            owner = np.repeat(np.arange(last - first), n_real)
            within = np.arange(int(n_real.sum())) - np.repeat(np.cumsum(n_real) - n_real, n_real)
            stream_pos = pos0[owner] + within
            flat_pos = lo[sl][owner] + within
            ids = np.full(width, self.config.pad_id, dtype=np.int64)
            ids[stream_pos] = flat[flat_pos]
            mask = np.zeros(width, dtype=bool)
            mask[stream_pos] = True
            logits = self.forward(torch.from_numpy(ids)[None].to(device),
                                  torch.from_numpy(mask)[None].to(device))[0].float().cpu().numpy()  # (W,)
            keep = (flat_pos >= a[sl][owner]) & (flat_pos < b[sl][owner])
            result[flat_pos[keep]] = logits[stream_pos[keep]]
            first = last
        return list(np.split(result, np.cumsum(sizes)[:-1]))

    def logit_stream(self) -> LogitStream:
        """Logits token by token from cached states (lookahead 0 only): see :class:`LogitStream`."""
        return LogitStream(self)

    # ------------------------------------------------------------------ save / load

    def save_pretrained(self, out_dir: str | Path, *, tokenizer: Any = None, lineage: dict[str, Any] | None = None,
                        extra_manifest: dict[str, Any] | None = None) -> Path:
        """Write the folder (kind ``boundary_predictor``); see :mod:`segsllm.models.artifact`."""
        return save_artifact(out_dir, kind=KIND, config=self.config.to_dict(), state_dict=self.state_dict(),
                             tokenizer=tokenizer, lineage=lineage, extra_manifest=extra_manifest)

    @classmethod
    def from_pretrained(cls, path: str | Path, tokenizer: Any = None, map_location: Any = "cpu",
                        verify_checksums: bool = True) -> BoundaryPredictor:
        """Load a folder written by :meth:`save_pretrained`; one-line ArtifactError otherwise."""
        art = read_artifact(path, kind=KIND, tokenizer=tokenizer, verify_checksums=verify_checksums)
        with config_errors(path, "boundary predictor"):
            config = BoundaryPredictorConfig.from_dict(art.config)
        return art.load_into(cls(config)).to(map_location).eval()


class LogitStream:
    """A lookahead-0 predictor's logit of each new token, computed from per-block histories:
    a few small matrix-vector products per token in NumPy (float32), instead of a forward over
    the receptive field (eager PyTorch spends ~1 ms on the convolutions' overhead there).
    Equal to :meth:`BoundaryPredictor.forward` up to float rounding (tested); after
    :meth:`reset` the positions before the stream are zeros, as at a document's start.
    """

    def __init__(self, model: BoundaryPredictor) -> None:
        if model.lookahead != 0:
            raise ValueError(f"a logit stream needs lookahead 0 (decided at once), got {model.lookahead}")

        def arr(t: torch.Tensor) -> np.ndarray:
            return t.detach().to("cpu", torch.float32).numpy().copy()

        self.emb = arr(model.tok_emb.weight)  # (V, C)
        self.blocks = []
        for block in model.blocks:
            taps = block.left + 1  # inputs [t - left, t]; tap j reads t - left + j * dilation
            self.blocks.append({
                "dw": arr(block.dw.weight)[:, 0, :].T.copy(),  # (k, C)
                "dw_b": arr(block.dw.bias),  # (C,)
                "at": np.arange(block.dw.kernel_size[0]) * block.dw.dilation[0],  # (k,) rows of the history
                "w1": arr(block.pw1.weight)[:, :, 0], "b1": arr(block.pw1.bias),  # (rC, C), (rC,)
                "w2": arr(block.pw2.weight)[:, :, 0], "b2": arr(block.pw2.bias),  # (C, rC), (C,)
                "history": np.zeros((taps, self.emb.shape[1]), dtype=np.float32),  # (left + 1, C)
            })
        self.head = arr(model.head.weight)[0, :, 0]  # (C,)
        self.head_b = float(arr(model.head.bias)[0])

    def reset(self) -> None:
        """Start again as at a document's start."""
        for b in self.blocks:
            b["history"][:] = 0.0

    def push(self, token: int) -> float:
        """The logit of ``token`` given the tokens pushed before it."""
        x = self.emb[token]  # (C,)
        for b in self.blocks:
            hist = b["history"]
            hist[:-1] = hist[1:]
            hist[-1] = x
            h = np.einsum("kc,kc->c", b["dw"], hist[b["at"]]) + b["dw_b"]  # depthwise conv at t
            h = b["w2"] @ np.maximum(b["w1"] @ h + b["b1"], 0.0) + b["b2"] + x  # pointwise MLP + residual
            x = h.astype(np.float32, copy=False)
        return float(self.head @ x + self.head_b)


__all__ = ["KIND", "BoundaryPredictor", "ConvBlock", "LogitStream"]
