"""SentenceVAE: compress one segment into one vector and expand it back (docs/DESIGN.md §5).

After An et al., 2024 (arXiv 2408.00655, Fig. 1):

    segment ids (B, T) ──► SentenceEncoder ──► latent (B, D) ──► SentenceDecoder ──► tokens, EOS
                           embeddings + positions           causal self-attention
                           N bidirectional layers           + cross-attention to the latent
                           pooling to one vector            starts from BOS
                           LayerNorm

Conventions used throughout:
- A batch of segments is ``ids`` (B, T), right-padded, with ``attention_mask`` (B, T)
  (1/True = real token) or ``lengths`` (B,). Segments hold no special tokens.
- Teacher forcing: decoder input ``[BOS, t1..tn]``, targets ``[t1..tn, EOS]``; padded
  target positions are ``IGNORE_INDEX`` (-100).
- Everything the loss returns is a tensor (no host sync per step); counts are summed over
  the batch so they can be added up (or all-reduced) across steps and ranks.

Only torch is needed here; the folder format lives in :mod:`segsllm.models.artifact`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from segsllm.config.vae import LOSSES, SentenceVAEConfig
from segsllm.errors import ArtifactError
from segsllm.models.artifact import config_errors, read_artifact, save_artifact

KIND = "sentence_vae"
IGNORE_INDEX = -100


# --------------------------------------------------------------------------- config


# --------------------------------------------------------------------------- building blocks


def lengths_to_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool mask, True for the first ``length`` positions."""
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


def _as_mask(ids: torch.Tensor, attention_mask: torch.Tensor | None, lengths: torch.Tensor | None) -> torch.Tensor:
    if attention_mask is not None:
        return attention_mask.to(device=ids.device, dtype=torch.bool)
    if lengths is not None:
        return lengths_to_mask(torch.as_tensor(lengths, device=ids.device), ids.size(1))
    return torch.ones_like(ids, dtype=torch.bool)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position of each token among the real tokens of its row: padding never shifts positions."""
    return (mask.long().cumsum(1) - 1).clamp(min=0)  # (B, T)


class SinusoidalPositions(nn.Module):
    """Fixed sin/cos position vectors (Vaswani et al. 2017): a drop-in for a learned
    position table, called with positions (B, T) -> (B, T, C). No parameters."""

    def __init__(self, n_positions: int, d_model: int):
        super().__init__()
        pos = torch.arange(n_positions, dtype=torch.float32)[:, None]  # (N, 1)
        freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        table = torch.zeros(n_positions, d_model)
        table[:, 0::2] = torch.sin(pos * freq)
        table[:, 1::2] = torch.cos(pos * freq[: d_model // 2])
        self.register_buffer("table", table, persistent=False)  # (N, C)

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return self.table[pos]  # (B, T, C)


def position_table(cfg: SentenceVAEConfig, n_positions: int) -> nn.Module:
    """The position table the config asks for (learned or sinusoidal)."""
    if cfg.positions == "sinusoidal":
        return SinusoidalPositions(n_positions, cfg.d_model)
    return nn.Embedding(n_positions, cfg.d_model)


class KVCache:
    """Keys/values for incremental decoding: per layer, self-attention K/V written at
    ``pos``, and the cross-attention K/V of the latent (computed once, it never changes)."""

    def __init__(self, n_layers: int, max_len: int):
        self.max_len = max_len
        self.pos = 0
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers
        self.cross: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H, T, hd) at [pos, pos+T); return all keys/values so far."""
        B, H, T, hd = k.shape
        if self.k[layer] is None:  # allocate lazily: dtype follows autocast
            self.k[layer] = k.new_zeros(B, H, self.max_len, hd)
            self.v[layer] = v.new_zeros(B, H, self.max_len, hd)
        end = self.pos + T
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class Attention(nn.Module):
    """Multi-head attention on torch's scaled_dot_product_attention, with explicit masks.

    Self-attention, or with ``cross=True`` attention from ``x`` to ``memory`` (the latent).
    ``mask`` is boolean, True = may attend, broadcastable to (B, H, Tq, Tk).
    """

    def __init__(self, cfg: SentenceVAEConfig, cross: bool = False):
        super().__init__()
        C = cfg.d_model
        self.cross = cross
        self.n_heads = cfg.n_heads
        self.q_proj = nn.Linear(C, C)
        self.kv_proj = nn.Linear(C, 2 * C)
        self.out_proj = nn.Linear(C, C)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, H, T, hd)

    def _kv(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv_proj(src).split(src.size(-1), dim=-1)
        return self._heads(k), self._heads(v)  # (B, H, Tk, hd) each

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q = self._heads(self.q_proj(x))  # (B, H, T, hd)
        if not self.cross:
            k, v = self._kv(x)
            if cache is not None:
                k, v = cache.update(layer, k, v)  # all keys so far, (B, H, pos+T, hd)
        elif cache is not None and cache.cross[layer] is not None:
            k, v = cache.cross[layer]  # the latent's K/V, computed at the first step
        else:
            k, v = self._kv(memory)  # (B, H, S, hd)
            if cache is not None:
                cache.cross[layer] = (k, v)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, hd)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_drop(self.out_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: SentenceVAEConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff)
        self.out_proj = nn.Linear(cfg.d_ff, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.act = F.relu if cfg.activation == "relu" else F.gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.out_proj(self.act(self.fc(x))))


