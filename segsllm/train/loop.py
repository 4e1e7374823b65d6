"""The one training loop every stage uses (VAE, token LM, SLLM, boundary predictor).

A stage supplies a model, an objective ``loss_fn(model, batch) -> (loss, metrics)`` and a
resumable batch source; :func:`train` does the rest: AdamW with decay on matrices only,
linear warm-up + cosine, gradient accumulation and clipping, bf16 autocast on CUDA,
periodic evaluation per named source, tracker logging, atomic safetensors checkpoints
with exact resume, a clear stop on NaN/inf, and DDP when launched by ``torchrun``.
Its helpers live beside it: :mod:`.distributed` (process group, collectives),
:mod:`.optim` (AdamW groups), :mod:`.progress` (the bar); batch sources live in
:mod:`segsllm.data.batches`.

Exact resume rests on three things being restored: weights + optimizer (safetensors), the
global RNGs (dropout), and the data position (a :class:`BatchSource` state). The
learning rate is a pure function of the step and, under a token budget (``train.tokens``), of
the tokens seen (:func:`segsllm.train.schedule.lr_at`).
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch import nn

from segsllm.config.train import TrainConfig
from segsllm.data.batches import move_to
from segsllm.errors import ArtifactError, DataError, SegsllmError
from segsllm.runtime import autocast
from segsllm.train import checkpoint as ckpt
from segsllm.train.distributed import (
    all_gather,
    barrier,
    maybe_init_distributed,
    resolve_device,
    unwrap_model,
)
from segsllm.train.optim import configure_optimizer, param_groups
from segsllm.train.progress import progress_bar
from segsllm.train.schedule import budget_reached, lr_at

Batch = Any
LossFn = Callable[[nn.Module, Batch], "tuple[torch.Tensor, Mapping[str, float]]"]
EvalFn = Callable[[nn.Module, Iterable[Batch]], Mapping[str, float]]
ReduceFn = Callable[[dict[str, float]], Mapping[str, float]]
EvalSource = Iterable[Batch] | Callable[[], Iterable[Batch]]


class TrainingDivergedError(SegsllmError):
    """The loss or the gradient norm became NaN/inf; the last checkpoint is still good."""


# --------------------------------------------------------------------------- data


@runtime_checkable
class BatchSource(Protocol):
    """A resumable, endless stream of training batches.

    ``__iter__`` yields batches forever (epoch after epoch), starting at the current
    position. ``state_dict()`` is JSON-serialisable and describes the position *after* the
    batches yielded so far; ``load_state_dict()`` is called before ``__iter__`` on resume,
    after which the stream must continue with exactly the batches that would have come
    next. A stage's own (e.g. length-bucketed) sampler implements these three methods.
    """

    def __iter__(self) -> Iterator[Batch]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class _ReplayBatches:
    """Adapts a deterministic re-iterable (e.g. a list of batches) to :class:`BatchSource`.

    It loops over the iterable epoch after epoch and resumes by skipping the batches
    already consumed, which is exact when every pass yields the same batches.
    """

    def __init__(self, iterable: Iterable[Batch]) -> None:
        self.iterable = iterable
        self.epoch = 0
        self.position = 0

    def __iter__(self) -> Iterator[Batch]:
        while True:
            n = 0
            for batch in self.iterable:
                n += 1
                if n <= self.position:  # replaying up to the resume point
                    continue
                self.position = n
                yield batch
            if n == 0:
                raise DataError(
                    "train data yielded no batches"
                    + (" on its second pass: pass a re-iterable (a list, data.batches.ShuffledBatches) "
                       "or a BatchSource, not a one-shot iterator" if self.epoch else "")
                )
            self.epoch += 1
            self.position = 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def as_batch_source(data: BatchSource | Iterable[Batch]) -> BatchSource:
    """``data`` itself if it is a BatchSource, else a replaying wrapper around it."""
    if isinstance(data, BatchSource):
        return data
    if isinstance(data, Iterable):
        return _ReplayBatches(data)
    raise TypeError(f"train data must be a BatchSource or an iterable, got {type(data).__name__}")


def default_count_tokens(batch: Batch) -> int:
    """Tokens in a batch: ``num_tokens``, else ``attention_mask.sum()``, else ``input_ids``'s size."""
    if isinstance(batch, Mapping):
        if "num_tokens" in batch:
            return int(batch["num_tokens"])
        if isinstance(batch.get("attention_mask"), torch.Tensor):
            return int(batch["attention_mask"].sum())
        if isinstance(batch.get("input_ids"), torch.Tensor):
            return batch["input_ids"].numel()
        return 0
    if isinstance(batch, torch.Tensor):
        return batch.numel()
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0].numel()
    return 0


