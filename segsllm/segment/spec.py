"""Segmenter spec strings: the one parser every ``--segmenter`` option goes through.

Grammar::

    spec    := NAME [":" args]                 a registered name (built-in or plug-in)
             | MODULE ":" CLASS [":" args]     an importable class, e.g. mypkg.seg:MySeg
    args    := item ("," item)*
    item    := KEY "=" VALUE                   typed from the class signature
             | VALUE                           first item only: the first parameter
    VALUE   := text without "," | '...' | "..."  (quote to include "," or leading spaces)

Examples: ``punctuation``, ``punctuation:max_len=48``, ``fixed:k=16,max_len=32``,
``learned:runs/splitter`` (positional path), ``mypkg:arg=1``, ``mypkg.seg:MySeg:k=3``,
``punctuation:terminals='.!?'``. A registered name always wins over a module of the same
name. Values are converted to the type annotated in ``__init__`` (int, float, bool, str,
Path, ``X | None`` with ``none``), or to the type of the default when unannotated.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segsllm.errors import SegmenterError

_KEY_PREFIX = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_]*\s*=")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n"}
_NONE = {"none", "null", "~"}
REQUIRED = inspect.Parameter.empty


@dataclass(frozen=True)
class Spec:
    """A parsed spec: what to build and the raw (string) arguments."""

    text: str
    name: str  # registered name, or "module.path:Class"
    module: str | None = None  # set for the module:Class form
    attr: str | None = None
    positional: str | None = None
    kwargs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ParamInfo:
    """One constructor parameter of a segmenter, for listings and error messages."""

    name: str
    type: str
    default: Any = REQUIRED

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def __str__(self) -> str:
        return f"{self.name}: {self.type}" + ("" if self.required else f" = {self.default!r}")


_ITEM = re.compile(
    r"""\s*(?:(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*)?"""
    r"""(?:'(?P<sq>[^']*)'|"(?P<dq>[^"]*)"|(?P<raw>(?!['"])[^,]*?))\s*(?P<sep>,|$)"""
)


def parse_args(args: str, spec: str) -> tuple[str | None, dict[str, str]]:
    """``'a,k=1,x=y'`` -> ``('a', {'k': '1', 'x': 'y'})``; quoted values are kept verbatim."""
    positional: str | None = None
    kwargs: dict[str, str] = {}
    pos, index = 0, 0
    while pos < len(args):
        m = _ITEM.match(args, pos)
        if m is None:
            raise SegmenterError(
                f"segmenter spec {spec!r}: cannot parse {args[pos:]!r} (quote values holding ',')"
            )
        value = next(v for v in (m["sq"], m["dq"], m["raw"], "") if v is not None)
        key = m["key"]
        if key is None and _KEY_PREFIX.match(value):  # KEY=VALUE whose value did not parse
            raise SegmenterError(f"segmenter spec {spec!r}: cannot parse {value!r} (unbalanced quotes?)")
        if key is not None:
            if key in kwargs:
                raise SegmenterError(f"segmenter spec {spec!r}: {key} given twice")
            kwargs[key] = value
        elif value:
            if index > 0:
                raise SegmenterError(
                    f"segmenter spec {spec!r}: expected KEY=VALUE, got {value!r} "
                    "(only the first argument may be positional; quote values holding ',')"
                )
            positional = value
        index += 1
        pos = m.end()
    return positional, kwargs


def parse_spec(spec: str, known: Collection[str]) -> Spec:
    """Parse ``spec``; ``known`` holds the registered names (it may be lazy)."""
    text = (spec or "").strip()
    if not text:
        raise SegmenterError("empty segmenter spec (e.g. punctuation, fixed:k=16)")
    head, _, rest = text.partition(":")
    head = head.strip()
    if head in known:
        positional, kwargs = parse_args(rest, text)
        return Spec(text, head, positional=positional, kwargs=kwargs)
    attr, _, args = rest.partition(":")
    attr = attr.strip()
    if _MODULE.match(head) and _IDENT.match(attr):
        positional, kwargs = parse_args(args, text)
        return Spec(text, f"{head}:{attr}", head, attr, positional, kwargs)
    raise SegmenterError(
        f"unknown segmenter {head!r}; available: {names_hint(known)} "
        "(or a class path module.path:ClassName)"
    )


