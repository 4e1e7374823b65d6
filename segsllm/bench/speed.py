"""Generation speed of an SLLM against the token LM, and what its generation actually did.

Both models get the **same prompt texts** and must generate **exactly** ``new_tokens``
tokens (greedy, KV cache on; the LM's EOS is masked; the SLLM's stop head is ignored and
its decoder may not end a segment before its first token, so no empty segment ends a run).
A model that still falls short (it runs out of positions) makes the cell ``n/a`` with the
reason. Per cell (:func:`speed_cell`):

- the cost account (:mod:`segsllm.bench.flops`): FLOPs per generated token of both models
  and ``speedup_flops`` = LM ÷ SLLM, identical on every machine and rerun;
- what generation did: mean generated segment length L (tokens per backbone step), the
  share of segments ended by EOS / by max_len / cut by the budget, backbone steps per
  generated token (1/L; the LM: 1);
- wall-clock from interleaved pairs and the analytic bound (:mod:`segsllm.bench.timing`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

MAX_LEN_NOTE = 0.5  # a row is flagged when fewer than half of its segments ended by EOS (or the segmenter's cut)


def make_prompts(texts: Sequence[str], tokenizer: Any, n: int, prompt_tokens: int) -> list[str]:
    """``n`` prompts: the first ``prompt_tokens`` tokens of evenly spread documents, as text
    (each model tokenises the same strings itself)."""
    from segsllm.data.tokenizer import decode, encode

    texts = [t for t in texts if t.strip()]
    if not texts:
        return []
    pick = np.unique(np.linspace(0, len(texts) - 1, min(n, len(texts))).round().astype(np.int64))
    return [decode(tokenizer, encode(tokenizer, texts[int(i)])[:prompt_tokens]) for i in pick]


def generation_stats(results: Sequence[Any]) -> dict[str, Any]:
    """What SLLM generations did: generated segment length, how segments ended, steps/token."""
    ends = [e for r in results for e in r.segment_ends]
    tokens = sum(r.new_tokens for r in results)
    n = len(ends)
    share = {k: (sum(e == k for e in ends) / n if n else math.nan) for k in ("eos", "cut", "max_len", "budget")}
    masked = sum(getattr(r, "empty_masked", 0) for r in results)
    out = {"gen_segments": n, "gen_segment_len": tokens / n if n else math.nan,
           "gen_empty_masked_share": masked / n if n else math.nan,
           "gen_eos_share": share["eos"], "gen_cut_share": share["cut"], "gen_max_len_share": share["max_len"],
           "gen_budget_cut_share": share["budget"],
           "backbone_steps_per_token": n / tokens if tokens else math.nan}
    note = None
    if n and share["eos"] + share["cut"] < MAX_LEN_NOTE:
        note = (f"{share['max_len'] + share['budget']:.0%} of generated segments ended without EOS (max_len "
                f"{'or budget ' if share['budget'] else ''}reached): the speedup reflects max_len, not the segmenter")
    if n and masked / n >= MAX_LEN_NOTE:
        note = ((note + "; ") if note else "") + (
            f"the decoder chose EOS before any token in {masked / n:.0%} of generated segments (masked so the "
            "run keeps its budget): L is forced, not learned")
    out["speed_note"] = note
    return out


def shortfall(results: Sequence[Any], new_tokens: int, who: str) -> str | None:
    """Why ``who`` did not generate exactly ``new_tokens`` tokens for every prompt (None: it did)."""
    for r in results:
        if r.new_tokens != new_tokens:
            return f"{who} generated {r.new_tokens} of {new_tokens} tokens ({r.stop_reason})"
    return None


def speed_cell(lm: Any, lm_tok: Any, sllm: Any, tok: Any, segmenter: Any, prompts: Sequence[str], new_tokens: int,
               *, pairs: int, warmup: int = 1) -> dict[str, Any]:
    """Every speed column of one (segmenter, domain) cell (module docstring)."""
    from segsllm.bench import timing
    from segsllm.bench.flops import Pricer
    from segsllm.generate import generate_lm, generate_sllm

    def run_lm(p: str, profile: bool = False) -> Any:
        return generate_lm(lm, lm_tok, p, new_tokens, ignore_eos=True, profile=profile)

    def run_sllm(p: str, profile: bool = False) -> Any:
        return generate_sllm(sllm, tok, segmenter, p, new_tokens, ignore_stop=True, profile=profile)

    # One run per prompt: the cost account and the generation stats (greedy: every rerun is the same).
    lm_runs = [run_lm(p) for p in prompts]
    sllm_runs = [run_sllm(p) for p in prompts]
    row: dict[str, Any] = {"speed_prompts": len(prompts), "speed_new_tokens": new_tokens,
                           **generation_stats(sllm_runs)}
    reason = shortfall(lm_runs, new_tokens, "the token LM") or shortfall(sllm_runs, new_tokens, "the SLLM")
    if not prompts:
        reason = "no prompt"
    if reason:
        row.update({"speed_na": reason, "speedup": math.nan, "speedup_flops": math.nan})
        return row
    lm_acc, sllm_acc = Pricer(lm).total(lm_runs), Pricer(sllm, segmenter).total(sllm_runs)
    row.update({"baseline_flops_per_token": lm_acc.flops_per_token, "sllm_flops_per_token": sllm_acc.flops_per_token,
                "speedup_flops": lm_acc.flops_per_token / sllm_acc.flops_per_token,
                **{f"sllm_{k}": v for k, v in sllm_acc.as_dict().items() if k != "flops_per_token"}})
    pt = timing.interleaved_pairs(run_lm, run_sllm, prompts, pairs, warmup)
    row.update(pt.as_dict())
    prof = timing.interleaved_pairs(lambda p: run_lm(p, True), lambda p: run_sllm(p, True), prompts, pairs, 0)
    bound = timing.analytic_bound(prof.lm_runs, prof.sllm_runs)
    row.update(bound)
    row["bound_flops"] = timing.flop_bound(lm_acc, sllm_acc, row["gen_segments"])
    row["speedup_over_bound"] = row["speedup"] / bound["bound"] if bound["bound"] > 0 else math.nan
    row["speed_na"] = None
    return row


def lm_cost(lm: Any, lm_tok: Any, prompts: Sequence[str], new_tokens: int) -> dict[str, Any]:
    """The token LM's own cost account on the prompts (one untimed run each)."""
    from segsllm.bench.flops import Pricer
    from segsllm.generate import generate_lm

    runs = [generate_lm(lm, lm_tok, p, new_tokens, ignore_eos=True) for p in prompts]
    acc = Pricer(lm).total(runs)
    return {"flops_per_token": acc.flops_per_token, "new_tokens": acc.new_tokens / len(runs) if runs else math.nan,
            "speed_na": shortfall(runs, new_tokens, "the token LM")}


