"""Teachers of the learned segmenter on tiny data: valid labels, target lengths, caching."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_backbone, tiny_vae

from segsllm.segment.testing import check_ends

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def chunks(tiny_data_dir, tokenizer):
    from segsllm.train.teachers import load_documents, make_chunks

    out = {}
    for split, budget in (("train", 3000), ("validation", 800)):
        out[split] = {d: make_chunks(load_documents(tiny_data_dir, d, split, tokenizer), 96, budget)
                      for d in ("prose", "code", "csv")}
    return out


def _check_labels(labels, max_len):
    for split in labels.values():
        for ls in split.values():
            assert ls.chunks and len(ls.chunks) == len(ls.ends)
            for c, e in zip(ls.chunks, ls.ends, strict=True):
                check_ends(e, len(c), max_len)
                lab = ls.labels()[0]
                assert lab[-1] == 1 and lab.dtype == np.uint8


def test_make_chunks_spreads_the_budget(tiny_data_dir, tokenizer):
    from segsllm.train.teachers import load_documents, make_chunks

    docs = load_documents(tiny_data_dir, "code", "train", tokenizer)
    full = make_chunks(docs, 50, None)
    assert sum(map(len, full)) == sum(map(len, docs)) and max(map(len, full)) <= 50
    some = make_chunks(docs, 50, 1000)
    assert 800 <= sum(map(len, some)) <= 1200
    assert some[0] is not full[0] or len(some) < len(full)


def test_punctuation_teacher_is_the_rule(chunks, tokenizer):
    from segsllm.segment.punctuation import PunctuationSegmenter
    from segsllm.train.teachers import PunctuationTeacher, teacher_labels

    labels = teacher_labels(PunctuationTeacher(tokenizer), chunks, target_len=None, max_len=16)
    _check_labels(labels, 16)
    rule = PunctuationSegmenter(max_len=16).bind(tokenizer)
    ls = labels["validation"]["csv"]
    for c, e in zip(ls.chunks, ls.ends, strict=True):
        assert np.array_equal(e, rule.segment(c))


def test_entropy_teacher_hits_the_target_and_resets_at_newlines(chunks, tokenizer, tmp_path):
    import torch

    from segsllm.data.tokenizer import encode
    from segsllm.segment.learned import mean_length
    from segsllm.train.teachers import EntropyTeacher, teacher_labels

    torch.manual_seed(0)
    lm = tiny_backbone(vocab_size=len(tokenizer), num_layers=1, num_heads=2, max_positions=2048).model
    for mode in ("global", "monotonic"):
        teacher = EntropyTeacher(lm, tokenizer, mode=mode, context=32)
        labels = teacher_labels(teacher, chunks, target_len=6.0, max_len=16, cache_dir=tmp_path)
        _check_labels(labels, 16)
        for d, ls in labels["train"].items():
            assert abs(mean_length(ls.ends) / 6.0 - 1) < 0.1, (mode, d, mean_length(ls.ends))
    # Context reset: a line's entropies do not depend on the lines before it.
    a = np.array(encode(tokenizer, "x = 1\nreturn a + b\n"))
    b = np.array(encode(tokenizer, "import os, sys\nreturn a + b\n"))
    line = np.array(encode(tokenizer, "return a + b\n"))
    sa, sb = teacher.scores([a, b])
    assert np.allclose(sa[-len(line):], sb[-len(line):], atol=1e-5)
    assert np.allclose(teacher.scores([line])[0], sa[-len(line):], atol=1e-5)


def test_vae_teacher_dp_hits_the_target(chunks, tokenizer):
    import torch

    from segsllm.segment.learned import mean_length
    from segsllm.train.teachers import VAETeacher, teacher_labels

    torch.manual_seed(0)
    vae = tiny_vae(len(tokenizer), 8, d_model=16, n_heads=2)
    teacher = VAETeacher(vae, max_span=8)
    small = {s: {d: c[:4] for d, c in v.items()} for s, v in chunks.items()}
    costs = teacher.scores(small["validation"]["prose"][:1])[0]
    assert costs.shape[1] == 8 and np.isfinite(costs[0]).all() and np.isinf(costs[-1, 1:]).all()
    spans = np.lib.stride_tricks.sliding_window_view(small["validation"]["prose"][0][:12], 3)
    assert np.allclose(costs[:10, 2], teacher.span_nll(spans), atol=1e-4)  # batched == direct
    labels = teacher_labels(teacher, small, target_len=4.0, max_len=16)
    _check_labels(labels, 8)  # spans are at most max_span
    for d, ls in labels["train"].items():
        assert abs(mean_length(ls.ends) / 4.0 - 1) < 0.1, (d, mean_length(ls.ends))
        assert np.isfinite(ls.param)


def test_labels_are_cached_on_disk(chunks, tokenizer, tmp_path):
    from segsllm.train.teachers import PunctuationTeacher, teacher_labels

    teacher = PunctuationTeacher(tokenizer)
    first = teacher_labels(teacher, chunks, target_len=None, max_len=16, cache_dir=tmp_path,
                           key_parts={"code": {"tokenizer": "x"}})
    assert any(p.name.startswith("labels-punctuation-code-train") for p in tmp_path.iterdir())

    def boom(*args, **kwargs):
        raise AssertionError("the teacher ran again")

    teacher.apply = boom  # type: ignore[method-assign]
    teacher.fit = boom  # type: ignore[method-assign]
    again = teacher_labels(teacher, chunks, target_len=None, max_len=16, cache_dir=tmp_path,
                           key_parts={"code": {"tokenizer": "x"}})
    for d in ("prose", "code", "csv"):
        for e1, e2 in zip(first["train"][d].ends, again["train"][d].ends, strict=True):
            assert np.array_equal(e1, e2)
    with pytest.raises(AssertionError, match="ran again"):  # another key is another entry
        teacher_labels(teacher, chunks, target_len=None, max_len=12, cache_dir=tmp_path)


def test_random_span_segmenter_conforms():
    from segsllm.segment import build_segmenter
    from segsllm.segment.testing import check_segmenter

    seg = build_segmenter("segsllm.segment.random_span:RandomSpanSegmenter:max_len=5", max_len=48)
    assert seg.max_len == 5 and build_segmenter(seg.spec(), max_len=48).max_len == 5
    check_segmenter(seg, max_examples=15)
    # Specs recorded before the move (segsllm.train.teachers) still build the same cut.
    old = build_segmenter("segsllm.train.teachers:RandomSpanSegmenter:max_len=5", max_len=48)
    ids = list(range(40))
    assert list(old.segment(ids)) == list(seg.segment(ids))


def test_random_span_control_keeps_its_lengths_in_range():
    """min_len..max_len: a content-blind control as long and as irregular as a learned splitter;
    the default's spec (folder names, cache keys) is unchanged."""
    from segsllm.segment import SegmenterError, build_segmenter
    from segsllm.segment.testing import check_segmenter

    seg = build_segmenter("segsllm.segment.random_span:RandomSpanSegmenter:min_len=13,max_len=19", max_len=48)
    assert "min_len=13,max_len=19" in seg.spec() and build_segmenter(seg.spec()).min_len == 13
    check_segmenter(seg, max_examples=15)
    lengths = np.diff(np.concatenate([[0], seg.segment(list(range(5000)))]))
    assert lengths[:-1].min() == 13 and lengths.max() == 19 and 15.5 < lengths.mean() < 16.5
    plain = build_segmenter("segsllm.segment.random_span:RandomSpanSegmenter:max_len=5")
    assert plain.spec().endswith(":RandomSpanSegmenter:max_len=5,seed=0")
    with pytest.raises(SegmenterError, match="min_len"):
        build_segmenter("segsllm.segment.random_span:RandomSpanSegmenter:min_len=9,max_len=5")