class Block(nn.Module):
    """Transformer block, pre-LN (``norm="pre"``: x + f(LN(x))) or post-LN (``"post"``:
    LN(x + f(x)), the original Transformer's and torch.nn.Transformer's layout); with
    ``cross=True`` a cross-attention sub-layer sits between self-attention and the MLP."""

    def __init__(self, cfg: SentenceVAEConfig, cross: bool = False):
        super().__init__()
        self.post_norm = cfg.norm == "post"
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.ln_x = nn.LayerNorm(cfg.d_model) if cross else None
        self.cross_attn = Attention(cfg, cross=True) if cross else None
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x, mask=None, memory=None, cache=None, layer=0):
        if self.post_norm:
            x = self.ln_1(x + self.attn(x, mask=mask, cache=cache, layer=layer))
            if self.cross_attn is not None:
                x = self.ln_x(x + self.cross_attn(x, memory=memory, cache=cache, layer=layer))
            return self.ln_2(x + self.mlp(x))
        x = x + self.attn(self.ln_1(x), mask=mask, cache=cache, layer=layer)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.ln_x(x), memory=memory, cache=cache, layer=layer)
        return x + self.mlp(self.ln_2(x))


# --------------------------------------------------------------------------- pooling


class LearnableAddPooling(nn.Module):
    """The paper's "learnable add": z = sum_t a_t * h_t with a_t = w . h_t + b, a scalar per
    token computed from its own hidden state. Unnormalised (no softmax): the LayerNorm after
    pooling sets the scale. Padding gets a_t = 0."""

    def __init__(self, d_model: int):
        super().__init__()
        self.score = nn.Linear(d_model, 1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a = self.score(h) * mask[..., None].to(h.dtype)  # (B, T, 1)
        return (a * h).sum(dim=1)  # (B, C)


class AttentionPooling(nn.Module):
    """Masked-softmax attention pooling: weights softmax(h_t . q / sqrt(C)) over real tokens,
    with a learned query q (zero at init, i.e. mean pooling to start with)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(d_model))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = (h @ self.query) / math.sqrt(h.size(-1))  # (B, T)
        # finfo.min rather than -inf: an (invalid) all-padding row then averages instead of NaN.
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        w = scores.softmax(dim=-1)  # (B, T)
        return (w[..., None] * h).sum(dim=1)  # (B, C)


# --------------------------------------------------------------------------- encoder / decoder


class SentenceEncoder(nn.Module):
    """Segment (B, T) -> one vector (B, D): bidirectional within the segment, padding masked."""

    def __init__(self, cfg: SentenceVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = position_table(cfg, cfg.max_len)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.encoder_layers))
        # Post-LN blocks already end in a LayerNorm.
        self.ln_f = nn.Identity() if cfg.norm == "post" else nn.LayerNorm(cfg.d_model)
        self.pool = LearnableAddPooling(cfg.d_model) if cfg.pooling == "add" else AttentionPooling(cfg.d_model)
        D = cfg.latent_width
        self.proj = nn.Identity() if cfg.latent_dim in (None, cfg.d_model) else nn.Linear(cfg.d_model, D)
        self.ln_out = nn.LayerNorm(D)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        T = ids.size(1)
        if ids.size(1) > self.cfg.max_len:
            raise ValueError(f"segment of {T} tokens exceeds the encoder's max_len={self.cfg.max_len}")
        x = self.drop(self.tok_emb(ids) + self.pos_emb(_positions(mask)))  # (B, T, C)
        # Keys: real tokens only. Each position may also see itself so padded query rows are
        # never empty (an empty softmax row is NaN); padded rows are dropped by pooling anyway.
        eye = torch.eye(T, dtype=torch.bool, device=ids.device)
        attn_mask = (mask[:, None, None, :] | eye)  # (B, 1, T, T)
        for block in self.blocks:
            x = block(x, mask=attn_mask)
        h = self.ln_f(x)  # (B, T, C)
        z = self.pool(h, mask)  # (B, C)
        return self.ln_out(self.proj(z))  # (B, D)


class SentenceDecoder(nn.Module):
    """Latent (B, D) + token prefix -> next-token logits; strictly causal in the prefix."""

    def __init__(self, cfg: SentenceVAEConfig):
        super().__init__()
        self.cfg = cfg
        C, D, S = cfg.d_model, cfg.latent_width, cfg.memory_slots
        # The latent becomes S memory vectors of width C for cross-attention.
        self.latent_proj = nn.Identity() if (S == 1 and D == C) else nn.Linear(D, S * C)
        self.tok_emb = nn.Embedding(cfg.vocab_size, C)
        self.pos_emb = position_table(cfg, cfg.max_len + 1)  # BOS + up to max_len tokens
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, cross=True) for _ in range(cfg.decoder_layers))
        self.ln_f = nn.Identity() if cfg.norm == "post" else nn.LayerNorm(C)
        self.lm_head = nn.Linear(C, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def memory(self, latent: torch.Tensor) -> torch.Tensor:
        """latent (B, D) -> cross-attention memory (B, S, C)."""
        B = latent.size(0)
        # A latent from another model (the SLLM backbone) may come in another dtype.
        latent = latent.to(self.tok_emb.weight.dtype)
        return self.latent_proj(latent).view(B, self.cfg.memory_slots, self.cfg.d_model)  # (B, S, C)

    def new_cache(self, max_len: int | None = None) -> KVCache:
        """An empty cache for up to ``max_len`` decoder inputs (default: BOS + max_len tokens)."""
        return KVCache(self.cfg.decoder_layers, self.cfg.max_len + 1 if max_len is None else max_len)

    def forward(
        self,
        ids: torch.Tensor,
        latent: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """ids (B, T) decoder inputs (BOS first), latent (B, D) -> logits (B, T, V).

        Without a cache, the logits at position t depend only on ids[:, :t+1] and the latent
        (causal mask), with or without padding in the batch. With a cache, ``ids`` continue
        the sequence already in it (no padding); prefill and single steps use the same path.
        """
        B, T = ids.shape
        dev = ids.device
        if cache is None:
            if ids.size(1) > self.cfg.max_len + 1:
                raise ValueError(f"decoder input of {T} tokens exceeds max_len+1={self.cfg.max_len + 1}")
            mask = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
            pos = _positions(mask)  # (B, T)
            causal = torch.ones(T, T, dtype=torch.bool, device=dev).tril()  # (T, T) key <= query
            eye = torch.eye(T, dtype=torch.bool, device=dev)
            # Causal AND key is real; self always allowed so no row is empty (padded rows' logits
            # are ignored by the loss). Right padding sits after every real token, so for real
            # positions this equals the plain causal mask.
            attn_mask = causal & (mask[:, None, None, :] | eye)  # (B, 1, T, T)
            memory = self.memory(latent)
        else:
            if attention_mask is not None:
                raise ValueError("padding is not supported with a KV cache")
            start = cache.pos
            if start + T > cache.max_len:
                raise ValueError(f"KV cache full: {start} + {T} > {cache.max_len}")
            pos = torch.arange(start, start + T, device=dev).expand(B, T)  # (B, T)
            # Query i sits at absolute position start+i and sees keys 0..start+i.
            attn_mask = None if T == 1 else (
                torch.arange(start + T, device=dev)[None, :] <= torch.arange(start, start + T, device=dev)[:, None]
            )  # (T, start+T)
            # Cross K/V are cached at the first call; later steps do not need the memory.
            memory = self.memory(latent) if cache.cross[0] is None else None
        x = self.drop(self.tok_emb(ids) + self.pos_emb(pos))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, mask=attn_mask, memory=memory, cache=cache, layer=i)
        if cache is not None:
            cache.pos += T
        return self.lm_head(self.ln_f(x))  # (B, T, V)


# --------------------------------------------------------------------------- loss and metrics


def teacher_forcing(ids: torch.Tensor, mask: torch.Tensor, cfg: SentenceVAEConfig) -> tuple[
    torch.Tensor, torch.Tensor, torch.Tensor
]:
    """Segments (B, T) + mask -> decoder inputs [BOS, t1..tn] (B, T+1), their mask, and
    targets [t1..tn, EOS] (B, T+1) with IGNORE_INDEX on padding."""
    B, T = ids.shape
    lengths = mask.long().sum(dim=1)  # (B,)
    if not torch.equal(mask, lengths_to_mask(lengths, T)):
        raise ValueError("segments must be right-padded (real tokens first, then padding)")
    rows = torch.arange(B, device=ids.device)
    dec_in = torch.full((B, T + 1), cfg.pad_id, dtype=ids.dtype, device=ids.device)
    dec_in[:, 0] = cfg.bos_id
    dec_in[:, 1:] = ids.masked_fill(~mask, cfg.pad_id)
    dec_mask = lengths_to_mask(lengths + 1, T + 1)  # BOS + n tokens
    targets = torch.full((B, T + 1), IGNORE_INDEX, dtype=torch.long, device=ids.device)
    targets[:, :T] = ids.masked_fill(~mask, IGNORE_INDEX)
    targets[rows, lengths] = cfg.eos_id
    return dec_in, dec_mask, targets


def reconstruction_loss(
    logits: torch.Tensor, targets: torch.Tensor, loss: str = "ce", focal_gamma: float = 2.0
) -> dict[str, torch.Tensor]:
    """Loss and summable statistics of a teacher-forced reconstruction.

    logits (B, T, V), targets (B, T) with IGNORE_INDEX on padding. Returns tensors:
    ``loss`` (mean over target tokens; CE or focal, carries the graph), and, detached:
    ``nll_sum`` (NLL in nats summed over all target tokens incl. EOS — always plain CE, for
    bits/byte), ``n_tokens``, ``n_correct`` (argmax == target), ``n_exact`` (segments whose
    every target incl. EOS is argmax-correct), ``n_segments``.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    valid = targets != IGNORE_INDEX  # (B, T)
    logp = F.log_softmax(logits[valid].float(), dim=-1)  # (N, V); float: bf16 log-probs are coarse
    logp_t = logp.gather(1, targets[valid][:, None]).squeeze(1)  # (N,)
    nll = -logp_t
    per_token = nll
    if loss == "focal":
        # Focal loss (Lin et al. 2017), as in the paper: down-weights tokens already predicted
        # well. gamma=0 is exactly CE.
        per_token = (1.0 - logp_t.exp()).pow(focal_gamma) * nll
    n_tokens = valid.sum()
    with torch.no_grad():
        correct = (logits.argmax(dim=-1) == targets) & valid  # (B, T)
        has_target = valid.any(dim=1)  # (B,)
        exact = (correct | ~valid).all(dim=1) & has_target
    return {
        "loss": per_token.sum() / n_tokens.clamp(min=1),
        "nll_sum": nll.sum().detach(),
        "n_tokens": n_tokens,
        "n_correct": correct.sum(),
        "n_exact": exact.sum(),
        "n_segments": has_target.sum(),
    }


def _sample(logits: torch.Tensor, greedy: bool, temperature: float, top_p: float, generator) -> torch.Tensor:
    """(B, V) logits -> (B,) next ids: argmax, or temperature + nucleus (top-p) sampling."""
    if greedy or temperature <= 0:
        return logits.argmax(dim=-1)
    probs = F.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the top token always survives).
        drop = (sorted_p.cumsum(dim=-1) - sorted_p) >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


