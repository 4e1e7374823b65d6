"""The paper's SLLM configurations on paper: predicted generation FLOPs speedups and KV ratios.

For OPT-125M/350M/1.3B × SentenceVAE H1/H2/H4 (``configs/opt-*-h*.yaml``) this builds the
token LM and the SLLM **on the meta device** (real module shapes, no weights, no download),
lists the model calls that :func:`segsllm.generate.generate_sllm` / ``generate_lm`` make
for a generation of ``new_tokens`` tokens after a ``prompt_tokens`` prompt when every
segment is L tokens long on average, prices them with :mod:`segsllm.bench.flops` (the
bench's own cost account) and compares

- ``speedup_flops`` = LM FLOPs per generated token ÷ SLLM FLOPs per generated token, with
  the paper's measured throughput ratio (SLLM tokens/s ÷ OPT tokens/s);
- ``speedup_layer_calls`` = the same ratio counted in sequential transformer-layer calls per
  token (every call costing the same: batch-1 decoding on a GPU is latency-bound, so this
  brackets the wall-clock speedup from the other side);
- ``kv_ratio`` = SLLM KV-cache bytes ÷ LM KV-cache bytes at ``context`` tokens (backbone
  cache of 1 + context/L positions plus the sentence decoder's per-segment cache at its
  peak, as the bench counts it), with the paper's KB/token ratio.

Usage: ``python scripts/paper_flops.py [--L 7.3] [--markdown]``. No weights are read; the
OPT shapes are those of the public ``facebook/opt-*`` configs (vocabulary 50,272).
"""

from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import dataclass, replace
from typing import Any

# The public facebook/opt-* config.json values that shape the cost.
OPT_SHAPES: dict[str, dict[str, Any]] = {
    "125m": {"hidden_size": 768, "ffn_dim": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
             "word_embed_proj_dim": 768, "do_layer_norm_before": True},
    "350m": {"hidden_size": 1024, "ffn_dim": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
             "word_embed_proj_dim": 512, "do_layer_norm_before": False},
    "1.3b": {"hidden_size": 2048, "ffn_dim": 8192, "num_hidden_layers": 24, "num_attention_heads": 32,
             "word_embed_proj_dim": 2048, "do_layer_norm_before": True},
}
OPT_VOCAB = 50272
OPT_PARAMS = {"125m": 125_239_296, "350m": 331_196_416, "1.3b": 1_315_758_080}  # published counts

# arXiv 2408.00655, results table (as reproduced in the authors' README, github.com/BestAnHongjun/SentenceVAE):
# total params, OPT / SLLM mean output throughput (tokens/s), OPT / SLLM mean GPU memory (KB/token).
# The paper reports no SLLM-1.3B-H4.
PAPER: dict[tuple[str, int], dict[str, float]] = {
    ("125m", 1): {"params": 214e6, "opt_tps": 214.57, "sllm_tps": 652.78, "opt_kb": 73.15, "sllm_kb": 12.03},
    ("125m", 2): {"params": 226e6, "opt_tps": 214.57, "sllm_tps": 539.80, "opt_kb": 73.15, "sllm_kb": 7.08},
    ("125m", 4): {"params": 250e6, "opt_tps": 214.57, "sllm_tps": 332.12, "opt_kb": 73.15, "sllm_kb": 10.00},
    ("350m", 1): {"params": 429e6, "opt_tps": 144.33, "sllm_tps": 481.39, "opt_kb": 197.59, "sllm_kb": 29.98},
    ("350m", 2): {"params": 450e6, "opt_tps": 144.33, "sllm_tps": 442.23, "opt_kb": 197.59, "sllm_kb": 26.78},
    ("350m", 4): {"params": 492e6, "opt_tps": 144.33, "sllm_tps": 315.61, "opt_kb": 197.59, "sllm_kb": 17.73},
    ("1.3b", 1): {"params": 1.61e9, "opt_tps": 119.07, "sllm_tps": 479.71, "opt_kb": 400.01, "sllm_kb": 57.07},
    ("1.3b", 2): {"params": 1.69e9, "opt_tps": 119.07, "sllm_tps": 553.95, "opt_kb": 400.01, "sllm_kb": 55.14},
}
SIZES = ("125m", "350m", "1.3b")
DEPTHS = (1, 2, 4)
SENSITIVITY_L = (4.0, 8.0, 16.0, 64.0)


