"""`segsllm train-vae`: train the SentenceVAE on segments of the chosen domains."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import console, handle_errors, resolve_config
from cli.options import (
    ConfigOpt,
    DataDirOpt,
    DeviceOpt,
    DomainsOpt,
    NoTrackOpt,
    OutOpt,
    ResumeOpt,
    SeedOpt,
    SegmenterOpt,
    SetOpt,
    TokenizerDirOpt,
    TrackingUriOpt,
    split_list,
)


@handle_errors
def train_vae_command(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data_dir: DataDirOpt = None,
    out: OutOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    tracking_uri: TrackingUriOpt = None,
    no_track: NoTrackOpt = False,
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

    extra = {
        "data.domains": split_list(domains),
        "vae.encoder_layers": depth,
        "vae.decoder_layers": depth,
        "tokenizer.path": str(tokenizer) if tokenizer else None,
    }
    cfg = resolve_config(
        config, set_, data_dir=data_dir, out=out, seed=seed, device=device,
        tracking_uri=tracking_uri, no_track=no_track, segmenter=segmenter, extra_flags=extra,
    )
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
    app.command(name="train-vae")(train_vae_command)
