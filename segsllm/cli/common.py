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


def warn(message: str) -> None:
    """Print one ``warning:`` line on stderr (never wrapped, markup not interpreted)."""
    from rich.text import Text

    err_console.print(Text.assemble(("warning: ", "yellow"), message), soft_wrap=True)


def _warning_line(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    """A ``warnings.showwarning`` that prints the message alone, as one ``warning:`` line."""
    warn(str(message))


RESUME_HINT = ": rerun the same command with --resume to continue from the last checkpoint"


def _interrupt_hint(func: Callable[..., Any]) -> str:
    """What to do after Ctrl-C: a command's own ``interrupt_hint``, else the --resume hint
    for commands that take --resume, else nothing."""
    import inspect

    own = getattr(func, "interrupt_hint", None)
    if own:
        return f": {own}"
    try:
        return RESUME_HINT if "resume" in inspect.signature(func).parameters else ""
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return ""


def handle_errors(func: F) -> F:
    """Turn expected mistakes (bad config, bad input, missing artifacts) into one line, and
    library warnings into one ``warning:`` line each (not Python's ``file:line: Category``)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import warnings

        from segsllm.errors import SegsllmError

        try:
            with warnings.catch_warnings():
                warnings.showwarning = _warning_line
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
            err_console.print(f"[yellow]interrupted[/]{_interrupt_hint(wrapper)}", soft_wrap=True)
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


def silence_library_progress_bars() -> None:
    """No "Loading weights" / download bars from transformers and huggingface_hub between our
    own output (our progress bars stay). ``HF_HUB_DISABLE_PROGRESS_BARS=0`` brings them back.
    Nothing is imported here: the environment variable is read when those libraries load."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] not in ("0", "false", "False", ""):
        for module, call in (("transformers.utils.logging", "disable_progress_bar"),
                             ("huggingface_hub.utils", "disable_progress_bars")):
            loaded = sys.modules.get(module)  # already imported (tests, notebooks): tell it directly
            if loaded is not None:
                getattr(loaded, call)()


def stdout_is_terminal() -> bool:
    """Whether to draw colours/progress on stdout."""
    return sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
