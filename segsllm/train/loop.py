"""The one training loop every stage uses (VAE, token LM, SLLM, boundary predictor).

A stage supplies a model, an objective ``loss_fn(model, batch) -> (loss, metrics)`` and a
resumable batch source; :func:`train` does the rest: AdamW with decay on matrices only,
linear warm-up + cosine, gradient accumulation and clipping, bf16 autocast on CUDA,
periodic evaluation per named source, tracker logging, atomic safetensors checkpoints
with exact resume, a clear stop on NaN/inf, and DDP when launched by ``torchrun``.

Exact resume rests on three things being restored: weights + optimizer (safetensors), the
global RNGs (dropout), and the data position (a :class:`BatchSource` state). The
learning rate is a pure function of the step (:func:`segsllm.train.schedule.lr_at`).
"""

from __future__ import annotations

import dataclasses
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
from segsllm.errors import ArtifactError, ConfigError, DataError, SegsllmError
from segsllm.runtime import autocast, dist_info
from segsllm.train import checkpoint as ckpt
from segsllm.train.schedule import lr_at

Batch = Any
LossFn = Callable[[nn.Module, Batch], "tuple[torch.Tensor, Mapping[str, float]]"]
EvalFn = Callable[[nn.Module, Iterable[Batch]], Mapping[str, float]]
ReduceFn = Callable[[dict[str, float]], Mapping[str, float]]
EvalSource = Iterable[Batch] | Callable[[], Iterable[Batch]]


class TrainingDivergedError(SegsllmError):
    """The loss or the gradient norm became NaN/inf; the last checkpoint is still good."""


# --------------------------------------------------------------------------- distributed


def _rank_world() -> tuple[int, int]:
    """(rank, world_size) of the initialised process group, else from the environment."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    rank, _, world = dist_info()
    return rank, world


def maybe_init_distributed() -> tuple[int, int, int]:
    """Initialise torch.distributed from the torchrun environment when WORLD_SIZE > 1.

    NCCL on CUDA (and binds this process to GPU ``LOCAL_RANK``), gloo otherwise. Idempotent;
    returns (rank, local_rank, world_size), (0, 0, 1) for a plain single process.
    """
    _, local_rank, world = dist_info()
    if world > 1 and not (dist.is_available() and dist.is_initialized()):
        if not dist.is_available():
            raise SegsllmError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), local_rank, dist.get_world_size()
    return 0, 0, 1


def _all_gather(obj: Any) -> list[Any]:
    """One small picklable object per rank (in memory only; nothing is read from disk)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


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


def _default_collate(items: list[Any]) -> Any:
    from torch.utils.data import default_collate

    return default_collate(items)


