"""`segsllm train-lm`: train or fine-tune the token-level baseline LM and report bits/byte."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segsllm.cli.common import console, handle_errors
from segsllm.cli.examples import epilog
from segsllm.cli.options import DomainsOpt, ResumeOpt, split_list
from segsllm.cli.run_options import RunOptions, run_options

TokenizerOpt = Annotated[
    Path | None,
    typer.Option(
        "--tokenizer",
        help="Tokenizer folder. tiny: required (default: tokenizer.path); pretrained: "
        "(default: the backbone's own).",
    ),
]
BackboneOpt = Annotated[
    str | None,
    typer.Option(
        "--backbone",
        help="tiny | tiny:opt | smollm2-135m | FOLDER | FILE.gguf | hub id (default: backbone.spec).",
    ),
]


MatchOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--match",
        help="An SLLM folder (repeatable): continue --backbone (its lm folder) for exactly the tokens "
        "each SLLM trained on, one snapshot per SLLM in OUT/<segmenter slug>/ (the pipeline's "
        "lm-matched stage).",
    ),
]


@handle_errors
@run_options()
def train_lm_command(
    opts: RunOptions,
    backbone: BackboneOpt = None,
    tokenizer: TokenizerOpt = None,
    domains: DomainsOpt = None,
    match: MatchOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """Train (tiny) or fine-tune (pretrained) the token-level LM; report validation bits/byte per domain."""
    from rich.table import Table

    from segsllm.train.lm_stage import train_lm

    extra = {
        "data.domains": split_list(domains),
        "backbone.spec": backbone,
        "tokenizer.path": str(tokenizer) if tokenizer else None,
    }
    cfg = opts.resolve(extra, stage="lm")
    if match:
        _train_matched(cfg, match, resume)
        return
    result = train_lm(cfg, resume=resume, progress=True)

    # docs/DESIGN.md §7: for a pretrained backbone the start row is the untouched base, shown
    # beside the fine-tuned baseline; for tiny it is the random initialisation.
    first, last = ("untouched base", "fine-tuned") if result.pretrained else ("start", "trained")
    table = Table(title=f"Token LM validation ({cfg.backbone.spec}, {result.steps} steps, "
                        f"{result.tokens_seen:,} tokens)")
    for col in ("domain", "model", "bits/byte", "token ppl", "docs", "tokens", "bytes"):
        table.add_column(col, justify="left" if col in ("domain", "model") else "right")
    for d, m in result.metrics.items():
        s = result.start_metrics.get(d, {})
        for label, row in ((first, s), (last, m)):
            bpb = f"{row.get('bits_per_byte', float('nan')):.3f}"
            if row is m and s:
                bpb += f" ({m['bits_per_byte'] - s['bits_per_byte']:+.3f})"
            table.add_row(d if row is s else "", label, bpb, f"{row.get('token_perplexity', float('nan')):.2f}",
                          f"{row.get('n_docs', 0):.0f}", f"{row.get('n_tokens', 0):,.0f}",
                          f"{row.get('n_bytes', 0):,.0f}")
    console.print(table)
    console.print(f"model: {result.out_dir}  ({result.wall_time_s:.0f} s)")


def _train_matched(cfg: object, sllm_dirs: list[Path], resume: bool) -> None:
    """``--match``: one continuation of the lm, a snapshot at each SLLM's token budget."""
    import json

    from rich.table import Table

    from segsllm.budgets import sllm_budget
    from segsllm.train.lm_matched import train_matched_lm

    budgets = dict(sllm_budget(d) for d in sllm_dirs)
    result = train_matched_lm(cfg, budgets, resume=resume, progress=True)
    table = Table(title=f"Token LMs matched to SLLM budgets ({result.steps} steps)")
    for col in ("snapshot", "SLLM tokens", "tokens trained", "steps", *cfg.data.domains):  # type: ignore[attr-defined]
        table.add_column(col, justify="left" if col == "snapshot" else "right")
    for rec in sorted(result.snapshots.values(), key=lambda r: r["target_tokens"]):
        final = json.loads((Path(rec["path"]) / "metrics.json").read_text(encoding="utf-8"))["final"]
        bpb = [f"{final.get(d, {}).get('bits_per_byte', float('nan')):.3f}"
               for d in cfg.data.domains]  # type: ignore[attr-defined]
        table.add_row(rec["path"], f"{rec['target_tokens']:,}", f"{rec['tokens_seen']:,}", str(rec["steps"]), *bpb)
    console.print(table)
    console.print("validation bits/byte per domain at each snapshot")


def register(app: typer.Typer) -> None:
    """Add train-lm."""
    app.command(name="train-lm", epilog=epilog("train-lm"))(train_lm_command)
