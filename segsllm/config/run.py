"""The ``run`` section: where and how a command runs (seed, device, output, tracking)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from segsllm.errors import ConfigError

DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?", re.IGNORECASE)


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

    def validate(self) -> RunConfig:
        """Raise a one-line :class:`ConfigError` naming the bad ``run.*`` key."""
        if self.seed < 0:
            raise ConfigError(f"run.seed must be >= 0, got {self.seed}")
        if not DEVICE_RE.fullmatch(str(self.device)):
            raise ConfigError(f"run.device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        if self.out is not None and not str(self.out).strip():
            raise ConfigError("run.out is empty; give a folder or leave it unset")
        return self
