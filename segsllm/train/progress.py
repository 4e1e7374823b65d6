"""The training progress display: a rich bar on a terminal, plain lines in a log, or nothing."""

from __future__ import annotations

from typing import Any


def progress_bar(enabled: bool, total: int, start: int, every: int = 10) -> Any:
    """A rich progress bar on a terminal; a no-op object otherwise."""
    if enabled:
        from rich.console import Console

        console = Console(stderr=True)
        if console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[tps]} tok/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
            )
            task = bar.add_task("train", total=total, completed=start, loss="-", tps="-")
            return _Bar(bar, task)
        # Not a terminal (CI, a log file): one plain line per logging window instead.
        return _Bar(None, None, plain_total=total, every=every)
    return _Bar(None, None)


class _Bar:
    """A rich bar, plain lines every ``every`` steps, or nothing."""

    def __init__(self, bar: Any, task: Any, plain_total: int | None = None, every: int = 10) -> None:
        self.bar, self.task, self.plain_total, self.every = bar, task, plain_total, max(1, every)

    def __enter__(self) -> _Bar:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, step: int, loss: float, tokens_per_s: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=f"{loss:.4f}", tps=f"{tokens_per_s:,.0f}")
        elif self.plain_total is not None and (step % self.every == 0 or step == self.plain_total):
            import sys

            print(f"train step {step}/{self.plain_total}  loss {loss:.4f}  {tokens_per_s:,.0f} tok/s",
                  file=sys.stderr, flush=True)


__all__ = ["progress_bar"]
