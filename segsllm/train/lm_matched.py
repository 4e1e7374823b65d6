"""The ``lm-matched`` stage: token LMs trained for exactly as many tokens as each SLLM.

An SLLM starts from the ``lm`` stage's model and trains on more tokens; comparing it with
that untouched ``lm`` would credit the segmenter with what the extra training bought
(issue #12). This stage continues the ``lm`` model (the SLLM's starting point) on the same
domain mix (``data.balance_domains``, the SLLM's policy) with the ``lm`` stage's recipe
(``pipeline.overrides.lm``) continued where its schedule ended (a constant learning rate at
its final ``lr × min_lr_ratio``, no new warm-up), in **one** run, and saves a snapshot the
first time its training tokens reach each SLLM's budget: ``OUT/<slug>/``, a ``train-lm`` folder
(Hugging Face weights, tokenizer, ``config.yaml``, ``metrics.json`` with the validation
metrics and the budget, ``manifest.json`` last) that the bench loads like ``OUT/../lm``.

Tokens are the loop's ``tokens_seen`` on both sides: the LM's scored targets (document tokens
+ each document's EOS), the SLLM's decoder targets (segment tokens + each segment's EOS).
A snapshot lands at the first optimizer step whose total reaches the budget, so it holds
at most one step's tokens more; ``metrics.json`` records both numbers. Steps are planned for
the largest budget (estimated from the windows' mean length, with a margin; training stops
once every budget is reached); the constant rate makes each smaller budget's snapshot the
model one separate run of that length would give. Resumable like every stage (the loop's checkpoints; snapshots
already complete are kept).
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segsllm.errors import ConfigError

# Steps planned = margin × (largest budget / expected tokens per step): training stops at the
# budget, the margin only guards against batches shorter than the estimate.
STEP_MARGIN = 1.05


@dataclass
class MatchedLMResult:
    """Where each snapshot is and how many tokens it trained on."""

    out_dir: Path
    snapshots: dict[str, dict[str, Any]]  # name -> {"path", "target_tokens", "tokens_seen", "steps", ...}
    steps: int
    tokens_seen: int


def plan_steps(budget: int, tokens_per_step: float, margin: float = STEP_MARGIN) -> int:
    """Optimizer steps to schedule for ``budget`` tokens at about ``tokens_per_step`` each."""
    if tokens_per_step <= 0:
        raise ConfigError("lm-matched: the training windows hold no tokens")
    return max(1, math.ceil(margin * budget / tokens_per_step))


def tokens_per_step(train_sets: list[Any], batch_size: int, grad_accum: int, world_size: int,
                    balanced: bool) -> float:
    """Expected scored tokens per optimizer step: windows per step × mean targets per window
    (each domain weighted equally when batches are balanced, by its window count otherwise)."""
    import numpy as np

    per_window = [w.n_targets / max(len(w), 1) for w in train_sets]
    if balanced:
        mean = float(np.mean(per_window))
    else:
        mean = sum(w.n_targets for w in train_sets) / max(sum(len(w) for w in train_sets), 1)
    return mean * batch_size * grad_accum * world_size


class SnapshotAtBudgets:
    """Loop callback: the first step whose ``tokens_seen`` reaches a budget evaluates the
    model once and saves it under that budget's name; training stops once every budget is
    reached. ``save(name, record, metrics)``; ``evaluate() -> domain -> metrics``."""

    def __init__(self, budgets: Mapping[str, int], save: Callable[..., Any],
                 evaluate: Callable[[], dict[str, dict[str, float]]]) -> None:
        self.budgets = dict(budgets)
        self.save, self.evaluate = save, evaluate
        self.done: dict[str, dict[str, Any]] = {}

    def snapshot(self, names: list[str], tokens_seen: int, step: int) -> None:
        metrics = self.evaluate()
        for name in names:
            record = {"target_tokens": int(self.budgets[name]), "tokens_seen": int(tokens_seen), "steps": int(step)}
            self.save(name, record, metrics)
            self.done[name] = record

    def on_step_end(self, state: Any) -> None:
        due = [n for n, b in self.budgets.items() if n not in self.done and state.tokens_seen >= b]
        if due:
            self.snapshot(due, state.tokens_seen, state.step)
        if len(self.done) == len(self.budgets):
            state.stop = True


def existing_snapshot(folder: Path) -> dict[str, Any] | None:
    """The budget record of a complete snapshot folder (its manifest written), else None."""
    if not (folder / "manifest.json").is_file():
        return None
    try:
        return dict(json.loads((folder / "metrics.json").read_text(encoding="utf-8"))["budget"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class SnapshotWriter:
    """Writes one snapshot folder: HF weights + tokenizer, config.yaml, metrics.json (the
    validation metrics and the budget record), manifest.json last (rank 0 only)."""

    def __init__(self, out_dir: Path, cfg: Any, model: Any, tokenizer: Any, lineage: Mapping[str, Any],
                 eval_info: Mapping[str, Any]) -> None:
        self.out_dir, self.cfg, self.model, self.tokenizer = out_dir, cfg, model, tokenizer
        self.lineage, self.eval_info = dict(lineage), dict(eval_info)
        self.run_id: str | None = None

    def save(self, name: str, record: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
        from segsllm.config import save_config
        from segsllm.io import atomic_write_json
        from segsllm.runtime import is_rank_zero
        from segsllm.train.lm_stage import save_lm_artifact

        if not is_rank_zero():
            return
        folder = self.out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "manifest.json").unlink(missing_ok=True)  # incomplete until the new one lands
        doc = {"final": dict(metrics), "budget": dict(record), "steps": record["steps"],
               "tokens_seen": record["tokens_seen"], "matched": True, "eval": self.eval_info}
        save_config(self.cfg, folder / "config.yaml")
        atomic_write_json(folder / "metrics.json", doc)
        was_training = self.model.training
        save_lm_artifact(folder, self.model, self.tokenizer,
                         {"lineage": self.lineage, "tokenizer_fingerprint": self.lineage["tokenizer"]["fingerprint"],
                          "metrics": doc, "steps": record["steps"], "run_id": self.run_id})
        self.model.train(was_training)


def _resumed(out_dir: Path, budgets: Mapping[str, int], resume: bool) -> tuple[dict[str, Any], Any]:
    """(snapshots already complete, the stage's result when all are): on resume finished
    snapshots stay as they are; when all are, nothing is left to train."""
    done = {n: r for n in budgets if resume and (r := existing_snapshot(out_dir / n)) is not None}
    if len(done) < len(budgets):
        return done, None
    return done, MatchedLMResult(out_dir, {n: {**r, "path": str(out_dir / n)} for n, r in done.items()},
                                 max(r["steps"] for r in done.values()), max(r["tokens_seen"] for r in done.values()))


def _save_short(hook: Any, budgets: Mapping[str, int], result: Any) -> None:
    """When the planned steps ran out before a budget (shorter batches than estimated): say so
    and save those snapshots with the tokens actually seen."""
    short = [n for n in budgets if n not in hook.done]
    if short:
        warnings.warn(f"lm-matched: {result.tokens_seen} tokens after {result.step} steps, short of the "
                      f"budget of {', '.join(short)}; saved with the tokens actually seen", stacklevel=3)
        hook.snapshot(short, result.tokens_seen, result.step)


def train_matched_lm(cfg: Any, budgets: Mapping[str, int], *, resume: bool = False,
                     progress: bool = True) -> MatchedLMResult:
    """Continue ``cfg.backbone.spec`` (the ``lm`` folder) on ``cfg.data.domains`` and save a
    snapshot to ``cfg.run.out/<name>`` when its training tokens reach ``budgets[name]``."""
    from segsllm.data.segments import ConcatTables
    from segsllm.data.token_windows import IGNORE, TokenWindowBatches
    from segsllm.models.token_lm import lm_loss, special_ids
    from segsllm.runtime import dist_info
    from segsllm.tracking import start_run
    from segsllm.train.lm_stage import KIND, _lm_model, _lm_windows, eval_source, reduce_lm_metrics
    from segsllm.train.loop import evaluate, train
    from segsllm.train.stage import check_inputs, data_lineage, per_domain, start_compute

    if not budgets or min(budgets.values()) < 1:
        raise ConfigError(f"lm-matched needs a positive token budget per model, got {dict(budgets)}")
    manifests = check_inputs(cfg, "lm-matched")
    lm_cfg = cfg.lm.validate()
    out_dir = Path(cfg.run.out)
    done, finished = _resumed(out_dir, budgets, resume)
    if finished is not None:
        return finished
    device = start_compute(cfg)
    backbone, tokenizer, tok_lineage, ctx = _lm_model(cfg, lm_cfg)
    model = backbone.model
    bos, eos, pad = special_ids(tokenizer)
    train_sets, eval_sets = _lm_windows(cfg, lm_cfg, tokenizer, ctx, bos, eos)
    per_step = tokens_per_step(train_sets, cfg.train.batch_size, cfg.train.grad_accum, dist_info()[2],
                               cfg.data.balance_domains)
    # The lm's recipe continued where its schedule ended: a constant learning rate at the lm's
    # final one (lr x min_lr_ratio), no new warm-up. Re-warming an annealed model to the peak
    # made a short continuation *worse* than its start (tiny: +0.02 / +0.03 bits/byte on
    # prose / code after 0.6M tokens), and a constant rate makes every budget's snapshot the
    # same point of one trajectory rather than a mid-schedule one.
    train_cfg = dataclasses.replace(cfg.train, steps=plan_steps(max(budgets.values()), per_step), tokens=None,
                                    lr=cfg.train.lr * cfg.train.min_lr_ratio, warmup_steps=0, min_lr_ratio=1.0,
                                    eval_at_start=False, eval_batches=None, eval_every=0)
    # Record what was actually used (tokenizer, steps planned), so config.yaml reproduces the run.
    cfg = dataclasses.replace(cfg, train=train_cfg,
                              tokenizer=dataclasses.replace(cfg.tokenizer, path=tok_lineage["path"]))
    source = TokenWindowBatches(ConcatTables(train_sets), train_cfg.batch_size, pad, seed=cfg.run.seed,
                                balanced=cfg.data.balance_domains)
    eval_sources = {d: eval_source(w, lm_cfg.eval_batch_size or train_cfg.batch_size, pad) for d, w in eval_sets.items()}
    lineage = {"tokenizer": tok_lineage, "backbone": backbone.source,
               "data": data_lineage(manifests, ("sha256", "source", "version"))}
    writer = SnapshotWriter(out_dir, cfg, model, tokenizer, lineage,
                            {"context_len": ctx, "stride": lm_cfg.stride, "split": "validation"})
    hook = SnapshotAtBudgets(budgets, writer.save, lambda: per_domain(evaluate(
        model, lm_loss, eval_sources, device=device, reduce_metrics=reduce_lm_metrics, bf16=train_cfg.bf16),
        eval_sources))
    hook.done.update(done)
    tags = {"backbone": cfg.backbone.spec, "domain": ",".join(cfg.data.domains), "segmenter": "none",
            "matched": "true"}
    with start_run(cfg, "lm", tags=tags, manifests=manifests, resume=resume) as run:
        run.log_params({f"budget.{n}": b for n, b in budgets.items()})
        writer.run_id = run.run_id
        result = train(model, lm_loss, source, train_cfg, out_dir, device=device, tracker=run,
                       count_tokens=lambda b: int((b["labels"] != IGNORE).sum()), progress=progress,
                       resume=resume, callbacks=[hook],
                       meta={"kind": KIND, "tokenizer": tok_lineage["fingerprint"], "backbone": cfg.backbone.spec,
                             "context_len": ctx, "budgets": dict(sorted(budgets.items()))})
        _save_short(hook, budgets, result)
        run.log_metrics({f"tokens/{n}": float(r["tokens_seen"]) for n, r in hook.done.items()}, step=result.step)
    return MatchedLMResult(out_dir=out_dir, snapshots={n: {**r, "path": str(out_dir / n)} for n, r in hook.done.items()},
                           steps=result.step, tokens_seen=result.tokens_seen)
