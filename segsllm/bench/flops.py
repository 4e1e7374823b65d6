"""The cost account of generation: FLOPs counted from the models' shapes and cache lengths.

:func:`segsllm.generate.generate_sllm` / :func:`~segsllm.generate.generate_lm` list every
model call they make (:class:`segsllm.generate.Call`: how many positions, how long the
KV cache was, how many decoder steps). This module prices each call from the weight
matrices the call actually multiplies by:

- **token LM / SLLM backbone**, per position: 2 × (in × out) for every ``nn.Linear`` /
  GPT-2 ``Conv1D`` of the body (embeddings are lookups, not counted), plus attention
  2 × 2 × (query heads × head dim) × keys per layer (QKᵀ and AV; keys = cache + the
  positions fed, the full rectangle a dense kernel computes during a causal prefill),
  plus the LM's vocabulary projection (2 × H × V) on each position whose logits are kept;
- **segment encoder**, per call on N segments of T (padded) tokens: the block linears
  per token, full T × T bidirectional attention, the pooling score, then the per-segment
  projection and the SLLM's ``proj_in``;
- **learned splitter** (free boundaries only: ``sllm.boundaries=segmenter`` asks the
  segmenter after every generated token), per decision: its convolutions once per position
  (an incremental stream; rules such as ``fixed`` or ``lines`` are a lookup, priced 0);
- **sentence decoder**, per call of k token steps: the SLLM's ``proj_out`` on the latent,
  the latent projection and the cross-attention K/V of the memory once, then per step
  the block linears, self-attention over the i + 1 cached positions, cross-attention over
  the memory slots, and the decoder's vocabulary projection.

What is counted are multiply–adds of matrix products ×2, which is what
``torch.utils.flop_counter.FlopCounterMode`` counts too (mm/addmm/bmm/SDPA); biases, norms,
activations, softmax and sampling are left out on both sides. The test cross-checks the two
on tiny models (they differ by the rotary-embedding outer product, < 1 %).
The figure depends only on shapes and on what was generated: identical on every machine.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


def _linear_macs(modules: Iterable[Any]) -> int:
    """Multiply-adds per input row of every Linear / Conv1D among ``modules``."""
    import torch.nn as nn

    total = 0
    for m in modules:
        if isinstance(m, nn.Linear):
            total += m.in_features * m.out_features
        elif type(m).__name__ == "Conv1D" and getattr(m, "weight", None) is not None:  # GPT-2: (in, out)
            total += int(m.weight.numel())
    return total


def _macs_of(module: Any) -> int:
    return _linear_macs(module.modules()) if module is not None else 0


def splitter_macs(segmenter: Any) -> int:
    """Multiply-adds per token of a learned segmenter's boundary predictor (every Conv1d's
    weights once per position, Linear layers too); 0 for a rule (no network)."""
    import torch.nn as nn

    model = getattr(segmenter, "model", None)
    if not isinstance(model, nn.Module):
        return 0
    convs = sum(int(m.weight.numel()) for m in model.modules() if isinstance(m, nn.Conv1d))
    return convs + _linear_macs(model.modules())


@dataclass(frozen=True)
class BodyCost:
    """Per-position prices of a causal transformer (the token LM or the SLLM's backbone)."""

    linear: int  # MACs per position through the body's linear layers
    layers: int
    attn_width: int  # query heads × head dim
    head: int = 0  # MACs per position of the vocabulary projection (token LM only)

    def flops(self, positions: int, context: int, logits: int = 0) -> int:
        """FLOPs of one forward of ``positions`` positions after ``context`` cached ones."""
        attn = self.layers * self.attn_width * 2 * positions * (context + positions)
        return 2 * (positions * self.linear + attn + logits * self.head)


def body_cost(model: Any, with_head: bool) -> BodyCost:
    """Prices of a ``*ForCausalLM``: its body's linears (the output head excluded) and, with
    ``with_head``, the head."""
    head = model.get_output_embeddings()
    skip = set(head.modules()) if head is not None else set()
    linear = _linear_macs(m for m in model.modules() if m not in skip)
    c = model.config
    layers = next(int(v) for k in ("num_hidden_layers", "n_layer", "num_layers") if (v := getattr(c, k, None)))
    heads = next(int(v) for k in ("num_attention_heads", "n_head") if (v := getattr(c, k, None)))
    hidden = next(int(v) for k in ("hidden_size", "n_embd", "d_model") if (v := getattr(c, k, None)))
    head_dim = int(getattr(c, "head_dim", None) or hidden // heads)
    return BodyCost(linear, layers, heads * head_dim, _macs_of(head) if with_head else 0)


@dataclass(frozen=True)
class VAECost:
    """Prices of the segment encoder and the sentence decoder (+ the SLLM's projections)."""

    enc_token: int  # MACs per segment token: encoder block linears + pooling score
    enc_segment: int  # MACs per segment: encoder output projection + SLLM proj_in
    enc_layers: int
    dec_call: int  # MACs once per decoder call: proj_out, latent projection, cross K/V of the memory
    dec_step: int  # MACs per decoder step: block linears (cross K/V excluded) + vocabulary projection
    dec_layers: int
    width: int  # d_model (attention width of encoder and decoder)
    slots: int  # memory slots the decoder cross-attends to
    attention_pool: bool

    def encoder_flops(self, batch: int, tokens: int) -> int:
        attn = self.enc_layers * self.width * 2 * tokens * tokens
        pool = self.width * tokens if self.attention_pool else 0  # h @ query
        return 2 * batch * (tokens * self.enc_token + attn + pool + self.enc_segment)

    def decoder_flops(self, steps: int) -> int:
        self_keys = steps * (steps + 1) // 2  # step i attends to i + 1 cached positions
        attn = self.dec_layers * self.width * 2 * (self_keys + steps * self.slots)
        return 2 * (self.dec_call + steps * self.dec_step + attn)


def vae_cost(sllm: Any) -> VAECost:
    """Prices of an SLLM's VAE and projections, read from its modules."""
    vae = sllm.vae
    enc, dec, cfg = vae.encoder, vae.decoder, vae.config
    enc_token = sum(_macs_of(b) for b in enc.blocks) + _macs_of(enc.pool)
    cross_kv = sum(_macs_of(b.cross_attn.kv_proj) for b in dec.blocks)
    dec_step = sum(_macs_of(b) for b in dec.blocks) - cross_kv + _macs_of(dec.lm_head)
    return VAECost(
        enc_token=enc_token, enc_segment=_macs_of(enc.proj) + _macs_of(sllm.proj_in), enc_layers=len(enc.blocks),
        dec_call=_macs_of(sllm.proj_out) + _macs_of(dec.latent_proj) + cross_kv * cfg.memory_slots,
        dec_step=dec_step, dec_layers=len(dec.blocks), width=cfg.d_model, slots=cfg.memory_slots,
        attention_pool=cfg.pooling != "add",
    )


@dataclass
class CostAccount:
    """FLOPs of one or more generations, split by phase and by component."""

    prefill: int = 0
    backbone: int = 0  # generation phase: backbone (SLLM) or the whole token LM incl. its head
    encoder: int = 0
    decoder: int = 0
    splitter: int = 0  # free boundaries: the learned segmenter's decisions during generation
    new_tokens: int = 0
    backbone_steps: int = 0  # generation-phase backbone forwards
    encoder_calls: int = 0
    decoder_steps: int = 0

    @property
    def generation(self) -> int:
        return self.backbone + self.encoder + self.decoder + self.splitter

    @property
    def flops_per_token(self) -> float:
        """Generation-phase FLOPs per generated token (the prompt's prefill excluded)."""
        return self.generation / self.new_tokens if self.new_tokens else float("nan")

    def add(self, other: CostAccount) -> CostAccount:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))
        return self

    def as_dict(self) -> dict[str, Any]:
        return {"flops_prefill": self.prefill, "flops_backbone": self.backbone, "flops_encoder": self.encoder,
                "flops_decoder": self.decoder, "flops_splitter": self.splitter, "flops_generation": self.generation,
                "flops_per_token": self.flops_per_token, "backbone_steps": self.backbone_steps,
                "encoder_calls": self.encoder_calls, "decoder_steps": self.decoder_steps}


