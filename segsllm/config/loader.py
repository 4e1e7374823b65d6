"""Loading a config: presets, OmegaConf merging, ``--set`` overrides and one-line errors.

Precedence (lowest to highest): dataclass defaults < preset YAML < ``--set a.b=v`` <
explicit command-line flags (``--seed``, ``--out`` ...). A command that runs one stage
passes ``stage=``: each layer's ``pipeline.overrides.<stage>`` list is then applied right
after that layer (the single way to give a stage its own settings; see
:mod:`segsllm.config.pipeline`), so a later layer always wins. OmegaConf's structured
configs do the merging and type checking; this module turns their exceptions into
one-line :class:`~segsllm.errors.ConfigError` messages that name the offending key.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from importlib import resources
from pathlib import Path
from typing import Any

from segsllm.config.pipeline import STAGES
from segsllm.config.root import Config
from segsllm.errors import ConfigError

PRESET_SUFFIXES = (".yaml", ".yml")

# Keys that older presets used, and where the setting lives now (named in the error).
MOVED = {
    "lm.train": "pipeline.overrides.lm: [train.KEY=VALUE, ...]",
    "sllm.batch_size": "pipeline.overrides.sllm: [train.batch_size=N]",
    **{f"splitter.{k}": f"splitter.predictor.{k}" for k in (
        "d_model", "n_layers", "kernel_size", "dilations", "mlp_ratio", "lookahead", "dropout",
        "decode", "prior_weight", "prior_shape")},
}


# --------------------------------------------------------------------------- presets


def _preset_dirs() -> list[Path]:
    """Folders that hold the shipped presets: inside the wheel, else the source tree."""
    dirs: list[Path] = []
    try:
        packaged = resources.files("segsllm") / "_presets"
        if packaged.is_dir():
            dirs.append(Path(str(packaged)))
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - defensive
        pass
    repo_configs = Path(__file__).resolve().parents[2] / "configs"
    if repo_configs.is_dir():
        dirs.append(repo_configs)
    return dirs


def list_presets() -> list[str]:
    """Names of the shipped presets, sorted."""
    names = {p.stem for d in _preset_dirs() for p in d.iterdir() if p.suffix in PRESET_SUFFIXES}
    return sorted(names)


def looks_like_path(name: str) -> bool:
    """Whether ``--config NAME`` names a file: a path separator or a .yaml/.yml suffix.

    A bare word (``smoke``) is always a preset, even when a file or folder of that name
    sits in the current folder: ``./smoke/`` must not shadow the ``smoke`` preset.
    """
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return any(s in name for s in seps) or name.startswith("~") or Path(name).suffix in PRESET_SUFFIXES


def describe_preset(name: str) -> str:
    """A preset's one-line description: the first sentence of the comment block that opens
    its YAML (a comment line wraps mid-sentence), without a leading ``NAME:``."""
    import re

    lines: list[str] = []
    for line in resolve_preset(name).read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text.startswith("#"):
            if lines or text:
                break
            continue
        lines.append(text.lstrip("#").strip())
    text = " ".join(x for x in lines if x)
    head, sep, rest = text.partition(":")
    if sep and head.strip().lower() == Path(name).stem.lower():
        text = rest.strip()
    return re.split(r"(?<=[.!?])\s+(?=[A-Z`])", text, maxsplit=1)[0]


def resolve_preset(name_or_path: str) -> Path:
    """A preset name (``tiny``) or, when it :func:`looks_like_path`, an existing YAML file."""
    if looks_like_path(name_or_path):
        candidate = Path(name_or_path).expanduser()
        if candidate.is_dir():
            raise ConfigError(f"config {name_or_path} is a folder; give a YAML file or a preset name")
        if not candidate.is_file():
            raise ConfigError(f"config file not found: {name_or_path}")
        return candidate
    for d in _preset_dirs():
        for suffix in PRESET_SUFFIXES:
            p = d / f"{name_or_path}{suffix}"
            if p.is_file():
                return p
    raise ConfigError(
        f"unknown config preset {name_or_path!r}; presets: {', '.join(list_presets()) or 'none'}"
        " (or give a path to a .yaml file)"
    )


# --------------------------------------------------------------------------- loading


def _one_line(exc: Exception) -> str:
    """OmegaConf messages span several lines; keep the first, name the key, say where it moved."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    key = getattr(exc, "full_key", None)
    if key and key not in msg:
        msg = f"{key}: {msg}"
    moved = next((new for old, new in MOVED.items() if key == old or str(key).startswith(f"{old}.")), None)
    return f"{msg} (moved to {moved})" if moved else msg