def implied_segment_lengths() -> dict[tuple[str, int], float]:
    """L implied by each paper row's memory column: OPT KB/token ÷ SLLM KB/token.

    The paper's OPT column equals the fp32 KV cache per token (2 · layers · hidden · 4 B =
    73.7 / 196.6 / 393.2 KB vs 73.15 / 197.59 / 400.01 reported), so the SLLM column is
    ≈ that cache over L positions plus the decoder's overhead: the ratio under-estimates L.
    """
    return {k: v["opt_kb"] / v["sllm_kb"] for k, v in PAPER.items()}


def default_segment_length() -> float:
    """The median of :func:`implied_segment_lengths` over the paper's eight rows."""
    return statistics.median(implied_segment_lengths().values())


# --------------------------------------------------------------------------- models (meta device)


@dataclass
class Pair:
    """One configuration: the token LM and the SLLM built on it (meta tensors), and its preset."""

    size: str
    depth: int
    lm: Any
    sllm: Any
    cfg: Any

    @property
    def name(self) -> str:
        return f"SLLM-{self.size.upper()}-H{self.depth}"


def build_pair(size: str, depth: int) -> Pair:
    """OPT-``size`` and the preset ``opt-<size>-h<depth>``'s SLLM on it, shapes only."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    from segsllm.config import load_config
    from segsllm.models.sllm import SLLM
    from segsllm.models.vae import SentenceVAE

    cfg = load_config(f"opt-{size}-h{depth}")
    hf = OPTConfig(vocab_size=OPT_VOCAB, max_position_embeddings=2048, **OPT_SHAPES[size])
    # The VAE's vocabulary is the tokenizer's (the pipeline uses OPT's); 50,272 = OPT's padded head.
    vae_cfg = replace(cfg.vae, vocab_size=OPT_VOCAB, max_len=cfg.segmenter.max_len).validate()
    with torch.device("meta"):
        lm = OPTForCausalLM(hf).eval()
        body = OPTForCausalLM(hf)
        sllm = SLLM(cfg.sllm, SentenceVAE(vae_cfg), body).eval()
    return Pair(size, depth, lm, sllm, cfg)


def count_params(model: Any, skip_backbone_head: bool = False) -> int:
    """Distinct parameters (tied weights once); with ``skip_backbone_head`` the SLLM's unused
    backbone LM head is left out when it is not tied to the embeddings."""
    seen: set[int] = set()
    total = 0
    head = model.backbone.get_output_embeddings() if skip_backbone_head else None
    skip = {id(p) for p in head.parameters()} if head is not None else set()
    if skip_backbone_head:
        skip -= {id(p) for p in model.backbone.get_input_embeddings().parameters()}
    for p in model.parameters():
        if id(p) in seen or id(p) in skip:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


# --------------------------------------------------------------------------- generation as calls


def segment_lengths(mean_len: float, count: int, max_len: int) -> list[int]:
    """``count`` segment lengths with mean ``mean_len`` (a Beatty sequence of ⌊kL⌋
    differences: lengths ⌊L⌋ and ⌈L⌉, each ≥ 1, capped at ``max_len``)."""
    L = min(max(mean_len, 1.0), float(max_len))
    return [math.floor((k + 1) * L + 1e-9) - math.floor(k * L + 1e-9) for k in range(count)]


def sllm_calls(prompt_segments: int, prompt_seg_len: int, new_tokens: int, lengths: list[int]) -> Any:
    """The :class:`segsllm.generate.GenerationResult` (calls and token count) that
    ``generate_sllm(..., ignore_stop=True)`` produces when the prompt has
    ``prompt_segments`` segments (longest ``prompt_seg_len`` tokens) and the decoder ends
    segment i after ``lengths[i]`` tokens (EOS step included, as in ``SentenceVAE.generate``)."""
    from segsllm.generate import Call, GenerationResult

    calls = []
    if prompt_segments:
        calls.append(Call("encoder", prompt_seg_len, batch=prompt_segments, prefill=True))
    calls.append(Call("backbone", 1 + prompt_segments, prefill=True))
    positions, made, i = 1 + prompt_segments, 0, 0
    while made < new_tokens:
        n = min(lengths[i % len(lengths)], new_tokens - made)
        calls.append(Call("decoder", n + 1))  # n tokens, then the EOS step (or the budget's extra step)
        made += n
        i += 1
        if made >= new_tokens:
            break
        calls.append(Call("encoder", n))
        calls.append(Call("backbone", 1, context=positions))
        positions += 1
    return GenerationResult(model="sllm", prompt="", text="", token_ids=[0] * new_tokens, calls=calls,
                            backbone_steps=positions - 1 - prompt_segments)


def lm_calls(prompt_tokens: int, new_tokens: int) -> Any:
    """What ``generate_lm(..., ignore_eos=True)`` calls: BOS + prompt prefill, then one
    cached step per token after the first."""
    from segsllm.generate import Call, GenerationResult

    context = 1 + prompt_tokens
    calls = [Call("lm", context, prefill=True)]
    calls += [Call("lm", 1, context=context + i) for i in range(new_tokens - 1)]
    return GenerationResult(model="lm", prompt="", text="", token_ids=[0] * new_tokens, calls=calls,
                            backbone_steps=new_tokens - 1)


def flops_speedup(pair: Pair, mean_len: float, prompt_tokens: int,
                  new_tokens: int) -> tuple[float, float, float, float]:
    """(LM FLOPs/token, SLLM FLOPs/token, FLOPs speedup, layer-call speedup) for segments of
    mean length ``mean_len`` (see :func:`layer_calls_per_token` for the last)."""
    from segsllm.bench.flops import Pricer

    max_len = pair.sllm.vae.config.max_len
    n_seg = new_tokens + prompt_tokens + 1
    lengths = segment_lengths(mean_len, n_seg, max_len)
    prompt_lengths, made = [], 0
    for n in lengths:  # the prompt is cut the same way
        if made >= prompt_tokens:
            break
        prompt_lengths.append(min(n, prompt_tokens - made))
        made += prompt_lengths[-1]
    sllm_run = sllm_calls(len(prompt_lengths), max(prompt_lengths, default=0), new_tokens,
                          lengths[len(prompt_lengths):])
    lm_run = lm_calls(prompt_tokens, new_tokens)
    sllm, lm = Pricer(pair.sllm).account(sllm_run), Pricer(pair.lm).account(lm_run)
    layers = pair.lm.config.num_hidden_layers
    latency = (layer_calls_per_token(lm_run, layers)
               / layer_calls_per_token(sllm_run, layers, pair.sllm.vae.config))
    return lm.flops_per_token, sllm.flops_per_token, lm.flops_per_token / sllm.flops_per_token, latency


def layer_calls_per_token(result: Any, body_layers: int, vae: Any = None) -> float:
    """Sequential transformer-layer calls per generated token in the generation phase:
    the latency-bound cost of batch-1 decoding on a GPU, where each layer call takes about
    the same time whatever its FLOPs (a backbone step = every body layer; an encoder call =
    its layers once; a decoder call = its layers once per token step)."""
    total = 0
    for call in result.calls:
        if call.prefill:
            continue
        if call.kind in ("backbone", "lm"):
            total += body_layers
        elif call.kind == "encoder":
            total += vae.encoder_layers
        elif call.kind == "decoder":
            total += vae.decoder_layers * call.length
    return total / result.new_tokens


def kv_ratio(pair: Pair, mean_len: float, context: int) -> float:
    """SLLM ÷ LM KV-cache bytes at ``context`` tokens, both in the same dtype: the backbone
    holds the start vector + ⌈context / L⌉ segment positions; the sentence decoder's
    per-segment cache (``max_len`` + 1 self positions + memory slots, every layer) is added
    at its peak, as the bench does."""
    c = pair.lm.config
    per_position = 2 * c.num_hidden_layers * c.hidden_size  # K and V, every layer (OPT: no GQA)
    vae = pair.sllm.vae.config
    decoder = 2 * vae.decoder_layers * (vae.max_len + 1 + vae.memory_slots) * vae.d_model
    sllm = per_position * (1 + math.ceil(context / mean_len)) + decoder
    return sllm / (per_position * context)


# --------------------------------------------------------------------------- the table


def rows(mean_len: float) -> list[dict[str, Any]]:
    """One row per configuration: ours (predicted) beside the paper's (measured)."""
    out = []
    for size in SIZES:
        for depth in DEPTHS:
            pair = build_pair(size, depth)
            b = pair.cfg.bench
            context = max(b.context_lengths)
            lm_fpt, sllm_fpt, speedup, latency = flops_speedup(pair, mean_len, b.prompt_tokens, b.new_tokens)
            paper = PAPER.get((size, depth))
            row = {
                "config": pair.name, "size": size, "depth": depth,
                "lm_params": count_params(pair.lm), "sllm_params": count_params(pair.sllm, skip_backbone_head=True),
                "lm_gflops_per_token": lm_fpt / 1e9, "sllm_gflops_per_token": sllm_fpt / 1e9,
                "speedup_flops": speedup, "speedup_layer_calls": latency, "kv_ratio": kv_ratio(pair, mean_len, context), "context": context,
                "prompt_tokens": b.prompt_tokens, "new_tokens": b.new_tokens,
                "sensitivity": {L: flops_speedup(pair, L, b.prompt_tokens, b.new_tokens)[2] for L in SENSITIVITY_L},
                "paper_params": paper["params"] if paper else math.nan,
                "paper_speedup": paper["sllm_tps"] / paper["opt_tps"] if paper else math.nan,
                "paper_kv_ratio": paper["sllm_kb"] / paper["opt_kb"] if paper else math.nan,
            }
            out.append(row)
    return out


