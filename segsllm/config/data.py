"""The ``data`` section: which corpora a stage reads, their splits and caps."""

from __future__ import annotations

from dataclasses import dataclass, field


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
