"""`segsllm train-vae`: train the SentenceVAE on segments of the chosen domains."""

from __future__ import annotations

from typing import Annotated

import typer

from segsllm.cli.common import console, handle_errors
from segsllm.cli.examples import epilog
from segsllm.cli.options import DomainsOpt, ResumeOpt, SegmenterOpt, TokenizerDirOpt, split_list
from segsllm.cli.run_options import RunOptions, run_options

PAPER_DEPTHS = (1, 2, 4)  # the paper's H1 / H2 / H4 variants


@handle_errors
@run_options()
def train_vae_command(
    opts: RunOptions,
    segmenter: SegmenterOpt = None,
    tokenizer: TokenizerDirOpt = None,
    domains: DomainsOpt = None,
    depth: Annotated[
        int | None, typer.Option("--depth", help="Encoder and decoder layers: 1, 2 or 4 (paper's H1/H2/H4).")
    ] = None,
    resume: ResumeOpt = False,
) -> None:
    """Train the SentenceVAE (segment encoder/decoder) and report reconstruction metrics."""
    from rich.table import Table

    from segsllm.errors import ConfigError
    from segsllm.train.vae_stage import train_vae

    if depth is not None and depth not in PAPER_DEPTHS:
        raise ConfigError(
            f"--depth must be 1, 2 or 4 (the paper's H1/H2/H4), got {depth}; for another depth use "
            f"--set vae.encoder_layers={depth} --set vae.decoder_layers={depth}"
        )
    extra = {
        "data.domains": split_list(domains),
        "vae.encoder_layers": depth,
        "vae.decoder_layers": depth,
        "tokenizer.path": str(tokenizer) if tokenizer else None,
    }
    cfg = opts.resolve(extra, segmenter=segmenter, stage="vae")
    if not cfg.tokenizer.path:
        raise ConfigError("no tokenizer: pass --tokenizer DIR (see `segsllm train-tokenizer`)")
    result = train_vae(cfg, resume=resume, progress=True)

    table = Table(title=f"SentenceVAE validation ({cfg.segmenter.spec}, {result.steps} steps)")
    for col in ("domain", "loss start→end", "token acc", "exact (greedy)", "bits/byte", "mean len"):
        table.add_column(col, justify="right" if col != "domain" else "left")
    for d, m in result.metrics.items():
        table.add_row(
            d,
            f"{result.start_loss.get(d, float('nan')):.3f} → {m['loss']:.3f}",
            f"{m['token_accuracy']:.3f}",
            f"{m['exact_match']:.3f}",
            f"{m['bits_per_byte']:.3f}",
            f"{m['mean_segment_len']:.1f}",
        )
    console.print(table)
    samples = Table(title="Sample reconstructions (greedy)", show_lines=True)
    samples.add_column("domain")
    samples.add_column("segment")
    samples.add_column("reconstruction")
    for d, pairs in result.samples.items():
        for src, rec in pairs:
            samples.add_row(d, repr(src), repr(rec))
    console.print(samples)
    console.print(f"model: {result.out_dir}  ({result.wall_time_s:.0f} s)")


def register(app: typer.Typer) -> None:
    """Add train-vae."""
    app.command(name="train-vae", epilog=epilog("train-vae"))(train_vae_command)
