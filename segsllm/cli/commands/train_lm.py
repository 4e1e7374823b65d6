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


@handle_errors
@run_options()
def train_lm_command(
    opts: RunOptions,
    backbone: BackboneOpt = None,
    tokenizer: TokenizerOpt = None,
    domains: DomainsOpt = None,
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


def register(app: typer.Typer) -> None:
    """Add train-lm."""
    app.command(name="train-lm", epilog=epilog("train-lm"))(train_lm_command)