# --------------------------------------------------------------------------- the model


class SentenceVAE(nn.Module):
    """Encoder + decoder. ``forward`` returns the loss dict of :func:`reconstruction_loss`."""

    def __init__(self, config: SentenceVAEConfig):
        super().__init__()
        self.config = config.validate()
        self.encoder = SentenceEncoder(config)
        self.decoder = SentenceDecoder(config)
        self.manifest: dict[str, Any] = {}  # filled by from_pretrained
        if config.init == "small":
            self.apply(self._init_weights)
            n_layers = config.encoder_layers + config.decoder_layers
            for name, p in self.named_parameters():
                # GPT-2: scale residual-branch outputs so the residual stream does not grow with depth.
                if name.endswith("out_proj.weight"):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layers))
        # init == "torch": keep PyTorch's defaults (Linear kaiming-uniform with uniform bias,
        # Embedding N(0, 1)): larger weights, which at this scale learn faster (issue #17).
        if isinstance(self.encoder.pool, LearnableAddPooling):
            # Start as a plain sum (a_t = 1, the paper's non-learnable add); tiny a_t would make
            # the pooled vector ~0 and the LayerNorm after it ill-conditioned.
            nn.init.zeros_(self.encoder.pool.score.weight)
            nn.init.ones_(self.encoder.pool.score.bias)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights counted once

    # ---- encode / decode

    def encode(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               lengths: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, T) right-padded -> latent (B, D). No noise here (see :meth:`perturb`)."""
        return self.encoder(ids, _as_mask(ids, attention_mask, lengths))

    def perturb(self, latent: torch.Tensor) -> torch.Tensor:
        """Train-time latent noise and dropout (identity in eval mode)."""
        if not self.training:
            return latent
        if self.config.latent_noise > 0:
            latent = latent + self.config.latent_noise * torch.randn_like(latent)
        return F.dropout(latent, p=self.config.latent_dropout, training=True)

    def teacher_forcing(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Segments (B, T) + mask -> decoder inputs [BOS, t1..tn] (B, T+1), their mask, and
        targets [t1..tn, EOS] (B, T+1) with IGNORE_INDEX on padding."""
        return teacher_forcing(ids, mask, self.config)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None, return_logits: bool = False) -> dict[str, torch.Tensor]:
        """Teacher-forced reconstruction of a batch of segments.

        Returns the :func:`reconstruction_loss` dict (``loss`` carries the graph); with
        ``return_logits`` also ``logits`` (B, T+1, V), ``targets`` (B, T+1), ``latent`` (B, D).
        """
        mask = _as_mask(ids, attention_mask, lengths)
        latent = self.encoder(ids, mask)  # (B, D)
        dec_in, dec_mask, targets = self.teacher_forcing(ids, mask)
        logits = self.decoder(dec_in, self.perturb(latent), attention_mask=dec_mask)  # (B, T+1, V)
        out = reconstruction_loss(logits, targets, self.config.loss, self.config.focal_gamma)
        if return_logits:
            out.update(logits=logits, targets=targets, latent=latent)
        return out

    @torch.no_grad()
    def generate(self, latent: torch.Tensor, max_len: int | None = None, greedy: bool = True,
                 temperature: float = 1.0, top_p: float = 1.0,
                 generator: torch.Generator | None = None, min_len: int = 0,
                 info: dict[str, Any] | None = None,
                 cut_after: Callable[[list[int]], bool] | None = None) -> list[list[int]]:
        """Decode latents (B, D) with a KV cache; token id lists without BOS/EOS.

        At most ``max_len`` tokens per segment (default and cap: config.max_len); a segment
        that reaches it without EOS is returned as is. EOS is masked for the first
        ``min_len`` tokens (a speed run asks for non-empty segments). ``cut_after`` (batch 1
        only): called with the segment's tokens after each one; True ends the segment there
        (a causal segmenter's decision, ``sllm.boundaries=segmenter``), and a segment of
        ``max_len`` tokens ends without a further (EOS) step. ``info``, if given,
        receives ``steps`` (decoder forward steps run), ``eos`` (per row: ended by EOS),
        ``cut`` (per row: ended by ``cut_after``) and ``eos_masked`` (per row: EOS was the
        top choice at a masked step). Does not change train/eval mode.
        """
        cfg = self.config
        max_len = cfg.max_len if max_len is None else int(max_len)
        if not 0 <= max_len <= cfg.max_len:
            raise ValueError(f"max_len must be in [0, {cfg.max_len}], got {max_len}")
        B = latent.size(0)
        if cut_after is not None and B != 1:
            raise ValueError(f"cut_after decodes one segment at a time, got a batch of {B}")
        by_cut = False
        cache = self.decoder.new_cache(max_len + 1)
        tok = torch.full((B, 1), cfg.bos_id, dtype=torch.long, device=latent.device)  # (B, 1)
        done = torch.zeros(B, dtype=torch.bool, device=latent.device)
        steps = []
        masked = torch.zeros(B, dtype=torch.bool, device=latent.device)
        for _ in range(max_len + 1):
            logits = self.decoder(tok, latent, cache=cache)[:, -1]  # (B, V)
            if len(steps) < min_len:
                masked |= logits.argmax(dim=-1) == cfg.eos_id
                logits[:, cfg.eos_id] = float("-inf")
            nxt = _sample(logits, greedy, temperature, top_p, generator)  # (B,)
            steps.append(nxt)
            done |= nxt == cfg.eos_id
            if cut_after is not None and not bool(done.all()):
                by_cut = bool(cut_after(torch.stack(steps, dim=1)[0].tolist()))
                done |= by_cut
                if len(steps) == max_len:  # full: the step after would only be dropped (EOS is the segmenter's)
                    break
            if bool(done.all()):
                break
            tok = nxt[:, None]
        out_ids = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in range(B)]
        result = []
        for row in out_ids:
            cut = row.index(cfg.eos_id) if cfg.eos_id in row else len(row)
            result.append(row[: min(cut, max_len)])
        if info is not None:
            info["steps"] = len(steps)
            info["eos"] = [cfg.eos_id in row for row in out_ids]
            info["cut"] = [by_cut] * B
            info["eos_masked"] = masked.tolist()
        return result

    @torch.no_grad()
    def reconstruct(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    lengths: torch.Tensor | None = None, max_len: int | None = None) -> list[list[int]]:
        """Encode, then greedy-decode (eval mode, restored afterwards). Pair with
        :func:`segsllm.metrics.exact_match_count` for the exact-match rate under generation."""
        was_training = self.training
        self.eval()
        try:
            return self.generate(self.encode(ids, attention_mask, lengths), max_len=max_len)
        finally:
            self.train(was_training)

    # ---- initialisation from a backbone

    @torch.no_grad()
    def init_embeddings_from(self, weight: torch.Tensor) -> SentenceVAE:
        """Initialise the encoder and decoder token embeddings (and so a tied output head)
        from a backbone's input embedding matrix (V, W).

        The vocabulary must match exactly (same tokenizer), else ArtifactError. Widths:
        W == d_model is copied; W > d_model is projected onto the matrix's top d_model
        principal directions (truncated SVD: deterministic, keeps as much of the geometry as
        any linear map to d_model can); W < d_model fills the first W dims, the rest zero.
        """
        V, W = weight.shape
        C = self.config.d_model
        if weight.size(0) != self.config.vocab_size:
            raise ArtifactError(f"backbone embeddings have a vocabulary of {V}, the SentenceVAE "
                                f"{self.config.vocab_size}; use the backbone's tokenizer")
        w = weight.detach().to(device="cpu", dtype=torch.float32)
        if W > C:
            _, _, vh = torch.linalg.svd(w, full_matrices=False)  # vh (W, W)
            w = w @ vh[:C].T  # (V, C)
        elif W < C:
            w = torch.cat([w, w.new_zeros(V, C - W)], dim=1)  # (V, C)
        for emb in (self.encoder.tok_emb, self.decoder.tok_emb):
            emb.weight.copy_(w.to(emb.weight))
        return self

    # ---- save / load

    def save_pretrained(self, out_dir: str | Path, extra_manifest: dict[str, Any] | None = None, *,
                        tokenizer: Any = None, lineage: dict[str, Any] | None = None) -> Path:
        """Write ``config.json``, ``model.safetensors``, ``manifest.json`` (kind=sentence_vae)
        and, if ``tokenizer`` is a tokenizer object, its files. ``tokenizer`` may also be a
        fingerprint string. See :mod:`segsllm.models.artifact`."""
        return save_artifact(out_dir, kind=KIND, config=self.config.to_dict(), state_dict=self.state_dict(),
                             tokenizer=tokenizer, lineage=lineage, extra_manifest=extra_manifest)

    @classmethod
    def from_pretrained(cls, path: str | Path, tokenizer: Any = None, map_location: Any = "cpu",
                        verify_checksums: bool = True) -> SentenceVAE:
        """Load a folder written by :meth:`save_pretrained`; ArtifactError (one line) if it is
        missing, corrupted, shaped unlike its config, or built with another tokenizer."""
        art = read_artifact(path, kind=KIND, tokenizer=tokenizer, verify_checksums=verify_checksums)
        with config_errors(path, "SentenceVAE"):
            config = SentenceVAEConfig.from_dict(art.config)
        # No fingerprint recorded (read_artifact compared it otherwise): the least we can
        # check is that every token id of the given tokenizer fits the model.
        unchecked = art.manifest.get("tokenizer_fingerprint") is None
        tok_size = len(tokenizer) if tokenizer is not None and not isinstance(tokenizer, str) else 0
        if unchecked and tok_size > config.vocab_size:
            raise ArtifactError(f"{path}: tokenizer has {len(tokenizer)} tokens, the model only "
                                    f"{config.vocab_size}; use the tokenizer it was trained with")
        return art.load_into(cls(config)).to(map_location)


__all__ = [
    "IGNORE_INDEX",
    "KIND",
    "KVCache",
    "SentenceDecoder",
    "SentenceEncoder",
    "SentenceVAE",
    "SentenceVAEConfig",
    "lengths_to_mask",
    "reconstruction_loss",
    "teacher_forcing",
]
