"""Per-segment cost of each SLLM against the information its segment holds (segsllm.bench.segment_info).

Usage::

    python scripts/segment_information.py --lm RUN/lm --sllm fixed:k=16=RUN/sllm-fixed-k-16 \\
        --sllm lines=RUN/sllm-lines [--data-dir data] [--domain csv] [--bytes 40000] [--out F.json]

Scores the same test documents (the bench's selection, ``--bytes`` of them) with the token LM
(per token) and each SLLM (per segment) at the same context C, then prints, per SLLM, the
mean segment length and information, the mean excess (SLLM nats − LM nats per segment) and
the excess by information quintile: a rising excess means information should be spread
evenly; a uniformly higher one means the cuts themselves cost.
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lm", required=True, help="the token LM folder (train-lm)")
    ap.add_argument("--sllm", action="append", required=True, metavar="SEGMENTER=DIR",
                    help="an SLLM folder and the segmenter to score it with (repeatable)")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--domain", default="csv")
    ap.add_argument("--bytes", type=int, default=40_000, help="scored test bytes (the bench's selection)")
    ap.add_argument("--context", type=int, default=256, help="token context C of both models")
    ap.add_argument("--bins", type=int, default=5)
    ap.add_argument("--out", help="write the profiles as JSON here")
    args = ap.parse_args()

    from segsllm.bench import quality as q
    from segsllm.bench.run import load_token_lm
    from segsllm.bench.segment_info import information_profile, segment_information
    from segsllm.config.bench import sllm_pairs
    from segsllm.generate import load_sllm
    from segsllm.segment import build_segmenter

    docs = q.scored_documents(args.data_dir, args.domain, "test", target_bytes=args.bytes)
    lm, tok = load_token_lm(args.lm, "cpu")
    stride = args.context // 2
    token_nats = q.score_lm(lm, tok, docs, context_tokens=args.context, stride=stride, per_token=True).extra["token_nats"]
    profiles = {}
    for spec, path in sllm_pairs(args.sllm).items():
        model, stok, _ = load_sllm(path)
        seg = build_segmenter(spec, tokenizer=stok, max_len=model.vae.config.max_len)
        table = q.sllm_table(docs, stok, seg)
        res = q.score_sllm(model, table, docs, context_tokens=args.context, stride=stride)
        profiles[spec] = p = information_profile(res.extra["segment_nats"], segment_information(token_nats, table),
                                                 table.lengths, bins=args.bins)
        bins = "  ".join(f"{b['info']:.0f}:{b['excess']:+.1f}" for b in p["bins"])
        print(f"{spec:48.48s} len {p['mean_length']:5.1f} ± {p['sd_length']:4.1f}  info {p['mean_info']:6.1f}  "
              f"excess {p['mean_excess']:5.1f}  by info: {bins}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"domain": args.domain, "bytes": docs.total_bytes, "context": args.context,
                       "profiles": profiles}, f, indent=1)


if __name__ == "__main__":
    main()
