"""Dataclass configs, one module per section, and the loader that merges them.

Sections: :mod:`.run`, :mod:`.data`, :mod:`.tokenizer`, :mod:`.segmenter`, :mod:`.train`,
:mod:`.backbone`, :mod:`.vae`, :mod:`.lm`, :mod:`.sllm`, :mod:`.splitter`, :mod:`.bench`,
:mod:`.pipeline`; each dataclass sits beside its validation. :mod:`.root` gathers them
into :class:`Config`; :mod:`.loader` reads presets, merges ``--set`` overrides and flags,
and applies a stage's ``pipeline.overrides`` (the one way to give a stage its own
settings). Nothing here imports torch: ``segsllm --help`` and config errors stay fast.
"""

from __future__ import annotations

from segsllm.config.loader import (
    describe_preset,
    flatten,
    list_presets,
    load_config,
    read_config,
    resolve_preset,
    save_config,
    to_dict,
)
from segsllm.config.root import Config

__all__ = [
    "Config",
    "describe_preset",
    "flatten",
    "list_presets",
    "load_config",
    "read_config",
    "resolve_preset",
    "save_config",
    "to_dict",
]