# --------------------------------------------------------------------------- state, result, callbacks


@dataclass
class TrainState:
    """What callbacks see; set ``stop = True`` to end training after this step."""

    cfg: TrainConfig
    model: nn.Module  # unwrapped
    optimizer: torch.optim.Optimizer
    out_dir: Path
    step: int = 0
    tokens_seen: int = 0
    loss: float | None = None  # last step's loss (mean over ranks and micro-batches)
    grad_norm: float | None = None
    lr: float = 0.0
    last_checkpoint: Path | None = None
    is_main: bool = True
    stop: bool = False


class Callback:
    """Hooks into :func:`train`; override any. Called on every rank (see ``state.is_main``).

    Duck typing works too: any object with some of these methods.
    """

    def on_train_start(self, state: TrainState) -> None: ...

    def on_step_end(self, state: TrainState) -> None: ...

    def on_eval_end(self, state: TrainState, metrics: dict[str, float]) -> None: ...

    def on_checkpoint(self, state: TrainState, path: Path) -> None: ...

    def on_train_end(self, state: TrainState) -> None: ...


@dataclass
class TrainResult:
    step: int  # optimizer steps done in total
    train_loss: float | None  # loss of the last step
    eval_history: list[dict[str, float]]  # {"step": s, "val/<source>/<metric>": v, ...}
    checkpoint: Path | None  # the final checkpoint
    tokens_seen: int  # over all ranks, including steps before a resume
    wall_time_s: float  # of this call
    resumed_from: Path | None = None

    @property
    def final_eval(self) -> dict[str, float]:
        return dict(self.eval_history[-1]) if self.eval_history else {}


def _call(callbacks: Sequence[Any], hook: str, *args: Any) -> None:
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(*args)


def _log(tracker: Any, metrics: Mapping[str, float], step: int) -> None:
    """Tracker calls never stop training (docs/DESIGN.md §10)."""
    if tracker is None or not metrics:
        return
    try:
        tracker.log_metrics(dict(metrics), step=step)
    except Exception as exc:  # the tracker should not raise, but a lost run is worse
        warnings.warn(f"tracker.log_metrics failed at step {step}: {exc}", stacklevel=2)


def _mean_reduce(sums: dict[str, float]) -> dict[str, float]:
    """Default reduction: each summed metric divided by the number of batches."""
    n = sums.pop("batches", 0.0)
    return {k: v / n for k, v in sums.items()} if n else {}


# --------------------------------------------------------------------------- evaluation


def _iterate(source: EvalSource) -> Iterable[Batch]:
    if callable(source) and not isinstance(source, Iterable):
        return source()
    return source


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loss_fn: LossFn,
    sources: Mapping[str, EvalSource],
    *,
    device: torch.device,
    max_batches: int | None = None,
    eval_fn: EvalFn | None = None,
    reduce_metrics: ReduceFn | None = None,
    bf16: bool = True,
    prefix: str = "val",
) -> dict[str, float]:
    """Metrics per source as ``{prefix}/{source}/{metric}``, in eval mode, without grad.

    By default each batch's loss and ``loss_fn`` metrics are summed (over batches and,
    under DDP, over ranks) and reduced by ``reduce_metrics(sums)`` (sums carry ``loss``
    and ``batches``), or divided by the batch count. A custom ``eval_fn(model, batches)``
    returns final metrics instead; under DDP those are averaged over ranks.
    """
    raw = unwrap_model(model)
    was_training = raw.training
    raw.eval()
    out: dict[str, float] = {}
    try:
        for name, source in sources.items():
            batches: Iterable[Batch] = _iterate(source)
            if max_batches:
                batches = itertools.islice(batches, max_batches)
            on_device = (move_to(b, device) for b in batches)
            with autocast(device, bf16):
                if eval_fn is not None:
                    per_rank = all_gather(dict(eval_fn(model, on_device)))
                    keys = set().union(*per_rank)
                    metrics = {
                        k: sum(m[k] for m in per_rank if k in m) / sum(k in m for m in per_rank)
                        for k in keys
                    }
                else:
                    sums: dict[str, float] = {"loss": 0.0, "batches": 0.0}
                    for batch in on_device:
                        loss, batch_metrics = loss_fn(model, batch)
                        sums["loss"] += float(loss)
                        sums["batches"] += 1.0
                        for k, v in batch_metrics.items():
                            sums[k] = sums.get(k, 0.0) + float(v)
                    total: dict[str, float] = {}
                    for rank_sums in all_gather(sums):
                        for k, v in rank_sums.items():
                            total[k] = total.get(k, 0.0) + v
                    if not total["batches"]:
                        warnings.warn(f"eval source {name!r} yielded no batches", stacklevel=2)
                        continue
                    metrics = dict((reduce_metrics or _mean_reduce)(total))
            out.update({f"{prefix}/{name}/{k}": float(v) for k, v in metrics.items()})
    finally:
        raw.train(was_training)
    return out


