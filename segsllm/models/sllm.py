"""SLLM: a causal LM backbone that runs once per segment (docs/DESIGN.md §5, paper Fig. 2b).

    segments s_1..s_n ──► SentenceVAE encoder ──► P_in ──┐
                                                         ▼
    backbone inputs   [start, e_1, ..., e_n]      (its own forward: causal mask, positions, KV cache)
                                                         │
    backbone outputs  [h_0,   h_1, ..., h_n]      ◄──────┘
                         │
                         ├──► P_out (+ LayerNorm) ──► decoder memory: h_{k-1} generates s_k, then EOS
                         └──► stop head: "the document ends here" (1 at k = n, 0 before)

**Causality.** The backbone is only ever called through
:func:`segsllm.models.backbone.body_forward`, i.e. the model's own forward with its own
causal mask. h_{k-1} sees the start vector and s_1..s_{k-1} only, so the prediction of
segment k (its decoder NLL) and the stop decisions at positions ≤ k-1 cannot depend on s_k
or anything after it. ``tests/test_sllm.py`` checks this, and checks that the check fails
for a deliberately leaky backbone call.

**Likelihood.** For one window of n segments, the NLL in nats is
    sum_k  sum_{t in s_k + EOS} -log p_dec(t | h_{k-1}, t_<)        (segment tokens and their EOS)
  + sum_{k < n} -log(1 - p_stop(h_k))  +  [last window] -log p_stop(h_n)   (stop decisions)
so a whole document costs every token, every segment boundary and its own end exactly once.

**Free boundaries** (``sllm.boundaries=segmenter``). With a causal segmenter (lookahead 0)
the cut after a token is a function of the tokens so far, so the model need not say where
segments end: the generator asks the segmenter after each token. The stop head then decides
at h_{k-1}, before segment k, whether s_k is the document's last segment; only that one is
ended by the decoder's EOS (the document ends there, wherever the segmenter would cut). So
    sum_{k < n} sum_{t in s_k} -log p~_dec(t | h_{k-1}, t_<)    (EOS left out of the softmax)
  + [last window] sum_{t in s_n + EOS} -log p_dec(t | h_{n-1}, t_<)   (the last segment)
  + sum_k -log p_stop(is s_k the last? | h_{k-1})                    (one decision per segment)
— no segment end is paid except the document's. A valid model of the text: every step is a
distribution (over tokens, or tokens + EOS in a last segment), the segmentation is a
deterministic causal function of the tokens, and a text that more than one sequence of
decisions can produce is scored by one of them (a lower bound on its probability).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from segsllm.config.sllm import SLLMConfig
from segsllm.config.vae import SentenceVAEConfig
from segsllm.errors import ConfigError
from segsllm.models.artifact import config_errors, read_artifact, save_artifact
from segsllm.models.backbone import body_forward, freeze_layers
from segsllm.models.vae import IGNORE_INDEX, SentenceVAE, lengths_to_mask

KIND = "sllm"
DECODE_CHUNK = 8192  # decoder positions per teacher-forced chunk (see SLLM.decode_nll)


class DecodedNLL(NamedTuple):
    """Teacher-forced decoder NLL of N segments (nats): where a segment's bits go."""

    seg: torch.Tensor  # (N,) its tokens + its EOS
    eos: torch.Tensor  # (N,) the EOS alone
    first: torch.Tensor  # (N,) its first token alone (decoded from the latent, no token context)
    correct: torch.Tensor  # () argmax-correct targets


def _projection(kind: str, d_in: int, d_out: int, hidden: int | None) -> nn.Module:
    if kind == "auto":
        kind = "identity" if d_in == d_out else "linear"
    if kind == "identity":
        if d_in != d_out:
            raise ConfigError(f"sllm.projection: identity needs equal widths, got {d_in} -> {d_out}")
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(d_in, d_out)
    h = hidden or max(d_in, d_out)
    return nn.Sequential(nn.Linear(d_in, h), nn.GELU(), nn.Linear(h, d_out))


