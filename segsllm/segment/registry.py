"""Where segmenters come from: built-ins, installed plug-ins and ``module:Class`` paths.

Plug-ins are classes (or factories) exposed by any installed distribution under the entry
point group ``segsllm.segmenters``::

    [project.entry-points."segsllm.segmenters"]
    mysplit = "mysplit:MySplitSegmenter"

A plug-in that fails to import is reported with a :class:`SegmenterPluginWarning` naming
it, never a crash of the listing; building it by name is a one-line :class:`SegmenterError`.
``SEGSLLM_NO_PLUGINS=1`` turns entry-point discovery off (reproducible runs, debugging).
Built-in names always win over plug-ins of the same name.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import warnings
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from segsllm.segment.base import MaxLenCapped, Segmenter, SegmenterError
from segsllm.segment.fixed import FixedSegmenter
from segsllm.segment.learned import LearnedSegmenter
from segsllm.segment.lines import LinesSegmenter
from segsllm.segment.punctuation import PunctuationSegmenter
from segsllm.segment.spec import ParamInfo, Spec, bind_params, param_infos, parse_spec

ENTRY_POINT_GROUP = "segsllm.segmenters"
NO_PLUGINS_ENV = "SEGSLLM_NO_PLUGINS"

BUILTINS: dict[str, type[Segmenter]] = {
    "punctuation": PunctuationSegmenter,
    "fixed": FixedSegmenter,
    "lines": LinesSegmenter,
    "learned": LearnedSegmenter,
}
# Built-ins whose implementation lands with a later issue: listed, and a clear error if used.
PENDING: dict[str, tuple[str, str, list[ParamInfo]]] = {}


class SegmenterPluginWarning(UserWarning):
    """An installed segmenter plug-in could not be loaded (it is skipped)."""


@dataclass(frozen=True)
class SegmenterInfo:
    """One row of :func:`list_segmenters`."""

    name: str
    source: str  # "built-in" or "plugin: DIST VERSION"
    description: str
    params: list[ParamInfo] = field(default_factory=list)
    error: str | None = None  # why it cannot be built now (failed plug-in, pending built-in)

    @property
    def available(self) -> bool:
        return self.error is None


def plugins_enabled() -> bool:
    """False when ``SEGSLLM_NO_PLUGINS`` is set to 1/true/yes/on."""
    return os.environ.get(NO_PLUGINS_ENV, "").strip().lower() not in {"1", "true", "yes", "on"}


def _dist_label(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ep.value
    return f"{dist.metadata['Name'] or dist.name} {dist.version}"


def plugin_entry_points() -> dict[str, metadata.EntryPoint]:
    """Installed plug-ins by name (not imported yet); empty when plug-ins are off."""
    if not plugins_enabled():
        return {}
    try:
        eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception as exc:  # broken metadata of some unrelated distribution
        warnings.warn(f"cannot scan segmenter plug-ins: {exc}", SegmenterPluginWarning, stacklevel=2)
        return {}
    found: dict[str, metadata.EntryPoint] = {}
    for ep in eps:
        if ep.name in BUILTINS or ep.name in PENDING:
            warnings.warn(
                f"segmenter plug-in {ep.name!r} from {_dist_label(ep)} is shadowed by the built-in "
                "of the same name",
                SegmenterPluginWarning,
                stacklevel=2,
            )
        elif ep.name in found:
            if found[ep.name].value != ep.value:
                warnings.warn(
                    f"segmenter plug-in {ep.name!r} is declared twice ({_dist_label(found[ep.name])}, "
                    f"{_dist_label(ep)}); using the first",
                    SegmenterPluginWarning,
                    stacklevel=2,
                )
        else:
            found[ep.name] = ep
    return found


class _Names(Collection[str]):
    """Registered names, scanning the entry points only when a name is not a built-in."""

    def __init__(self) -> None:
        self._plugins: dict[str, metadata.EntryPoint] | None = None

    @property
    def plugins(self) -> dict[str, metadata.EntryPoint]:
        if self._plugins is None:
            self._plugins = plugin_entry_points()
        return self._plugins

    def __contains__(self, name: object) -> bool:
        return name in BUILTINS or name in PENDING or name in self.plugins

    def __iter__(self) -> Iterator[str]:
        return iter([*BUILTINS, *PENDING, *self.plugins])

    def __len__(self) -> int:
        return len(BUILTINS) + len(PENDING) + len(self.plugins)


def registered_names() -> list[str]:
    """Built-in and plug-in names, sorted."""
    return sorted(_Names())


def _check_factory(obj: Any, what: str) -> Callable[..., Any]:
    if isinstance(obj, type) and not issubclass(obj, Segmenter):
        raise SegmenterError(f"{what} is not a Segmenter subclass (subclass segsllm.segment.Segmenter)")
    if not callable(obj):
        raise SegmenterError(f"{what} is not a class or factory")
    return obj


def _load_plugin(name: str, ep: metadata.EntryPoint) -> Callable[..., Any]:
    try:
        obj = ep.load()
    except Exception as exc:
        raise SegmenterError(
            f"segmenter plug-in {name!r} from {_dist_label(ep)} failed to load: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    return _check_factory(obj, f"segmenter plug-in {name!r} ({ep.value})")


def _import_class(module: str, attr: str) -> Callable[..., Any]:
    """``module:attr``; the working folder is searched last, as for ``python -m``."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        top = module.split(".")[0]
        if exc.name != top or cwd in sys.path or "" in sys.path:
            raise SegmenterError(f"cannot import {module!r} for segmenter {module}:{attr}: {exc}") from None
        sys.path.append(cwd)
        return _import_class(module, attr)
    except Exception as exc:
        raise SegmenterError(
            f"cannot import {module!r} for segmenter {module}:{attr}: {type(exc).__name__}: {exc}"
        ) from None
    if not hasattr(mod, attr):
        found = sorted(
            n for n, v in vars(mod).items() if isinstance(v, type) and issubclass(v, Segmenter)
        )
        raise SegmenterError(
            f"module {module!r} has no {attr!r}; segmenters in it: {', '.join(found) or 'none'}"
        )
    return _check_factory(getattr(mod, attr), f"{module}:{attr}")


