"""`segsllm bench`: the segmenter × domain matrix of quality, speed and memory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segsllm.cli.common import console, handle_errors
from segsllm.cli.examples import epilog
from segsllm.cli.options import DomainsOpt
from segsllm.cli.run_options import RunOptions, run_options


def _split_list(text: str | None) -> list[str] | None:
    """Comma-separated specs; commas inside a spec's arguments (``a:x=1,y=2``) stay with it."""
    if not text:
        return None
    parts: list[str] = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece:
            continue
        # "y=2" after "a:x=1" continues that spec's arguments (no ':' of its own).
        if parts and ":" in parts[-1] and "=" in piece and ":" not in piece:
            parts[-1] += "," + piece
        else:
            parts.append(piece)
    return parts


@handle_errors
@run_options()
def bench_command(
    opts: RunOptions,
    segmenters: Annotated[
        str | None,
        typer.Option("--segmenters", help="Comma-separated segmenter specs, e.g. punctuation,fixed:k=16."),
    ] = None,
    domains: DomainsOpt = None,
    sllm: Annotated[
        list[str] | None,
        typer.Option("--sllm", help="SEGMENTER=DIR: the SLLM (finetune output) of one segmenter; repeatable."),
    ] = None,
    baseline: Annotated[
        Path | None, typer.Option("--baseline", help="Fine-tuned token LM folder (train-lm output).")
    ] = None,
    base_lm: Annotated[
        Path | None, typer.Option("--base-lm", help="Untouched base LM folder (optional).")
    ] = None,
    from_dir: Annotated[
        Path | None,
        typer.Option("--from", help="Pipeline output folder: DIR/lm, DIR/base-lm, DIR/sllm-<segmenter slug>."),
    ] = None,
    no_speed: Annotated[bool, typer.Option("--no-speed", help="Skip the throughput measurements.")] = False,
    no_memory: Annotated[bool, typer.Option("--no-memory", help="Skip the KV-cache measurements.")] = False,
) -> None:
    """Compare segmenters x domains: bits/byte, speed, memory, compression (test split)."""
    extra = {
        "data.domains": _split_list(domains),
        "bench.segmenters": _split_list(segmenters),
        "bench.sllm": list(sllm) if sllm else None,
        "bench.baseline": str(baseline) if baseline else None,
        "bench.base_lm": str(base_lm) if base_lm else None,
        "bench.from_dir": str(from_dir) if from_dir else None,
        "bench.speed": False if no_speed else None,
        "bench.memory": False if no_memory else None,
    }
    cfg = opts.resolve(extra, stage="bench")
    from segsllm.bench.report import rich_table
    from segsllm.bench.run import run_bench
    from segsllm.bench.speed import speed_figures

    result = run_bench(cfg, log=lambda m: console.print(f"[dim]{m}[/]"))
    console.print(rich_table(result))
    for warning in speed_figures(result.rows):
        console.print(f"[yellow]warning:[/] {warning}")
    for name, path in result.files.items():
        console.print(f"{name}: {path}")
    tracked = f", MLflow run {result.run_id}" if result.run_id else ""
    console.print(f"bench done in {result.wall_time_s:.0f} s{tracked}")


def register(app: typer.Typer) -> None:
    """Add bench."""
    app.command(name="bench", epilog=epilog("bench"))(bench_command)
