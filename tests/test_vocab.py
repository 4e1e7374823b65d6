"""Vocabulary bytes: byte-level detection and exact byte counts (docs/DESIGN.md §7)."""

from __future__ import annotations

from segsllm.data.vocab import unicode_to_bytes, vocab_bytes


class FakeTokenizer:
    """Just what vocab_bytes reads: size, id -> token string, added tokens."""

    def __init__(self, tokens: list[str], added: dict[int, str] | None = None):
        self.tokens = tokens
        self.added_tokens_decoder = {i: type("T", (), {"content": s})() for i, s in (added or {}).items()}

    def __len__(self) -> int:
        return len(self.tokens)

    def convert_ids_to_tokens(self, ids):
        return [self.tokens[i] for i in ids]


def test_byte_level_vocab_without_every_single_byte_token_is_still_byte_level():
    enc = {b: c for c, b in unicode_to_bytes().items()}
    # Like SmolLM2: merged tokens with "Ġ" (space), but a byte alphabet with holes.
    tokens = ["<|endoftext|>", "a", "b", "Ġthe", "Ċ", "Ġcaf" + enc[0xC3] + enc[0xA9]]
    vb = vocab_bytes(FakeTokenizer(tokens, {0: "<|endoftext|>"}))
    assert vb.byte_level
    assert [int(n) for n in vb.lengths[3:]] == [4, 1, 6]  # " the", "\n", " café"


def test_wordpiece_vocab_is_not_byte_level():
    vb = vocab_bytes(FakeTokenizer(["[PAD]", "the", "##s", "a"], {0: "[PAD]"}))
    assert not vb.byte_level
    assert int(vb.lengths[2]) == 1  # "##s" -> "s"
