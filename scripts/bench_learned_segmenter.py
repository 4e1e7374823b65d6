"""Throughput of the learned segmenter (batch and streaming modes) on real validation ids.

Usage::

    python scripts/bench_learned_segmenter.py --splitter DIR [--data-dir data] [--threads 2]
        [--tokens 300000] [--repeats 5]

Loads the ``learned:DIR`` segmenter as every command does, reads up to ``--tokens`` ids of
each domain's validation split (prepared corpora, the splitter's own tokenizer), and times
only segmentation: ``segment_batch`` over all documents (best of ``--repeats``), for the
batch mode with each decoding (threshold, Viterbi) and for the streaming mode, plus the
predictor's logits alone and, for a causal splitter, its cutter (one token at a time, as
free-boundary generation asks). Prints tokens/s per configuration and the machine's load, so a
number taken on a busy shared machine is recognisable as such.
"""

from __future__ import annotations

import argparse
import os
import time

# A sibling script: ``python scripts/bench_learned_segmenter.py`` puts scripts/ on the path.
from bench_segmenters import best_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splitter", required=True, help="a train-splitter folder")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--domains", default="prose,code,csv")
    ap.add_argument("--tokens", type=int, default=300_000, help="validation tokens per domain")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the CPU cores used)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-docs", type=int, default=400)
    ap.add_argument("--max-doc-bytes", type=int, default=60000)
    args = ap.parse_args()

    import numpy as np
    import torch

    from segsllm.segment import build_segmenter
    from segsllm.train.splitter_stage import cap_tokens
    from segsllm.train.teachers import load_documents

    torch.set_num_threads(args.threads)
    specs = {
        "batch (default decode)": f"learned:{args.splitter}",
        "batch, threshold": f"learned:{args.splitter},decode=threshold",
        "batch, viterbi": f"learned:{args.splitter},decode=viterbi",
        "stream (threshold)": f"learned:{args.splitter},mode=stream",
    }
    segs = {name: build_segmenter(spec) for name, spec in specs.items()}
    tok = segs["batch (default decode)"].tokenizer
    docs: list[np.ndarray] = []
    for d in args.domains.split(","):
        docs += cap_tokens(load_documents(args.data_dir, d, "validation", tok, max_docs=args.max_docs,
                                          max_doc_bytes=args.max_doc_bytes), args.tokens)
    n = sum(len(x) for x in docs)
    seg0 = segs["batch (default decode)"]
    print(f"splitter {args.splitter}: d_model {seg0.config.d_model}, {seg0.config.n_layers} layers, "
          f"{seg0.model.num_parameters():,} parameters, decode {seg0.effective_decode}")
    print(f"{n:,} tokens in {len(docs)} documents; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    seg0.segment_batch(docs[:2])  # warm-up
    t = best_of(lambda: seg0.logits(docs), args.repeats)
    print(f"{'predictor logits only':28s} {n / t:>12,.0f} tokens/s")
    for name, seg in segs.items():
        seg.segment_batch(docs[:2])
        t = best_of(lambda seg=seg: seg.segment_batch(docs), args.repeats)
        ends = seg.segment_batch(docs)
        mean = n / sum(len(e) for e in ends)
        print(f"{name:28s} {n / t:>12,.0f} tokens/s   mean segment {mean:5.2f} tokens")
    stream = segs["stream (threshold)"]
    one = docs[0][:4000]
    t0 = time.perf_counter()
    s = stream.stream()
    for i in range(0, len(one), 64):
        s.push(one[i : i + 64])
    s.finish()
    print(f"{'incremental push (64-token)':28s} {len(one) / (time.perf_counter() - t0):>12,.0f} tokens/s")
    if seg0.causal:  # what free-boundary generation asks: one decision per token, as it arrives
        cutter = seg0.cutter()
        t0 = time.perf_counter()
        for token in one.tolist():
            cutter.push(token)
        print(f"{'cutter (token by token)':28s} {len(one) / (time.perf_counter() - t0):>12,.0f} tokens/s")


if __name__ == "__main__":
    main()
