"""The ``tokenizer`` section: the byte-level BPE a run trains or reuses."""

from __future__ import annotations

from dataclasses import dataclass

from segsllm.errors import ConfigError

# 256 byte tokens + the 3 special tokens (pad, bos, eos) are always in the vocabulary.
MIN_VOCAB = 259


@dataclass
class TokenizerConfig:
    """Byte-level BPE trained over a balanced mix of the domains."""

    path: str | None = None  # an existing tokenizer folder used by later stages
    vocab_size: int = 8192
    min_frequency: int = 2
    # Bytes of training text sampled from each domain's train split (balanced mix).
    sample_bytes_per_domain: int = 4_000_000

    def validate(self) -> TokenizerConfig:
        """Raise a one-line :class:`ConfigError` naming the bad ``tokenizer.*`` key."""
        if self.vocab_size < MIN_VOCAB:
            raise ConfigError(
                f"tokenizer.vocab_size must be >= {MIN_VOCAB} (256 bytes + special tokens), got {self.vocab_size}"
            )
        if self.min_frequency < 1:
            raise ConfigError(f"tokenizer.min_frequency must be >= 1, got {self.min_frequency}")
        if self.sample_bytes_per_domain < 1:
            raise ConfigError(
                f"tokenizer.sample_bytes_per_domain must be >= 1, got {self.sample_bytes_per_domain}"
            )
        return self
