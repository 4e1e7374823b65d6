"""The ``splitter`` section: what ``train-splitter`` trains, from which teacher, how long.

:class:`BoundaryPredictorConfig` rebuilds a trained predictor *and* its length control
(saved as the splitter folder's ``config.json``, so the calibrated threshold is
checksummed with the weights). :class:`SplitterConfig` nests it as ``splitter.predictor``
(architecture and decoding); the stage fills in the fields it derives (vocabulary,
lengths, calibration) with :meth:`SplitterConfig.predictor_config`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from segsllm.errors import ConfigError

TEACHERS = ("punctuation", "entropy", "vae", "vae-rule", "sllm", "joint")
DECODES = ("threshold", "viterbi", "hazard")
ENTROPY_MODES = ("global", "monotonic")
CUT_AT_RULES = ("fixed", "punctuation", "lines")  # = segsllm.segment.learned.CUT_AT_RULES (config imports no segment)


@dataclass
class BoundaryPredictorConfig:
    """Architecture + inference settings of one boundary predictor.

    The network: token embedding, then ``n_layers`` residual blocks (depthwise conv over
    time + pointwise ReLU MLP), then one logit per token, "a segment ends after this token".
    Block 0's kernel reaches ``lookahead`` tokens to the right and ``kernel_size - 1`` to
    the left; later blocks are causal with dilations ``dilations`` (left context grows
    exponentially, right context stays ``lookahead``). So the logit of token ``t`` is a
    function of tokens ``t - left_context .. t + lookahead`` only: streaming decisions can
    be taken ``lookahead`` tokens late, and a whole document is one convolution pass.
    """

    vocab_size: int = 4096
    d_model: int = 32
    n_layers: int = 4
    kernel_size: int = 5
    dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    mlp_ratio: int = 2
    lookahead: int = 4
    dropout: float = 0.0  # dropout costs a third of a CPU training step; rarely needed here
    pad_id: int = 0
    # ---- length control (calibrated after training; stored with the weights)
    max_len: int = 48  # hard cap on tokens per segment
    target_len: float = 8.0  # mean tokens per segment the calibration aims at
    # batch-mode default: "viterbi" (length prior, whole document), "threshold", or "hazard"
    # (the length prior's hazard added to each logit, decided token by token: causal)
    decode: str = "viterbi"
    threshold: float = 0.0  # logit threshold (threshold decoding, streaming mode)
    hazard_threshold: float = 0.0  # threshold of the hazard decode (calibrated)
    viterbi_penalty: float = 0.0  # per-segment cost of the Viterbi search (calibrated)
    prior_weight: float = 1.0  # weight of the log length prior in the Viterbi search
    prior_shape: float = 2.0  # Gamma shape of the length prior (larger = more peaked)
    # A rule segmenter spec: the predictor may cut only where that rule cuts (the splitter's
    # teacher could only cut there: splitter.sllm_cut_at); None: anywhere.
    cut_at: str | None = None

    @property
    def left_context(self) -> int:
        """Tokens to the left that can influence a logit."""
        k = self.kernel_size
        return (k - 1) + sum((k - 1) * d for d in self.dilations[1 : self.n_layers])

    def validate(self) -> BoundaryPredictorConfig:
        """Raise :class:`ConfigError` (one line, names the key) for an unusable config."""
        positive = ("vocab_size", "d_model", "n_layers", "kernel_size", "mlp_ratio", "max_len")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"splitter.predictor.{name} must be an int >= 1, got {value!r}")
        if len(self.dilations) < self.n_layers or any(int(d) < 1 for d in self.dilations):
            raise ConfigError(
                f"splitter.predictor.dilations needs {self.n_layers} values >= 1 (one per layer), got {self.dilations}"
            )
        if int(self.dilations[0]) != 1:
            raise ConfigError("splitter.predictor.dilations[0] must be 1 (block 0 is undilated: it holds the lookahead)")
        if not isinstance(self.lookahead, int) or self.lookahead < 0:
            raise ConfigError(f"splitter.predictor.lookahead must be an int >= 0, got {self.lookahead!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"splitter.predictor.dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ConfigError(f"splitter.predictor.pad_id {self.pad_id} is outside the vocabulary ({self.vocab_size})")
        if not 1.0 <= float(self.target_len) <= self.max_len:
            raise ConfigError(f"splitter.predictor.target_len must be in [1, max_len={self.max_len}], got {self.target_len}")
        if self.decode not in DECODES:
            raise ConfigError(f"splitter.predictor.decode {self.decode!r} is not one of {', '.join(DECODES)}")
        if self.prior_weight < 0 or self.prior_shape < 1.0:
            raise ConfigError("splitter.predictor.prior_weight must be >= 0 and prior_shape >= 1")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BoundaryPredictorConfig:
        """Build and validate; unknown keys are an error (missing keys take defaults)."""
        if not isinstance(d, dict):
            raise ConfigError(f"expected a mapping of config keys, got {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown boundary predictor config key(s): {', '.join(unknown)}")
        return cls(**d).validate()


@dataclass
class SplitterConfig:
    """The ``splitter`` section: how ``train-splitter`` builds a learned segmenter.

    Teacher label budgets are per domain and split, in tokens, taken as chunks of at most
    ``chunk_tokens`` spread over the documents (``None``: the teacher's own default; the
    ``vae`` teacher scores every candidate span with the VAE, so its default is small).
    ``predictor`` holds the network and its decoding settings (``splitter.predictor.d_model``,
    ``splitter.predictor.decode`` ...); its :data:`DERIVED` fields come from the tokenizer,
    ``target_len`` / ``max_len`` below and the calibration, so setting them is an error.
    """

    teacher: str = "punctuation"  # punctuation | entropy | vae | vae-rule | sllm | joint
    target_len: float | None = None  # mean tokens/segment; None: 8 (punctuation: the rule's own)
    max_len: int | None = None  # hard cap; None: segmenter.max_len
    base_lm: str | None = None  # token-level LM folder (train-lm output) for the entropy teacher
    vae: str | None = None  # SentenceVAE folder (train-vae output) for the vae / vae-rule / sllm (EM) / joint teachers
    sllm: str | None = None  # SLLM folder (finetune output) for one sllm-teacher step; None: hard EM
    # ---- teachers
    entropy_mode: str = "global"  # global threshold | monotonic rise (BLT)
    entropy_context: int = 256  # max LM context per line piece (context resets at newlines)
    # Longest candidate span; None: max_len (vae, sllm), min(max_len, 2 * target_len) (vae-rule).
    vae_max_span: int | None = None
    # ---- the sllm teacher (docs/DESIGN.md §6): span cost = what the SLLM pays, DP with a length prior
    sllm_prior_weight: float = 1.0  # weight of the log length prior (Gamma, mean target_len) in the DP
    em_rounds: int = 2  # hard-EM rounds (without splitter.sllm): train SLLM on S_t, relabel, retrain
    em_init: str = "punctuation"  # S_0, the segmentation the first round's SLLM is trained on
    em_sllm: list[str] = field(default_factory=list)  # KEY=VALUE overrides of each round's SLLM training
    # A rule segmenter spec (e.g. punctuation): the DP may cut only where that rule cuts, so
    # every label segment is a merge of whole rule segments; None: anywhere (docs/DESIGN.md §6).
    sllm_cut_at: str | None = None
    # ---- the joint teacher (docs/DESIGN.md §6): predictor + SLLM trained together, no labels
    joint_steps: int = 300  # optimizer steps of the joint training
    joint_batch_size: int = 8  # chunks per step (each sampled joint_samples times)
    joint_lr: float = 1.0e-3
    joint_samples: int = 2  # segmentations sampled per chunk (leave-one-out baseline)
    joint_chunk_tokens: int = 128  # tokens per chunk = at most as many SLLM positions
    chunk_tokens: int = 512  # teacher/student documents are chunks of at most this many tokens
    teacher_tokens: int | None = None  # labelled train tokens per domain
    teacher_eval_tokens: int | None = None  # labelled validation tokens per domain
    cache_dir: str | None = None  # teacher label cache; None: <data.dir>/.cache/teachers
    calibration_tokens: int = 200_000  # validation tokens per domain used to calibrate
    # Passes over the labelled train tokens the student may make: caps train.tokens. A costly
    # teacher labels few tokens (sllm, vae: 12k-40k per domain), and 600 steps of 64 chunks
    # would be hundreds of epochs: the student memorises them (train BCE 0.0000, validation
    # BCE ~10, teacher F1 0.15 measured) and cuts at random. null: no cap.
    max_epochs: float | None = 20.0
    # ---- the predictor (decode: threshold | viterbi in batch mode; streaming always thresholds)
    predictor: BoundaryPredictorConfig = field(default_factory=BoundaryPredictorConfig)

    def validate(self) -> SplitterConfig:
        """One-line :class:`ConfigError` naming the bad ``splitter.*`` key."""
        if self.teacher not in TEACHERS:
            raise ConfigError(f"unknown teacher {self.teacher!r}; teachers: {', '.join(TEACHERS)}")
        if self.entropy_mode not in ENTROPY_MODES:
            raise ConfigError(
                f"splitter.entropy_mode {self.entropy_mode!r} is not one of {', '.join(ENTROPY_MODES)}"
            )
        if self.target_len is not None and self.target_len < 1:
            raise ConfigError(f"splitter.target_len must be >= 1, got {self.target_len}")
        if self.max_len is not None and self.max_len < 1:
            raise ConfigError(f"splitter.max_len must be >= 1, got {self.max_len}")
        for key in ("chunk_tokens", "entropy_context", "calibration_tokens"):
            if getattr(self, key) < 2:
                raise ConfigError(f"splitter.{key} must be >= 2, got {getattr(self, key)}")
        for key in ("joint_steps", "joint_batch_size", "joint_chunk_tokens"):
            if getattr(self, key) < 1:
                raise ConfigError(f"splitter.{key} must be >= 1, got {getattr(self, key)}")
        if self.joint_samples < 2:
            raise ConfigError(f"splitter.joint_samples must be >= 2 (the baseline is the other samples' mean), "
                              f"got {self.joint_samples}")
        if self.joint_lr <= 0:
            raise ConfigError(f"splitter.joint_lr must be > 0, got {self.joint_lr}")
        if self.em_rounds < 1:
            raise ConfigError(f"splitter.em_rounds must be >= 1, got {self.em_rounds}")
        if self.sllm_cut_at is not None and str(self.sllm_cut_at).split(":", 1)[0].strip() not in CUT_AT_RULES:
            raise ConfigError(f"splitter.sllm_cut_at must be a built-in rule ({', '.join(CUT_AT_RULES)}, "
                              f"e.g. punctuation or fixed:k=16) or null, got {self.sllm_cut_at!r}")
        if self.sllm_prior_weight < 0:
            raise ConfigError(f"splitter.sllm_prior_weight must be >= 0, got {self.sllm_prior_weight}")
        for item in self.em_sllm:
            if "=" not in item or item.startswith("="):
                raise ConfigError(f"splitter.em_sllm expects KEY=VALUE items, got {item!r}")
        if self.max_epochs is not None and not self.max_epochs > 0:
            raise ConfigError(f"splitter.max_epochs must be > 0 or null, got {self.max_epochs}")
        for key in ("teacher_tokens", "teacher_eval_tokens", "vae_max_span"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"splitter.{key} must be >= 1 or null, got {value}")
        default = BoundaryPredictorConfig()
        for key, source in DERIVED.items():
            if getattr(self.predictor, key) != getattr(default, key):
                raise ConfigError(f"splitter.predictor.{key} is not a setting: train-splitter takes it from {source}")
        self.predictor.validate()
        return self

    def predictor_config(self, *, vocab_size: int, pad_id: int, max_len: int, target_len: float,
                         decode: str) -> BoundaryPredictorConfig:
        """``predictor`` with the fields the stage derives filled in, validated. A student of
        merge-only labels (the ``sllm`` teacher with ``sllm_cut_at``) cuts where they could."""
        cut_at = self.sllm_cut_at if self.teacher == "sllm" else None
        return replace(self.predictor, vocab_size=vocab_size, pad_id=pad_id, max_len=max_len,
                       target_len=float(target_len), decode=decode, cut_at=cut_at).validate()


# Predictor fields that train-splitter derives, and from what.
DERIVED = {
    "vocab_size": "the tokenizer",
    "pad_id": "the tokenizer",
    "max_len": "splitter.max_len",
    "target_len": "splitter.target_len",
    "threshold": "the calibration",
    "viterbi_penalty": "the calibration",
    "cut_at": "splitter.sllm_cut_at",
}
