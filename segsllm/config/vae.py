"""The ``vae`` section: everything that rebuilds a SentenceVAE (also its ``config.json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from segsllm.errors import ConfigError

POOLINGS = ("add", "attention")
LOSSES = ("ce", "focal")
INITS = ("small", "torch")
NORMS = ("pre", "post")
POSITIONS = ("learned", "sinusoidal")
ACTIVATIONS = ("gelu", "relu")
# What an artifact saved before these options existed was built with (its config.json lacks
# the keys): loading applies these, not the current defaults.
LEGACY_ARCH = {"init": "small", "norm": "pre", "positions": "learned", "activation": "gelu"}


@dataclass
class SentenceVAEConfig:
    """Everything needed to rebuild a SentenceVAE (saved as ``config.json``).

    The paper's H1/H2/H4 variants are ``encoder_layers = decoder_layers = 1/2/4``.
    """

    vocab_size: int = 8192
    d_model: int = 256
    n_heads: int = 4
    encoder_layers: int = 1
    decoder_layers: int = 1
    d_ff: int = 1024
    max_len: int = 64  # max tokens per segment (the segmenter's max_len); sizes the position tables
    dropout: float = 0.0
    # "add": the paper's unnormalised learnable add; "attention": masked-softmax pooling with a
    # learned query.
    pooling: str = "add"
    latent_dim: int | None = None  # width of the segment vector; None = d_model
    # The decoder reads the latent through this many memory slots. With 1 slot the cross-
    # attention weights are trivially 1 (it becomes a learned linear map of the latent added
    # at every position, as in the paper); more slots let positions attend to different parts.
    memory_slots: int = 1
    # Train-time only: Gaussian noise (std, in units of the LayerNorm-ed latent) and dropout
    # on the latent, so the decoder tolerates the backbone's imperfect predicted vectors.
    latent_noise: float = 0.0
    latent_dropout: float = 0.0
    tie_embeddings: bool = True  # decoder output head shares the decoder's token embedding
    loss: str = "ce"  # "ce" | "focal"
    focal_gamma: float = 2.0
    # Training-time provenance: start both token embeddings from the backbone's input
    # embeddings (same tokenizer required; see SentenceVAE.init_embeddings_from).
    embeddings_from_backbone: bool = False
    # Architecture choices ablated in docs/vae_ablation.md (issue #17):
    # init "small": GPT-2 style N(0, 0.02) weights and embeddings, residual projections scaled
    # by 1/sqrt(2 * layers); "torch": PyTorch's default init (Linear kaiming-uniform,
    # Embedding N(0, 1)) as in the paper's reference code.
    init: str = "small"
    norm: str = "pre"  # "pre": LayerNorm before each sub-layer; "post": after the residual add
    positions: str = "learned"  # "learned" tables or fixed "sinusoidal" ones
    activation: str = "gelu"  # MLP non-linearity: "gelu" | "relu"
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    @property
    def latent_width(self) -> int:
        return self.d_model if self.latent_dim is None else self.latent_dim

    def validate(self) -> SentenceVAEConfig:
        """Raise :class:`ConfigError` (one line, names the key) for an unusable config."""
        for f in fields(self):
            value = getattr(self, f.name)
            want = {"int": int, "float": (int, float), "str": str, "bool": bool}.get(str(f.type))
            if f.name == "latent_dim":
                want = (int, type(None))
            ok = isinstance(value, want) and (str(f.type) == "bool" or not isinstance(value, bool))
            if not ok:
                raise ConfigError(f"{f.name}: expected {f.type}, got {value!r}")
        positive = ("vocab_size", "d_model", "n_heads", "encoder_layers", "decoder_layers", "d_ff",
                    "max_len", "memory_slots")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model: {self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.latent_dim is not None and self.latent_dim < 1:
            raise ConfigError(f"latent_dim: must be >= 1 or null, got {self.latent_dim}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling: {self.pooling!r} is not one of {', '.join(POOLINGS)}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss: {self.loss!r} is not one of {', '.join(LOSSES)}")
        for name, allowed in (("init", INITS), ("norm", NORMS), ("positions", POSITIONS),
                              ("activation", ACTIVATIONS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}: {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        for name in ("dropout", "latent_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name}: must be in [0, 1), got {getattr(self, name)}")
        if self.latent_noise < 0 or self.focal_gamma < 0:
            raise ConfigError("latent_noise and focal_gamma must be >= 0")
        for name in ("pad_id", "bos_id", "eos_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ConfigError(f"{name}: {getattr(self, name)} is outside the vocabulary "
                                  f"(vocab_size={self.vocab_size})")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SentenceVAEConfig:
        """Build and validate; unknown keys are an error (missing keys take defaults, except
        the architecture keys of LEGACY_ARCH, which an older config.json predates)."""
        if not isinstance(d, dict):
            raise ConfigError(f"expected a mapping of config keys, got {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown SentenceVAE config key(s): {', '.join(unknown)}")
        return cls(**{**LEGACY_ARCH, **d}).validate()
