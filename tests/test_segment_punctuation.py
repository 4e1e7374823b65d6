"""The punctuation rule, token by token, on hand-made vocabularies and on a real BPE."""

from __future__ import annotations

import numpy as np
import pytest

from segsllm.segment import PunctuationSegmenter, SegmenterError, build_segmenter


def _vocab(tokens: list[str | bytes]) -> list[bytes]:
    return [t.encode("utf-8") if isinstance(t, str) else t for t in tokens]


def cut(tokens: list[str | bytes], **params) -> list[list[str | bytes]]:
    """Segment a token sequence over a vocabulary made of exactly these tokens."""
    table = _vocab(sorted(set(tokens), key=lambda t: (str(type(t)), t)))
    index = {t: i for i, t in enumerate(table)}
    ids = [index[t.encode("utf-8") if isinstance(t, str) else t] for t in tokens]
    seg = PunctuationSegmenter(**params).bind_vocab(table)
    ends = seg.segment(ids)
    starts = [0, *ends[:-1].tolist()]
    return [tokens[s:e] for s, e in zip(starts, ends.tolist(), strict=True)]


def test_ascii_sentence_and_clause_punctuation():
    toks = ["Hi", ",", " you", ";", " ok", ":", " yes", "!", " Why", "?", " So", "."]
    assert cut(toks) == [["Hi", ","], [" you", ";"], [" ok", ":"], [" yes", "!"], [" Why", "?"], [" So", "."]]


def test_boundary_when_token_ends_with_punctuation_inside_a_merge():
    assert cut(["Hello", " world.", " Next"]) == [["Hello", " world."], [" Next"]]
    assert cut(["a", '",', " b"]) == [["a", '",'], [" b"]]


def test_whitespace_after_a_boundary_stays_with_the_segment():
    assert cut(["Hi", ".", " ", "  ", "Next"]) == [["Hi", ".", " ", "  "], ["Next"]]
    assert cut(["x", ":", "\n", "   ", " return"]) == [["x", ":", "\n", "   "], [" return"]]


def test_newlines_end_segments_and_blank_lines_stay_together():
    assert cut(["a", "\n", "\n", "b", "\r\n", "c"]) == [["a", "\n", "\n"], ["b", "\r\n"], ["c"]]
    assert cut(["def f()", "\n    ", " pass"]) == [["def f()", "\n    "], [" pass"]]
    assert cut(["a", "\n", "b"], newlines=False) == [["a", "\n", "b"]]


def test_closing_quotes_and_brackets_join_the_boundary():
    assert cut(["Hi", ".", '"', " he"]) == [["Hi", ".", '"'], [" he"]]
    assert cut(["Why", "?", "”", " no"]) == [["Why", "?", "”"], [" no"]]
    assert cut(["Why", "?”", " no"]) == [["Why", "?”"], [" no"]]
    assert cut(["(as it was", ".)", " Next"]) == [["(as it was", ".)"], [" Next"]]
    assert cut(["好", "。", "」", "下"]) == [["好", "。", "」"], ["下"]]
    # A closing quote that does not follow a boundary is an ordinary token.
    assert cut(["it", "’", "s"]) == [["it", "’", "s"]]


def test_punctuation_does_not_trail_across_a_newline():
    assert cut(["a", "\n", ")", "b"]) == [["a", "\n"], [")", "b"]]


def test_opening_quote_after_a_space_is_not_a_boundary():
    assert cut(["said", ".", ' "', "We", " hold"]) == [["said", "."], [' "', "We", " hold"]]


def test_ellipses():
    assert cut(["Wait", ".", ".", ".", " ok"]) == [["Wait", ".", ".", "."], [" ok"]]
    assert cut(["Wait", "...", " ok"]) == [["Wait", "..."], [" ok"]]
    assert cut(["Wait", "…", " ok"]) == [["Wait", "…"], [" ok"]]


def test_cjk_full_width_punctuation():
    toks = ["你好", "，", "世界", "。", "真的", "吗", "？", "是", "！", "好", "；", "的", "：", "嗯", "、", "x"]
    assert cut(toks) == [
        ["你好", "，"], ["世界", "。"], ["真的", "吗", "？"], ["是", "！"], ["好", "；"],
        ["的", "："], ["嗯", "、"], ["x"],
    ]


def test_punctuation_split_across_tokens_is_resolved_from_the_bytes_before():
    # "，" is EF BC 8C and "界" is E7 95 8C: the token 8C alone completes either.
    comma = cut(["a", b"\xef\xbc", b"\x8c", "b"])
    assert comma == [["a", b"\xef\xbc", b"\x8c"], ["b"]]
    jie = cut(["a", b"\xe7\x95", b"\x8c", "b"])
    assert jie == [["a", b"\xe7\x95", b"\x8c", "b"]]
    # "。" (E3 80 82) cut into three single bytes: the boundary comes after the last one.
    assert cut(["x", b"\xe3", b"\x80", b"\x82", "y"]) == [["x", b"\xe3", b"\x80", b"\x82"], ["y"]]


