"""The paper's reference SentenceVAE, re-implemented from its description (issue #17).

A yardstick, not a model to ship: it exists so ``scripts/vae_reference_compare.py`` can
train it and :class:`~segsllm.models.vae.SentenceVAE` on the same segments. Described
choices (BestAnHongjun/SentenceVAE; no code of it is used here):

- token embeddings (encoder and decoder each their own) + fixed sinusoidal positions;
- post-LN ``torch.nn.TransformerEncoder`` / ``TransformerDecoder`` layers (ReLU, PyTorch's
  default dropout 0.1 unless the config says otherwise), the latent as a one-slot memory;
- "learnable add" pooling: a scalar weight per token from a linear map, summed, no norm;
- an untied output head, PyTorch's default initialisation, focal loss (gamma from config).

It speaks the same interface as SentenceVAE for training and scoring: ``forward`` returns
the :func:`~segsllm.models.vae.reconstruction_loss` dict, ``reconstruct`` greedy-decodes
(full re-run per step: no KV cache).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from segsllm.config.vae import SentenceVAEConfig
from segsllm.models.vae import (
    SinusoidalPositions,
    _as_mask,
    reconstruction_loss,
    teacher_forcing,
)

REFERENCE_DROPOUT = 0.1  # torch.nn.TransformerEncoderLayer's default


def reference_config(cfg: SentenceVAEConfig, dropout: float = REFERENCE_DROPOUT) -> SentenceVAEConfig:
    """The reference's settings on top of ``cfg``'s sizes and special ids."""
    return dataclasses.replace(cfg, dropout=dropout, loss="focal", pooling="add", tie_embeddings=False,
                               norm="post", positions="sinusoidal", activation="relu", init="torch").validate()


class ReferenceSentenceVAE(nn.Module):
    """Encoder (nn.TransformerEncoder) -> learnable-add pooled vector -> nn.TransformerDecoder."""

    def __init__(self, config: SentenceVAEConfig):
        super().__init__()
        cfg = self.config = config.validate()
        C = cfg.d_model
        self.enc_emb = nn.Embedding(cfg.vocab_size, C)
        self.dec_emb = nn.Embedding(cfg.vocab_size, C)
        self.pos = SinusoidalPositions(cfg.max_len + 1, C)
        enc_layer = nn.TransformerEncoderLayer(C, cfg.n_heads, cfg.d_ff, cfg.dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(enc_layer, cfg.encoder_layers, enable_nested_tensor=False)
        self.pool = nn.Linear(C, 1)  # learnable add: a_t = w . h_t + b
        dec_layer = nn.TransformerDecoderLayer(C, cfg.n_heads, cfg.d_ff, cfg.dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(dec_layer, cfg.decoder_layers)
        self.head = nn.Linear(C, cfg.vocab_size)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               lengths: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, T) right-padded -> latent (B, C)."""
        mask = _as_mask(ids, attention_mask, lengths)  # (B, T)
        T = ids.size(1)
        x = self.enc_emb(ids) + self.pos.table[:T]  # (B, T, C)
        h = self.encoder(x, src_key_padding_mask=~mask)  # (B, T, C)
        a = self.pool(h) * mask[..., None].to(h.dtype)  # (B, T, 1)
        return (a * h).sum(dim=1)  # (B, C)

    def decode(self, dec_in: torch.Tensor, latent: torch.Tensor, dec_mask: torch.Tensor | None = None) -> torch.Tensor:
        """dec_in (B, T) [BOS, ...] + latent (B, C) -> logits (B, T, V); causal in dec_in."""
        T = dec_in.size(1)
        y = self.dec_emb(dec_in) + self.pos.table[:T]  # (B, T, C)
        # True = may NOT attend (torch.nn convention): keys after the query.
        causal = torch.ones(T, T, dtype=torch.bool, device=dec_in.device).triu(1)  # (T, T)
        pad = None if dec_mask is None else ~dec_mask.bool()
        out = self.decoder(y, latent[:, None, :], tgt_mask=causal, tgt_key_padding_mask=pad,
                           tgt_is_causal=True)  # (B, T, C)
        return self.head(out)  # (B, T, V)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        mask = _as_mask(ids, attention_mask, lengths)
        latent = self.encode(ids, mask)
        dec_in, dec_mask, targets = teacher_forcing(ids, mask, self.config)
        logits = self.decode(dec_in, latent, dec_mask)
        return reconstruction_loss(logits, targets, self.config.loss, self.config.focal_gamma)

    @torch.no_grad()
    def reconstruct(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    lengths: torch.Tensor | None = None, max_len: int | None = None) -> list[list[int]]:
        """Greedy decoding of each segment's latent (eval mode, restored afterwards)."""
        cfg = self.config
        max_len = cfg.max_len if max_len is None else int(max_len)
        was_training = self.training
        self.eval()
        try:
            latent = self.encode(ids, attention_mask, lengths)  # (B, C)
            B = ids.size(0)
            seq = torch.full((B, 1), cfg.bos_id, dtype=torch.long, device=ids.device)  # (B, 1)
            done = torch.zeros(B, dtype=torch.bool, device=ids.device)
            for _ in range(max_len + 1):
                nxt = self.decode(seq, latent)[:, -1].argmax(dim=-1)  # (B,)
                seq = torch.cat([seq, nxt[:, None]], dim=1)
                done |= nxt == cfg.eos_id
                if bool(done.all()):
                    break
        finally:
            self.train(was_training)
        out = []
        for row in seq[:, 1:].tolist():
            cut = row.index(cfg.eos_id) if cfg.eos_id in row else len(row)
            out.append(row[: min(cut, max_len)])
        return out


__all__ = ["REFERENCE_DROPOUT", "ReferenceSentenceVAE", "reference_config"]