class ShuffledBatches:
    """Endless shuffled batches over any indexable dataset, sharded per rank, resumable.

    Epoch ``e`` uses ``torch.randperm(len(dataset))`` seeded with ``seed + e`` and gives rank
    ``r`` of ``w`` the indices ``perm[r::w]`` after padding to a multiple of ``w``: the
    semantics of ``DistributedSampler``. Items are fetched with ``dataset[i]`` only when
    their batch is built, so the dataset can be lazy (memory-mapped, on-the-fly tokenised).
    State is (epoch, position in batches); resuming with another world size or batch size
    keeps the number of items consumed in the epoch.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        collate: Callable[[list[Any]], Batch] | None = None,
        seed: int = 0,
        *,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        env_rank, env_world = _rank_world()
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.collate = collate or _default_collate
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank = env_rank if rank is None else rank
        self.world_size = env_world if world_size is None else world_size
        self.epoch = 0
        self.position = 0  # batches of the current epoch already yielded
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if len(self) == 0:
            raise DataError(
                f"dataset of {len(dataset)} items gives no batch of {self.batch_size} "
                f"(world size {self.world_size}); use a smaller batch_size or more data"
            )

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        per_rank = math.ceil(len(self.dataset) / self.world_size)
        full, rest = divmod(per_rank, self.batch_size)
        return full + (rest > 0 and not self.drop_last)

    def _indices(self, epoch: int) -> list[int]:
        """This rank's item order for ``epoch``."""
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        total = math.ceil(n / self.world_size) * self.world_size
        order += order[: total - n]  # pad by wrapping, as DistributedSampler does
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[Batch]:
        while True:
            order = self._indices(self.epoch)
            for b in range(self.position, len(self)):
                idx = order[b * self.batch_size : (b + 1) * self.batch_size]
                self.position = b + 1  # state now says "this batch is consumed"
                yield self.collate([self.dataset[i] for i in idx])
            self.epoch += 1
            self.position = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "num_items": len(self.dataset),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("num_items", len(self.dataset)) != len(self.dataset):
            warnings.warn(
                f"resuming over a dataset of {len(self.dataset)} items, the checkpoint saw "
                f"{state['num_items']}: the data order will differ",
                stacklevel=2,
            )
        self.seed = int(state.get("seed", self.seed))
        self.epoch = int(state["epoch"])
        position = int(state["position"])
        # Same items consumed per rank-batch? If not, convert via the item count.
        old = int(state.get("batch_size", self.batch_size)) * int(state.get("world_size", self.world_size))
        new = self.batch_size * self.world_size
        self.position = position if old == new else min(len(self), position * old // new)


class SequentialBatches:
    """Finite, re-iterable batches in dataset order, for evaluation; sharded per rank.

    Rank ``r`` of ``w`` gets items ``r, r+w, ...`` without padding, so sums over ranks count
    every item exactly once.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        collate: Callable[[list[Any]], Batch] | None = None,
        *,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        env_rank, env_world = _rank_world()
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.collate = collate or _default_collate
        self.rank = env_rank if rank is None else rank
        self.world_size = env_world if world_size is None else world_size

    def __len__(self) -> int:
        return math.ceil(len(range(self.rank, len(self.dataset), self.world_size)) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        idx = range(self.rank, len(self.dataset), self.world_size)
        for start in range(0, len(idx), self.batch_size):
            yield self.collate([self.dataset[i] for i in idx[start : start + self.batch_size]])


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
                    + (" on its second pass: pass a re-iterable (a list, ShuffledBatches) "
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


def move_to(batch: Batch, device: torch.device) -> Batch:
    """Move every tensor of a (nested) batch to ``device``; other values pass through."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        moved = {k: move_to(v, device) for k, v in batch.items()}
        return moved if type(batch) is dict else _rebuild(batch, moved)
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    if callable(getattr(batch, "to", None)) and not isinstance(batch, nn.Module):
        return batch.to(device)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        fields = {f.name: move_to(getattr(batch, f.name), device) for f in dataclasses.fields(batch) if f.init}
        return dataclasses.replace(batch, **fields)
    return batch


def _rebuild(mapping: Mapping[str, Any], moved: dict[str, Any]) -> Any:
    try:
        return type(mapping)(moved)
    except TypeError:
        return moved


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


# --------------------------------------------------------------------------- optimizer


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices; none on biases, norm gains and embeddings.

    Embeddings are found by type (``nn.Embedding``/``nn.EmbeddingBag``), so a tied output
    head (the same Parameter) is not decayed either. Frozen parameters are left out.
    """
    embedding_ids = {
        id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
    }
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # shared parameters are listed once
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or id(p) in embedding_ids else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def configure_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    groups = param_groups(model, cfg.weight_decay)
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    beta1, beta2 = cfg.betas
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(beta1, beta2), fused=device.type == "cuda" or None
    )


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
                    per_rank = _all_gather(dict(eval_fn(model, on_device)))
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
                    for rank_sums in _all_gather(sums):
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


def _resolve_device(device: str | torch.device | None, model: nn.Module, local_rank: int, world: int) -> torch.device:
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", local_rank)  # one GPU per rank
    return device


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


def _progress_bar(enabled: bool, total: int, start: int, every: int = 10) -> Any:
    """A rich progress bar on a terminal; a no-op object otherwise."""
    if enabled:
        from rich.console import Console

        console = Console(stderr=True)
        if console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[tps]} tok/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
            )
            task = bar.add_task("train", total=total, completed=start, loss="-", tps="-")
            return _Bar(bar, task)
        # Not a terminal (CI, a log file): one plain line per logging window instead.
        return _Bar(None, None, plain_total=total, every=every)
    return _Bar(None, None)


class _Bar:
    def __init__(self, bar: Any, task: Any, plain_total: int | None = None, every: int = 10) -> None:
        self.bar, self.task, self.plain_total, self.every = bar, task, plain_total, max(1, every)

    def __enter__(self) -> _Bar:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, step: int, loss: float, tokens_per_s: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=f"{loss:.4f}", tps=f"{tokens_per_s:,.0f}")
        elif self.plain_total is not None and (step % self.every == 0 or step == self.plain_total):
            import sys

            print(f"train step {step}/{self.plain_total}  loss {loss:.4f}  {tokens_per_s:,.0f} tok/s",
                  file=sys.stderr, flush=True)


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
    """Train ``model`` for ``cfg.steps`` optimizer steps; checkpoints go to ``out_dir/checkpoints``.

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
    device = _resolve_device(device, model, local_rank, world)
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
    _barrier()

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
        rng_states = _all_gather(ckpt.capture_rng())
        data_states = _all_gather(source.state_dict())
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
        _barrier()  # nobody moves on (or reads it) before it is complete
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

    with _progress_bar(progress and is_main, cfg.steps, state.step, cfg.log_every) as bar:
        while state.step < cfg.steps and not state.stop:
            lr = lr_at(state.step, cfg)
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
            bar.update(state.step, step_loss, window["tokens"] / elapsed)

            if state.step % cfg.log_every == 0 or state.step == cfg.steps:
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
    "SequentialBatches",
    "ShuffledBatches",
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
