"""The ``tokenizer`` section: the byte-level BPE a run trains or reuses."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenizerConfig:
    """Byte-level BPE trained over a balanced mix of the domains."""

    path: str | None = None  # an existing tokenizer folder used by later stages
    vocab_size: int = 8192
    min_frequency: int = 2
    # Bytes of training text sampled from each domain's train split (balanced mix).
    sample_bytes_per_domain: int = 4_000_000
