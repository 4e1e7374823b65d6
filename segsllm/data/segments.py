"""Segments of a corpus split as flat arrays, cached on disk, batched by length.

Documents are tokenised once and cut by a segmenter; the result is stored as one flat
token array plus per-segment offsets (memory-mapped ``.npy`` files), never as Python lists
of tensors. :class:`BucketedBatches` groups segments of similar length so padding stays
small, and is resumable (the training loop's ``BatchSource`` protocol).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segsllm.data.batches import EpochBatches
from segsllm.errors import DataError
from segsllm.io import make_temp_dir

ARRAYS = ("ids", "starts", "lengths", "n_bytes", "doc_index")
CACHE_VERSION = 1


@dataclass
class SegmentTable:
    """All segments of one domain/split.

    ``ids[starts[i] : starts[i] + lengths[i]]`` are the token ids of segment ``i``;
    ``n_bytes[i]`` its UTF-8 byte count (for bits/byte); ``doc_index[i]`` its document.
    """

    domain: str
    ids: np.ndarray  # (N_tokens,) int32
    starts: np.ndarray  # (S,) int64
    lengths: np.ndarray  # (S,) int32
    n_bytes: np.ndarray  # (S,) int64
    doc_index: np.ndarray  # (S,) int32
    n_docs: int = 0

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    def segment(self, i: int) -> np.ndarray:
        """Token ids of segment ``i`` (a view into the flat array)."""
        start = int(self.starts[i])
        return self.ids[start : start + int(self.lengths[i])]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"ids": self.segment(i), "n_bytes": int(self.n_bytes[i]), "domain": self.domain}

    def document_segments(self, doc: int) -> tuple[int, int]:
        """[first, last) segment indices of document ``doc`` (segments are stored in order)."""
        lo = int(np.searchsorted(self.doc_index, doc, side="left"))
        hi = int(np.searchsorted(self.doc_index, doc, side="right"))
        return lo, hi

    @property
    def total_tokens(self) -> int:
        return int(self.lengths.sum())

    @property
    def total_bytes(self) -> int:
        return int(self.n_bytes.sum())

    def save(self, folder: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
        """Write the arrays + meta.json into ``folder`` atomically (temp folder + rename)."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(folder.parent, prefix=f".{folder.name}.")  # umask permissions, not 0700
        try:
            for name in ARRAYS:
                np.save(tmp / f"{name}.npy", getattr(self, name))
            info = {"domain": self.domain, "n_docs": self.n_docs, "version": CACHE_VERSION, **(meta or {})}
            (tmp / "meta.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
            try:
                tmp.rename(folder)
            except OSError:
                # Another process (a DDP rank) finished the same table first: keep theirs.
                if not (folder / "meta.json").is_file():
                    shutil.rmtree(folder, ignore_errors=True)
                    tmp.rename(folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return folder

    @classmethod
    def load(cls, folder: str | Path, mmap: bool = True) -> SegmentTable:
        """Load a saved table; arrays are memory-mapped unless ``mmap=False``."""
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r" if mmap else None) for n in ARRAYS}
        return cls(domain=meta["domain"], n_docs=int(meta.get("n_docs", 0)), **arrays)


def build_segment_table(
    texts: Iterable[str],
    tokenizer: Any,
    segmenter: Any,
    domain: str,
    docs_per_batch: int = 64,
) -> SegmentTable:
    """Tokenise ``texts`` (batched, Rust-side), cut each with ``segmenter``, flatten."""
    from segsllm.data.vocab import vocab_bytes

    token_bytes = vocab_bytes(tokenizer).lengths  # (V,) bytes per token id
    ids_parts: list[np.ndarray] = []
    len_parts: list[np.ndarray] = []
    doc_parts: list[np.ndarray] = []
    n_docs = 0

    def flush(batch: list[str]) -> None:
        nonlocal n_docs
        encoded = tokenizer(batch, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        arrays = [np.asarray(e, dtype=np.int64) for e in encoded]
        for arr, ends in zip(arrays, segmenter.segment_batch(arrays), strict=True):
            if arr.size == 0:
                n_docs += 1
                continue
            lengths = np.diff(np.concatenate([[0], np.asarray(ends, dtype=np.int64)]))
            ids_parts.append(arr.astype(np.int32))
            len_parts.append(lengths.astype(np.int32))
            doc_parts.append(np.full(lengths.shape[0], n_docs, dtype=np.int32))
            n_docs += 1

    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) >= docs_per_batch:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    if not len_parts:
        raise DataError(f"no tokens in the {domain} documents: nothing to segment")
    ids = np.concatenate(ids_parts)
    lengths = np.concatenate(len_parts)
    starts = np.concatenate([[0], np.cumsum(lengths[:-1], dtype=np.int64)]).astype(np.int64)
    # Bytes of a segment = sum of its tokens' bytes (exact for byte-level vocabularies).
    per_token = token_bytes[np.minimum(ids, token_bytes.shape[0] - 1)]
    csum = np.concatenate([[0], np.cumsum(per_token, dtype=np.int64)])
    n_bytes = csum[starts + lengths] - csum[starts]
    return SegmentTable(
        domain=domain,
        ids=ids,
        starts=starts,
        lengths=lengths,
        n_bytes=n_bytes.astype(np.int64),
        doc_index=np.concatenate(doc_parts),
        n_docs=n_docs,
    )


def load_segments(
    data_dir: str | Path,
    domain: str,
    split: str,
    tokenizer: Any,
    segmenter: Any,
    *,
    max_docs: int | None = None,
    max_doc_bytes: int | None = None,
    cache_dir: str | Path | None = None,
) -> SegmentTable:
    """Segments of one prepared corpus split, cached under ``cache_dir`` (default
    ``<data_dir>/.cache/segments``) keyed by corpus checksum, tokenizer, segmenter and caps."""
    from segsllm.data.store import iter_documents, load_manifest
    from segsllm.data.tokenizer import tokenizer_fingerprint

    manifest = load_manifest(data_dir, domain)
    check_split_has_documents(manifest, domain, split)
    key_parts = {
        "corpus": domain,
        "corpus_sha256": manifest.get("sha256"),
        "corpus_created": manifest.get("created"),
        "split": split,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "segmenter": segmenter.spec() if callable(getattr(segmenter, "spec", None)) else repr(segmenter),
        # A learned segmenter retrained into the same folder must not reuse old tables.
        "segmenter_weights": _weights_token(segmenter),
        "max_docs": max_docs,
        "max_doc_bytes": max_doc_bytes,
        "version": CACHE_VERSION,
    }
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()[:20]
    root = Path(cache_dir) if cache_dir is not None else Path(data_dir) / ".cache" / "segments"
    folder = root / f"{domain}-{split}-{key}"
    if (folder / "meta.json").is_file():
        try:
            return SegmentTable.load(folder)
        except (OSError, ValueError, KeyError):
            shutil.rmtree(folder, ignore_errors=True)  # a damaged cache is rebuilt
    texts = (d.text for d in iter_documents(data_dir, domain, split, max_docs, max_doc_bytes))
    table = build_segment_table(texts, tokenizer, segmenter, domain)
    table.save(folder, meta=key_parts)
    return SegmentTable.load(folder)


def check_split_has_documents(manifest: dict[str, Any], corpus: str, split: str) -> None:
    """A :class:`DataError` naming the corpus and split when the split holds no documents
    (a 10-document corpus has no validation or test documents at the default 5 %)."""
    docs = manifest.get("documents", {})
    if split in docs and not docs[split]:
        fraction = manifest.get("fractions", {}).get(split)
        raise DataError(
            f"no tokens in the {split} split of corpus {corpus!r}: it holds no documents "
            f"({sum(docs.values())} in all; {split}_fraction {fraction}); add documents, or raise "
            f"--set data.{split}_fraction and rebuild it with `segsllm data prepare --force`"
        )


def _weights_token(segmenter: Any) -> str | None:
    """Size and mtime of a model-backed segmenter's weights (None for rule-based ones)."""
    path = getattr(segmenter, "path", None)
    if not path:
        return None
    weights = sorted(Path(path).glob("*.safetensors"))
    return ";".join(f"{w.name}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in weights) or None


class ConcatTables:
    """Several tables seen as one indexable dataset (items carry their domain)."""

    def __init__(self, tables: Sequence[SegmentTable]) -> None:
        if not tables:
            raise DataError("no segment tables to train on")
        self.tables = list(tables)
        self.offsets = np.cumsum([0] + [len(t) for t in self.tables])
        self.lengths = np.concatenate([np.asarray(t.lengths) for t in self.tables])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> dict[str, Any]:
        t = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return self.tables[t][i - int(self.offsets[t])]


def collate_segments(items: Sequence[Mapping[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-pad segment ids into ``(B, T)`` tensors with their lengths and byte counts."""
    import torch

    lengths = [len(it["ids"]) for it in items]
    width = max(lengths)
    ids = np.full((len(items), width), pad_id, dtype=np.int64)  # (B, T)
    for row, it in enumerate(items):
        ids[row, : lengths[row]] = it["ids"]
    return {
        "ids": torch.from_numpy(ids),
        "lengths": torch.tensor(lengths, dtype=torch.long),  # (B,)
        "n_bytes": torch.tensor([int(it["n_bytes"]) for it in items], dtype=torch.long),  # (B,)
    }


class BucketedBatches(EpochBatches):
    """Endless, resumable batches of similar-length segments (the loop's ``BatchSource``).

    Each epoch's order is cut into pools of ``pool_batches`` batches; each pool is sorted by
    length and cut into batches (little padding), then the batch order is shuffled (no
    length curriculum). Rank ``r`` of ``w`` takes batches ``r::w``.
    """

    what = "segments"

    def __init__(self, dataset: Any, batch_size: int, pad_id: int, seed: int = 0, pool_batches: int = 50,
                 rank: int | None = None, world_size: int | None = None, balanced: bool = False) -> None:
        self.lengths = np.asarray(dataset.lengths)
        self.pool_batches, self.pad_id = int(pool_batches), int(pad_id)
        super().__init__(dataset, batch_size, seed, balanced=balanced, rank=rank, world_size=world_size)

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        perm = self._order(rng)
        perm = perm[: (len(perm) // self.batch_size) * self.batch_size]
        pool = self.pool_batches * self.batch_size
        batches: list[np.ndarray] = []
        for p in range(0, len(perm), pool):
            chunk = perm[p : p + pool]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches.extend(np.split(chunk, len(chunk) // self.batch_size))
        order = rng.permutation(len(batches))
        mine = [batches[i] for i in order][self.rank :: self.world_size]
        return mine[: len(self)]

    def _collate(self, items: list[Any]) -> dict[str, Any]:
        return collate_segments(items, self.pad_id)


def eval_batches(table: SegmentTable, batch_size: int, pad_id: int, max_batches: int | None = None) -> list:
    """A fixed, length-sorted list of index batches for evaluation (cheap to re-iterate)."""
    order = np.argsort(np.asarray(table.lengths), kind="stable")
    n = math.ceil(len(order) / batch_size)
    chunks = [order[i * batch_size : (i + 1) * batch_size] for i in range(n)]
    if max_batches is not None and len(chunks) > max_batches:
        # An evenly spread subset keeps all length ranges represented.
        pick = np.linspace(0, len(chunks) - 1, max_batches).round().astype(int)
        chunks = [chunks[i] for i in sorted(set(pick.tolist()))]
    return chunks
