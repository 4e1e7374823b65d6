"""`segsllm finetune`: graft a trained SentenceVAE onto a backbone and train the SLLM."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segsllm.cli.common import console, handle_errors
from segsllm.cli.examples import epilog
from segsllm.cli.options import DomainsOpt, ResumeOpt, SegmenterOpt, split_list
from segsllm.cli.run_options import RunOptions, run_options

VaeOpt = Annotated[Path | None, typer.Option("--vae", help="SentenceVAE folder (`segsllm train-vae` output).")]
BackboneOpt = Annotated[
    str | None,
    typer.Option("--backbone", help="tiny | tiny:opt | a train-lm folder | smollm2-135m | FILE.gguf | hub id "
                                    "(default: backbone.spec)."),
]


@handle_errors
@run_options()
def finetune_command(
    opts: RunOptions,
    segmenter: SegmenterOpt = None,
    vae: VaeOpt = None,
    backbone: BackboneOpt = None,
    domains: DomainsOpt = None,
    train_last: Annotated[
        int | None, typer.Option("--train-last", help="Train only the last k backbone layers (sllm.train_last).")
    ] = None,
    resume: ResumeOpt = False,
) -> None:
    """Train the SLLM (encoder → causal backbone → decoder + stop head); report bits/byte per domain.

    The segmenter defaults to the one the VAE was trained with.
    """
    from rich.table import Table

    from segsllm.errors import ConfigError
    from segsllm.train.sllm_stage import finetune_sllm

    if vae is None:
        raise ConfigError("no SentenceVAE: pass --vae DIR (see `segsllm train-vae`)")
    extra = {
        "data.domains": split_list(domains),
        "sllm.train_last": train_last,
        "backbone.spec": backbone,
    }
    # --segmenter is handed over as an explicit choice (None: the VAE's own), not merged.
    cfg = opts.resolve(extra, stage="sllm")
    result = finetune_sllm(cfg, vae, segmenter=segmenter, resume=resume, progress=True)

    title = (f"SLLM validation ({result.segmenter}, backbone {cfg.backbone.spec}, {result.steps} steps, "
             f"{result.trainable_parameters:,}/{result.num_parameters:,} params trained)")
    table = Table(title=title)
    for col in ("domain", "bits/byte", "tokens", "bounds", "tok ppl", "paper*", "seg/doc", "tok/seg"):
        table.add_column(col, justify="left" if col == "domain" else "right", no_wrap=True)
    for d, m in result.metrics.items():
        table.add_row(
            d,
            f"{m['bits_per_byte']:.3f}",
            f"{m['bits_per_byte_tokens']:.3f}",
            f"{m['bits_per_byte_boundaries']:.3f}",
            f"{m['token_perplexity']:.1f}",
            f"{m['paper_style_perplexity']:.1f}",
            f"{m['segments_per_doc']:.0f}",
            f"{m['mean_segment_len']:.1f}",
        )
    console.print(table)
    console.print("[dim]bits/byte = tokens (segment tokens) + bounds (segment EOS, stop decisions); tok ppl = exp(same NLL / "
                  "(document tokens + 1 EOS per document)), as train-lm's; paper* = paper-style perplexity, only for "
                  "comparison with the paper. More metrics: metrics.json.[/]")
    console.print("validation loss (start → end): " + ", ".join(
        f"{d} {result.start_loss.get(d, float('nan')):.2f} → {m['loss']:.2f}" for d, m in result.metrics.items()))
    if result.samples:
        samples = Table(title="Greedy continuations of validation documents", show_lines=True)
        for col in ("domain", "prompt", "continuation"):
            samples.add_column(col)
        for d, (prompt, cont) in result.samples.items():
            samples.add_row(d, repr(prompt), repr(cont))
        console.print(samples)
    console.print(f"model: {result.out_dir}  ({result.wall_time_s:.0f} s)")


def register(app: typer.Typer) -> None:
    """Add finetune."""
    app.command(name="finetune", epilog=epilog("finetune"))(finetune_command)