def _factory(spec: Spec, names: _Names) -> Callable[..., Any]:
    if spec.module is not None:
        return _import_class(spec.module, spec.attr or "")
    if spec.name in BUILTINS:
        return BUILTINS[spec.name]
    if spec.name in PENDING:
        _, issue, _ = PENDING[spec.name]
        raise SegmenterError(
            f"segmenter {spec.name!r} is not available yet ({issue}); available now: "
            + ", ".join(n for n in sorted(names) if n not in PENDING)
        )
    return _load_plugin(spec.name, names.plugins[spec.name])


def build_segmenter(
    spec: str | Segmenter, tokenizer: Any = None, max_len: int | None = None
) -> Segmenter:
    """Build the segmenter named by ``spec`` (see :mod:`segsllm.segment.spec`); an instance
    passes through (bound to ``tokenizer`` if given).

    ``tokenizer`` is bound when given (rule-based segmenters need the vocabulary).
    ``max_len`` is the default for a ``max_len`` parameter the spec leaves out (an explicit
    ``max_len=`` in the spec wins); a segmenter without that parameter whose own
    ``max_len`` is larger is wrapped so that its segments are split at ``max_len``. A
    plug-in or ``module:Class`` whose ``max_len`` parameter has its own default keeps that
    default when it fits under ``max_len``, and is lowered to ``max_len`` with a warning
    when it does not (the built-ins take ``max_len`` as given).
    """
    if isinstance(spec, Segmenter):
        return spec.bind(tokenizer) if tokenizer is not None else spec
    names = _Names()
    parsed = parse_spec(spec, names)
    factory = _factory(parsed, names)
    explicit = set(bind_params(factory, parsed.name, parsed.positional, parsed.kwargs, None, check_missing=False))
    defaults = None
    if max_len is not None:
        cap = int(max_len)
        own_default = None if parsed.name in BUILTINS else _int_default(factory, "max_len")
        if own_default is not None and "max_len" not in explicit:
            if own_default > cap:
                warnings.warn(f"segmenter {parsed.name!r}: its default max_len={own_default} is above "
                              f"segmenter.max_len={cap}, so max_len={cap} is used", stacklevel=2)
            cap = min(own_default, cap)
        defaults = {"max_len": cap}
    kwargs = bind_params(factory, parsed.name, parsed.positional, parsed.kwargs, defaults)
    try:
        seg = factory(**kwargs)
    except SegmenterError:
        raise
    except Exception as exc:
        raise SegmenterError(f"cannot build segmenter {parsed.text!r}: {type(exc).__name__}: {exc}") from None
    if not isinstance(seg, Segmenter):
        raise SegmenterError(
            f"{parsed.name!r} built a {type(seg).__name__}, not a Segmenter "
            "(subclass segsllm.segment.Segmenter)"
        )
    seg.name = parsed.name  # type: ignore[misc]  # the spec name round-trips through .spec()
    seg.given_params = frozenset(explicit)  # .spec() keeps them even when equal to a default
    own = getattr(seg, "max_len", None)
    if not isinstance(own, int) or own < 1:
        raise SegmenterError(f"segmenter {parsed.name!r} has no valid max_len (got {own!r})")
    if max_len is not None and "max_len" not in kwargs and own > max_len:
        seg = MaxLenCapped(seg, max_len)
    if tokenizer is not None:
        try:
            seg.bind(tokenizer)
        except SegmenterError:
            raise
        except Exception as exc:
            raise SegmenterError(f"segmenter {parsed.name!r} cannot use this tokenizer: {exc}") from None
    return seg


def _int_default(factory: Callable[..., Any], name: str) -> int | None:
    """The integer default of ``factory``'s parameter ``name`` (None: absent or not an int)."""
    try:
        p = inspect.signature(factory).parameters.get(name)
    except (TypeError, ValueError):
        return None
    ok = p is not None and isinstance(p.default, int) and not isinstance(p.default, bool)
    return int(p.default) if ok else None


def _description(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def list_segmenters() -> list[SegmenterInfo]:
    """Built-ins, then installed plug-ins (each imported; failures warn and are listed)."""
    rows = [SegmenterInfo(n, "built-in", _description(c), param_infos(c)) for n, c in BUILTINS.items()]
    for name, (desc, issue, params) in PENDING.items():
        rows.append(SegmenterInfo(name, "built-in", desc, params, f"not available yet ({issue})"))
    for name, ep in sorted(plugin_entry_points().items()):
        source = f"plugin: {_dist_label(ep)}"
        try:
            factory = _load_plugin(name, ep)
        except SegmenterError as exc:
            warnings.warn(str(exc), SegmenterPluginWarning, stacklevel=2)
            rows.append(SegmenterInfo(name, source, "", [], str(exc)))
            continue
        rows.append(SegmenterInfo(name, source, _description(factory), param_infos(factory)))
    return rows
