"""Throughput and segment lengths of the built-in segmenters on pre-tokenised ids.

Usage::

    python scripts/bench_segmenters.py [--data-dir DIR] [--tokenizer DIR] [--mb 4]

Reads up to ``--mb`` MB of each built-in corpus (prose, code, csv) through the data
module's pinned sources, tokenises once (a byte-level BPE trained here unless
``--tokenizer`` is given), then times only the segmenters: ``segment_batch`` over all
documents of a domain and ``segment`` on one long concatenated stream, best of
``--repeats``. Prints tokens/s and mean / p95 tokens per segment per domain.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np


def load_domain(name: str, data_dir: str, max_bytes: int) -> list[str]:
    """Up to ``max_bytes`` of decoded text documents of a built-in corpus."""
    from segsllm.data.corpora import builtin_source
    from segsllm.data.textio import decode_utf8, is_binary

    texts: list[str] = []
    total = 0
    for rec in builtin_source(name, data_dir).records():
        data = rec.data if isinstance(rec.data, bytes) else rec.data.encode("utf-8")
        if not data or is_binary(data):
            continue
        texts.append(decode_utf8(data).text)
        total += len(data)
        if total >= max_bytes:
            break
    return texts


def best_of(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder (default: train one)")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--mb", type=float, default=4.0, help="MB of text per domain")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--specs", default="punctuation,fixed:k=16")
    args = ap.parse_args()

    from segsllm.data.tokenizer import load_tokenizer, train_bpe
    from segsllm.segment import build_segmenter, segment_stats

    domains = {d: load_domain(d, args.data_dir, int(args.mb * 1e6)) for d in ("prose", "code", "csv")}
    if args.tokenizer:
        tok = load_tokenizer(args.tokenizer)
    else:
        t0 = time.perf_counter()
        mix = [t for texts in domains.values() for t in texts[: max(1, len(texts) // 4)]]
        tok = train_bpe(mix, vocab_size=args.vocab_size)
        print(f"trained a {len(tok)}-token BPE in {time.perf_counter() - t0:.1f}s")
    ids = {d: [np.asarray(x, dtype=np.int64) for x in tok(t, add_special_tokens=False)["input_ids"]]
           for d, t in domains.items()}

    print(f"{'segmenter':<16} {'domain':<6} {'docs':>6} {'tokens':>10} {'batch tok/s':>12} "
          f"{'stream tok/s':>13} {'mean':>6} {'p95':>5} {'max':>4}")
    for spec in args.specs.split(","):
        seg = build_segmenter(spec, tokenizer=tok, max_len=64)
        for d, docs in ids.items():
            stream = np.concatenate(docs)
            n = int(stream.size)
            t_batch = best_of(lambda docs=docs, seg=seg: seg.segment_batch(docs), args.repeats)
            t_stream = best_of(lambda s=stream, seg=seg: seg.segment(s), args.repeats)
            st = segment_stats(seg.segment_batch(docs), n_bytes=sum(len(t.encode()) for t in domains[d]))
            print(f"{spec:<16} {d:<6} {len(docs):>6} {n:>10} {n / t_batch / 1e6:>10.1f} M "
                  f"{n / t_stream / 1e6:>11.1f} M {st.mean_tokens_per_segment:>6.2f} "
                  f"{st.p95_tokens_per_segment:>5.0f} {st.max_tokens_per_segment:>4}")


if __name__ == "__main__":
    main()
