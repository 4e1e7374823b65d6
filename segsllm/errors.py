"""User-facing errors: expected mistakes that the CLI prints as one line and exits non-zero."""

from __future__ import annotations


class SegsllmError(Exception):
    """Base class of errors caused by input (files, configs, specs), not by bugs."""


class DataError(SegsllmError):
    """A corpus, file or data source is missing, empty or unusable."""


class ArtifactError(SegsllmError):
    """An artifact folder is missing, corrupted or incompatible (e.g. another tokenizer)."""


class ConfigError(SegsllmError, ValueError):
    """A bad preset name, unknown key or wrongly typed value (one line, names the key)."""


class SegmenterError(SegsllmError, ValueError):
    """A bad segmenter spec, parameter or input (printed as one line by the CLI)."""
