"""Glue shared by commands: config resolution, one-line errors, console output."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2) -> None:
    """Print one error line and exit non-zero."""
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


def warnings_as_lines() -> None:
    """Show Python warnings as one ``warning: ...`` line on stderr, not ``file:line: Category``
    plus a source line: a warning is for the person at the terminal (e.g. tracking is off)."""
    import warnings

    from rich.text import Text

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        err_console.print(Text.assemble(("warning: ", "yellow"), str(message)), soft_wrap=True)

    warnings.showwarning = show


def handle_errors(func: F) -> F:
    """Turn expected mistakes (bad config, bad input, missing artifacts) into one line."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from segsllm.errors import SegsllmError

        try:
            return func(*args, **kwargs)
        except SegsllmError as exc:
            fail(str(exc))
        except FileNotFoundError as exc:
            fail(f"file not found: {exc.filename or exc}")
        except IsADirectoryError as exc:
            fail(f"expected a file, got a folder: {exc.filename or exc}")
        except PermissionError as exc:
            fail(f"permission denied: {exc.filename or exc}")
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        return None

    return wrapper  # type: ignore[return-value]


def resolve_config(
    config: str | None,
    overrides: list[str] | None,
    *,
    data_dir: Path | None = None,
    out: Path | None = None,
    seed: int | None = None,
    device: str | None = None,
    tracking_uri: str | None = None,
    no_track: bool = False,
    segmenter: str | None = None,
    extra_flags: dict[str, Any] | None = None,
    schema: type | None = None,
    stage: str | None = None,
) -> Any:
    """Defaults < preset < --set < explicit flags, as a dataclass config; ``stage`` (a
    pipeline stage kind) applies that stage's ``pipeline.overrides`` list."""
    from segsllm.config import Config, load_config

    flags: dict[str, Any] = {
        "data.dir": str(data_dir) if data_dir is not None else None,
        "run.out": str(out) if out is not None else None,
        "run.seed": seed,
        "run.device": device,
        "run.tracking_uri": tracking_uri,
        "run.track": False if no_track else None,
        "segmenter.spec": segmenter,
    }
    flags.update(extra_flags or {})
    return load_config(config, overrides or [], flags, schema=schema or Config, stage=stage)


def stdout_is_terminal() -> bool:
    """Whether to draw colours/progress on stdout."""
    return sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