def speed_summary(row: dict[str, Any]) -> str:
    """``, speedup 2.1x (IQR 1.9-2.3), FLOPs 3.2x, L 4.0`` for the CLI's progress line."""
    if row.get("speed_na"):
        return f", speed n/a ({row['speed_na']})"
    if "speedup" not in row:
        return ""
    return (f", speedup {row['speedup']:.2f}x (IQR {row['speedup_q25']:.2f}-{row['speedup_q75']:.2f}, "
            f"bound {row['bound']:.2f}x), FLOPs {row['speedup_flops']:.2f}x, generated L {row['gen_segment_len']:.2f}")


def speed_figures(sllm_rows: Sequence[dict[str, Any]]) -> list[str]:
    """One-line CLI warnings for a cell's speed: n/a, noisy pairs, max_len-bound generation."""
    out = []
    for r in sllm_rows:
        where = f"{r.get('segmenter')} | {r.get('domain')}"
        if r.get("speed_na"):
            out.append(f"{where}: speed n/a: {r['speed_na']}")
            continue
        if r.get("speedup_noisy"):
            out.append(f"{where}: wall-clock speedup spread beyond ±25 % (IQR {r['speedup_q25']:.2f}–"
                       f"{r['speedup_q75']:.2f}x, load {r.get('load_before')}); trust speedup_flops")
        if r.get("speed_note"):
            out.append(f"{where}: {r['speed_note']}")
    return out


__all__ = ["generation_stats", "lm_cost", "make_prompts", "shortfall", "speed_cell", "speed_figures", "speed_summary"]
