"""Byte-level BPE tokenizer: trained with `tokenizers`, saved as a Hugging Face folder.

Byte-level BPE with no normaliser is lossless: every byte sequence maps to tokens and back,
so CRLF, tabs, unicode and long lines round-trip exactly. ``load_tokenizer(DIR)`` and
``AutoTokenizer.from_pretrained(DIR)`` give the same object.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from segsllm.errors import ArtifactError

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SPECIAL_TOKENS = [PAD, BOS, EOS]


def train_bpe(texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2) -> Any:
    """Train a byte-level BPE over ``texts``; returns a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (bytes + specials)")
    tok = Tokenizer(models.BPE())
    # use_regex splits words/numbers/punctuation like GPT-2; add_prefix_space=False keeps
    # the text unchanged so decode(encode(x)) == x.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 30,
    )


def save_tokenizer(tokenizer: Any, out_dir: str | Path) -> Path:
    """Save as a Hugging Face tokenizer folder (tokenizer.json + configs)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    return out


def load_tokenizer(path: str | Path) -> Any:
    """Load a tokenizer folder; a clear error if it is missing or not a tokenizer."""
    from transformers import AutoTokenizer

    p = Path(path)
    if not (p / "tokenizer.json").is_file():
        raise ArtifactError(f"no tokenizer at {p} (expected {p / 'tokenizer.json'})")
    try:
        return AutoTokenizer.from_pretrained(str(p))
    except Exception as exc:  # corrupted json, wrong class ...
        raise ArtifactError(f"cannot load tokenizer from {p}: {str(exc).splitlines()[0]}") from None


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (segments are slices of this stream).

    ``split_special_tokens``: a literal ``<s>`` in a document is text, not a BOS id.
    """
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def decode(tokenizer: Any, ids: Iterable[int]) -> str:
    """Exact inverse of :func:`encode` for byte-level BPE."""
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of the vocabulary, stored in checkpoints to refuse a mismatched tokenizer."""
    import hashlib
    import json

    vocab = tokenizer.get_vocab()
    blob = json.dumps(sorted(vocab.items()), ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]
