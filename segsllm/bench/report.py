"""Bench output: a rich table grouped by domain, results.json/csv/md and PNG plots.

Plots (matplotlib, Agg backend, imported only here):
- ``speed_quality.png`` — one panel per domain: speedup against bits/byte, one point per
  segmenter: the FLOP speedup (filled), the wall-clock median with its IQR (hollow, bar) and
  the analytic bound (×); the token baseline at 1×; lower-right is better; the compressor
  floors as vertical reference lines.
- ``context.png`` — one panel per domain: bits/byte (95 % interval) against the token context
  C of the sweep, a line per model, the compressor floors as horizontal reference lines.
- ``memory.png`` — one panel per domain: KV-cache KB against context tokens, one line per model.

results.md has per domain a quality table (floors, untouched LM, matched LM, each SLLM, each
with its 95 % paired-bootstrap interval, mean ± sd over seeds, training budget), the paired
differences (``*``: the interval excludes 0), the context sweep, then the speed/memory table.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFINITIONS = {
    "bits_per_byte": "NLL (nats) / (ln 2 x UTF-8 bytes of the same scored test bytes); SLLM NLL = segment tokens + "
                     "segment EOS + stop decisions; token LM NLL = document tokens + final EOS",
    "scored bytes": "at least bench.min_docs test documents per domain (where the split has them), taken in a fixed "
                    "sha256(id) order until about bench.eval_bytes bytes, each cut (after a line end) so that none is "
                    "more than bench.max_doc_share of the scored bytes; every model and floor scores exactly these",
    "context C": "every model is scored with the same token context C: the token LM with a sliding window of C "
                 "positions (BOS included) that scores stride new tokens per window (the first window all of its C), "
                 "the SLLM with windows of whole segments whose tokens sum to at most C (and at most its backbone's "
                 "positions), earlier segments carried as context, stride new tokens' worth of segments scored per "
                 "window; every token, EOS and stop decision is scored exactly once. The context sweep repeats "
                 "this at each C of bench.context_sweep on whole scored documents of about bench.sweep_bytes",
    "interval": "95 % paired bootstrap over documents (bench.bootstrap_resamples draws, expanded percentile "
                "interval for few documents): every model and floor is resampled with the same draws, so a "
                "difference's interval is paired",
    "difference": "bits/byte of a minus b on the same bytes (negative: a is better); * = its interval excludes 0. "
                  "sllm - lm: the SLLM against the untouched lm stage it started from; sllm - matched: against the "
                  "token LM trained on as many tokens; segmenter - segmenter: SLLM against SLLM",
    "seeds": "mean +- sample sd of bits/byte over the seed-<k> folders of the run (pipeline --seeds); with seeds "
             "the interval is a two-level bootstrap over documents and seeds (seed k of every model paired) and the "
             "estimate is the mean over seeds",
    "budget": "training tokens of each model's stage, from the run's budgets.json (the VAE's pre-training beside)",
    "floors": "gzip -9, bzip2 -9, xz -9e on exactly the scored bytes: whole set = the concatenation compressed once; "
              "per document = each document compressed on its own (cold start, like the models; headers included), "
              "with its interval; xz primed = size(xz(prime + scored)) - size(xz(prime)), prime = the first "
              "bench.prime_bytes of the train split (whole set only)",
    "token_perplexity": "exp(NLL / (document tokens + 1 per document)), same tokenizer on both sides",
    "sllm_paper_style_perplexity": "PAPER-STYLE, for comparison with the paper only: exp(mean over segments of "
                                   "per-segment mean decoder CE), first segment of each window excluded",
    "flops_per_token": "generation-phase FLOPs per generated token (prompt prefill excluded), counted per call "
                       "from the models' weight shapes and KV-cache lengths: backbone/LM linears, attention over "
                       "the cache, vocab projections, encoder and decoder calls (segsllm.bench.flops); identical "
                       "on every machine and rerun",
    "speedup_flops": "token LM FLOPs/token / SLLM FLOPs/token: the primary speed figure",
    "tokens_per_s": "generated tokens/s at batch 1, greedy, KV cache, same prompts, exactly new_tokens tokens "
                    "(LM EOS masked, SLLM stop head ignored, no empty segment); median over the pairs; "
                    "absolute figures only mean something on the device named in meta",
    "speedup": "wall-clock: median over interleaved LM/SLLM pairs of SLLM tok/s / LM tok/s, [IQR]; flagged "
               "when the IQR reaches beyond ±25 % of the median (machine load in meta)",
    "gen_segment_len": "mean generated segment length L (generated tokens per SLLM backbone step), beside the "
                       "test set's mean len; EOS % = share of generated segments ended by the decoder's EOS "
                       "(the rest hit max_len or the token budget; with free boundaries gen_cut_share, in "
                       "results.json, is the share ended by the segmenter's cut); gen_empty_masked_share (results.json) = share of "
                       "segments whose decoder chose EOS before any token, masked so the run keeps its budget",
    "backbone_steps_per_token": "backbone outputs consumed per generated token: 1/L for the SLLM, 1 for the LM",
    "bound": "analytic bound L*t_b,LM / (t_b + d*t_d + t_e) from measured per-call times (t_b,LM one LM step, "
             "t_b one SLLM backbone step, t_d one decoder token step, t_e one encoder call; d decoder steps "
             "per segment); speedup/bound is the implementation's efficiency; bound_flops the same in FLOPs",
    "n/a": "a speed cell is n/a (reason in speed_na) when a model could not generate exactly new_tokens tokens",
    "kv_bytes_per_token": "KV-cache bytes / context tokens at the largest context length, read from the tensors, "
                          "mean over memory_samples windows; the SLLM's includes the sentence decoder's "
                          "per-segment cache at its peak",
    "kv_ratio": "SLLM KV bytes/token / LM KV bytes/token, beside kv_ideal_ratio = 1/L (test-set L at that context)",
    "kv_kb_per_token_slope": "slope of KV KB vs context tokens (paper's KB per token)",
    "mean_segment_len": "compression: mean tokens per segment (p95 beside it)",
    "segmenter_tokens_per_s": "tokens/s of the segmenter alone in batch mode on the scored texts (best of 3, "
                              "this machine, beside the bench's other work)",
    "vae_exact_match": "share of sampled test segments the VAE reconstructs exactly (greedy)",
    "sllm_bits_per_byte_first_token": "where the SLLM's bits go (mean over seeds): sllm_bits_per_byte = "
                                      "sllm_bits_per_byte_tokens + sllm_bits_per_byte_boundaries (each segment's "
                                      "EOS + the stop decisions); _first_token is the part of _tokens spent on each "
                                      "segment's first token, the one decoded from the predicted latent alone",
    "segment_costs": "quality.<domain>.segment_costs.<segmenter>: for every segment length on the test set, the "
                     "segments scored (all seeds), their mean SLLM NLL in nats (tokens + EOS) and bits per token; "
                     "segment_costs.png draws bits per token against length",
    "boundaries": "who ends a segment: eos (the SLLM's decoder, paid in sllm_bits_per_byte_boundaries with the "
                  "stop decisions) or segmenter (a causal segmenter, free: only the document's end and one "
                  "'is this the last segment' decision per segment are paid; sllm.boundaries)",
    "splitter_teacher_f1": "learned segmenters: boundary F1 of the deployed splitter (batch decode) against its "
                           "teacher's labels on validation chunks, from the splitter's metrics.json, mean over "
                           "seeds: how much of what the teacher chose the cheap segmenter reproduces",
}

# (column key, header, format) of the summary tables.
COLUMNS = [
    ("segmenter", "segmenter", "{}"),
    ("boundaries", "boundaries", "{}"),
    ("sllm_bits_per_byte", "SLLM bits/B", "{:.4f}"),
    ("sllm_ci", "SLLM 95 %", "{}"),
    ("baseline_bits_per_byte", "LM bits/B", "{:.4f}"),
    ("diff_vs_lm", "SLLM−LM", "{}"),
    ("matched_bits_per_byte", "matched bits/B", "{:.4f}"),
    ("diff_vs_matched", "SLLM−matched", "{}"),
    ("base_lm_bits_per_byte", "base bits/B", "{:.4f}"),
    ("sllm_token_perplexity", "SLLM tok ppl", "{:.2f}"),
    ("baseline_token_perplexity", "LM tok ppl", "{:.2f}"),
    ("sllm_paper_style_perplexity", "paper-style ppl", "{:.2f}"),
    ("speedup_flops", "FLOP speedup", "{:.2f}x"),
    ("sllm_flops_per_token", "SLLM FLOPs/tok", "{:.3g}"),
    ("baseline_flops_per_token", "LM FLOPs/tok", "{:.3g}"),
    ("speedup", "speedup", "{:.2f}x"),
    ("speedup_iqr", "speedup IQR", "{}"),
    ("bound", "bound", "{:.2f}x"),
    ("speedup_over_bound", "speedup/bound", "{:.2f}"),
    ("gen_segment_len", "gen len", "{:.2f}"),
    ("gen_eos_share", "EOS %", "{:.0%}"),
    ("backbone_steps_per_token", "steps/tok", "{:.3f}"),
    ("sllm_tokens_per_s", "SLLM tok/s", "{:.1f}"),
    ("baseline_tokens_per_s", "LM tok/s", "{:.1f}"),
    ("sllm_kv_bytes_per_token", "SLLM KV B/tok", "{:.0f}"),
    ("baseline_kv_bytes_per_token", "LM KV B/tok", "{:.0f}"),
    ("kv_ratio", "KV ratio", "{:.3f}"),
    ("kv_ideal_ratio", "1/L", "{:.3f}"),
    ("sllm_kv_kb_per_token_slope", "SLLM KB/tok slope", "{:.3f}"),
    ("mean_segment_len", "mean len", "{:.2f}"),
    ("p95_segment_len", "p95 len", "{:.0f}"),
    ("segmenter_tokens_per_s", "seg tok/s", "{:,.0f}"),
    ("vae_exact_match", "VAE exact", "{:.3f}"),
    ("sllm_bits_per_byte_first_token", "1st-token bits/B", "{:.3f}"),
    ("splitter_teacher_f1", "teacher F1", "{:.2f}"),
]


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    """A table cell; speed cells of an n/a row read ``n/a``."""
    if row.get("speed_na") and key in SPEED_KEYS:
        return "n/a"
    if key == "sllm_ci":
        return _ci(row.get("sllm_bits_per_byte_low"), row.get("sllm_bits_per_byte_high"))
    if key in ("diff_vs_lm", "diff_vs_matched"):
        return _signed(row.get(key), row.get(f"{key}_low"), row.get(f"{key}_high"), row.get(f"{key}_significant"))
    if key == "speedup_iqr":
        lo, hi = row.get("speedup_q25"), row.get("speedup_q75")
        return "–" if not (_finite(lo) and _finite(hi)) else f"{lo:.2f}–{hi:.2f}" + (" ⚠" if row.get("speedup_noisy")
                                                                                    else "")
    return _fmt(row.get(key), fmt)


SPEED_KEYS = {"speedup_flops", "sllm_flops_per_token", "baseline_flops_per_token", "speedup", "speedup_iqr", "bound",
              "speedup_over_bound", "sllm_tokens_per_s", "baseline_tokens_per_s"}


def _ci(lo: Any, hi: Any) -> str:
    return f"[{lo:.4f}, {hi:.4f}]" if _finite(lo) and _finite(hi) else "–"


def _signed(est: Any, lo: Any, hi: Any, significant: Any) -> str:
    """``+0.0123 [+0.0010, +0.0230] *`` (``*``: the interval excludes 0)."""
    if not _finite(est):
        return "–"
    ci = f" [{lo:+.4f}, {hi:+.4f}]" if _finite(lo) and _finite(hi) else ""
    return f"{est:+.4f}{ci}" + (" *" if significant else "")


def _fmt(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


# The terminal table keeps the headline columns; results.md/csv hold all of them.
TERMINAL = ("segmenter", "sllm_bits_per_byte", "baseline_bits_per_byte", "diff_vs_lm", "matched_bits_per_byte",
            "diff_vs_matched", "base_lm_bits_per_byte", "speedup_flops",
            "speedup", "speedup_iqr", "bound", "gen_segment_len", "gen_eos_share", "sllm_kv_bytes_per_token",
            "baseline_kv_bytes_per_token", "mean_segment_len", "vae_exact_match")
SHORT = {"diff_vs_lm": "−LM", "diff_vs_matched": "−matched", "matched_bits_per_byte": "matched b/B",
         "speedup_flops": "FLOP x", "speedup": "wall x", "speedup_iqr": "IQR", "gen_eos_share": "EOS",
         "sllm_bits_per_byte": "SLLM b/B", "baseline_bits_per_byte": "LM b/B", "base_lm_bits_per_byte": "base b/B",
         "sllm_kv_bytes_per_token": "SLLM KV/tok", "baseline_kv_bytes_per_token": "LM KV/tok",
         "mean_segment_len": "len", "vae_exact_match": "VAE EM"}


def _columns(rows: Sequence[dict[str, Any]], keys: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
    """The columns (all, or those in ``keys``) that at least one row has a value for."""
    have = set().union(*(r.keys() for r in rows)) if rows else set()
    if "speedup_q25" in have:
        have.add("speedup_iqr")
    if "sllm_bits_per_byte_low" in have:
        have.add("sllm_ci")
    return [c for c in COLUMNS if c[0] in have and (keys is None or c[0] in keys)]


def _colors(result: Any) -> dict[str, Any]:
    """One colour per segmenter, the same in every plot (bench order)."""
    import matplotlib

    segs = list(result.meta.get("segmenters") or []) + [r["segmenter"] for r in result.rows]
    order = list(dict.fromkeys(segs))
    cmap = matplotlib.colormaps["tab10"]
    return {s: cmap(i % 10) for i, s in enumerate(order)}


def _by_domain(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["domain"], []).append(r)
    return out


def _terminal_cell(row: dict[str, Any], key: str, fmt: str) -> str:
    """A narrower cell for the terminal: a difference without its interval (``*`` kept)."""
    if key in ("diff_vs_lm", "diff_vs_matched") and _finite(row.get(key)):
        return f"{row[key]:+.3f}" + ("*" if row.get(f"{key}_significant") else "")
    return _cell(row, key, fmt)


def rich_table(result: Any) -> Any:
    """One rich Table, a section per domain."""
    from rich.table import Table

    cols = _columns(result.rows, TERMINAL)
    ctx = result.meta.get("context_tokens")
    table = Table(title=f"bench on the {result.meta.get('split', 'test')} split ({result.meta.get('device', '')})"
                        + (f", context C = {ctx} tokens for every model" if ctx else "")
                        + "; * = 95 % interval excludes 0; all columns and floors in results.md")
    table.add_column("domain")
    for key, header, _ in cols:
        table.add_column(SHORT.get(key, header), justify="left" if key == "segmenter" else "right")
    for domain, rows in _by_domain(result.rows).items():
        for i, r in enumerate(rows):
            table.add_row(domain if i == 0 else "", *[_terminal_cell(r, k, f) for k, _, f in cols],
                          end_section=i == len(rows) - 1)
    return table


def markdown(result: Any) -> str:
    """results.md: one table per domain + the definitions."""
    cols = _columns(result.rows)
    meta = result.meta
    load = meta.get("load_average")
    out = [f"# segsllm bench ({meta.get('split', 'test')} split, {meta.get('device', '')})", "",
           f"Machine: {meta.get('device', '')}" + (f" ({meta['cuda']})" if meta.get("cuda") else "")
           + f", {meta.get('cpu_count')} CPUs, load average {load} at the end. FLOP figures are exact and "
           "machine-independent; wall-clock figures hold for this machine and load only.", ""]
    quality = getattr(result, "quality", None) or {}
    sweep = getattr(result, "context_sweep", None) or {}
    for domain, rows in _by_domain(result.rows).items():
        r0 = rows[0]
        out += [f"## {domain}", "", f"{r0.get('eval_docs')} documents, {r0.get('eval_bytes')} bytes "
                                    "(the same for every model)", ""]
        if domain in quality:
            out += quality_markdown(quality[domain], result.meta.get("segmenters") or [])
        if domain in sweep:
            out += sweep_markdown(sweep[domain], (quality.get(domain) or {}).get("sweep_docs"))
        out += ["### Speed, memory, compression", ""]
        out.append("| " + " | ".join(h for _, h, _ in cols) + " |")
        out.append("|" + "|".join("---" for _ in cols) + "|")
        for r in rows:
            out.append("| " + " | ".join(_cell(r, k, f) for k, _, f in cols) + " |")
        out.append("")
        out += _reading(rows)
    notes = meta.get("notes") or []
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    out += ["## Definitions", ""] + [f"- **{k}**: {v}" for k, v in DEFINITIONS.items()] + [""]
    return "\n".join(out)


FLOOR_LABELS = {"gzip-9": "gzip -9", "bzip2-9": "bzip2 -9", "xz-9e": "xz -9e", "xz-9e-primed": "xz -9e primed"}


def _model_label(name: str) -> str:
    """How a model of :mod:`segsllm.bench.intervals` is named in the tables."""
    if name == "baseline":
        return "token LM (lm, untouched start)"
    if name == "base_lm":
        return "base LM (pretrained, untouched)"
    if name.startswith("floor:"):
        return f"{FLOOR_LABELS.get(name[6:], name[6:])} (per document, cold)"
    if name.startswith("matched:"):
        return f"token LM matched to {_short(name[8:])}"
    if name.startswith("sllm:"):
        return f"SLLM {_short(name[5:])}"
    return name


def _order(models: dict[str, Any], segmenters: Sequence[str]) -> list[str]:
    """Floors, untouched LM, base LM, then per segmenter: matched LM, SLLM."""
    first = [n for n in models if n.startswith("floor:")] + [n for n in ("baseline", "base_lm") if n in models]
    per_seg = [n for s in segmenters for n in (f"matched:{s}", f"sllm:{s}") if n in models]
    return first + per_seg + [n for n in models if n not in first and n not in per_seg]


def quality_markdown(q: dict[str, Any], segmenters: Sequence[str]) -> list[str]:
    """One domain's quality table (floors and models with intervals) and its differences."""
    level = round(100 * q.get("level", 0.95))
    out = [f"### Quality at context C = {q.get('context_tokens')} tokens (stride {q.get('stride_tokens')}) "
           f"for every model", "",
           f"{q.get('n_docs')} documents, {q.get('bytes')} bytes ({q.get('truncated_docs')} cut to a prefix), the "
           f"same for every row; {level} % paired-bootstrap intervals over documents ({q.get('resamples')} draws)"
           + (f" and {q.get('n_seeds')} seeds (estimate: mean over seeds)" if (q.get("n_seeds") or 1) > 1 else "")
           + ".", "",
           f"| model | bits/byte | {level} % interval | seeds mean ± sd | training tokens |", "|---|---|---|---|---|"]
    whole = q.get("floors_whole_set") or {}
    for k, label in FLOOR_LABELS.items():
        if _finite(whole.get(k)):
            extra = f" (prime: {whole.get('prime_bytes')} train bytes)" if k == "xz-9e-primed" else ""
            out.append(f"| {label} (whole set){extra} | {whole[k]:.4f} | – | – | – |")
    models = q.get("models") or {}
    for name in _order(models, segmenters):
        m = models[name]
        seeds = m.get("seeds")
        sd = f"{seeds['mean']:.4f} ± {seeds['sd']:.4f} (n={seeds['n']})" if seeds else "–"
        budget = _fmt(m.get("budget"), "{:,}")
        if m.get("vae_budget") is not None:
            budget += f" (+ VAE {_fmt(m['vae_budget'], '{:,}')})"
        out.append(f"| {_model_label(name)} | {m['estimate']:.4f} | {_ci(m['low'], m['high'])} | {sd} | {budget} |")
    out.append("")
    diffs = q.get("differences") or []
    if diffs:
        out += [f"| difference (a − b) | Δ bits/byte | {level} % interval | interval excludes 0 |", "|---|---|---|---|"]
        for dd in diffs:
            star = "yes *" if dd["significant"] else "no"
            out.append(f"| {_model_label(dd['a'])} − {_model_label(dd['b'])} | {dd['estimate']:+.4f} | "
                       f"[{dd['low']:+.4f}, {dd['high']:+.4f}] | {star} |")
        out.append("")
    return out


