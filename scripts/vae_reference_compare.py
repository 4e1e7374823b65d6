"""Train our SentenceVAE and the paper's reference (re-implemented) on the same segments.

Issue #17's controlled comparison: every variant trains through the project's training
loop (segsllm.train.loop.train, the train-vae objective) on byte-identical punctuation
segments of the preset's corpora, with the preset's VAE budget and widths, for several
seeds; each is scored on the same test segments per domain (evenly spread over the test
split): teacher-forced NLL/token (nats, EOS included) and greedy exact match. Results are
appended to ``OUT/results.jsonl`` (a finished (variant, seed) is skipped on rerun) and a
table with mean ± 95 % t-interval over seeds is printed.

    OMP_NUM_THREADS=1 python scripts/vae_reference_compare.py --data-dir data --out runs/vae-compare
    ... --variants ours,reference,ours+init=torch+norm=post --seeds 0,1,2

A variant is ``reference`` or ``ours`` followed by ``+key=value`` overrides of the preset's
``vae`` section (e.g. ``ours+positions=sinusoidal``). ``--quick`` shrinks everything to toy
size (the test uses it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_VARIANTS = "ours,reference"
QUICK_OVERRIDES = [
    "train.steps=6", "train.batch_size=8", "train.warmup_steps=1", "train.log_every=1",
    "vae.d_model=32", "vae.n_heads=2", "vae.d_ff=64", "tokenizer.vocab_size=300",
    "tokenizer.sample_bytes_per_domain=20000", "data.max_docs=20", "data.max_doc_bytes=4000",
    "segmenter.max_len=16",
]
T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="data", help="prepared corpora (segsllm data prepare)")
    p.add_argument("--out", required=True, help="work folder: tokenizer, results.jsonl")
    p.add_argument("--config", default="tiny", help="preset whose data/tokenizer/segmenter/train/vae sections are used")
    p.add_argument("--set", action="append", default=[], dest="overrides", help="dotted override, repeatable")
    p.add_argument("--variants", default=DEFAULT_VARIANTS)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--test-segments", type=int, default=1000, help="test segments scored per domain")
    p.add_argument("--quick", action="store_true", help="toy sizes, for tests")
    p.add_argument("--table-only", action="store_true", help="print the table of results.jsonl, train nothing")
    return p.parse_args(argv)


def parse_variant(spec: str) -> tuple[str, dict[str, Any]]:
    """``ours+init=torch+norm=post`` -> ("ours", {"init": "torch", "norm": "post"})."""
    import yaml

    base, *pairs = spec.split("+")
    if base not in ("ours", "reference"):
        raise SystemExit(f"error: variant {spec!r} must start with 'ours' or 'reference'")
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"error: variant {spec!r}: expected key=value, got {pair!r}")
        overrides[key] = yaml.safe_load(value)
    return base, overrides


def build_model(spec: str, vae_cfg: Any) -> Any:
    from segsllm.errors import ConfigError
    from segsllm.models.vae import SentenceVAE
    from segsllm.models.vae_reference import ReferenceSentenceVAE, reference_config

    base, overrides = parse_variant(spec)
    try:
        if base == "reference":
            return ReferenceSentenceVAE(dataclasses.replace(reference_config(vae_cfg), **overrides).validate())
        return SentenceVAE(dataclasses.replace(vae_cfg, **overrides).validate())
    except (ConfigError, TypeError) as exc:
        raise SystemExit(f"error: variant {spec!r}: {exc}") from None


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Config, tokenizer (built once into OUT/tokenizer), segments and test picks."""
    import numpy as np

    from segsllm.config import load_config
    from segsllm.data.segments import load_segments
    from segsllm.data.store import is_prepared
    from segsllm.data.tokenizer import load_tokenizer
    from segsllm.data.tokenizer_build import build_tokenizer
    from segsllm.segment import build_segmenter
    from segsllm.train.vae_stage import build_vae_config

    overrides = (QUICK_OVERRIDES if args.quick else []) + list(args.overrides)
    cfg = load_config(args.config, [*overrides, f"data.dir={args.data_dir}", "run.track=false"])
    for d in cfg.data.domains:
        if not is_prepared(cfg.data.dir, d):
            raise SystemExit(f"error: corpus {d!r} is not prepared in {cfg.data.dir} (segsllm data prepare)")
    tok_dir = Path(args.out) / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        build_tokenizer(cfg, tok_dir)
    tokenizer = load_tokenizer(tok_dir)
    segmenter = build_segmenter(cfg.segmenter.spec, tokenizer=tokenizer, max_len=cfg.segmenter.max_len)
    vae_cfg = build_vae_config(cfg, tokenizer, segmenter.max_len)
    kw = {"max_docs": cfg.data.max_docs, "max_doc_bytes": cfg.data.max_doc_bytes}
    train_tables = [load_segments(cfg.data.dir, d, "train", tokenizer, segmenter, **kw) for d in cfg.data.domains]
    test = {}
    for d in cfg.data.domains:
        table = load_segments(cfg.data.dir, d, "test", tokenizer, segmenter, **kw)
        picks = np.unique(np.linspace(0, len(table) - 1, min(args.test_segments, len(table))).round().astype(int))
        test[d] = [table[int(i)] for i in picks]
    return {"cfg": cfg, "vae_cfg": vae_cfg, "train_tables": train_tables, "test": test}


