"""What every user of a token-level causal LM shares: its objective, special ids and limits.

The ``train-lm`` stage, the bench and the backbone loader read these; keeping them in the
models layer lets each import downwards (no bench → train import to score a baseline).
Nothing here imports torch at import time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from segsllm.data.token_windows import IGNORE
from segsllm.errors import ArtifactError


def is_from_scratch(spec: str) -> bool:
    """True for a ``tiny`` backbone spec (built and trained from scratch on our tokenizer),
    False for anything pretrained (a folder, ``smollm2-135m``, a GGUF file, a hub id)."""
    spec = (spec or "").strip()
    return spec == "tiny" or spec.startswith("tiny:")


def lm_loss(model: Any, batch: Mapping[str, Any]) -> tuple[Any, dict[str, float]]:
    """Next-token CE for the loop, through ``model(...)`` (DDP-safe), + summable statistics.

    ``labels`` are already aligned with ``input_ids`` (``labels[:, p]`` is the token after
    ``input_ids[:, p]``), so no shift here; ``-100`` marks context and padding. Windows are
    right-padded, so the causal mask alone keeps pads out of every real token's view and
    positions count from 0 as without padding: no attention mask is passed, which keeps
    the fast causal attention path (a padded batch gives the same real-token logits).
    """
    import torch.nn.functional as F

    out = model(input_ids=batch["input_ids"], use_cache=False)
    logits = out.logits  # (B, T, V)
    labels = batch["labels"]  # (B, T)
    nll = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )  # summed over scored tokens, in nats
    n = (labels != IGNORE).sum()
    stats = {"nll_sum": float(nll.detach()), "n_tokens": float(n), "n_bytes": float(batch["n_bytes"].sum())}
    return nll / n.clamp(min=1), stats


def special_ids(tokenizer: Any) -> tuple[int, int, int]:
    """(bos, eos, pad) for document streams: BOS falls back to EOS (GPT-2 style end-of-text
    separator), PAD to EOS (padded positions are never scored)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ArtifactError("the tokenizer has no EOS token: the LM must predict each document's end")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return int(bos), int(eos), int(pad)


def max_positions(model: Any) -> int | None:
    """The longest input the model's position scheme was built for (None if unknown)."""
    c = model.config
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(c, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


__all__ = ["is_from_scratch", "lm_loss", "max_positions", "special_ids"]
