"""`segsllm data` (being written)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Prepare and list corpora.", no_args_is_help=True)
