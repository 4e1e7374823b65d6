"""The segsllm Typer application.

Commands are thin: parse options, call the library, print a summary. This module and the
command modules import no torch / transformers / mlflow at import time, so `--help` is fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

from segsllm.cli import help_format
from segsllm.cli.commands import bench as bench_cmd
from segsllm.cli.commands import data as data_cmd
from segsllm.cli.commands import finetune as finetune_cmd
from segsllm.cli.commands import generate as generate_cmd
from segsllm.cli.commands import pipeline as pipeline_cmd
from segsllm.cli.commands import segment as segment_cmd
from segsllm.cli.commands import tokenizer as tokenizer_cmd
from segsllm.cli.commands import train_lm as train_lm_cmd
from segsllm.cli.commands import train_splitter as train_splitter_cmd
from segsllm.cli.commands import train_vae as train_vae_cmd
from segsllm.cli.common import silence_library_progress_bars
from segsllm.cli.examples import epilog

help_format.install()

app = typer.Typer(
    name="segsllm",
    help="Sentence-level LLMs with a swappable, learnable segmenter (SentenceVAE / SLLM).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from segsllm import __version__

        typer.echo(f"segsllm {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit."),
    ] = False,
) -> None:
    """segsllm: how does the way text is cut into segments change a sentence-level LLM?"""
    silence_library_progress_bars()


app.add_typer(data_cmd.app, name="data")
tokenizer_cmd.register(app)
train_vae_cmd.register(app)
train_lm_cmd.register(app)
finetune_cmd.register(app)
generate_cmd.register(app)
train_splitter_cmd.register(app)
pipeline_cmd.register(app)
segment_cmd.register(app)
bench_cmd.register(app)


@app.command(epilog=epilog("presets"))
def presets() -> None:
    """List the shipped config presets, each with the first line of its description."""
    from rich.table import Table
    from rich.text import Text

    from segsllm.cli.common import console
    from segsllm.config import describe_preset, list_presets

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column("preset", style="bold cyan", no_wrap=True)
    table.add_column("description")
    for name in list_presets():
        table.add_row(name, Text(describe_preset(name)))
    console.print(table)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