def _dotted(item: str, origin: str) -> Any:
    """One ``a.b=value`` string as an OmegaConf layer."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if "=" not in item or item.startswith("="):
        raise ConfigError(f"{origin} expects KEY=VALUE, got {item!r}")
    try:
        return OmegaConf.from_dotlist([item])
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{origin} {item}: {_one_line(exc)}") from None


def _stage_layers(layer: Any, stage: str, origin: str) -> list[tuple[str, Any]]:
    """The layers of ``layer``'s own ``pipeline.overrides.<stage>`` list, in order."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        items = OmegaConf.select(layer, f"pipeline.overrides.{stage}", default=None)
    except OmegaConfBaseException:  # a malformed pipeline section: the merge names the key
        return []
    if items is None:
        return []
    if not OmegaConf.is_list(items) or not all(isinstance(x, str) for x in items):
        raise ConfigError(f"pipeline.overrides.{stage} must be a list of KEY=VALUE strings (in {origin})")
    where = f"pipeline.overrides.{stage} in {origin}:"
    return [(f"{where} {item}", _dotted(item, where)) for item in items]


def load_config(
    preset: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    flags: dict[str, Any] | None = None,
    schema: type = Config,
    stage: str | None = None,
) -> Any:
    """Merge defaults < preset YAML < dotted overrides < explicit flags into ``schema``.

    ``overrides`` are ``a.b=value`` strings (YAML-typed values, e.g. ``data.domains=[code]``);
    ``flags`` maps dotted keys to already-typed values and skips ``None``. With ``stage``
    (one of :data:`~segsllm.config.pipeline.STAGES`) the preset's and each override's
    ``pipeline.overrides.<stage>`` items follow their own layer, and the resolved config
    no longer lists them (they are applied: its ``config.yaml`` reloads to the same run).
    """
    from omegaconf import OmegaConf

    if stage is not None and stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    layers: list[tuple[str, Any]] = []

    def add(origin: str, layer: Any) -> None:
        layers.append((origin, layer))
        if stage is not None:
            layers.extend(_stage_layers(layer, stage, origin))

    if preset:
        path = resolve_preset(preset)
        try:
            layer = OmegaConf.load(path)
        except Exception as exc:  # YAML syntax errors and the like
            raise ConfigError(f"cannot read config {path}: {_one_line(exc)}") from None
        if not isinstance(layer, dict) and not OmegaConf.is_dict(layer):
            raise ConfigError(f"config {path} must be a mapping of sections")
        add(str(path), layer)
    for item in overrides:
        add(f"--set {item}", _dotted(item, "--set"))
    dotted = {k: v for k, v in (flags or {}).items() if v is not None}
    if dotted:
        flag_cfg = OmegaConf.create({})
        for key, value in dotted.items():
            OmegaConf.update(flag_cfg, key, value, force_add=True)
        layers.append(("command-line flags", flag_cfg))

    cfg = _merged(_schema_config(schema), layers)
    resolved = _validated(cfg)  # every section: bad values fail here, one line, before any work
    pipeline = getattr(resolved, "pipeline", None)
    if pipeline is not None and stage is not None:
        pipeline.overrides.pop(stage, None)
    return resolved


@functools.cache
def _schema_config(schema: type) -> Any:
    """The structured (typed) OmegaConf config of ``schema``'s defaults, built once per schema:
    building it is a fifth of a load, and ``OmegaConf.merge`` copies it, never changes it."""
    from omegaconf import OmegaConf

    return OmegaConf.structured(schema)


def _merged(base: Any, layers: list[tuple[str, Any]]) -> Any:
    """``base`` with ``layers`` merged on top in order, in one ``OmegaConf.merge`` (one deep
    copy, instead of one per layer: the pipeline loads ~100 stage configs of ~10 layers).
    On a failure the layers are merged again one at a time to name the one at fault."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.merge(base, *(layer for _, layer in layers))
    except OmegaConfBaseException as exc:
        first_error = exc
    cfg = base
    for origin, layer in layers:
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"{_one_line(exc)} (from {origin})") from None
    raise ConfigError(_one_line(first_error))


def apply_overrides(cfg: Any, items: list[str] | tuple[str, ...], origin: str = "--set") -> Any:
    """``cfg`` (a resolved dataclass config) with dotted ``KEY=VALUE`` items merged on top,
    validated; one-line :class:`ConfigError` naming ``origin`` for a bad item."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not items:
        return cfg
    merged = OmegaConf.structured(cfg)
    for item in items:
        try:
            merged = OmegaConf.merge(merged, _dotted(item, origin))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"{_one_line(exc)} (from {origin} {item})") from None
    return _validated(merged)


def _validated(cfg: Any) -> Any:
    """The dataclass object of an OmegaConf config, validated; one-line ConfigError."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        resolved = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(_one_line(exc)) from None
    if callable(getattr(resolved, "validate", None)):
        resolved.validate()
    return resolved


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict of a dataclass config."""
    return dataclasses.asdict(cfg)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values); used for MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically) and return its path."""
    from omegaconf import OmegaConf

    from segsllm.io import atomic_write_text

    text = OmegaConf.to_yaml(OmegaConf.structured(cfg))
    return atomic_write_text(Path(path), text)


def read_config(path: str | Path, schema: type = Config) -> Any:
    """Load a config saved by :func:`save_config` back into ``schema``."""
    return load_config(str(path), schema=schema)
