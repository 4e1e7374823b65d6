"""Token units: numbers counted per token compare only between models with one tokenizer.

Bits per byte is tokenizer-free, but token perplexity, tokens/s, KV bytes per token (and
the speedup and KV ratio built from them) count *tokens*. When the SLLM and a baseline LM
use different tokenizers those tokens are different units, so the bench drops the
baseline's token-unit columns from that SLLM's rows (NaN, printed as "-") and says so once.
"""

from __future__ import annotations

import math
from typing import Any

# Columns of a bench row that count tokens of the *baseline* (or compare with them). The
# speed/memory reference LM owns the ``baseline_*`` speed and memory columns.
SPEED_REF_COLUMNS = (
    "baseline_tokens_per_s", "baseline_new_tokens", "speedup",
    "baseline_kv_bytes_per_token", "kv_ratio", "baseline_kv_kb_per_token_slope", "baseline_peak_mem_bytes",
)


def token_unit_columns(lm_name: str, *, speed_ref: bool) -> list[str]:
    """The row columns that mix ``lm_name``'s tokens with the SLLM's."""
    cols = [f"{lm_name}_token_perplexity"]
    return cols + list(SPEED_REF_COLUMNS) if speed_ref else cols


def same_tokenizer(a: Any, b: Any) -> bool:
    """Whether two tokenizers share one vocabulary (then a token is the same unit in both)."""
    from segsllm.data.tokenizer import tokenizer_fingerprint

    return tokenizer_fingerprint(a) == tokenizer_fingerprint(b)


def drop_token_units(row: dict[str, Any], lm_name: str, *, speed_ref: bool) -> list[str]:
    """Set ``lm_name``'s token-unit columns of ``row`` to NaN; returns those that were present."""
    dropped = [c for c in token_unit_columns(lm_name, speed_ref=speed_ref) if c in row]
    for c in dropped:
        row[c] = math.nan
    return dropped


def mismatch_message(lm_name: str, lm_path: Any, sllm_path: Any) -> str:
    """The one-line warning for a baseline on another tokenizer."""
    return (f"{lm_name} ({lm_path}) uses another tokenizer than the SLLM in {sllm_path}: tokens are "
            "different units, so its token perplexity, tokens/s, KV bytes/token, speedup and KV ratio "
            "are left out of the comparison (bits/byte still compares)")


__all__ = ["drop_token_units", "mismatch_message", "same_tokenizer", "token_unit_columns"]