def test_teacher_building_errors(tokenizer, tmp_path):
    from segsllm.errors import ArtifactError, ConfigError
    from segsllm.train.teachers import build_teacher

    with pytest.raises(ConfigError, match="--vae"):
        build_teacher("vae", tokenizer)
    with pytest.raises(ConfigError, match="--base-lm"):
        build_teacher("entropy", tokenizer)
    with pytest.raises(ConfigError, match="unknown teacher"):
        build_teacher("oracle", tokenizer)
    with pytest.raises(ArtifactError):
        build_teacher("vae", tokenizer, vae=str(tmp_path))


def test_unbiased_vae_teacher_defaults_and_the_rule_variant(tokenizer, tmp_path):
    import warnings

    import torch

    from segsllm.errors import ConfigError
    from segsllm.train.teachers import build_teacher, default_max_span, teacher_vae_segmenter

    assert default_max_span("vae", 48, 8.0) == 48 and default_max_span("sllm", 48, 8.0) == 48
    assert default_max_span("vae-rule", 48, 8.0) == 16 and default_max_span("vae-rule", 12, 8.0) == 12
    torch.manual_seed(0)
    vae = tiny_vae(len(tokenizer), 8, d_model=16, n_heads=2)
    rule_dir = vae.save_pretrained(tmp_path / "rule", tokenizer=tokenizer, lineage={"segmenter": "punctuation:max_len=8"})
    rand_dir = vae.save_pretrained(tmp_path / "rand", tokenizer=tokenizer,
                                   lineage={"segmenter": teacher_vae_segmenter(8)})
    with pytest.warns(UserWarning, match="random spans"):
        biased = build_teacher("vae", tokenizer, vae=str(rule_dir), max_span=48)
    assert biased.max_span == 8  # capped at the VAE's max_len
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rule = build_teacher("vae-rule", tokenizer, vae=str(rule_dir), max_span=4)
        unbiased = build_teacher("vae", tokenizer, vae=str(rand_dir), max_span=48)
    assert (rule.name, rule.max_span, unbiased.name) == ("vae-rule", 4, "vae")
    assert rule.describe() != build_teacher("vae-rule", tokenizer, vae=str(rule_dir), max_span=8).describe()
    assert rule.describe()["teacher"] != unbiased.describe()["teacher"]  # cached apart
    with pytest.raises(ConfigError, match="load_sllm_teacher"):
        build_teacher("sllm", tokenizer)
    with pytest.raises(ConfigError, match="train_joint_teacher"):
        build_teacher("joint", tokenizer)
