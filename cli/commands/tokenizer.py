"""`segsllm train-tokenizer` (being written)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add train-tokenizer."""
