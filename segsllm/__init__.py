"""segsllm: sentence-level language models with a swappable, learnable segmenter.

The library is usable without the CLI. Heavy dependencies (torch, transformers, mlflow) are
imported inside the functions that need them, so importing :mod:`segsllm` stays cheap.
"""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    """``__version__`` on first use: importlib.metadata costs ~50 ms that ``--help`` skips."""
    if name != "__version__":
        raise AttributeError(f"module 'segsllm' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("segsllm")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        value = "0.0.0+local"
    globals()["__version__"] = value
    return value