def score(model: Any, items: list[dict[str, Any]], pad_id: int) -> dict[str, float]:
    """Teacher-forced NLL/token and greedy exact match over ``items`` (eval mode)."""
    import torch

    from segsllm.data.segments import collate_segments
    from segsllm.metrics import exact_match_count

    model.eval()
    nll = tokens = exact = 0.0
    with torch.no_grad():
        for lo in range(0, len(items), 64):
            chunk = items[lo : lo + 64]
            batch = collate_segments(chunk, pad_id)
            out = model(batch["ids"], lengths=batch["lengths"])
            nll += float(out["nll_sum"])
            tokens += float(out["n_tokens"])
            gen = model.reconstruct(batch["ids"], lengths=batch["lengths"])
            exact += exact_match_count(gen, [list(map(int, it["ids"])) for it in chunk])
    return {"nll_per_token": nll / max(tokens, 1.0), "exact_match": exact / max(len(items), 1)}


def run_one(spec: str, seed: int, prep: dict[str, Any]) -> dict[str, Any]:
    from segsllm.data.segments import BucketedBatches, ConcatTables
    from segsllm.runtime import seed_everything
    from segsllm.train.loop import train
    from segsllm.train.vae_stage import vae_loss

    cfg, vae_cfg = prep["cfg"], prep["vae_cfg"]
    seed_everything(seed)
    model = build_model(spec, vae_cfg)
    source = BucketedBatches(ConcatTables(prep["train_tables"]), cfg.train.batch_size, vae_cfg.pad_id,
                             seed=seed, balanced=cfg.data.balance_domains)
    train_cfg = dataclasses.replace(cfg.train, eval_every=0, ckpt_every=0)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(model, vae_loss, source, train_cfg, tmp, device="cpu", progress=False,
                       count_tokens=lambda b: int(b["lengths"].sum()))
    scores = {d: score(model, items, vae_cfg.pad_id) for d, items in prep["test"].items()}
    return {"variant": spec, "seed": seed, "steps": result.step, "train_s": round(result.wall_time_s, 1),
            "s_per_step": round(result.wall_time_s / max(result.step, 1), 4),
            "params": model.num_parameters(), "final_train_loss": result.train_loss, "scores": scores}


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and 95 % t half-width (nan for a single value)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, math.nan
    return m, T_95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def table(rows: list[dict[str, Any]], variants: list[str]) -> str:
    """Markdown table, one row per variant: per domain NLL/token and greedy exact match (%),
    each mean ± 95 % t-interval over seeds (± nan: one seed)."""
    done = [v for v in variants if any(r["variant"] == v for r in rows)]
    if not done:
        return "(no results yet)"
    domains = list(next(r for r in rows if r["variant"] == done[0])["scores"])
    head = ["variant", "seeds"] + [f"{d} NLL/tok" for d in domains] + [f"{d} exact %" for d in domains]
    lines = ["| " + " | ".join([*head, "s/step", "params"]) + " |", "|" + "---|" * (len(head) + 2)]
    for v in done:
        runs = [r for r in rows if r["variant"] == v]
        nll = [interval([r["scores"][d]["nll_per_token"] for r in runs]) for d in domains]
        em = [interval([100 * r["scores"][d]["exact_match"] for r in runs]) for d in domains]
        cells = [f"{m:.3f} ± {h:.3f}" for m, h in nll] + [f"{m:.1f} ± {h:.1f}" for m, h in em]
        sps = statistics.fmean(r["s_per_step"] for r in runs)
        lines.append(f"| {v} | {len(runs)} | " + " | ".join(cells) + f" | {sps:.3f} | {runs[0]['params'] / 1e6:.2f}M |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        parse_variant(v)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"error: --seeds expects integers separated by commas, got {args.seeds!r}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []
    if not args.table_only:
        from segsllm.errors import SegsllmError

        try:
            prep = prepare(args)
        except SegsllmError as exc:
            raise SystemExit(f"error: {exc}") from None
        for seed in seeds:
            for v in variants:
                if any(r["variant"] == v and r["seed"] == seed for r in rows):
                    continue
                t0 = time.perf_counter()
                row = run_one(v, seed, prep)
                rows.append(row)
                with results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                brief = "  ".join(f"{d} {s['nll_per_token']:.3f}/{100 * s['exact_match']:.1f}%"
                                  for d, s in row["scores"].items())
                print(f"{v} seed {seed}: {brief}  ({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    print(table([r for r in rows if r["seed"] in seeds], variants))
    return 0


if __name__ == "__main__":
    sys.exit(main())
