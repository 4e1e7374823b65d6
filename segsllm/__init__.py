"""segsllm: sentence-level language models with a swappable, learnable segmenter.

The library is usable without the CLI. Heavy dependencies (torch, transformers, mlflow) are
imported inside the functions that need them, so importing :mod:`segsllm` stays cheap.
"""

from __future__ import annotations

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("segsllm")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