def sweep_markdown(sweep: dict[str, Any], on: dict[str, Any] | None = None) -> list[str]:
    """Bits/byte [interval] of each model at each context C of the sweep (``on``: the
    documents and bytes it scored)."""
    cs = sorted(sweep, key=int)
    if len(cs) < 2:
        return []
    names = list(dict.fromkeys(n for c in cs for n in sweep[c]))
    where = f" on {on['n_docs']} documents, {on['bytes']} bytes" if on else ""
    out = [f"### Context sweep (bits/byte [95 % interval]{where})", "",
           "| model | " + " | ".join(f"C = {c}" for c in cs) + " |", "|---" * (len(cs) + 1) + "|"]
    for n in names:
        cells = [f"{sweep[c][n]['estimate']:.4f} {_ci(sweep[c][n]['low'], sweep[c][n]['high'])}" if n in sweep[c]
                 else "–" for c in cs]
        out.append(f"| {_model_label(n)} | " + " | ".join(cells) + " |")
    return [*out, ""]


def pareto_front(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Segmenters not dominated in (bits/byte, FLOPs/token), both lower-is-better."""
    pts = [(r["segmenter"], r["sllm_bits_per_byte"], r["sllm_flops_per_token"]) for r in rows
           if _finite(r.get("sllm_bits_per_byte")) and _finite(r.get("sllm_flops_per_token"))]
    return [s for s, b, f in pts
            if not any(b2 <= b and f2 <= f and (b2 < b or f2 < f) for _, b2, f2 in pts)]


def _reading(rows: Sequence[dict[str, Any]]) -> list[str]:
    """What a domain's numbers mean: the Pareto front, wall-clock vs FLOPs, warnings."""
    out = []
    front = pareto_front(rows)
    if front:
        out.append(f"- Pareto front of (bits/byte, FLOPs/token): {', '.join(front)}.")
    for r in rows:
        s = r["segmenter"]
        if r.get("speed_na"):
            out.append(f"- {s}: speed n/a: {r['speed_na']}.")
            continue
        if not _finite(r.get("speedup_flops")) or not _finite(r.get("speedup")):
            continue
        lo, hi = r.get("speedup_q25"), r.get("speedup_q75")
        agree = "agrees with" if lo <= r["speedup_flops"] <= hi else "does not agree with"
        out.append(f"- {s}: wall-clock {r['speedup']:.2f}x [IQR {lo:.2f}–{hi:.2f}] {agree} the FLOP speedup "
                   f"{r['speedup_flops']:.2f}x; bound {r['bound']:.2f}x (wall-clock reaches "
                   f"{r['speedup_over_bound']:.0%} of it); generated L {r['gen_segment_len']:.2f} vs test-set "
                   f"{r.get('mean_segment_len', math.nan):.2f}.")
        if r.get("speedup_noisy"):
            out.append(f"- **WARNING** {s}: wall-clock pair ratios spread beyond ±25 % of the median (load "
                       f"{r.get('load_before')}→{r.get('load_after')}); read the FLOP speedup instead.")
        if r.get("speed_note"):
            out.append(f"- **WARNING** {s}: {r['speed_note']}.")
    return [*out, ""] if out else out


def _csv(rows: Sequence[dict[str, Any]]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k, "") for k in keys})
    return buf.getvalue()


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _json_safe(obj.item())
    return obj