class SLLM(nn.Module):
    """SentenceVAE + causal backbone + projections, start vector and stop head.

    ``backbone`` is a Hugging Face ``*ForCausalLM`` (only its body is run). ``forward`` on a
    batch of windows (:mod:`segsllm.data.segment_windows`) returns the loss and summable
    statistics; generation lives in :mod:`segsllm.generate`.
    """

    def __init__(self, config: SLLMConfig, vae: SentenceVAE, backbone: nn.Module) -> None:
        super().__init__()
        self.config = config.validate()
        if config.boundaries not in ("eos", "segmenter"):
            raise ConfigError(f"sllm.boundaries={config.boundaries} is resolved by the training stage; "
                              "a model holds eos or segmenter")
        self.vae = vae
        self.backbone = backbone
        self.manifest: dict[str, Any] = {}  # filled by from_pretrained
        D = vae.config.latent_width
        emb = backbone.get_input_embeddings()
        H = emb.embedding_dim
        self.latent_width, self.hidden_size = D, H
        # Put the projected latents and the start vector at the scale of the backbone's own
        # input embeddings: a pretrained body has only ever seen inputs of that size.
        # (A model built on the meta device, for shape-only accounting, has no values to measure.)
        emb_std = 0.02 if emb.weight.is_meta else float(emb.weight.detach().float().std()) or 0.02
        self.start = nn.Parameter(torch.randn(H, device=emb.weight.device) * emb_std)  # (H,)
        self.proj_in = _projection(config.projection, D, H, config.proj_hidden)
        self.proj_out = _projection(config.projection, H, D, config.proj_hidden)
        last_in = [m for m in self.proj_in.modules() if isinstance(m, nn.Linear)]
        if last_in:
            nn.init.normal_(last_in[-1].weight, std=emb_std / math.sqrt(last_in[-1].in_features))
            nn.init.zeros_(last_in[-1].bias)
        self.out_norm = nn.LayerNorm(D) if config.out_layernorm else nn.Identity()
        if config.out_layernorm:
            # Start from the encoder's final LayerNorm: predicted latents then live where the
            # decoder's training latents lived.
            self.out_norm.load_state_dict(vae.encoder.ln_out.state_dict())
        self.stop_head = nn.Linear(H, 1)
        nn.init.normal_(self.stop_head.weight, std=0.02)
        nn.init.constant_(self.stop_head.bias, -3.0)  # most positions continue the document
        # Our own parts (and the VAE) are float32 beside the body, which keeps its dtype.
        for part in (self.vae, self.proj_in, self.proj_out, self.out_norm, self.stop_head):
            part.to(device=emb.weight.device, dtype=torch.float32)
        self._apply_freezing()

    # ---------------------------------------------------------------- set-up

    def _apply_freezing(self) -> None:
        cfg = self.config
        if cfg.freeze_vae:
            self.vae.requires_grad_(False)
            self.vae.eval()
        freeze_layers(self.backbone, cfg.train_first, cfg.train_last)
        # Token embeddings and LM head are never used (inputs_embeds in, hidden states out):
        # frozen, so they hold no optimizer state and DDP sees no unused trainable parameter.
        self.backbone.get_input_embeddings().requires_grad_(False)
        head = self.backbone.get_output_embeddings()
        if head is not None:
            head.requires_grad_(False)

    def train(self, mode: bool = True) -> SLLM:
        """A frozen VAE stays in eval mode (no dropout) whatever the loop asks for."""
        super().train(mode)
        if self.config.freeze_vae:
            self.vae.eval()
        return self

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    @property
    def free_boundaries(self) -> bool:
        """Whether the segmenter, not the decoder's EOS, ends segments (``sllm.boundaries``)."""
        return self.config.boundaries == "segmenter"

    @property
    def max_positions(self) -> int | None:
        """Backbone positions available (start vector + segments), if the config says."""
        c = self.backbone.config
        for key in ("max_position_embeddings", "n_positions"):
            if getattr(c, key, None):
                return int(getattr(c, key))
        return None

    # ---------------------------------------------------------------- pieces

    def embed_segments(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Segments (N, T) right-padded + lengths (N,) -> backbone input vectors (N, H)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_vae):
            z = self.vae.encode(ids, lengths=lengths)  # (N, D)
        return self.proj_in(z.float())  # (N, H)

    def start_inputs(self, batch_size: int) -> torch.Tensor:
        """The start-of-document vector as a (B, 1, H) block of backbone inputs."""
        return self.start.view(1, 1, -1).expand(batch_size, 1, -1)

    def run_backbone(self, inputs: torch.Tensor, attention_mask: torch.Tensor | None = None,
                     cache: Any = None, use_cache: bool = False) -> tuple[torch.Tensor, Any]:
        """(B, S, H) inputs -> (B, S, H) float32 outputs (and the KV cache) via the body's own forward."""
        dtype = self.backbone.get_input_embeddings().weight.dtype
        h, cache = body_forward(self.backbone, inputs.to(dtype), attention_mask=attention_mask,
                                past_key_values=cache, use_cache=use_cache)
        return h.float(), cache

    def predict_latent(self, h: torch.Tensor) -> torch.Tensor:
        """Backbone outputs (..., H) -> decoder latents (..., D)."""
        return self.out_norm(self.proj_out(h))

    def stop_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Backbone outputs (..., H) -> logit of "the document ends here" (...)."""
        return self.stop_head(h).squeeze(-1)

    # ---------------------------------------------------------------- teacher forcing

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor, is_last: torch.Tensor | None = None,
                is_first: torch.Tensor | None = None, return_details: bool = False,
                **_: Any) -> dict[str, torch.Tensor]:
        """Teacher-forced loss of a batch of windows.

        ids (B, S, T), lengths (B, S) (0 = padded slot; real segments form a prefix),
        is_last (B,) (default: every window ends its document). Returns tensors: ``loss``
        (carries the graph) and detached sums — ``nll_tokens`` (segment tokens),
        ``nll_first`` (each segment's first token), ``nll_seg_eos`` (each segment's EOS),
        ``nll_stop`` (stop decisions), ``n_tokens``, ``n_segments``, ``n_targets`` (decoder targets = tokens + one EOS per segment),
        ``n_stop``, ``n_docs`` (windows that end a document), ``n_correct`` (argmax-correct
        decoder targets), ``stop_correct``, ``ps_ce_sum``/``ps_count`` (the paper-style
        per-segment mean CE, each window's first segment excluded). With ``return_details``
        also ``seg_nll`` (B, S) (decoder NLL per segment, incl. its EOS), ``seg_eos_nll`` (B, S)
        (the EOS's share of it), ``seg_first_nll`` (B, S) (its first token's share: the token
        decoded from the predicted latent alone), ``stop_logits`` and ``stop_nll`` (B, S+1)
        (0 where no decision is scored) and ``hidden`` (B, S+1, H).
        """
        B, S, _ = ids.shape  # (B, S, T)
        dev = ids.device
        seg_mask = lengths > 0  # (B, S)
        n_seg = seg_mask.sum(1)  # (B,)
        if not torch.equal(seg_mask, lengths_to_mask(n_seg, S)):
            raise ValueError("real segments must come first in every window (right padding)")
        if is_last is None:
            is_last = torch.ones(B, dtype=torch.bool, device=dev)

        # 1. Encode every real segment once: (N, T') with T' the longest real segment.
        flat_len = lengths[seg_mask]  # (N,)
        flat_ids = ids[seg_mask][:, : int(flat_len.max())]  # (N, T')
        emb = self.embed_segments(flat_ids, flat_len)  # (N, H)

        # 2. Backbone over [start, e_1..e_S], right-padded; its own causal mask applies.
        grid = emb.new_zeros(B, S, self.hidden_size)  # (B, S, H)
        grid[seg_mask] = emb
        inputs = torch.cat([self.start_inputs(B).to(emb.dtype), grid], dim=1)  # (B, S+1, H)
        pos_mask = torch.cat([torch.ones(B, 1, dtype=torch.long, device=dev), seg_mask.long()], 1)  # (B, S+1)
        h, _ = self.run_backbone(inputs, attention_mask=pos_mask)  # (B, S+1, H)

        # 3. h_{k-1} -> latent -> decoder, teacher-forced on s_k (targets: tokens then EOS;
        # with free boundaries EOS only in the document's last segment, none in the softmax elsewhere).
        k = torch.arange(S + 1, device=dev)[None, :]  # (1, S+1)
        n = n_seg[:, None]  # (B, 1)
        has_eos = None
        if self.free_boundaries:
            has_eos = ((k[:, 1:] == n) & is_last[:, None].bool())[seg_mask]  # (N,) the document's last segment
        latent = self.predict_latent(h[:, :S][seg_mask])  # (N, D)
        dec = self.decode_nll(flat_ids, flat_len, latent, has_eos)
        seg_nll, eos_nll, n_correct = dec.seg, dec.eos, dec.correct  # (N,), (N,), ()

        # 4. Stop decisions: position k < n continues (0); position n stops (1) if the
        # document ends in this window, else it is not scored (the next window decides).
        # With free boundaries position k < n decides whether s_{k+1} is the document's last.
        if self.free_boundaries:
            stop_target = ((k == n - 1) & is_last[:, None].bool()).float()  # (B, S+1)
            stop_valid = k < n  # (B, S+1)
        else:
            stop_target = (k == n).float()  # (B, S+1)
            stop_valid = (k < n) | ((k == n) & is_last[:, None].bool())  # (B, S+1)
        stop_logit = self.stop_logits(h)  # (B, S+1)
        stop_nll = F.binary_cross_entropy_with_logits(stop_logit, stop_target, reduction="none")
        stop_nll = stop_nll * stop_valid

        n_eos = flat_len.numel() if has_eos is None else has_eos.sum()
        n_targets = flat_len.sum() + n_eos  # tokens + one EOS per segment (free: per document end)
        w = self.config.stop_loss_weight
        loss = (seg_nll.sum() + w * stop_nll.sum()) / n_targets.clamp(min=1)

        with torch.no_grad():
            stop_correct = (((stop_logit > 0).float() == stop_target) & stop_valid).sum()
            # Paper-style: mean CE per segment, the first segment of every window excluded.
            first = torch.zeros_like(seg_mask)
            first[:, 0] = True
            not_first = ~first[seg_mask]  # (N,)
            seg_targets = flat_len + (1 if has_eos is None else has_eos.long())  # (N,)
            seg_mean = seg_nll / seg_targets.float()  # (N,)
            out = {
                "loss": loss,
                "nll_tokens": (seg_nll - eos_nll).sum().detach(),
                "nll_seg_eos": eos_nll.sum().detach(),
                "nll_first": dec.first.sum().detach(),
                "nll_stop": stop_nll.sum().detach(),
                "n_tokens": flat_len.sum(),
                "n_segments": n_seg.sum(),
                "n_targets": n_targets,
                "n_stop": stop_valid.sum(),
                "n_docs": is_last.bool().sum(),
                "n_correct": n_correct,
                "stop_correct": stop_correct,
                "ps_ce_sum": (seg_mean * not_first).sum(),
                "ps_count": not_first.sum(),
            }
        if return_details:
            grid_nll = seg_nll.new_zeros(B, S)
            grid_nll[seg_mask] = seg_nll
            grid_eos = seg_nll.new_zeros(B, S)
            grid_eos[seg_mask] = eos_nll
            grid_first = seg_nll.new_zeros(B, S)
            grid_first[seg_mask] = dec.first
            out.update(seg_nll=grid_nll, seg_eos_nll=grid_eos, seg_first_nll=grid_first, stop_logits=stop_logit,
                       stop_nll=stop_nll, hidden=h)
        return out

    def decode_nll(self, ids: torch.Tensor, lengths: torch.Tensor,
                   latent: torch.Tensor, has_eos: torch.Tensor | None = None) -> DecodedNLL:
        """Teacher-forced decoder NLL of segments (N, T) given their latents (N, D).

        Returns (:class:`DecodedNLL`) per segment the NLL summed over its tokens and EOS (N,),
        the EOS's NLL (N,), the first token's NLL (N,) and the number of argmax-correct
        targets. ``has_eos`` (N,) bool: the segments whose EOS is a target (default: all); a
        segment without one is scored on its tokens with EOS left out of the softmax and
        reports an EOS NLL of 0 (free boundaries: a segment the segmenter ends). Segments are
        decoded in length-sorted chunks of about :data:`DECODE_CHUNK` positions: each is padded only to its own
        longest segment (prose segments beside 2-token CSV cells would otherwise multiply
        the (positions x vocabulary) logits several times over) and memory stays bounded.
        Exact: every segment is decoded independently of the others.
        """
        N = ids.size(0)
        order = torch.argsort(lengths)  # (N,) shortest first
        sorted_len = lengths[order].tolist()
        bounds, start = [], 0
        for i, n in enumerate(sorted_len):
            if i > start and (i + 1 - start) * (n + 1) > DECODE_CHUNK:
                bounds.append((start, i))
                start = i
        bounds.append((start, N))
        seg_parts, eos_parts, first_parts, correct = [], [], [], ids.new_zeros(())
        for a, b in bounds:
            idx = order[a:b]
            T = sorted_len[b - 1]  # longest segment of the chunk
            L = lengths[idx]
            dec_in, dec_mask, targets = self.vae.teacher_forcing(ids[idx, :T], lengths_to_mask(L, T))  # (n, T+1)
            rows = torch.arange(idx.numel(), device=ids.device)
            if has_eos is not None:
                targets[rows, L] = torch.where(has_eos[idx], targets[rows, L], IGNORE_INDEX)
            logits = self.vae.decoder(dec_in, latent[idx], attention_mask=dec_mask)  # (n, T+1, V)
            n, T1, V = logits.shape
            if has_eos is not None:  # renormalise without EOS where it is not a target
                eos_col = torch.arange(V, device=logits.device) == self.vae.config.eos_id  # (V,)
                logits = logits.masked_fill((~has_eos[idx])[:, None, None] & eos_col, float("-inf"))
            nll = F.cross_entropy(logits.reshape(n * T1, V).float(), targets.reshape(-1),
                                  ignore_index=IGNORE_INDEX, reduction="none").view(n, T1)  # (n, T+1)
            seg_parts.append(nll.sum(1))
            eos_parts.append(nll[rows, L])  # 0 where the EOS is not a target (ignored)
            first_parts.append(nll[:, 0])  # every segment has >= 1 token: target 0 is its first
            with torch.no_grad():
                correct = correct + ((logits.argmax(-1) == targets) & (targets != IGNORE_INDEX)).sum()
        inverse = torch.argsort(order)  # back to the input order
        return DecodedNLL(torch.cat(seg_parts)[inverse], torch.cat(eos_parts)[inverse],
                          torch.cat(first_parts)[inverse], correct)

    # ---------------------------------------------------------------- save / load

    def artifact_config(self) -> dict[str, Any]:
        """Everything needed to rebuild the modules (weights aside)."""
        hf = self.backbone.config.to_dict()
        return {
            "sllm": self.config.to_dict(),
            "vae": self.vae.config.to_dict(),
            "backbone": {"model_type": hf.get("model_type"), "hf_config": hf,
                         "dtype": str(self.backbone.get_input_embeddings().weight.dtype).removeprefix("torch.")},
        }

    def save_pretrained(self, out_dir: str | Path, extra_manifest: dict[str, Any] | None = None, *,
                        tokenizer: Any = None, lineage: dict[str, Any] | None = None) -> Path:
        """One self-describing folder: SLLM weights incl. the VAE and the backbone, config,
        tokenizer files, manifest (kind=sllm). See :mod:`segsllm.models.artifact`."""
        return save_artifact(out_dir, kind=KIND, config=self.artifact_config(), state_dict=self.state_dict(),
                             tokenizer=tokenizer, lineage=lineage, extra_manifest=extra_manifest)

    @classmethod
    def from_pretrained(cls, path: str | Path, tokenizer: Any = None, map_location: Any = "cpu",
                        verify_checksums: bool = True) -> SLLM:
        """Load a folder written by :meth:`save_pretrained` (one-line ArtifactError if not)."""
        from transformers import AutoConfig, AutoModelForCausalLM

        art = read_artifact(path, kind=KIND, tokenizer=tokenizer, verify_checksums=verify_checksums)
        with config_errors(path, "SLLM"):
            sllm_cfg = SLLMConfig.from_dict(art.config["sllm"])
            vae_cfg = SentenceVAEConfig.from_dict(art.config["vae"])
            bb = art.config["backbone"]
            hf_dict = dict(bb["hf_config"])
            hf_cfg = AutoConfig.for_model(hf_dict.pop("model_type"), **hf_dict)
        dtype = getattr(torch, str(bb.get("dtype", "float32")), torch.float32)
        backbone = AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype)
        return art.load_into(cls(sllm_cfg, SentenceVAE(vae_cfg), backbone)).to(map_location)


def hidden_states_cached(model: SLLM, segments: list[torch.Tensor], prefill: int) -> tuple[torch.Tensor, Any]:
    """Backbone outputs of ``[start, s_1..s_n]`` computed the way generation does: the start
    vector and the first ``prefill`` segments at once, then one segment per step through the
    KV cache. Returns ((1, n+1, H), cache). For tests and the bench."""
    dev = model.start.device

    def embed(seg: torch.Tensor) -> torch.Tensor:
        return model.embed_segments(seg.view(1, -1).to(dev), torch.tensor([seg.numel()], device=dev))  # (1, H)

    first = [model.start_inputs(1)] + [embed(s)[:, None] for s in segments[:prefill]]
    h, cache = model.run_backbone(torch.cat(first, dim=1), use_cache=True)  # (1, 1+prefill, H)
    outs = [h]
    for seg in segments[prefill:]:
        step, cache = model.run_backbone(embed(seg)[:, None], cache=cache, use_cache=True)  # (1, 1, H)
        outs.append(step)
    return torch.cat(outs, dim=1), cache


__all__ = ["KIND", "SLLM", "SLLMConfig", "hidden_states_cached"]