# --------------------------------------------------------------------------- typing


def _type_name(tp: Any) -> str:
    if tp is REQUIRED or tp is None:
        return "str"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("NoneType", "None")


def _hints(factory: Callable[..., Any]) -> dict[str, Any]:
    target = factory.__init__ if isinstance(factory, type) else factory
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: fall back to the defaults' types
        return {}


def _parameters(factory: Callable[..., Any]) -> list[inspect.Parameter]:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return []
    return [p for p in sig.parameters.values() if p.name != "self"]


def param_infos(factory: Callable[..., Any]) -> list[ParamInfo]:
    """The named parameters ``factory`` accepts, with types and defaults."""
    hints = _hints(factory)
    out = []
    for p in _parameters(factory):
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        tp = hints.get(p.name, type(p.default) if p.default is not REQUIRED else str)
        out.append(ParamInfo(p.name, _type_name(tp), p.default))
    return out


def _convert(value: str, tp: Any, where: str) -> Any:
    """Convert one spec value to ``tp`` (int, float, bool, str, Path, Optional, Union)."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        options = typing.get_args(tp)
        if type(None) in options and value.strip().lower() in _NONE:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _convert(value, option, where)
            except SegmenterError as exc:
                errors.append(str(exc))
        raise SegmenterError(errors[0] if errors else f"{where}: cannot convert {value!r}")
    try:
        if tp is bool:
            low = value.strip().lower()
            if low in _TRUE | _FALSE:
                return low in _TRUE
            raise ValueError
        if tp is int:
            return int(value.strip(), 0) if value.strip().lower().startswith("0x") else int(value)
        if tp is float:
            return float(value)
        if tp is Path:
            return Path(value)
    except ValueError:
        raise SegmenterError(f"{where} expects {_type_name(tp)}, got {value!r}") from None
    return value


def bind_params(
    factory: Callable[..., Any],
    display: str,
    positional: str | None,
    kwargs: dict[str, str],
    defaults: dict[str, Any] | None = None,
    check_missing: bool = True,
) -> dict[str, Any]:
    """Typed keyword arguments for ``factory`` from spec strings (+ ``defaults`` if accepted);
    ``check_missing=False`` returns what the spec gives even when a required one is absent."""
    params = _parameters(factory)
    named = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params)
    hints = _hints(factory)
    accepted = ", ".join(str(i) for i in param_infos(factory)) or "none"
    raw = dict(kwargs)
    if positional is not None:
        first = next((p for p in named if p.kind != p.KEYWORD_ONLY), None)
        if first is None:
            raise SegmenterError(f"segmenter {display!r} takes no positional argument; parameters: {accepted}")
        if first.name in raw:
            raise SegmenterError(f"segmenter {display!r}: {first.name} given twice")
        raw = {first.name: positional, **raw}
    by_name = {p.name: p for p in named}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in by_name and not takes_any:
            raise SegmenterError(f"segmenter {display!r} has no parameter {key!r}; parameters: {accepted}")
        p = by_name.get(key)
        tp = hints.get(key) if p else None
        if tp is None and p is not None and p.default not in (REQUIRED, None):
            tp = type(p.default)
        out[key] = _convert(value, tp, f"segmenter {display!r}: {key}") if tp is not None else value
    for key, value in (defaults or {}).items():
        if key in by_name and key not in out and value is not None:
            out[key] = value
    missing = [p.name for p in named if p.default is REQUIRED and p.name not in out]
    if missing and check_missing:
        raise SegmenterError(f"segmenter {display!r} needs {', '.join(missing)}; parameters: {accepted}")
    return out


def format_spec(name: str, params: dict[str, Any]) -> str:
    """The inverse of parsing: ``fixed`` + ``{'k': 8}`` -> ``fixed:k=8`` (quoting as needed)."""
    items = []
    for key, value in params.items():
        text = "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        if any(c in text for c in ",'\"") or text != text.strip() or not text:
            q = "'" if "'" not in text else '"'
            text = f"{q}{text}{q}"
        items.append(f"{key}={text}")
    return name + (":" + ",".join(items) if items else "")


def names_hint(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "none"