def test_a_run_never_stops_inside_a_character():
    # After "。": a split closing quote (E2 80 9D) joins, a split em dash (E2 80 94) does not.
    assert cut(["x", "。", b"\xe2\x80", b"\x9d", "y"]) == [["x", "。", b"\xe2\x80", b"\x9d"], ["y"]]
    assert cut(["x", "。", b"\xe2\x80", b"\x94", "y"]) == [["x", "。"], [b"\xe2\x80", b"\x94", "y"]]


def test_split_characters_never_read_bytes_of_the_previous_document():
    table = _vocab(["a", b"\xe3\x80", b"\x82"])
    seg = PunctuationSegmenter().bind_vocab(table)
    first, second = seg.segment_batch([[0, 1], [2, 0]])
    assert first.tolist() == [2] and second.tolist() == [2]
    assert seg.segment([0, 1, 2, 0]).tolist() == [3, 4]  # in one document it is "。"


def test_trailing_runs_stop_at_document_ends():
    table = _vocab(["a", ".", " ", '"'])
    seg = PunctuationSegmenter().bind_vocab(table)
    docs = [[0, 1], [2, 0], [3, 0], [1]]
    assert [e.tolist() for e in seg.segment_batch(docs)] == [[2], [2], [1, 2], [1]]
    assert [e.tolist() for e in seg.segment_batch(docs)] == [seg.segment(d).tolist() for d in docs]


def test_long_runs_are_split_at_max_len():
    assert [len(s) for s in cut(["a"] * 10, max_len=4)] == [4, 4, 2]
    assert [len(s) for s in cut(["a", "b"] * 5 + ["."], max_len=4)] == [4, 4, 3]


def test_punctuation_set_is_configurable():
    toks = ["a", ",", " b", ".", " c", "|", " d"]
    assert cut(toks, terminals=".") == [["a", ",", " b", "."], [" c", "|", " d"]]
    assert cut(toks, terminals="|", closers="") == [["a", ",", " b", ".", " c", "|"], [" d"]]
    with pytest.raises(SegmenterError, match="whitespace"):
        PunctuationSegmenter(terminals=". ")


def test_errors_unbound_and_foreign_ids():
    with pytest.raises(SegmenterError, match="not bound"):
        PunctuationSegmenter().segment([1, 2])
    seg = PunctuationSegmenter().bind_vocab(_vocab(["a", "."]))
    with pytest.raises(SegmenterError, match="outside the vocabulary"):
        seg.segment([0, 5])
    with pytest.raises(SegmenterError, match="outside the vocabulary"):
        seg.segment([-1])
    with pytest.raises(SegmenterError, match="integers"):
        seg.segment(np.array([0.0, 1.0]))
    assert seg.segment([]).dtype == np.int64 and seg.segment([]).size == 0


def test_real_tokenizer_cjk_and_crlf_round_trip(tokenizer, sample_texts):
    seg = build_segmenter("punctuation", tokenizer=tokenizer)
    cjk = seg.split_text(sample_texts["cjk"])
    assert "".join(cjk) == sample_texts["cjk"]
    assert len(cjk) >= 5
    assert all(p.rstrip()[-1] in "，。！？；…" for p in cjk)
    prose = seg.split_text(sample_texts["prose"])
    assert "".join(prose) == sample_texts["prose"]
    assert "The Union is strong.\r\n" in prose  # CRLF stays with its sentence


def test_batch_matches_single_on_real_text(tokenizer, sample_texts):
    from segsllm.data.tokenizer import encode

    seg = build_segmenter("punctuation:max_len=8", tokenizer=tokenizer)
    docs = [encode(tokenizer, t) for t in sample_texts.values()] + [[]]
    batch = seg.segment_batch(docs)
    for doc, ends in zip(docs, batch, strict=True):
        assert np.array_equal(ends, seg.segment(doc))


def test_encode_ids_in_pieces_matches_encode(tokenizer, sample_texts):
    from segsllm.data.tokenizer import decode, encode
    from segsllm.segment.text import encode_ids

    prose = sample_texts["prose"] * 5
    assert encode_ids(tokenizer, prose, chunk_chars=100).tolist() == encode(tokenizer, prose)
    blind = "a" * 1000 + "😀" * 300  # no safe cut point: pieces still decode exactly
    assert decode(tokenizer, encode_ids(tokenizer, blind, chunk_chars=97).tolist()) == blind


def test_split_text_keeps_characters_whole_and_aligned(tokenizer):
    from segsllm.data.tokenizer import encode
    from segsllm.segment import FixedSegmenter

    text = "😀🎉 é 你好。"
    seg = FixedSegmenter(k=1)  # a boundary after every token, so inside characters too
    parts = seg.split_text(text, tokenizer)
    assert "".join(parts) == text
    assert "\ufffd" not in "".join(parts)
    assert len(parts) == len(encode(tokenizer, text))  # one text per token segment
    assert "" in parts  # a segment wholly inside a character is empty


def test_non_byte_level_tokenizer_is_supported(sample_texts):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from segsllm.segment import vocab_bytes
    from segsllm.segment.testing import check_segmenter

    raw = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    raw.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[UNK]"], show_progress=False)
    raw.train_from_iterator(list(sample_texts.values()) * 5, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    assert not vocab_bytes(tok).byte_level
    seg = build_segmenter("punctuation", tokenizer=tok)
    assert seg.split_text("Hi there. Bye")[0].endswith(".")
    check_segmenter(seg, tokenizer=tok, max_examples=15)
