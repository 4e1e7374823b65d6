"""Dataclass configs, YAML presets and dotted overrides.

Precedence (lowest to highest): dataclass defaults < preset YAML < ``--set a.b=v`` <
explicit command-line flags (``--seed``, ``--out`` ...). OmegaConf's structured configs do
the merging and type checking; this module turns their exceptions into one-line
:class:`ConfigError` messages that name the offending key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from segsllm.errors import ConfigError
from segsllm.models.backbone import BackboneConfig
from segsllm.models.bench_config import BenchConfig
from segsllm.models.boundary_config import SplitterConfig
from segsllm.models.lm_config import LMConfig
from segsllm.models.sllm_config import SLLMConfig
from segsllm.models.vae_config import SentenceVAEConfig
from segsllm.train.schedule import TrainConfig

__all__ = ["Config", "ConfigError", "load_config", "save_config"]

PRESET_SUFFIXES = (".yaml", ".yml")


# --------------------------------------------------------------------------- sections


@dataclass
class RunConfig:
    """Where and how a command runs; shared by every stage."""

    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    out: str | None = None  # artifact folder of this stage
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db
    track: bool = True
    experiment_prefix: str = "segsllm"
    # Extra MLflow tags on this run (the pipeline links its stage runs with them).
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Corpora and splits (DESIGN.md §8)."""

    dir: str = "data"
    domains: list[str] = field(default_factory=lambda: ["prose", "code", "csv"])
    validation_fraction: float = 0.05
    # 10 %: the built-in corpora then give every domain >= 20 test documents and >= 300 KB
    # to score (prose: 233 speeches; at 5 % it had 16).
    test_fraction: float = 0.10
    # Cap on documents per domain and split a stage reads (None: all). Small presets use it.
    max_docs: int | None = None
    # Cap on bytes per document a stage reads (long CSV tables are truncated at a line end).
    max_doc_bytes: int | None = None
    # Training draws as many segments from each domain per epoch (else CSV's many tiny
    # segments dominate the mix).
    balance_domains: bool = True


@dataclass
class TokenizerConfig:
    """Byte-level BPE trained over a balanced mix of the domains."""

    path: str | None = None  # an existing tokenizer folder used by later stages
    vocab_size: int = 8192
    min_frequency: int = 2
    # Bytes of training text sampled from each domain's train split (balanced mix).
    sample_bytes_per_domain: int = 4_000_000


@dataclass
class SegmenterConfig:
    """Which segmenter cuts the token stream (DESIGN.md §4)."""

    spec: str = "punctuation"
    max_len: int = 64


@dataclass
class PipelineConfig:
    """What `segsllm pipeline` runs (DESIGN.md §2): one VAE + SLLM per segmenter, one
    learned splitter per teacher (each also gets its VAE + SLLM), then the bench."""

    segmenters: list[str] = field(default_factory=lambda: ["punctuation", "fixed:k=8"])
    teachers: list[str] = field(default_factory=list)  # entropy | vae | punctuation
    # Per-stage dotted overrides applied on top of the preset, e.g.
    # {vae: ["train.steps=800"], sllm: ["train.steps=300"]}. Stage kinds: tokenizer, lm,
    # vae, sllm, splitter, bench.
    overrides: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Config:
    """The resolved configuration of one command."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    vae: SentenceVAEConfig = field(default_factory=SentenceVAEConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    sllm: SLLMConfig = field(default_factory=SLLMConfig)
    splitter: SplitterConfig = field(default_factory=SplitterConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)


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
    repo_configs = Path(__file__).resolve().parent.parent / "configs"
    if repo_configs.is_dir():
        dirs.append(repo_configs)
    return dirs


def list_presets() -> list[str]:
    """Names of the shipped presets, sorted."""
    names = {p.stem for d in _preset_dirs() for p in d.iterdir() if p.suffix in PRESET_SUFFIXES}
    return sorted(names)


def resolve_preset(name_or_path: str) -> Path:
    """A preset name (``tiny``) or a YAML path to an existing file."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix in PRESET_SUFFIXES or candidate.exists():
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
    """OmegaConf messages span several lines; keep the first and name the key."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    key = getattr(exc, "full_key", None)
    if key and key not in msg:
        return f"{key}: {msg}"
    return msg


def load_config(
    preset: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    flags: dict[str, Any] | None = None,
    schema: type = Config,
) -> Any:
    """Merge defaults < preset YAML < dotted overrides < explicit flags into ``schema``.

    ``overrides`` are ``a.b=value`` strings (YAML-typed values, e.g. ``data.domains=[code]``);
    ``flags`` maps dotted keys to already-typed values and skips ``None``.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    base = OmegaConf.structured(schema)
    layers = []
    if preset:
        path = resolve_preset(preset)
        try:
            layer = OmegaConf.load(path)
        except Exception as exc:  # YAML syntax errors and the like
            raise ConfigError(f"cannot read config {path}: {_one_line(exc)}") from None
        if not isinstance(layer, dict) and not OmegaConf.is_dict(layer):
            raise ConfigError(f"config {path} must be a mapping of sections")
        layers.append((str(path), layer))
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            layers.append((f"--set {item}", OmegaConf.from_dotlist([item])))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"--set {item}: {_one_line(exc)}") from None
    if flags:
        dotted = {k: v for k, v in flags.items() if v is not None}
        if dotted:
            flag_cfg = OmegaConf.create({})
            for key, value in dotted.items():
                OmegaConf.update(flag_cfg, key, value, force_add=True)
            layers.append(("command-line flags", flag_cfg))

    cfg = base
    for origin, layer in layers:
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"{_one_line(exc)} (from {origin})") from None
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(_one_line(exc)) from None


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
