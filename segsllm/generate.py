"""Generation with the SLLM (segment by segment) and with a token-level LM, KV caches on.

Both functions take the same prompt and budget and return a :class:`GenerationResult`
(text, token counts, timing, KV-cache bytes), so the bench (docs/DESIGN.md §7: batch 1, greedy,
KV cache on for both, same prompts, same number of output tokens) times them side by side::

    from segsllm.generate import generate_sllm, generate_lm, load_sllm
    model, tok, seg = load_sllm("runs/sllm")
    r = generate_sllm(model, tok, seg, "The Congress", max_new_tokens=128, ignore_stop=True)
    b = generate_lm(baseline_model, tok, "The Congress", max_new_tokens=128, ignore_eos=True)
    speedup = r.tokens_per_s / b.tokens_per_s

SLLM loop: tokenize and segment the prompt; encode its segments; **prefill** the backbone
with ``[start, e_1..e_p]`` (one forward, KV cache kept); then repeat: the stop head on the
last output decides whether the document ends; otherwise P_out gives the latent, the VAE
decoder generates the next segment with its own KV cache, the segment is re-encoded and
fed to the backbone as **one cached step**. Note the prompt's last segment is taken as
complete: generation continues with the *next* segment.

``elapsed_s`` covers everything after tokenisation (prefill included, CUDA synchronised);
``kv_cache_bytes`` is the backbone's cache at the end, read from its tensors. ``calls``
lists every model call with its shapes and cache lengths (:class:`Call`), from which
:mod:`segsllm.bench.flops` counts FLOPs; ``profile=True`` also times each call (CUDA
synchronised around each, so not for throughput runs).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from segsllm.data.tokenizer import decode, encode
from segsllm.errors import SegsllmError
from segsllm.models.backbone import Backbone, kv_cache_bytes
from segsllm.models.vae import _sample

STOP_REASONS = ("stop", "eos", "max_new_tokens", "max_positions", "empty_segment")
SEGMENT_ENDS = ("eos", "cut", "max_len", "budget")  # how a generated segment ended (cut: the segmenter's)


@dataclass
class Call:
    """One model call during a generation, with the shapes its cost depends on."""

    kind: str  # "backbone" (SLLM body) | "lm" (token LM incl. its vocab head) | "encoder" | "decoder" | "splitter"
    length: int  # backbone/lm: positions fed; encoder: padded segment tokens; decoder: token steps; splitter: decisions
    batch: int = 1  # encoder: segments encoded in this call
    context: int = 0  # backbone/lm: positions already in the KV cache
    prefill: bool = False
    seconds: float = math.nan  # measured only with profile=True


@dataclass
class GenerationResult:
    """One generation: the continuation, how much was generated, how long it took."""

    model: str  # "sllm" | "lm"
    prompt: str
    text: str  # the continuation only (the prompt excluded)
    token_ids: list[int]  # generated token ids (no BOS/EOS)
    segments: list[str] = field(default_factory=list)  # SLLM: one string per generated segment
    prompt_tokens: int = 0
    prompt_segments: int = 0  # SLLM only
    backbone_steps: int = 0  # cached backbone forwards after the prefill (SLLM: segments; LM: tokens)
    elapsed_s: float = 0.0  # prefill + generation
    prefill_s: float = 0.0
    kv_cache_bytes: int = 0  # backbone KV cache at the end
    decoder_cache_bytes: int = 0  # SLLM: the decoder's per-segment cache (freed after each segment)
    stop_reason: str = "max_new_tokens"
    calls: list[Call] = field(default_factory=list)  # every model call, in order
    segment_ends: list[str] = field(default_factory=list)  # SLLM: one of SEGMENT_ENDS per segment
    empty_masked: int = 0  # SLLM, ignore_stop: segments whose decoder chose EOS before any token (masked)

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.elapsed_s if self.elapsed_s > 0 else float("nan")

    @property
    def context_tokens(self) -> int:
        return self.prompt_tokens + self.new_tokens

    @property
    def kv_bytes_per_token(self) -> float:
        """Backbone KV bytes per context token (prompt + generated)."""
        return self.kv_cache_bytes / self.context_tokens if self.context_tokens else float("nan")


class TextStream:
    """Turns token ids into text as they come, holding back an incomplete UTF-8 character
    (byte-level BPE can split one across tokens, hence across segments)."""

    def __init__(self, tokenizer: Any) -> None:
        from segsllm.data.vocab import vocab_bytes

        self.tokenizer = tokenizer
        self.vb = vocab_bytes(tokenizer)
        self.pending = b""
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, ids: list[int]) -> str:
        """Feed token ids; return the text they complete."""
        from segsllm.segment.text import incomplete_tail

        self.ids += ids
        if not self.vb.byte_level:  # decode everything so far and emit the new suffix
            text = decode(self.tokenizer, self.ids)
            new, self.emitted = text[len(self.emitted):], text
            return new
        data = self.pending + b"".join(self.vb.table[i] for i in ids)
        cut = len(data) - incomplete_tail(data[-4:])
        self.pending = data[cut:]
        return data[:cut].decode("utf-8", errors="replace")

    def flush(self) -> str:
        out, self.pending = self.pending.decode("utf-8", errors="replace"), b""
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Clock:
    """Times model calls when profiling (CUDA synchronised around each); free otherwise."""

    def __init__(self, device: torch.device, on: bool) -> None:
        self.device, self.on, self.t0 = device, on, 0.0

    def start(self) -> None:
        if self.on:
            _sync(self.device)
            self.t0 = time.perf_counter()

    def stop(self) -> float:
        if not self.on:
            return math.nan
        _sync(self.device)
        return time.perf_counter() - self.t0


@dataclass(frozen=True)
class Sampling:
    """How both generators draw: greedy, or at ``temperature`` from the ``top_p`` nucleus
    with a generator seeded by ``seed`` (None: torch's global RNG)."""

    greedy: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def sampled(self) -> bool:
        """True when anything is drawn at random (temperature 0 is greedy too)."""
        return not self.greedy and self.temperature > 0

    def generator(self, device: torch.device) -> torch.Generator | None:
        return None if self.seed is None else torch.Generator(device=device).manual_seed(int(self.seed))


GREEDY = Sampling()


def decoder_cache_bytes(vae: Any, max_len: int) -> int:
    """Bytes of the VAE decoder's preallocated KV cache for one segment of ``max_len`` tokens
    (self-attention K/V for BOS + tokens, cross-attention K/V of the memory slots)."""
    c = vae.config
    elem = next(vae.parameters()).element_size()
    return 2 * c.decoder_layers * (max_len + 1 + c.memory_slots) * c.d_model * elem


# --------------------------------------------------------------------------- SLLM


@torch.no_grad()
def generate_sllm(
    model: Any,
    tokenizer: Any,
    segmenter: Any,
    prompt: str,
    max_new_tokens: int = 128,
    *,
    sampling: Sampling = GREEDY,
    on_segment: Callable[[str], None] | None = None,
    ignore_stop: bool = False,
    profile: bool = False,
) -> GenerationResult:
    """Continue ``prompt`` segment by segment (batch 1).

    Ends when the stop head says so (p > 0.5 greedy, else drawn; ``ignore_stop`` to
    always use the whole budget, as the bench does), after ``max_new_tokens`` tokens (the
    last segment is cut to fit exactly), at the backbone's last position, or when the
    decoder emits an empty segment. With ``ignore_stop`` the decoder's EOS is also masked
    at a segment's first token, so no segment is empty and the run spends its whole budget
    (unless the backbone runs out of positions). ``on_segment(text)`` is called with each
    segment's text as soon as it exists.

    With free boundaries (``sllm.boundaries=segmenter``) the segmenter ends each segment:
    after every generated token its cutter (``segmenter.cutter()``, one step per token, the
    prompt as left context and each segment's start as the start of a run) says whether it
    cuts there; it is causal, so later tokens cannot matter; EOS is masked. The stop
    head then says before a segment whether it is the document's last; that one alone is
    ended by the decoder's EOS (or the budget), and generation stops after it (``stop``).
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if model.free_boundaries and not segmenter.causal:
        raise SegsllmError(f"this SLLM leaves segment ends to a causal segmenter (sllm.boundaries=segmenter); "
                           f"{segmenter.spec()!r} is not causal")
    was_training = model.training
    model.eval()
    device = model.start.device
    gen = sampling.generator(device)
    vae = model.vae
    max_len = vae.config.max_len
    max_pos = model.max_positions

    prompt_ids = encode(tokenizer, prompt) if prompt else []
    prompt_segs = segmenter.split_ids(prompt_ids) if prompt_ids else []
    if max_pos is not None and 1 + len(prompt_segs) > max_pos:
        raise SegsllmError(f"the prompt has {len(prompt_segs)} segments; the backbone holds at most "
                           f"{max_pos - 1} after the start vector")
    stream = TextStream(tokenizer)
    clock = _Clock(device, profile)
    result = GenerationResult(model="sllm", prompt=prompt, text="", token_ids=[],
                              prompt_tokens=len(prompt_ids), prompt_segments=len(prompt_segs))
    try:
        _sync(device)
        t0 = time.perf_counter()
        # Prefill: [start, e_1..e_p] in one backbone forward.
        inputs = [model.start_inputs(1)]  # (1, 1, H)
        if prompt_segs:
            T = max(len(s) for s in prompt_segs)
            ids = torch.full((len(prompt_segs), T), vae.config.pad_id, dtype=torch.long)
            for i, s in enumerate(prompt_segs):
                ids[i, : len(s)] = torch.as_tensor(s)
            lengths = torch.tensor([len(s) for s in prompt_segs])
            clock.start()
            inputs.append(model.embed_segments(ids.to(device), lengths.to(device))[None])  # (1, p, H)
            result.calls.append(Call("encoder", T, batch=len(prompt_segs), prefill=True, seconds=clock.stop()))
        clock.start()
        h, cache = model.run_backbone(torch.cat(inputs, dim=1), use_cache=True)  # (1, 1+p, H)
        result.calls.append(Call("backbone", h.size(1), prefill=True, seconds=clock.stop()))
        h_last = h[:, -1]  # (1, H)
        positions = h.size(1)
        _sync(device)
        result.prefill_s = time.perf_counter() - t0

        reason = "max_new_tokens"
        free = bool(model.free_boundaries)
        cut_after = None
        if free:
            # The segmenter's decisions token by token; the prompt ends a segment (its last),
            # so the first generated one starts a run, with the prompt as left context.
            cutter = segmenter.cutter()
            result.calls.append(Call("splitter", cutter.start(prompt_ids), prefill=True))

            def cut_after(seg_ids: list[int]) -> bool:
                result.calls.append(Call("splitter", 1))  # one decision (priced by bench.flops)
                return cutter.push(seg_ids[-1])

        while len(result.token_ids) < max_new_tokens:
            last = False  # free boundaries: this segment is the document's last
            if not ignore_stop:
                z = model.stop_logits(h_last)  # (1,)
                if sampling.sampled:
                    p = torch.sigmoid(z / sampling.temperature)
                    stop = bool(torch.bernoulli(p, generator=gen).item())
                else:
                    stop = bool(z.item() > 0)
                if stop and not free:
                    reason = "stop"
                    break
                last = stop
            budget = min(max_len, max_new_tokens - len(result.token_ids))
            info: dict[str, Any] = {}
            clock.start()
            latent = model.predict_latent(h_last)  # (1, D)
            # ignore_stop: no empty segment. Free boundaries: EOS only in the last segment.
            min_len = (0 if last else budget + 1) if free else (1 if ignore_stop else 0)
            seg = vae.generate(latent, max_len=budget, greedy=not sampling.sampled,
                               temperature=sampling.temperature, top_p=sampling.top_p, generator=gen,
                               min_len=min_len, info=info, cut_after=cut_after if free and not last else None)[0]
            result.calls.append(Call("decoder", info["steps"], seconds=clock.stop()))
            result.decoder_cache_bytes = max(result.decoder_cache_bytes, decoder_cache_bytes(vae, budget))
            if not seg:
                reason = "stop" if last else "empty_segment"
                break
            result.empty_masked += int(info["eos_masked"][0]) if not free else 0
            ended = "cut" if info["cut"][0] else "eos" if info["eos"][0] else "budget" if budget < max_len else "max_len"
            result.segment_ends.append(ended)
            result.token_ids += seg
            if free:
                cutter.end_segment()  # whatever ended it (a cut, max_len, the budget)
            text = stream.push(seg)
            result.segments.append(text)
            if on_segment is not None:
                on_segment(text)
            if last:
                reason = "stop"
                break
            if len(result.token_ids) >= max_new_tokens:
                break  # budget spent: the next backbone step would never be used
            if max_pos is not None and positions >= max_pos:
                reason = "max_positions"
                break
            clock.start()
            e = model.embed_segments(torch.tensor([seg], device=device),
                                     torch.tensor([len(seg)], device=device))  # (1, H)
            result.calls.append(Call("encoder", len(seg), seconds=clock.stop()))
            clock.start()
            h, cache = model.run_backbone(e[:, None], cache=cache, use_cache=True)  # (1, 1, H)
            result.calls.append(Call("backbone", 1, context=positions, seconds=clock.stop()))
            h_last = h[:, -1]
            positions += 1
            result.backbone_steps += 1
        tail = stream.flush()
        if tail:
            if result.segments:
                result.segments[-1] += tail
            if on_segment is not None:
                on_segment(tail)
        _sync(device)
        result.elapsed_s = time.perf_counter() - t0
    finally:
        model.train(was_training)
    result.text = "".join(result.segments)
    result.kv_cache_bytes = kv_cache_bytes(cache)
    result.stop_reason = reason
    return result


# --------------------------------------------------------------------------- token-level LM


@torch.no_grad()
def generate_lm(
    model: Any,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int = 128,
    *,
    sampling: Sampling = GREEDY,
    on_text: Callable[[str], None] | None = None,
    ignore_eos: bool = False,
    add_bos: bool = True,
    profile: bool = False,
) -> GenerationResult:
    """Continue ``prompt`` token by token with a ``*ForCausalLM`` (or a loaded ``Backbone``).

    The context is ``BOS + prompt`` (``train-lm``'s document stream; BOS falls back to EOS).
    Prefill, then one cached forward per token; ends at EOS (unless ``ignore_eos``),
    ``max_new_tokens`` or the model's last position. ``on_text(text)`` streams the output.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if isinstance(model, Backbone):
        model = model.model
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = sampling.generator(device)
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    prompt_ids = encode(tokenizer, prompt) if prompt else []
    context = ([bos] if add_bos and bos is not None else []) + prompt_ids
    if not context:
        raise ValueError("empty prompt and no BOS token: nothing to condition on")
    max_pos = None
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        if isinstance(getattr(model.config, key, None), int):
            max_pos = getattr(model.config, key)
            break
    # transformers >= 5.2x names the cache argument ``cache``, earlier ones ``past_key_values``.
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    if max_pos is not None and len(context) > max_pos:
        raise SegsllmError(f"the prompt has {len(context)} tokens; the model holds at most {max_pos}")
    stream = TextStream(tokenizer)
    result = GenerationResult(model="lm", prompt=prompt, text="", token_ids=[], prompt_tokens=len(prompt_ids))
    pieces: list[str] = []
    cache = None
    clock = _Clock(device, profile)
    try:
        _sync(device)
        t0 = time.perf_counter()
        ids = torch.tensor([context], device=device)  # (1, P)
        clock.start()
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        result.calls.append(Call("lm", ids.size(1), prefill=True, seconds=clock.stop()))
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        logits = out.logits[:, -1]  # (1, V)
        positions = ids.size(1)
        _sync(device)
        result.prefill_s = time.perf_counter() - t0
        reason = "max_new_tokens"
        while len(result.token_ids) < max_new_tokens:
            if ignore_eos and eos is not None:
                logits[:, eos] = float("-inf")
            nxt = _sample(logits.float(), not sampling.sampled, sampling.temperature, sampling.top_p, gen)  # (1,)
            tok = int(nxt.item())
            if tok == eos and not ignore_eos:
                reason = "eos"
                break
            result.token_ids.append(tok)
            text = stream.push([tok])
            pieces.append(text)
            if on_text is not None and text:
                on_text(text)
            if len(result.token_ids) >= max_new_tokens:
                break
            if max_pos is not None and positions >= max_pos:
                reason = "max_positions"
                break
            clock.start()
            out = model(input_ids=nxt.view(1, 1), use_cache=True, **{cache_kw: cache})
            result.calls.append(Call("lm", 1, context=positions, seconds=clock.stop()))
            cache = out.cache if hasattr(out, "cache") else out.past_key_values
            logits = out.logits[:, -1]
            positions += 1
            result.backbone_steps += 1
        tail = stream.flush()
        pieces.append(tail)
        if on_text is not None and tail:
            on_text(tail)
        _sync(device)
        result.elapsed_s = time.perf_counter() - t0
    finally:
        model.train(was_training)
    result.text = "".join(pieces)
    result.kv_cache_bytes = kv_cache_bytes(cache)
    result.stop_reason = reason
    return result


# --------------------------------------------------------------------------- loading


def load_sllm(path: str | Path, device: Any = "cpu") -> tuple[Any, Any, Any]:
    """(model, tokenizer, segmenter) of an SLLM folder written by ``segsllm finetune``.

    The segmenter is the one recorded in the folder's lineage, capped at the VAE's max_len.
    """
    from segsllm.errors import ArtifactError
    from segsllm.models.loading import load_artifact
    from segsllm.segment import build_segmenter

    root = Path(path)
    loaded = load_artifact("sllm", root, device=device)
    model, tokenizer, manifest = loaded.model, loaded.tokenizer, loaded.manifest
    spec = (manifest.get("lineage") or {}).get("segmenter")
    if not spec:
        raise ArtifactError(f"{root}/manifest.json names no segmenter in its lineage")
    segmenter = build_segmenter(spec, tokenizer=tokenizer, max_len=model.vae.config.max_len)
    return model.eval(), tokenizer, segmenter


__all__ = ["SEGMENT_ENDS", "STOP_REASONS", "Call", "GenerationResult", "TextStream", "decoder_cache_bytes", "generate_lm",
           "generate_sllm", "load_sllm"]
