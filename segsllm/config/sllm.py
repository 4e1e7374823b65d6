"""The ``sllm`` section: how the SentenceVAE is grafted onto the backbone (also saved with the SLLM)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from segsllm.errors import ConfigError

PROJECTIONS = ("auto", "identity", "linear", "mlp")
BOUNDARIES = ("eos", "segmenter", "auto")  # who ends a segment (see SLLMConfig.boundaries)
LEGACY_TRAIN_KEY = "batch_size"  # see SLLMConfig.from_dict


@dataclass
class SLLMConfig:
    """How the SentenceVAE is grafted onto the backbone, and which parts of it train.

    Training windows: a document of n segments is cut into windows of at most
    ``max_segments`` segments. **Every window starts with the learned start vector and sees
    no earlier window** (no carried-over state, no overlap): simple, and it cannot leak. The
    first segment of a later window is therefore predicted without context, which costs a
    little NLL on long documents; ``max_segments`` bounds that cost. Generation has no such
    limit other than the backbone's position table.

    A training batch item is one window of up to ``max_segments`` segments (a VAE item is
    one segment), so presets give the SLLM stage a much smaller ``train.batch_size`` through
    ``pipeline.overrides.sllm``.
    """

    max_segments: int = 64  # segments per training/eval window (backbone sequence = this + 1)
    freeze_vae: bool = True  # the paper's setting: encoder and decoder frozen, in eval mode
    # Backbone layers to train: the first/last k blocks; 0 and 0 = the whole backbone.
    # The backbone's token embeddings and LM head are always frozen (the SLLM never uses them).
    train_first: int = 0
    train_last: int = 0
    # Weight of the stop-head NLL. The loss is (decoder NLL + w * stop NLL) / decoder tokens, so
    # w = 1 minimises exactly the NLL that bits/byte reports.
    stop_loss_weight: float = 1.0
    # latent -> backbone width (P_in) and backbone -> latent width (P_out):
    # auto = identity when the widths match, else linear; identity needs equal widths;
    # mlp = Linear-GELU-Linear.
    projection: str = "linear"
    proj_hidden: int | None = None  # hidden width of the mlp projection (None: max of the two widths)
    # Pass the predicted latent through a LayerNorm before the decoder: the decoder was
    # trained on LayerNorm-ed encoder latents, so this matches their scale from step 0.
    out_layernorm: bool = True
    # Who ends a segment. eos (the paper): the decoder emits EOS after each segment and a stop
    # head decides after each segment whether the document ends; both are paid in bits/byte.
    # segmenter: a causal segmenter (lookahead 0: fixed, lines, a lookahead-0 threshold or
    # hazard splitter) ends every segment while the tokens are generated, so its cuts are a
    # function of the text and cost nothing; the stop head says before each segment whether
    # it is the document's last, and only that one ends with the decoder's EOS.
    # auto: segmenter when the SLLM's segmenter is causal, else eos (resolved when training
    # starts; a saved SLLM holds eos or segmenter).
    boundaries: str = "eos"

    def validate(self) -> SLLMConfig:
        """Raise :class:`ConfigError` (one line, names the key) for an unusable config."""
        if not isinstance(self.max_segments, int) or self.max_segments < 1:
            raise ConfigError(f"sllm.max_segments: must be an integer >= 1, got {self.max_segments!r}")
        for name in ("train_first", "train_last"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"sllm.{name}: must be an integer >= 0, got {value!r}")
        if not self.stop_loss_weight >= 0:
            raise ConfigError(f"sllm.stop_loss_weight: must be >= 0, got {self.stop_loss_weight!r}")
        if self.projection not in PROJECTIONS:
            raise ConfigError(f"sllm.projection: {self.projection!r} is not one of {', '.join(PROJECTIONS)}")
        if self.boundaries not in BOUNDARIES:
            raise ConfigError(f"sllm.boundaries: {self.boundaries!r} is not one of {', '.join(BOUNDARIES)}")
        if self.proj_hidden is not None and self.proj_hidden < 1:
            raise ConfigError(f"sllm.proj_hidden: must be >= 1 or null, got {self.proj_hidden!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SLLMConfig:
        """Build and validate; unknown keys are an error (missing keys take defaults)."""
        if not isinstance(d, dict):
            raise ConfigError(f"expected a mapping of sllm config keys, got {type(d).__name__}")
        # SLLM folders written before the train settings left this section hold sllm.batch_size,
        # a training setting that never shaped the model: ignored so they still load.
        d = {k: v for k, v in d.items() if k != LEGACY_TRAIN_KEY}
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown sllm config key(s): {', '.join(unknown)}")
        return cls(**d).validate()
