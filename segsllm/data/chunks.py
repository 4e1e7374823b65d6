"""Labelled token chunks as batches: what the boundary predictor trains on (docs/DESIGN.md §6).

A chunk is at most ``splitter.chunk_tokens`` tokens of one document with a 0/1 label per
token ("a segment ends after this token"); the joint teacher uses the same batches with
all-zero labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from segsllm.data.batches import EpochBatches
from segsllm.errors import DataError


def collate_chunks(items: Sequence[tuple[np.ndarray, np.ndarray]], pad_id: int) -> dict[str, Any]:
    """(ids, labels) chunks -> right-padded tensors. ``loss_mask`` leaves out padding and
    each chunk's last token (its boundary is forced, not predicted)."""
    import torch

    lengths = np.array([len(ids) for ids, _ in items], dtype=np.int64)
    width = int(lengths.max())
    ids = np.full((len(items), width), pad_id, dtype=np.int64)  # (B, T)
    labels = np.zeros((len(items), width), dtype=np.float32)  # (B, T)
    for r, (chunk, lab) in enumerate(items):
        ids[r, : len(chunk)] = chunk
        labels[r, : len(chunk)] = lab
    mask = np.arange(width)[None, :] < lengths[:, None]  # (B, T)
    loss_mask = np.arange(width)[None, :] < (lengths - 1)[:, None]
    return {"ids": torch.from_numpy(ids), "mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(labels), "loss_mask": torch.from_numpy(loss_mask)}


class ChunkBatches(EpochBatches):
    """Endless, resumable shuffled batches of labelled chunks (the loop's ``BatchSource``).

    With ``balanced``, each epoch draws as many chunks from every domain (the largest
    domain's count; smaller domains repeat), so one domain's volume does not decide what
    the predictor learns. State: (epoch, batches consumed).
    """

    what = "chunks"

    def __init__(self, items: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]], batch_size: int,
                 pad_id: int, seed: int = 0, balanced: bool = True) -> None:
        groups = [list(v) for v in items.values() if len(v)]
        if not groups:
            raise DataError("no labelled chunks to train the splitter on")
        self.sizes = [len(g) for g in groups]  # chunks per domain, in the items' order
        self.pad_id, self.balanced = int(pad_id), balanced
        super().__init__([c for g in groups for c in g], batch_size, seed)

    def _epoch_items(self) -> int:
        return max(self.sizes) * len(self.sizes) if self.balanced else sum(self.sizes)

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        per, start, picks = max(self.sizes), 0, []
        for n in self.sizes:
            picks.append(start + np.resize(rng.permutation(n), per if self.balanced else n))
            start += n
        pairs = np.concatenate(picks)
        order = pairs[rng.permutation(len(pairs))]
        batches = [order[i : i + self.batch_size] for i in range(0, len(order) - self.batch_size + 1, self.batch_size)]
        return batches[self.rank :: self.world_size][: len(self)]

    def _collate(self, items: list[Any]) -> dict[str, Any]:
        return collate_chunks(items, self.pad_id)


def eval_batches(items: Sequence[tuple[np.ndarray, np.ndarray]], batch_size: int, pad_id: int) -> list[dict[str, Any]]:
    """A fixed list of validation batches (cheap to re-iterate)."""
    return [collate_chunks(items[i : i + batch_size], pad_id) for i in range(0, len(items), batch_size)]


__all__ = ["ChunkBatches", "collate_chunks", "eval_batches"]
