"""Bench output: a rich table grouped by domain, results.json/csv/md and PNG plots.

Plots (matplotlib, Agg backend, imported only here):
- ``speed_quality.png`` — one panel per domain: speedup against bits/byte, one point per
  segmenter: the FLOP speedup (filled), the wall-clock median with its IQR (hollow, bar) and
  the analytic bound (×); the token baseline at 1×; lower-right is better.
- ``memory.png`` — one panel per domain: KV-cache KB against context tokens, one line per model.
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
    "bits_per_byte": "NLL (nats) / (ln 2 x UTF-8 bytes of the same test documents); SLLM NLL = segment tokens + "
                     "segment EOS + stop decisions; token LM NLL = document tokens + final EOS",
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
                       "(the rest hit max_len or the token budget); gen_empty_masked_share (results.json) = share of "
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
    "vae_exact_match": "share of sampled test segments the VAE reconstructs exactly (greedy)",
}

# (column key, header, format) of the summary tables.
COLUMNS = [
    ("segmenter", "segmenter", "{}"),
    ("sllm_bits_per_byte", "SLLM bits/B", "{:.4f}"),
    ("baseline_bits_per_byte", "LM bits/B", "{:.4f}"),
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
    ("vae_exact_match", "VAE exact", "{:.3f}"),
]


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    """A table cell; speed cells of an n/a row read ``n/a``."""
    if row.get("speed_na") and key in SPEED_KEYS:
        return "n/a"
    if key == "speedup_iqr":
        lo, hi = row.get("speedup_q25"), row.get("speedup_q75")
        return "–" if not (_finite(lo) and _finite(hi)) else f"{lo:.2f}–{hi:.2f}" + (" ⚠" if row.get("speedup_noisy")
                                                                                    else "")
    return _fmt(row.get(key), fmt)


SPEED_KEYS = {"speedup_flops", "sllm_flops_per_token", "baseline_flops_per_token", "speedup", "speedup_iqr", "bound",
              "speedup_over_bound", "sllm_tokens_per_s", "baseline_tokens_per_s"}


def _fmt(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


# The terminal table keeps the headline columns; results.md/csv hold all of them.
TERMINAL = ("segmenter", "sllm_bits_per_byte", "baseline_bits_per_byte", "base_lm_bits_per_byte", "speedup_flops",
            "speedup", "speedup_iqr", "bound", "gen_segment_len", "gen_eos_share", "sllm_kv_bytes_per_token",
            "baseline_kv_bytes_per_token", "mean_segment_len", "vae_exact_match")
SHORT = {"speedup_flops": "FLOP x", "speedup": "wall x", "speedup_iqr": "IQR", "gen_eos_share": "EOS",
         "sllm_bits_per_byte": "SLLM b/B", "baseline_bits_per_byte": "LM b/B", "base_lm_bits_per_byte": "base b/B",
         "sllm_kv_bytes_per_token": "SLLM KV/tok", "baseline_kv_bytes_per_token": "LM KV/tok",
         "mean_segment_len": "len", "vae_exact_match": "VAE EM"}


def _columns(rows: Sequence[dict[str, Any]], keys: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
    """The columns (all, or those in ``keys``) that at least one row has a value for."""
    have = set().union(*(r.keys() for r in rows)) if rows else set()
    if "speedup_q25" in have:
        have.add("speedup_iqr")
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


def rich_table(result: Any) -> Any:
    """One rich Table, a section per domain."""
    from rich.table import Table

    cols = _columns(result.rows, TERMINAL)
    table = Table(title=f"bench on the {result.meta.get('split', 'test')} split ({result.meta.get('device', '')}); "
                        "all columns in results.md")
    table.add_column("domain")
    for key, header, _ in cols:
        table.add_column(SHORT.get(key, header), justify="left" if key == "segmenter" else "right")
    for domain, rows in _by_domain(result.rows).items():
        for i, r in enumerate(rows):
            table.add_row(domain if i == 0 else "", *[_cell(r, k, f) for k, _, f in cols],
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
    for domain, rows in _by_domain(result.rows).items():
        r0 = rows[0]
        out += [f"## {domain}", "", f"{r0.get('eval_docs')} documents, {r0.get('eval_bytes')} bytes "
                                    "(the same for every model)", ""]
        out.append("| " + " | ".join(h for _, h, _ in cols) + " |")
        out.append("|" + "|".join("---" for _ in cols) + "|")
        for r in rows:
            out.append("| " + " | ".join(_cell(r, k, f) for k, _, f in cols) + " |")
        out.append("")
        out += _reading(rows)
    out += ["## Definitions", ""] + [f"- **{k}**: {v}" for k, v in DEFINITIONS.items()] + [""]
    return "\n".join(out)


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
    """Speedups vs bits/byte, a panel per domain; None when no speed was measured."""
    rows = [r for r in result.rows if _finite(r.get("sllm_bits_per_byte")) and not r.get("speed_na")
            and (_finite(r.get("speedup")) or _finite(r.get("speedup_flops")))]
    if not rows:
        return None
    plt = _plt()
    groups = _by_domain(rows)
    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 4.0), squeeze=False)
    colors = _colors(result)
    for ax, (domain, rs) in zip(axes[0], groups.items(), strict=True):
        for r in rs:
            x, c = r["sllm_bits_per_byte"], colors[r["segmenter"]]
            name = _short(r["segmenter"])
            if _finite(r.get("speedup_flops")):
                ax.scatter(x, r["speedup_flops"], s=60, color=c, label=name, zorder=3)
                ax.annotate(name, (x, r["speedup_flops"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
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
    fig.legend(uniq.values(), uniq.keys(), loc="lower center", ncol=min(len(uniq), 6), fontsize=8)
    fig.suptitle(f"Speed vs quality ({result.meta.get('device', '')}, batch 1)")
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    fig.suptitle("KV-cache memory vs context length")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _short(spec: str) -> str:
    """A plot label: a learned splitter's folder name instead of its whole path."""
    name, _, rest = spec.partition(":")
    return f"learned:{Path(rest.rstrip('/')).name}" if name == "learned" and rest else spec


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def write_outputs(result: Any, out_dir: str | Path, plots: bool = True) -> dict[str, Path]:
    """Write results.json / results.csv / results.md (+ PNG plots); returns name -> path."""
    from segsllm.io import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"rows": result.rows, "baselines": result.baselines, "memory": result.memory, "meta": result.meta,
           "definitions": DEFINITIONS}
    files = {
        "results.json": atomic_write_text(out / "results.json", json.dumps(_json_safe(doc), indent=2)),
        "results.csv": atomic_write_text(out / "results.csv", _csv(result.rows)),
        "results.md": atomic_write_text(out / "results.md", markdown(result)),
    }
    if plots:
        for name, fn in (("speed_quality.png", plot_speed_quality), ("memory.png", plot_memory)):
            got = fn(result, out / name)
            if got is not None:
                files[name] = got
    return files


__all__ = ["DEFINITIONS", "markdown", "plot_memory", "plot_speed_quality", "rich_table", "write_outputs"]
