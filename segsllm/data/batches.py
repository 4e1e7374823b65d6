"""Batch sources: the one resumable, rank-sharded epoch core and the finite eval batcher.

Every training batch source is an :class:`EpochBatches`: an epoch is a list of index
batches computed from a generator seeded with (seed, epoch); rank ``r`` of ``w`` takes its
share; the state is (epoch, batches consumed on this rank), so resuming replays exactly
the batches that would have come next. A source only says how an epoch's order becomes
batches (:meth:`EpochBatches._epoch_batches`) and how a batch is collated. Specialised in
:mod:`segsllm.data.segments` (length-bucketed segments), :mod:`segsllm.data.token_windows`
(token windows), :mod:`segsllm.data.segment_windows` (segment windows, one domain per
batch) and :mod:`segsllm.train.splitter_stage` (labelled chunks); :class:`ShuffledBatches`
is the generic one for any indexable dataset. Nothing here imports torch at import time.
"""

from __future__ import annotations

import abc
import itertools
import math
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from segsllm.errors import DataError

Collate = Callable[[list[Any]], Any]


def rank_world() -> tuple[int, int]:
    """(rank, world_size) of the initialised process group, else from the environment."""
    dist = sys.modules.get("torch.distributed")  # a process group exists only if torch is loaded
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    from segsllm.runtime import dist_info

    rank, _, world = dist_info()
    return rank, world


def default_collate(items: list[Any]) -> Any:
    """torch's default collation (stacks tensors/arrays, recurses into dicts and tuples)."""
    from torch.utils.data import default_collate as collate

    return collate(items)


class EpochBatches(abc.ABC):
    """Shared core of the resumable, rank-sharded, optionally domain-balanced batch sources.

    An epoch's item order comes from a generator seeded with (seed, epoch). With
    ``balanced=True`` over a dataset with per-domain ``offsets`` (:class:`ConcatTables`),
    every epoch draws the same number of items from each domain (the smallest domain's
    count, a fresh random subset of the larger ones), so CSV's many tiny segments do not
    drown prose. Subclasses may change how an order becomes batches (:meth:`_epoch_batches`
    with :meth:`__len__`) and say how a batch is collated (:meth:`_collate`).
    """

    what = "items"

    def __init__(self, dataset: Any, batch_size: int, seed: int = 0, *, balanced: bool = False,
                 rank: int | None = None, world_size: int | None = None) -> None:
        env_rank, env_world = rank_world()
        self.dataset = dataset
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.rank = env_rank if rank is None else rank
        self.world_size = env_world if world_size is None else world_size
        if self.batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        offsets = getattr(dataset, "offsets", None)
        self.domain_ranges = (
            [(int(a), int(b)) for a, b in itertools.pairwise(offsets)] if balanced and offsets is not None else None
        )
        self.epoch = 0
        self.position = 0  # batches of the current epoch already yielded on this rank
        if len(self) == 0:
            raise DataError(
                f"{self._epoch_items()} {self.what} per epoch give no batch of {self.batch_size} on "
                f"{self.world_size} rank(s); use a smaller batch size or more data"
            )

    def _epoch_items(self) -> int:
        if self.domain_ranges:
            return min(b - a for a, b in self.domain_ranges) * len(self.domain_ranges)
        return len(self.dataset)

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return (self._epoch_items() // self.batch_size) // self.world_size

    def _order(self, rng: np.random.Generator) -> np.ndarray:
        """This epoch's items: a permutation (of a balanced draw when balancing)."""
        if self.domain_ranges:
            per = min(b - a for a, b in self.domain_ranges)
            picks = [a + rng.choice(b - a, size=per, replace=False) for a, b in self.domain_ranges]
            return rng.permutation(np.concatenate(picks))
        return rng.permutation(len(self.dataset))

    def _epoch_batches(self, epoch: int) -> Sequence[Sequence[int]]:
        """This rank's index batches of ``epoch``: consecutive slices, rank-interleaved."""
        order = self._order(np.random.default_rng([self.seed, epoch]))
        return [order[(b * self.world_size + self.rank) * self.batch_size :][: self.batch_size]
                for b in range(len(self))]

    @abc.abstractmethod
    def _collate(self, items: list[Any]) -> Any:
        """Items of one batch -> the tensors the stage's loss reads."""

    def __iter__(self) -> Iterator[Any]:
        while True:
            batches = self._epoch_batches(self.epoch)
            for b in range(self.position, len(batches)):
                self.position = b + 1  # state now says "this batch is consumed"
                yield self._collate([self.dataset[int(i)] for i in batches[b]])
            self.epoch += 1
            self.position = 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "batch_size": self.batch_size, "num_items": len(self.dataset)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.seed = int(state.get("seed", self.seed))
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])


