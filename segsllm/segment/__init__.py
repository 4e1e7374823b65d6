"""Segmenters: cut a token stream into segments (docs/DESIGN.md §4).

>>> seg = build_segmenter("punctuation:max_len=48", tokenizer=tok)
>>> ends = seg.segment(ids)            # int64 end offsets, last == len(ids)
>>> texts = seg.split_text(text)       # "".join(texts) == text

Modules: :mod:`base` (contract, ``enforce_max_len``), :mod:`punctuation`, :mod:`fixed`, :mod:`lines`,
:mod:`random_span` (random lengths, for teacher training), :mod:`spec` (spec strings), :mod:`registry` (built-ins, plug-ins, ``module:Class``),
:mod:`text` (exact text segments), :mod:`stats`, and :mod:`testing` (the conformance kit
for plug-in authors; needs ``hypothesis``).
"""

from __future__ import annotations

from segsllm.data.vocab import VocabBytes, vocab_bytes
from segsllm.segment.base import (
    MaxLenCapped,
    Segmenter,
    SegmenterError,
    as_ids,
    enforce_max_len,
    segment_lengths,
)
from segsllm.segment.fixed import FixedSegmenter
from segsllm.segment.lines import LinesSegmenter
from segsllm.segment.punctuation import CLOSERS, TERMINALS, PunctuationSegmenter
from segsllm.segment.registry import (
    ENTRY_POINT_GROUP,
    NO_PLUGINS_ENV,
    SegmenterInfo,
    SegmenterPluginWarning,
    build_segmenter,
    list_segmenters,
    registered_names,
)
from segsllm.segment.spec import ParamInfo, Spec, format_spec
from segsllm.segment.stats import SegmentStats, segment_stats
from segsllm.segment.text import encode_ids, segment_texts

__all__ = [
    "CLOSERS",
    "ENTRY_POINT_GROUP",
    "NO_PLUGINS_ENV",
    "TERMINALS",
    "FixedSegmenter",
    "LinesSegmenter",
    "MaxLenCapped",
    "ParamInfo",
    "PunctuationSegmenter",
    "SegmentStats",
    "Segmenter",
    "SegmenterError",
    "SegmenterInfo",
    "SegmenterPluginWarning",
    "Spec",
    "VocabBytes",
    "as_ids",
    "build_segmenter",
    "encode_ids",
    "enforce_max_len",
    "format_spec",
    "list_segmenters",
    "registered_names",
    "segment_lengths",
    "segment_stats",
    "segment_texts",
    "vocab_bytes",
]
