"""The ``run`` section: where and how a command runs (seed, device, output, tracking)."""

from __future__ import annotations

from dataclasses import dataclass, field


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
