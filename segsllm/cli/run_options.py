"""The run options every stage command shares, declared once.

``--config/--set/--data-dir/--out/--seed/--device/--tracking-uri/--no-track`` mean the same
thing in every command. Typer has no shared-option object, so :func:`run_options` adds them
to a command's signature and hands the command one :class:`RunOptions` instead of eight
parameters; the command declares only its own options.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from segsllm.cli.common import resolve_config
from segsllm.cli.options import (
    ConfigOpt,
    DataDirOpt,
    DeviceOpt,
    NoTrackOpt,
    OutOpt,
    SeedOpt,
    SetOpt,
    TrackingUriOpt,
)

F = TypeVar("F", bound=Callable[..., Any])

# Command parameter name -> (annotated option type, default). Order = order in --help.
SHARED: dict[str, tuple[Any, Any]] = {
    "config": (ConfigOpt, None),
    "set_": (SetOpt, None),
    "data_dir": (DataDirOpt, None),
    "out": (OutOpt, None),
    "seed": (SeedOpt, None),
    "device": (DeviceOpt, None),
    "tracking_uri": (TrackingUriOpt, None),
    "no_track": (NoTrackOpt, False),
}
PARAM = "opts"  # the parameter through which a decorated command receives its RunOptions


@dataclass(frozen=True)
class RunOptions:
    """The shared options as given on the command line (None: not given)."""

    config: str | None = None
    set_: list[str] = field(default_factory=list)
    data_dir: Path | None = None
    out: Path | None = None
    seed: int | None = None
    device: str | None = None
    tracking_uri: str | None = None
    no_track: bool = False

    def resolve(
        self,
        extra_flags: dict[str, Any] | None = None,
        *,
        segmenter: str | None = None,
        schema: type | None = None,
        stage: str | None = None,
    ) -> Any:
        """The command's config: defaults < preset (with ``stage``'s ``pipeline.overrides``)
        < --set < these flags < ``extra_flags``."""
        return resolve_config(
            self.config,
            self.set_,
            data_dir=self.data_dir,
            out=self.out,
            seed=self.seed,
            device=self.device,
            tracking_uri=self.tracking_uri,
            no_track=self.no_track,
            segmenter=segmenter,
            extra_flags=extra_flags,
            schema=schema,
            stage=stage,
        )


def run_options(*names: str) -> Callable[[F], F]:
    """Give a command the shared options ``names`` (all of them when none are named).

    The decorated function declares ``opts: RunOptions`` and its own options; the CLI shows
    its own options first, then the shared ones. Options a command does not take stay at
    their defaults in its ``RunOptions``.
    """
    chosen = list(names) or list(SHARED)
    unknown = [n for n in chosen if n not in SHARED]
    if unknown:
        raise ValueError(f"not a shared run option: {unknown[0]!r} (choose from {list(SHARED)})")

    def decorate(func: F) -> F:
        sig = inspect.signature(func, eval_str=True)
        if PARAM not in sig.parameters:
            raise TypeError(f"{func.__qualname__} must take a `{PARAM}: RunOptions` parameter")
        own = [p for n, p in sig.parameters.items() if n != PARAM]
        shared = [
            inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=SHARED[n][0],
                              default=SHARED[n][1])
            for n in chosen
        ]
        clash = {p.name for p in own} & set(chosen)
        if clash:
            raise TypeError(f"{func.__qualname__} declares the shared option {clash.pop()!r} itself")

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            given = {n: kwargs.pop(n) for n in chosen}
            given["set_"] = list(given.get("set_") or [])
            return func(**kwargs, **{PARAM: RunOptions(**given)})

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + shared
        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper  # type: ignore[return-value]

    return decorate
