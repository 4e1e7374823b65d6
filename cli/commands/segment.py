"""`segsllm segment` and `segsllm segmenters` (being written)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the segmenter commands."""
