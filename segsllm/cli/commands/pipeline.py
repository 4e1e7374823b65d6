"""`segsllm pipeline`: every stage from one preset, resumable (the main job)."""

from __future__ import annotations

from typing import Annotated

import typer

from segsllm.cli.common import console, handle_errors
from segsllm.cli.examples import epilog
from segsllm.cli.options import split_list
from segsllm.cli.run_options import RunOptions, run_options


@handle_errors
@run_options()
def pipeline_command(
    opts: RunOptions,
    segmenters: Annotated[
        str | None,
        typer.Option("--segmenters", help="Comma-separated segmenter specs (default: pipeline.segmenters)."),
    ] = None,
    teachers: Annotated[
        str | None,
        typer.Option("--teachers", help="Comma-separated splitter teachers (default: pipeline.teachers)."),
    ] = None,
) -> None:
    """Run every stage from a preset: data, tokenizer, LM, VAE + SLLM per segmenter, splitters, bench.

    Finished stages are skipped on a rerun (same config), interrupted ones resume.
    """
    from rich.table import Table

    from segsllm.pipeline import run_pipeline

    extra = {
        "pipeline.segmenters": split_list(segmenters),
        "pipeline.teachers": split_list(teachers),
    }
    cfg = opts.resolve(extra)
    if not cfg.run.out:
        cfg.run.out = "runs/pipeline"
    overrides = list(opts.set_)
    if opts.data_dir is not None:
        overrides.append(f"data.dir={opts.data_dir}")
    for key, value in extra.items():
        if value is not None:
            overrides.append(f"{key}=[{','.join(repr(v) for v in value)}]")

    def report(name: str, status: str) -> None:
        console.rule(f"[bold]{name}[/] — {status}")

    outcomes = run_pipeline(cfg, opts.config, overrides, on_stage=report)
    table = Table(title=f"pipeline {cfg.run.out}")
    for col in ("stage", "status", "seconds", "output"):
        table.add_column(col)
    for o in outcomes:
        table.add_row(o.name, o.status, f"{o.seconds:.0f}", str(o.out))
    console.print(table)
    md = outcomes[-1].out / "results.md" if outcomes else None
    if md is not None and md.is_file():
        console.print(md.read_text(encoding="utf-8"))


pipeline_command.interrupt_hint = (  # type: ignore[attr-defined]
    "rerun the same command to resume (finished stages are skipped, the interrupted one continues)"
)


def register(app: typer.Typer) -> None:
    """Add pipeline."""
    app.command(name="pipeline", epilog=epilog("pipeline"))(pipeline_command)
