"""The root config: one field per section, each section in its own module."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from segsllm.config.backbone import BackboneConfig
from segsllm.config.bench import BenchConfig
from segsllm.config.data import DataConfig
from segsllm.config.lm import LMConfig
from segsllm.config.pipeline import PipelineConfig
from segsllm.config.run import RunConfig
from segsllm.config.segmenter import SegmenterConfig
from segsllm.config.sllm import SLLMConfig
from segsllm.config.splitter import SplitterConfig
from segsllm.config.tokenizer import TokenizerConfig
from segsllm.config.train import TrainConfig
from segsllm.config.vae import SentenceVAEConfig
from segsllm.errors import ConfigError


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

    def validate(self) -> Config:
        """Validate every section up front, so a bad value fails in milliseconds with one
        line naming its key, not minutes later as a traceback deep inside a stage."""
        for f in fields(self):
            section = getattr(self, f.name)
            try:
                section.validate()
            except ConfigError as exc:
                raise ConfigError(_qualified(f.name, section, str(exc))) from None
        return self


def _qualified(name: str, section: object, message: str) -> str:
    """Prefix ``name.`` to a section's message that starts with a bare key (``max_len: ...``)."""
    first = message.split(":", 1)[0].split(" ", 1)[0]
    if first in {f.name for f in fields(section)}:  # type: ignore[arg-type]
        return f"{name}.{message}"
    return message


# Options added after runs were published, left out of every cache key at their neutral
# value so that those runs' finished stages stay valid: (section, ..., field) -> value.
KEY_NEUTRAL: dict[tuple[str, ...], Any] = {("splitter", "predictor", "cut_at"): None, ("sllm", "boundaries"): "eos",
                                           ("splitter", "predictor", "hazard_threshold"): 0.0}


def key_dict(cfg: Config) -> dict[str, Any]:
    """``cfg`` as a dict for hashing into a cache key (pipeline stages, EM rounds): every
    field, except the :data:`KEY_NEUTRAL` ones that hold their neutral value."""
    resolved = asdict(cfg)
    for (*where, name), neutral in KEY_NEUTRAL.items():
        node: Any = resolved
        for part in where:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and name in node and node[name] == neutral:
            del node[name]
    return resolved