class Pricer:
    """Prices the calls of a generation for one model (an SLLM or a token LM)."""

    def __init__(self, model: Any, segmenter: Any = None) -> None:
        from segsllm.models.backbone import Backbone

        if isinstance(model, Backbone):
            model = model.model
        self.is_sllm = hasattr(model, "vae") and hasattr(model, "backbone")
        self.body = body_cost(model.backbone if self.is_sllm else model, with_head=not self.is_sllm)
        self.vae = vae_cost(model) if self.is_sllm else None
        self.splitter_macs = splitter_macs(segmenter) if segmenter is not None else 0

    def call_flops(self, call: Any) -> int:
        """FLOPs of one :class:`segsllm.generate.Call`."""
        if call.kind in ("backbone", "lm"):
            return self.body.flops(call.length, call.context, logits=1 if call.kind == "lm" else 0)
        if self.vae is None:
            raise ValueError(f"a token LM makes no {call.kind!r} call")
        if call.kind == "encoder":
            return self.vae.encoder_flops(call.batch, call.length)
        if call.kind == "decoder":
            return self.vae.decoder_flops(call.length)
        if call.kind == "splitter":
            return 2 * self.splitter_macs * call.length
        raise ValueError(f"unknown call kind {call.kind!r}")

    def account(self, result: Any) -> CostAccount:
        """The cost account of one :class:`segsllm.generate.GenerationResult`."""
        acc = CostAccount(new_tokens=result.new_tokens)
        for call in result.calls:
            f = self.call_flops(call)
            if call.prefill:
                acc.prefill += f
            elif call.kind in ("backbone", "lm"):
                acc.backbone += f
                acc.backbone_steps += 1
            elif call.kind == "encoder":
                acc.encoder += f
                acc.encoder_calls += call.batch
            elif call.kind == "splitter":
                acc.splitter += f
            else:
                acc.decoder += f
                acc.decoder_steps += call.length
        return acc

    def total(self, results: Sequence[Any]) -> CostAccount:
        acc = CostAccount()
        for r in results:
            acc.add(self.account(r))
        return acc


__all__ = ["BodyCost", "CostAccount", "Pricer", "VAECost", "body_cost", "splitter_macs", "vae_cost"]