# --------------------------------------------------------------------------- plots


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_speed_quality(result: Any, path: Path) -> Path | None:
    """Speedups vs bits/byte (the FLOP point with its 95 % bits/byte interval), a panel per
    domain; None when no speed was measured."""
    rows = [r for r in result.rows if _finite(r.get("sllm_bits_per_byte")) and not r.get("speed_na")
            and (_finite(r.get("speedup")) or _finite(r.get("speedup_flops")))]
    if not rows:
        return None
    plt = _plt()
    groups = _by_domain(rows)
    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 4.0), squeeze=False)
    colors = _colors(result)
    for ax, (domain, rs) in zip(axes[0], groups.items(), strict=True):
        named: list[tuple[str, float, float]] = []  # (name, x, y): written once the panel's scale is known
        for r in rs:
            x, c = r["sllm_bits_per_byte"], colors[r["segmenter"]]
            name = _short(r["segmenter"])
            if _finite(r.get("speedup_flops")):
                ax.scatter(x, r["speedup_flops"], s=60, color=c, label=name, zorder=3)
                lo, hi = r.get("sllm_bits_per_byte_low"), r.get("sllm_bits_per_byte_high")
                if _finite(lo) and _finite(hi):  # the bits/byte interval, horizontal (drawn from its
                    # own ends: a percentile interval over few documents need not hold the estimate)
                    ax.errorbar((lo + hi) / 2, r["speedup_flops"], xerr=abs(hi - lo) / 2, fmt="none", ecolor=c,
                                capsize=3, lw=1.0, zorder=2)
                if len(rs) <= ANNOTATE_MAX:  # more points than that: the labels would overlap; the legend names them
                    named.append((name, x, r["speedup_flops"]))
            if _finite(r.get("speedup")):
                lo, hi = r.get("speedup_q25", r["speedup"]), r.get("speedup_q75", r["speedup"])
                ax.errorbar(x, r["speedup"], yerr=[[r["speedup"] - lo], [hi - r["speedup"]]], fmt="o", mfc="none",
                            color=c, capsize=3, zorder=3)
            if _finite(r.get("bound")):
                ax.scatter(x, r["bound"], marker="x", s=50, color=c, zorder=3)
        base = next((r["baseline_bits_per_byte"] for r in rs if _finite(r.get("baseline_bits_per_byte"))), None)
        if base is not None:
            ax.scatter(base, 1.0, marker="*", s=160, color="black", label="token LM (1×)", zorder=4)
            ax.annotate("token LM", (base, 1.0), textcoords="offset points", xytext=(5, -12), fontsize=8)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        _floor_lines(ax, result, domain, vertical=True)
        # Names in points (1/72 in): where each point lands, ~0.6 em per character of 8 pt text.
        to_pt = 72.0 / fig.dpi
        anchors = [tuple(v * to_pt for v in ax.transData.transform((x, y))) for _, x, y in named]
        widths = [0.6 * 8 * len(name) for name, _, _ in named]
        for (name, x, y), line in zip(named, label_rows(anchors, widths, LABEL_STEP), strict=True):
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5 - LABEL_STEP * line), fontsize=8)
        ax.set_title(domain)
        ax.set_xlabel("bits/byte (lower is better)")
        ax.set_ylabel("speedup vs token LM (×)")
        ax.grid(alpha=0.3)
        ax.margins(0.2)
    handles, labels = [], []
    for a in axes[0]:
        h, lab = a.get_legend_handles_labels()
        handles += h
        labels += lab
    uniq = dict(zip(labels, handles, strict=True))
    from matplotlib.lines import Line2D

    key = {"FLOP speedup": Line2D([], [], marker="o", ls="", color="grey"),
           "wall-clock median [IQR]": Line2D([], [], marker="o", mfc="none", ls="-", color="grey"),
           "analytic bound (time)": Line2D([], [], marker="x", ls="", color="grey")}
    uniq.update(key)
    ncol = min(len(uniq), 4)
    fig.legend(uniq.values(), uniq.keys(), loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.set_figheight(4.0 + 0.22 * math.ceil(len(uniq) / ncol))
    fig.suptitle(f"Speed vs quality ({result.meta.get('device', '')}, batch 1)")
    fig.tight_layout(rect=(0, 0.04 + 0.05 * math.ceil(len(uniq) / ncol), 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


FLOOR_STYLES = {"gzip-9": ":", "bzip2-9": "-.", "xz-9e": "--", "xz-9e-primed": (0, (1, 3))}


def _floor_lines(ax: Any, result: Any, domain: str, vertical: bool) -> None:
    """The whole-set compressor floors of a domain as labelled reference lines."""
    whole = ((getattr(result, "quality", None) or {}).get(domain) or {}).get("floors_whole_set") or {}
    for k, style in FLOOR_STYLES.items():
        v = whole.get(k)
        if not _finite(v):
            continue
        line = ax.axvline if vertical else ax.axhline
        line(v, color="dimgrey", lw=0.9, ls=style, zorder=1)
        if vertical:
            ax.annotate(FLOOR_LABELS[k], (v, 1.0), xycoords=("data", "axes fraction"), rotation=90, fontsize=6,
                        va="top", ha="right", color="dimgrey")
        else:
            ax.annotate(FLOOR_LABELS[k], (1.0, v), xycoords=("axes fraction", "data"), fontsize=6, va="bottom",
                        ha="right", color="dimgrey")


def plot_context(result: Any, path: Path) -> Path | None:
    """Bits/byte [95 % interval] vs context C, a panel per domain, a line per model; None
    without a sweep of at least two context lengths."""
    sweep = getattr(result, "context_sweep", None) or {}
    groups = {d: s for d, s in sweep.items() if len(s) >= 2}
    if not groups:
        return None
    plt = _plt()
    colors = _colors(result)
    fig, axes = plt.subplots(1, len(groups), figsize=(4.8 * len(groups), 4.2), squeeze=False)
    for ax, (domain, pts) in zip(axes[0], groups.items(), strict=True):
        cs = sorted(pts, key=int)
        names = list(dict.fromkeys(n for c in cs for n in pts[c]))
        for n in names:
            xs = [int(c) for c in cs if n in pts[c]]
            est = [pts[str(c)][n]["estimate"] for c in xs]
            err = [[e - pts[str(c)][n]["low"] for c, e in zip(xs, est, strict=True)],
                   [pts[str(c)][n]["high"] - e for c, e in zip(xs, est, strict=True)]]
            if n.startswith("sllm:"):
                style = {"color": colors.get(n[5:]), "marker": "o", "ls": "-"}
            elif n.startswith("matched:"):
                style = {"color": colors.get(n[8:]), "marker": "s", "ls": ":"}
            else:
                style = {"color": "black", "marker": "*", "ls": "--"}
            ax.errorbar(xs, est, yerr=err, capsize=3, label=_plot_label(n), **style)
        _floor_lines(ax, result, domain, vertical=False)
        ax.set_xscale("log", base=2)
        ax.set_xticks([int(c) for c in cs], [str(c) for c in cs])
        ax.set_title(domain)
        ax.set_xlabel("token context C (same for every model)")
        ax.set_ylabel("bits/byte (95 % interval; lower is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return _save_figure(fig, "Quality vs token context; compressor floors (whole set) as grey lines", path)


ANNOTATE_MAX = 5  # SLLMs per panel up to which speed_quality.png writes each one's name beside it
LABEL_STEP = 10  # points between the stacked names of points that sit close together


def label_rows(anchors: Sequence[tuple[float, float]], widths: Sequence[float], step: float) -> list[int]:
    """Which line (0, 1, ...) each name takes below its first place, so that no two names
    overprint. ``anchors``: the points in display units (y up), ``widths``: each name's width,
    ``step``: one line's height, all in the same units; a name runs right of its point. Points
    are taken from the top down, each name on the first line that clashes with none placed."""
    lines = [0] * len(anchors)
    placed: list[tuple[float, float, float]] = []  # (x from, x to, y) of the names written
    for i in sorted(range(len(anchors)), key=lambda k: -anchors[k][1]):
        x, y = anchors[i]
        for line in range(len(anchors) + 1):
            top = y - line * step
            if not any(x < b and a < x + widths[i] and abs(top - t) < step for a, b, t in placed):
                break
        lines[i] = line
        placed.append((x, x + widths[i], top))
    return lines
SEGMENT_COST_MIN = 20  # fewer segments of a length than this: too noisy a point to draw


def plot_segment_costs(result: Any, path: Path) -> Path | None:
    """Bits per token vs segment length, a panel per domain, a line per SLLM (lengths with at
    least :data:`SEGMENT_COST_MIN` scored segments, over every seed; a one-length segmenter is
    one large marker); None when no SLLM was scored. Where a segmenter's lengths fall on this
    curve is much of its bits/byte. The y axis stops at the 95th percentile of the points
    (1-token segments can cost many times the rest), so the curves that matter stay readable."""
    groups = {d: q["segment_costs"] for d, q in (getattr(result, "quality", None) or {}).items()
              if q.get("segment_costs")}
    if not groups:
        return None
    plt = _plt()
    colors = _colors(result)
    fig, axes = plt.subplots(1, len(groups), figsize=(4.8 * len(groups), 4.6), squeeze=False)
    handles: dict[str, Any] = {}
    for ax, (domain, costs) in zip(axes[0], groups.items(), strict=True):
        ys: list[float] = []
        for spec, c in costs.items():
            keep = [i for i, n in enumerate(c["segments"]) if n >= SEGMENT_COST_MIN]
            if not keep:
                continue
            xs, y = [c["length"][i] for i in keep], [c["bits_per_token"][i] for i in keep]
            (line,) = ax.plot(xs, y, marker="D" if len(keep) == 1 else "o", ms=7 if len(keep) == 1 else 3,
                              color=colors.get(spec), label=_short(spec))
            handles.setdefault(_short(spec), line)
            ys += y
        if ys:
            lo, hi = min(ys), sorted(ys)[int(0.95 * (len(ys) - 1))]
            ax.set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9))
        ax.set_title(domain)
        ax.set_xlabel("segment length (tokens)")
        ax.set_ylabel("SLLM bits per token of the segment (incl. EOS)")
        ax.grid(alpha=0.3)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(3, len(handles)), fontsize=8,
               frameon=False)
    return _save_figure(fig, f"What a segment costs by its length (lengths with >= {SEGMENT_COST_MIN} test "
                        "segments, all seeds)", path, rect=(0, 0.06 + 0.045 * math.ceil(len(handles) / 3), 1, 1))


def _plot_label(name: str) -> str:
    if name == "baseline":
        return "token LM"
    if name.startswith("sllm:"):
        return f"sllm:{_short(name[5:])}"
    if name.startswith("matched:"):
        return f"matched LM:{_short(name[8:])}"
    return name


def plot_memory(result: Any, path: Path) -> Path | None:
    """KV-cache KB vs context tokens, a panel per domain, a line per model."""
    pts = result.memory
    if not pts:
        return None
    plt = _plt()
    groups = _by_domain(pts)
    colors = _colors(result)
    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 4.0), squeeze=False)
    for ax, (domain, ps) in zip(axes[0], groups.items(), strict=True):
        models: dict[str, list[dict[str, Any]]] = {}
        for p in ps:
            models.setdefault(p["model"], []).append(p)
        for name, mp in models.items():
            mp = sorted(mp, key=lambda p: p["context_tokens"])
            seg = name.removeprefix("sllm:")
            style = ({"color": colors.get(seg), "marker": "o"} if name.startswith("sllm:")
                     else {"color": "black", "marker": "*", "ls": "--"})
            label = f"sllm:{_short(seg)}" if name.startswith("sllm:") else name
            ax.plot([p["context_tokens"] for p in mp], [p["kv_bytes"] / 1024 for p in mp], label=label, **style)
        ax.set_title(domain)
        ax.set_xlabel("context tokens")
        ax.set_ylabel("KV cache (KB; SLLM incl. decoder)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save_figure(fig, "KV-cache memory vs context length", path)



def _save_figure(fig: Any, title: str, path: Path, rect: tuple[float, float, float, float] | None = None) -> Path:
    """Title, lay out (within ``rect`` of the figure, e.g. above a legend), write (110 dpi)
    and close a bench figure; its path."""
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _short(spec: str) -> str:
    """A plot label: a learned splitter's folder name instead of its whole path, a plug-in's
    class without its module."""
    name, _, rest = spec.partition(":")
    if name == "learned" and rest:
        return f"learned:{Path(rest.rstrip('/').removeprefix('path=')).name}"
    return rest if "." in name and rest else spec


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def write_outputs(result: Any, out_dir: str | Path, plots: bool = True) -> dict[str, Path]:
    """Write results.json / results.csv / results.md (+ PNG plots); returns name -> path."""
    from segsllm.io import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"rows": result.rows, "baselines": result.baselines, "memory": result.memory, "meta": result.meta,
           "quality": getattr(result, "quality", {}), "context_sweep": getattr(result, "context_sweep", {}),
           "definitions": DEFINITIONS}
    files = {
        "results.json": atomic_write_text(out / "results.json", json.dumps(_json_safe(doc), indent=2)),
        "results.csv": atomic_write_text(out / "results.csv", _csv(result.rows)),
        "results.md": atomic_write_text(out / "results.md", markdown(result)),
    }
    if plots:
        for name, fn in (("speed_quality.png", plot_speed_quality), ("context.png", plot_context),
                         ("memory.png", plot_memory), ("segment_costs.png", plot_segment_costs)):
            got = fn(result, out / name)
            if got is not None:
                files[name] = got
    return files


__all__ = ["DEFINITIONS", "markdown", "plot_context", "plot_memory", "plot_segment_costs", "plot_speed_quality", "quality_markdown",
           "rich_table", "sweep_markdown", "write_outputs"]
