"""The ``data`` section: which corpora a stage reads, their splits and caps."""

from __future__ import annotations

from dataclasses import dataclass, field

from segsllm.errors import ConfigError


@dataclass
class DataConfig:
    """Corpora and splits (docs/DESIGN.md §8)."""

    dir: str = "data"
    domains: list[str] = field(default_factory=lambda: ["prose", "code", "csv"])
    validation_fraction: float = 0.05
    # 10 %: the built-in corpora then give every domain >= 20 test documents and >= 300 KB
    # to score (prose: 233 speeches; at 5 % it had 16).
    test_fraction: float = 0.10
    # Cap on documents per domain and split a stage reads (None: all). Small presets use it.
    max_docs: int | None = None
    # Cap on bytes per document a stage reads (long CSV tables are truncated at a line end).
    max_doc_bytes: int | None = None
    # Training draws as many segments from each domain per epoch (else CSV's many tiny
    # segments dominate the mix).
    balance_domains: bool = True

    def validate(self) -> DataConfig:
        """Raise a one-line :class:`ConfigError` naming the bad ``data.*`` key."""
        if not self.domains or any(not str(d).strip() for d in self.domains):
            raise ConfigError(f"data.domains must name at least one corpus, got {self.domains!r}")
        for key in ("validation_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"data.{key} must be in [0, 1), got {getattr(self, key)!r}")
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise ConfigError(
                "data.validation_fraction + data.test_fraction must be < 1 (the rest is the train split)"
            )
        for key in ("max_docs", "max_doc_bytes"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"data.{key} must be >= 1 or null (no cap), got {value!r}")
        return self
