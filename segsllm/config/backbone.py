"""The ``backbone`` section: which causal LM the token baseline and the SLLM build on."""

from __future__ import annotations

from dataclasses import dataclass

from segsllm.errors import ConfigError

FAMILIES = ("llama", "opt", "gpt2")
# Accepted ``dtype`` spellings -> the torch dtype name ("auto": the checkpoint's own).
DTYPES = {
    "float32": "float32", "fp32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16",
    "auto": "auto",
}  # fmt: skip


@dataclass
class BackboneConfig:
    """Which backbone to load; the size fields apply to ``tiny`` only.

    Specs are described in :mod:`segsllm.models.backbone`.
    ``intermediate_size=None`` means 4 × hidden for OPT/GPT-2 and ≈ 8/3 × hidden for Llama,
    whose gated MLP has three matrices: the MLPs then have the same parameter count.
    ``num_kv_heads=None`` means no grouped-query attention (as many K/V heads as heads).
    ``cache_dir=None`` means ``$SEGSLLM_CACHE/backbones`` or ``~/.cache/segsllm/backbones``
    (converted GGUF folders and weight-hash memos live there).
    """

    spec: str = "tiny"
    family: str = "llama"  # llama | opt | gpt2 (tiny only)
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int | None = None
    intermediate_size: int | None = None
    max_positions: int = 2048
    dropout: float = 0.0
    cache_dir: str | None = None
    trust_remote_code: bool = False
    dtype: str = "float32"  # float32 | bfloat16 | float16 | auto (the checkpoint's own)
    attn_implementation: str | None = None  # None: transformers' default (sdpa); or "eager"

    def validate(self) -> BackboneConfig:
        """Raise a one-line :class:`ConfigError` for a spec, dtype or tiny size that cannot load."""
        spec = (self.spec or "").strip()
        if not spec:
            raise ConfigError(
                "backbone spec is empty; use tiny, smollm2-135m, a folder, a .gguf file or a hub id"
            )
        if str(self.dtype).lower() not in DTYPES:
            raise ConfigError(
                f"unknown backbone dtype {self.dtype!r}; use float32, bfloat16, float16 or auto"
            )
        if spec == "tiny" or spec.startswith("tiny:"):
            family = (spec.split(":", 1)[1] if ":" in spec else self.family).lower()
            if family not in FAMILIES:
                raise ConfigError(
                    f"unknown tiny backbone family {family!r}; use one of {', '.join(FAMILIES)}"
                )
            for key in ("hidden_size", "num_layers", "num_heads", "max_positions"):
                if getattr(self, key) < 1:
                    raise ConfigError(f"backbone.{key} must be >= 1, got {getattr(self, key)}")
            if self.hidden_size % self.num_heads:
                raise ConfigError(
                    f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
                )
        return self