class ShuffledBatches(EpochBatches):
    """Endless shuffled batches over any indexable dataset, sharded per rank, resumable.

    Epoch ``e`` uses ``torch.randperm(len(dataset))`` seeded with ``seed + e`` and gives rank
    ``r`` of ``w`` the indices ``perm[r::w]`` after padding to a multiple of ``w``: the
    semantics of ``DistributedSampler``. Items are fetched with ``dataset[i]`` only when
    their batch is built, so the dataset can be lazy (memory-mapped, on-the-fly tokenised).
    Resuming with another world size or batch size keeps the number of items consumed.
    """

    def __init__(self, dataset: Any, batch_size: int, collate: Collate | None = None, seed: int = 0, *,
                 shuffle: bool = True, drop_last: bool = True, rank: int | None = None,
                 world_size: int | None = None) -> None:
        self.collate = collate or default_collate
        self.shuffle, self.drop_last = shuffle, drop_last
        super().__init__(dataset, batch_size, seed, rank=rank, world_size=world_size)

    def __len__(self) -> int:
        per_rank = math.ceil(len(self.dataset) / self.world_size)
        full, rest = divmod(per_rank, self.batch_size)
        return full + (rest > 0 and not self.drop_last)

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        import torch

        n = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        else:
            order = list(range(n))
        total = math.ceil(n / self.world_size) * self.world_size
        order += order[: total - n]  # pad by wrapping, as DistributedSampler does
        mine = order[self.rank : total : self.world_size]
        return [mine[b * self.batch_size : (b + 1) * self.batch_size] for b in range(len(self))]

    def _collate(self, items: list[Any]) -> Any:
        return self.collate(items)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "world_size": self.world_size}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("num_items", len(self.dataset)) != len(self.dataset):
            warnings.warn(
                f"resuming over a dataset of {len(self.dataset)} items, the checkpoint saw "
                f"{state['num_items']}: the data order will differ",
                stacklevel=2,
            )
        super().load_state_dict(state)
        # Same items consumed per rank-batch? If not, convert via the item count.
        old = int(state.get("batch_size", self.batch_size)) * int(state.get("world_size", self.world_size))
        new = self.batch_size * self.world_size
        if old != new:
            self.position = min(len(self), self.position * old // new)


class SequentialBatches:
    """Finite, re-iterable batches in dataset order, for evaluation; sharded per rank.

    Rank ``r`` of ``w`` gets items ``r, r+w, ...`` without padding, so sums over ranks count
    every item exactly once.
    """

    def __init__(self, dataset: Any, batch_size: int, collate: Collate | None = None, *,
                 rank: int | None = None, world_size: int | None = None) -> None:
        env_rank, env_world = rank_world()
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.collate = collate or default_collate
        self.rank = env_rank if rank is None else rank
        self.world_size = env_world if world_size is None else world_size

    def __len__(self) -> int:
        return math.ceil(len(range(self.rank, len(self.dataset), self.world_size)) / self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        idx = range(self.rank, len(self.dataset), self.world_size)
        for start in range(0, len(idx), self.batch_size):
            yield self.collate([self.dataset[i] for i in idx[start : start + self.batch_size]])



def move_to(batch: Any, device: Any) -> Any:
    """Move every tensor of a (nested) batch to ``device``; other values pass through
    (dicts, namedtuples, lists, dataclasses and objects with ``.to`` are rebuilt)."""
    import dataclasses

    import torch
    from torch import nn

    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        moved = {k: move_to(v, device) for k, v in batch.items()}
        if type(batch) is dict:
            return moved
        try:
            return type(batch)(moved)
        except TypeError:
            return moved
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

__all__ = [
    "EpochBatches",
    "SequentialBatches",
    "ShuffledBatches",
    "default_collate",
    "move_to",
    "rank_world",
]