def _fmt(x: float, spec: str, suffix: str = "") -> str:
    return "—" if isinstance(x, float) and math.isnan(x) else f"{x:{spec}}{suffix}"


def _params(n: float) -> str:
    return "—" if math.isnan(n) else (f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M")


def markdown(table: list[dict[str, Any]], mean_len: float) -> str:
    """The README table: predicted beside reported, then the sensitivity to L."""
    r0 = table[0]
    lines = [
        f"Predicted at L = {mean_len:.2f} tokens/segment; generation of {r0['new_tokens']} tokens after a "
        f"{r0['prompt_tokens']}-token prompt; KV at {r0['context']} tokens of context.",
        "",
        "| config | params ours / paper | LM GFLOPs/tok | SLLM GFLOPs/tok | FLOPs speedup (pred.) "
        "| layer-call speedup (pred.) | paper throughput speedup | KV ratio (pred.) | paper memory ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in table:
        lines.append(
            f"| {r['config']} | {_params(r['sllm_params'])} / {_params(r['paper_params'])} "
            f"| {r['lm_gflops_per_token']:.3f} | {r['sllm_gflops_per_token']:.3f} "
            f"| {r['speedup_flops']:.2f}× | {r['speedup_layer_calls']:.2f}× | {_fmt(r['paper_speedup'], '.2f', '×')} "
            f"| {r['kv_ratio']:.3f} | {_fmt(r['paper_kv_ratio'], '.3f')} |")
    lines += ["", "FLOPs speedup at other mean segment lengths (64 = `segmenter.max_len`, the ceiling):", "",
              "| config | " + " | ".join(f"L = {L:g}" for L in SENSITIVITY_L) + " |",
              "| --- |" + " --- |" * len(SENSITIVITY_L)]
    for r in table:
        lines.append(f"| {r['config']} | " + " | ".join(f"{r['sensitivity'][L]:.2f}×" for L in SENSITIVITY_L) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--L", type=float, default=None,
                        help="mean tokens per segment (default: the median L implied by the paper's memory column)")
    parser.add_argument("--markdown", action="store_true", help="print the README table only")
    args = parser.parse_args(argv)
    implied = implied_segment_lengths()
    mean_len = args.L if args.L is not None else default_segment_length()
    table = rows(mean_len)
    if not args.markdown:
        print("L implied by the paper's memory column (OPT KB/token ÷ SLLM KB/token):")
        for (size, depth), L in implied.items():
            print(f"  SLLM-{size.upper()}-H{depth}: {L:.2f}")
        print()
    print(markdown(table, mean_len))


if __name__ == "__main__":
    main()