# --------------------------------------------------------------------------- the loop




def _check_resume_compatible(saved: Mapping[str, Any], cfg: TrainConfig, meta: Mapping[str, Any], path: Path) -> None:
    """Refuse a checkpoint built from other inputs; warn when the trajectory will differ."""
    saved_meta = saved.get("meta") or {}
    for key in sorted(set(saved_meta) & set(meta)):
        if saved_meta[key] != meta[key]:
            raise ArtifactError(
                f"checkpoint {path} was written with {key}={saved_meta[key]!r}, this run has "
                f"{key}={meta[key]!r}; refusing to resume (use another output folder)"
            )
    cosmetic = {"eval_every", "eval_batches", "eval_at_start", "log_every",
                "ckpt_every", "keep_last", "compile"}
    now = asdict(cfg)
    changed = [k for k, v in (saved.get("config") or {}).items() if k not in cosmetic and now.get(k, v) != v]
    if changed:
        warnings.warn(
            f"resuming {path} with changed train settings ({', '.join(changed)}): "
            "the run will not match an uninterrupted one",
            stacklevel=3,
        )


def train(
    model: nn.Module,
    loss_fn: LossFn,
    train_data: BatchSource | Iterable[Batch],
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    eval_data: Mapping[str, EvalSource] | None = None,
    eval_fn: EvalFn | None = None,
    reduce_metrics: ReduceFn | None = None,
    device: str | torch.device | None = None,
    tracker: Any | None = None,
    count_tokens: Callable[[Batch], int] | None = None,
    progress: bool = True,
    resume: bool = False,
    callbacks: Sequence[Any] = (),
    meta: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` for ``cfg.steps`` optimizer steps, or until ``cfg.tokens`` training tokens
    (``count_tokens``, summed over ranks) when that is set; checkpoints go to ``out_dir/checkpoints``.

    ``loss_fn(model, batch)`` returns the micro-batch's mean loss (a scalar tensor) and a dict
    of summable floats (counts, sums); batches arrive on ``device``. Those sums, with ``loss``
    and ``batches`` added, go through ``reduce_metrics`` (default: divide by ``batches``) for
    the ``train/*`` logs and the ``val/<source>/*`` evaluations. ``count_tokens(batch)``
    feeds tokens/s (default: :func:`default_count_tokens`). Under DDP ``model`` is the DDP wrapper:
    compute the loss through ``model(...)`` (its forward) so gradients are synchronised, and
    reach other attributes through :func:`unwrap_model`. ``meta`` (e.g. a tokenizer hash) is
    stored in each checkpoint and must match on resume. ``resume=True`` continues from the
    latest complete checkpoint (or starts fresh when there is none); without it an
    ``out_dir`` that already holds checkpoints is refused.
    """
    t_start = time.perf_counter()
    cfg.validate()
    rank, local_rank, world = maybe_init_distributed()
    distributed, is_main = world > 1, rank == 0
    device = resolve_device(device, model, local_rank, world)
    out_dir = Path(out_dir)
    meta = dict(meta or {})
    count_tokens = count_tokens or default_count_tokens
    source = as_batch_source(train_data)

    raw_model = model.to(device)
    raw_model.train()
    optimizer = configure_optimizer(raw_model, cfg, device)
    state = TrainState(cfg=cfg, model=raw_model, optimizer=optimizer, out_dir=out_dir, is_main=is_main)
    history: list[dict[str, float]] = []

    # ---- resume: weights and optimizer now, RNG and data position right before the loop
    latest = ckpt.latest_checkpoint(out_dir)
    if latest is not None and not resume:
        raise ArtifactError(
            f"{out_dir} already holds checkpoints (latest {latest.name}); "
            "rerun with --resume to continue, or choose another output folder"
        )
    saved: dict[str, Any] | None = None
    if resume and latest is not None:
        saved = ckpt.read_trainer_state(latest)
        _check_resume_compatible(saved, cfg, meta, latest)
        ckpt.load_model_weights(raw_model, latest)
        ckpt.load_optimizer(optimizer, latest)
        state.step = int(saved["step"])
        state.tokens_seen = int(saved.get("tokens_seen", 0))
        state.loss = saved.get("train_loss")
        state.last_checkpoint = latest
        history = list(saved.get("eval_history", []))
    if is_main:
        ckpt.remove_stale_temp(out_dir)
        if resume and progress:  # say where training picks up (stderr, like the progress lines)
            import sys

            print(f"resuming from step {state.step} of {cfg.steps} ({latest})" if saved is not None
                  else f"--resume: no checkpoint in {out_dir}, starting from step 0", file=sys.stderr, flush=True)
    barrier()

    fwd_model: nn.Module = torch.compile(raw_model) if cfg.compile else raw_model
    train_model: nn.Module = fwd_model
    if distributed:
        train_model = nn.parallel.DistributedDataParallel(
            fwd_model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.ddp_find_unused_parameters,
        )

    if saved is not None:
        data_states = saved.get("data_state") or []
        if data_states:
            source.load_state_dict(data_states[rank] if rank < len(data_states) else data_states[0])
        ckpt.restore_rng(ckpt.load_rng(latest, saved, rank))

    def run_eval() -> None:
        metrics = evaluate(
            fwd_model, loss_fn, eval_data or {}, device=device, max_batches=cfg.eval_batches,
            eval_fn=eval_fn, reduce_metrics=reduce_metrics, bf16=cfg.bf16,
        )
        history.append({"step": state.step, **metrics})
        if is_main:
            _log(tracker, metrics, state.step)
        _call(callbacks, "on_eval_end", state, metrics)

    def save() -> None:
        rng_states = all_gather(ckpt.capture_rng())
        data_states = all_gather(source.state_dict())
        path = ckpt.checkpoint_root(out_dir) / ckpt.step_dirname(state.step)
        if is_main:
            trainer_state = {
                "tokens_seen": state.tokens_seen,
                "train_loss": state.loss,
                "world_size": world,
                "config": asdict(cfg),
                "meta": meta,
                "data_state": data_states,
                "eval_history": history,
            }
            path = ckpt.save_checkpoint(
                out_dir, state.step, raw_model, optimizer, trainer_state, rng_states, cfg.keep_last
            )
        barrier()  # nobody moves on (or reads it) before it is complete
        state.last_checkpoint = path
        _call(callbacks, "on_checkpoint", state, path)

    def diverged(what: str, value: float) -> TrainingDivergedError:
        last = state.last_checkpoint
        where = f"last good checkpoint: {last}" if last else "no checkpoint was written yet"
        return TrainingDivergedError(f"{what} became {value} at step {state.step + 1}; {where}")

    batches = iter(source)
    last_eval = history[-1]["step"] if history else -1
    last_save = state.step if saved is not None else -1
    window = {"loss": 0.0, "grad_norm": 0.0, "steps": 0, "tokens": 0, "t0": time.perf_counter()}
    window_metrics: dict[str, float] = {}

    _call(callbacks, "on_train_start", state)
    if eval_data and cfg.eval_at_start and state.step == 0 and saved is None:
        run_eval()
        last_eval = 0

    with progress_bar(progress and is_main, cfg.steps, state.step, cfg.log_every, token_budget=cfg.tokens,
                      tokens_start=state.tokens_seen) as bar:
        while not budget_reached(cfg, state.step, state.tokens_seen) and not state.stop:
            lr = lr_at(state.step, cfg, state.tokens_seen)
            for group in optimizer.param_groups:
                group["lr"] = lr

            # ---- forward/backward over grad_accum micro-batches
            loss_sum = torch.zeros((), device=device)
            tokens = 0
            for micro in range(cfg.grad_accum):
                batch = next(batches)
                tokens += count_tokens(batch)
                batch = move_to(batch, device)
                # DDP: all-reduce gradients only on the last micro-batch
                sync = train_model.no_sync() if distributed and micro < cfg.grad_accum - 1 else nullcontext()
                with sync:
                    with autocast(device, cfg.bf16):
                        loss, metrics = loss_fn(train_model, batch)
                    (loss / cfg.grad_accum).backward()  # mean over micro-batches
                loss_sum += loss.detach().float()
                for k, v in metrics.items():
                    window_metrics[k] = window_metrics.get(k, 0.0) + float(v)

            max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), max_norm)
            stats = torch.stack([loss_sum / cfg.grad_accum, grad_norm.float().to(device),
                                 torch.tensor(float(tokens), device=device)])  # (3,)
            if distributed:
                dist.all_reduce(stats)  # sum over ranks: loss and norm averaged below
                stats[:2] /= world
            step_loss, step_norm, step_tokens = stats.tolist()  # the one host sync per step

            # ---- never apply (or checkpoint) a non-finite update
            if not math.isfinite(step_loss):
                raise diverged("loss", step_loss)
            if not math.isfinite(step_norm):
                raise diverged("gradient norm", step_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

            state.step += 1
            state.tokens_seen += int(step_tokens)
            state.loss, state.grad_norm, state.lr = step_loss, step_norm, lr
            window["loss"] += step_loss
            window["grad_norm"] += step_norm
            window["steps"] += 1
            window["tokens"] += int(step_tokens)
            elapsed = max(time.perf_counter() - window["t0"], 1e-9)
            last = budget_reached(cfg, state.step, state.tokens_seen)
            bar.update(state.step, step_loss, window["tokens"] / elapsed, state.tokens_seen, last)

            if state.step % cfg.log_every == 0 or last:
                n = window["steps"]
                extra = (reduce_metrics or _mean_reduce)(
                    {**window_metrics, "loss": window["loss"] * cfg.grad_accum, "batches": n * cfg.grad_accum}
                )
                logged = {f"train/{k}": float(v) for k, v in extra.items()}
                logged.update({
                    "train/loss": window["loss"] / n,
                    "train/lr": lr,
                    "train/grad_norm": window["grad_norm"] / n,
                    "train/tokens_per_s": window["tokens"] / elapsed,
                    "train/tokens_seen": float(state.tokens_seen),
                })
                if is_main:
                    _log(tracker, logged, state.step)
                window = {"loss": 0.0, "grad_norm": 0.0, "steps": 0, "tokens": 0, "t0": time.perf_counter()}
                window_metrics = {}

            _call(callbacks, "on_step_end", state)
            if eval_data and cfg.eval_every and state.step % cfg.eval_every == 0:
                run_eval()
                last_eval = state.step
            if cfg.ckpt_every and state.step % cfg.ckpt_every == 0:
                save()
                last_save = state.step

    if eval_data and last_eval != state.step:
        run_eval()
    if last_save != state.step:
        save()
    _call(callbacks, "on_train_end", state)
    return TrainResult(
        step=state.step,
        train_loss=state.loss,
        eval_history=history,
        checkpoint=state.last_checkpoint,
        tokens_seen=state.tokens_seen,
        wall_time_s=time.perf_counter() - t_start,
        resumed_from=latest if saved is not None else None,
    )


__all__ = [
    "BatchSource",
    "Callback",
    "TrainResult",
    "TrainState",
    "TrainingDivergedError",
    "as_batch_source",
    "configure_optimizer",
    "default_count_tokens",
    "evaluate",
    "maybe_init_distributed",
    "move_to",
    "param_groups",
    "train",
    "unwrap_model",
]
