"""Option types shared by the commands, so they all spell them the same way.

The run options (``ConfigOpt`` … ``NoTrackOpt``) reach a command through
:func:`segsllm.cli.run_options.run_options`, which shows them under one help panel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segsllm.errors import ConfigError

RUN_PANEL = "Run options"  # the shared options, listed apart from a command's own

ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config", "-c", help="Preset name (see `segsllm presets`) or a YAML file.",
        rich_help_panel=RUN_PANEL,
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", help="Dotted override KEY=VALUE, repeatable (e.g. --set train.steps=50).",
        rich_help_panel=RUN_PANEL,
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Folder of prepared corpora (default: ./data).", rich_help_panel=RUN_PANEL
    ),
]
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Output artifact folder.", rich_help_panel=RUN_PANEL),
]
SeedOpt = Annotated[
    int | None, typer.Option("--seed", help="Random seed.", rich_help_panel=RUN_PANEL)
]
DeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device", help="auto | cpu | cuda | cuda:N | mps (default: auto).",
        rich_help_panel=RUN_PANEL,
    ),
]
TrackingUriOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db).",
        rich_help_panel=RUN_PANEL,
    ),
]
NoTrackOpt = Annotated[
    bool,
    typer.Option("--no-track", help="Do not log this run to MLflow.", rich_help_panel=RUN_PANEL),
]
SegmenterOpt = Annotated[
    str | None,
    typer.Option(
        "--segmenter",
        help="Segmenter spec: punctuation, fixed:k=16, learned:DIR, PLUGIN:arg=v, module:Class.",
    ),
]
DomainsOpt = Annotated[
    str | None, typer.Option("--domains", help="Comma-separated corpora (default: data.domains).")
]
TokenizerDirOpt = Annotated[
    Path | None, typer.Option("--tokenizer", help="Tokenizer folder (default: tokenizer.path).")
]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint in --out.")]


def split_list(value: str | None) -> list[str] | None:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``; None stays None (the config's default applies)."""
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def seed_list(value: str | None) -> list[int] | None:
    """``"0,1,2"`` -> ``[0, 1, 2]``; one-line :class:`ConfigError` for anything but integers."""
    items = split_list(value)
    if items is None:
        return None
    try:
        return [int(v) for v in items]
    except ValueError:
        raise ConfigError(f"--seeds expects comma-separated integers, e.g. 0,1,2; got {value!r}") from None
