"""Stage commands whose implementation lands with later issues.

Each already takes the shared options so scripts can be written against the final surface,
and each says plainly that it is not available yet instead of pretending to work.
"""

from __future__ import annotations

import typer

from cli.common import handle_errors, not_available, resolve_config
from cli.options import (
    ConfigOpt,
    DataDirOpt,
    DeviceOpt,
    NoTrackOpt,
    OutOpt,
    SeedOpt,
    SegmenterOpt,
    SetOpt,
    TrackingUriOpt,
)

PENDING = {
    "train-lm": ("Train or fine-tune the token-level baseline LM.", "issue #5: backbones and SLLM"),
    "train-splitter": ("Train the learned boundary predictor from a teacher.", "issue #6: learned segmenter"),
    "finetune": ("Train the SLLM: encoder + causal backbone + decoder.", "issue #5: backbones and SLLM"),
    "bench": ("Compare segmenters x domains: bits/byte, speed, memory.", "issue #7: bench"),
    "generate": ("Generate text segment by segment with an SLLM.", "issue #5: backbones and SLLM"),
    "pipeline": ("Run every stage from a preset (the main job).", "issue #8: pipeline"),
}


def _make(name: str, summary: str, issue: str):
    def command(
        config: ConfigOpt = None,
        set_: SetOpt = None,
        data_dir: DataDirOpt = None,
        out: OutOpt = None,
        seed: SeedOpt = None,
        device: DeviceOpt = None,
        tracking_uri: TrackingUriOpt = None,
        no_track: NoTrackOpt = False,
        segmenter: SegmenterOpt = None,
    ) -> None:
        # Validate what can be validated so a typo is caught the same way it will be later.
        resolve_config(
            config, set_, data_dir=data_dir, out=out, seed=seed, device=device,
            tracking_uri=tracking_uri, no_track=no_track, segmenter=segmenter,
        )
        not_available(name, issue)

    command.__doc__ = f"{summary} [dim](not available yet)[/]"
    command.__name__ = name.replace("-", "_")
    return handle_errors(command)


def register(app: typer.Typer, skip: list[str] | None = None) -> None:
    """Add the pending stage commands, except those in ``skip`` (implemented elsewhere)."""
    for name, (summary, issue) in PENDING.items():
        if name not in (skip or []):
            app.command(name=name)(_make(name, summary, issue))
