"""The training progress display: a rich bar on a terminal, plain lines in a log, or nothing."""

from __future__ import annotations

from typing import Any


def progress_bar(enabled: bool, total: int, start: int, every: int = 10, token_budget: int | None = None,
                 tokens_start: int = 0) -> Any:
    """A rich progress bar on a terminal (over tokens under a token budget, else steps); plain
    lines in a log; a no-op object when disabled."""
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
            task = bar.add_task("train", total=token_budget or total, completed=tokens_start if token_budget else start,
                                loss="-", tps="-")
            return _Bar(bar, task, token_budget=token_budget)
        # Not a terminal (CI, a log file): one plain line per logging window instead.
        return _Bar(None, None, plain_total=total, every=every, token_budget=token_budget)
    return _Bar(None, None)


class _Bar:
    """A rich bar, plain lines every ``every`` steps, or nothing."""

    def __init__(self, bar: Any, task: Any, plain_total: int | None = None, every: int = 10,
                 token_budget: int | None = None) -> None:
        self.bar, self.task, self.plain_total, self.every = bar, task, plain_total, max(1, every)
        self.token_budget = token_budget

    def __enter__(self) -> _Bar:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, step: int, loss: float, tokens_per_s: float, tokens_seen: int = 0, last: bool = False) -> None:
        if self.bar is not None:
            done = tokens_seen if self.token_budget else step
            self.bar.update(self.task, completed=done, loss=f"{loss:.4f}", tps=f"{tokens_per_s:,.0f}")
        elif self.plain_total is not None and (step % self.every == 0 or step == self.plain_total or last):
            import sys

            where = (f"train step {step}  {tokens_seen:,}/{self.token_budget:,} tokens" if self.token_budget
                     else f"train step {step}/{self.plain_total}")
            print(f"{where}  loss {loss:.4f}  {tokens_per_s:,.0f} tok/s", file=sys.stderr, flush=True)


__all__ = ["progress_bar"]
