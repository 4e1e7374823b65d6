"""The ``pipeline`` section: what ``segsllm pipeline`` runs, and each stage's own settings.

**One way to give a stage its own settings: ``pipeline.overrides.<stage>``**, a list of
the same dotted ``KEY=VALUE`` strings that ``--set`` takes, e.g. ::

    pipeline:
      overrides:
        lm: [train.steps=200, train.batch_size=8]
        sllm: [train.batch_size=4, train.lr=1.0e-3]

Why this one rather than per-stage sections (``lm.train: {...}``): any key of any section
can differ per stage, not just ``train`` (the splitter stage also sizes its teacher
budgets, the bench stage could cap its data); nothing needs a second, partial copy of
``TrainConfig`` inside the model sections (``vae`` and ``sllm`` are saved beside the
weights); and the spelling is exactly the one users already type after ``--set``.

The list applies wherever that stage runs: in the pipeline and in the stage's own command
(``segsllm train-lm --config tiny`` trains the same LM as the pipeline's ``lm`` stage).
Precedence is by layer, not by section: ``defaults < preset < preset's overrides.<stage>
< each --set (then any overrides.<stage> it gives) < explicit flags``, so
``--set train.steps=5`` beats a preset's ``overrides.lm: [train.steps=200]``. See
:func:`segsllm.config.loader.load_config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from segsllm.errors import ConfigError

# Every kind of stage the pipeline runs (and the name of its overrides list).
STAGES = ("data", "tokenizer", "lm", "vae", "sllm", "splitter", "bench")


@dataclass
class PipelineConfig:
    """What `segsllm pipeline` runs (docs/DESIGN.md §2): one VAE + SLLM per segmenter, one
    learned splitter per teacher (each also gets its VAE + SLLM), then the bench."""

    segmenters: list[str] = field(default_factory=lambda: ["punctuation", "fixed:k=8"])
    # Splitter teachers (splitter.teacher values) and variants with their own folder:
    # entropy-global / entropy-monotonic (segsllm.pipeline.TEACHER_VARIANTS).
    teachers: list[str] = field(default_factory=list)
    # Train every model once per seed, into OUT/seed-<k>/ (data and tokenizer shared);
    # empty: once, with run.seed, in OUT/ itself (`segsllm pipeline --seeds 0,1,2`).
    seeds: list[int] = field(default_factory=list)
    # Stages run at once, each in a worker process with cores // jobs torch threads, as soon
    # as the stages it reads have finished (`segsllm pipeline --jobs 2`). Small models use
    # few cores well, so on a CPU box two at a time finish sooner. Not part of any stage key.
    jobs: int = 1
    # Per-stage dotted overrides (see the module docstring), e.g.
    # {lm: ["train.steps=200"], sllm: ["train.batch_size=4"]}. Keys: STAGES.
    overrides: dict[str, list[str]] = field(default_factory=dict)

    def validate(self) -> PipelineConfig:
        """One-line :class:`ConfigError` for an unknown stage under ``pipeline.overrides`` or
        a negative or repeated seed."""
        if not isinstance(self.jobs, int) or isinstance(self.jobs, bool) or self.jobs < 1:
            raise ConfigError(f"pipeline.jobs must be an int >= 1, got {self.jobs!r}")
        if any(k < 0 for k in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"pipeline.seeds must be distinct non-negative integers, got {self.seeds}")
        for stage, items in self.overrides.items():
            if stage not in STAGES:
                raise ConfigError(f"pipeline.overrides.{stage}: unknown stage; stages: {', '.join(STAGES)}")
            for item in items:
                if "=" not in item or item.startswith("="):
                    raise ConfigError(f"pipeline.overrides.{stage} expects KEY=VALUE items, got {item!r}")
        return self
