"""Prepared corpora on disk: format, split assignment, manifests and the reading API.

Layout of one corpus (``<data_dir>/<name>/``)::

    train.jsonl  validation.jsonl  test.jsonl   one {"id", "text"} object per line
    manifest.json                                source, version, sha256, counts, bytes ...

JSON escapes newlines, so every document is exactly one line and a split can be streamed
line by line whatever the text holds (CRLF, tabs, a 10 MB line). A corpus is built in a
hidden temp folder and renamed into place only once ``manifest.json`` is written, so a
crash never leaves a half corpus that looks complete; ``manifest.json`` present means done.

Duplicates never straddle splits (:mod:`segsllm.data.dedup`): exact duplicates (same
text after newline normalisation) are collapsed to the one with the smallest id before
splitting, and near-duplicate families (MinHash over token shingles) are split as one.
The split of a document depends only on its **family key**, the smallest id of its
family (its own id when it has no near-duplicate): ``sha256(key)`` read as a number in
[0, 1) below ``test_fraction`` is test, below ``test + validation`` is validation, the rest
train. Adding documents moves no existing one to another split unless the new one joins
its family with a smaller id, and the split does not depend on the seed, so every stage
agrees on it. ``duplicates.json`` lists what was collapsed and grouped; the manifest counts it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from segsllm.data.dedup import DedupConfig, DedupPlan, MinHasher, ShingleHasher, content_key, plan
from segsllm.data.textio import decode_utf8, is_binary
from segsllm.errors import DataError
from segsllm.io import atomic_write_json, read_json

SPLITS = ("train", "validation", "test")
BUILTIN_CORPORA = ("prose", "code", "csv")
MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # 2: exact duplicates collapsed, near-duplicate families split together
DUPLICATES = "duplicates.json"
# The manifest keys that identify a prepared corpus: enough to tell whether a tokenizer (or
# any later artifact) saw the same data.
IDENTITY_KEYS = (
    "name", "source", "version", "sha256", "fallback_used", "created", "fractions", "documents", "bytes", "files",
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


class Document(NamedTuple):
    """One document of a prepared corpus."""

    id: str
    text: str


# --------------------------------------------------------------------------- splits


def split_point(doc_id: str) -> float:
    """``sha256(id)`` as a uniform number in [0, 1) (first 64 bits)."""
    digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(doc_id: str, validation_fraction: float = 0.05, test_fraction: float = 0.10) -> str:
    """The split (``train`` | ``validation`` | ``test``) a document id belongs to."""
    check_fractions(validation_fraction, test_fraction)
    u = split_point(doc_id)
    if u < test_fraction:
        return "test"
    if u < test_fraction + validation_fraction:
        return "validation"
    return "train"


def check_fractions(validation_fraction: float, test_fraction: float) -> None:
    """Fractions must be in [0, 1) and leave something for train."""
    for key, value in (
        ("data.validation_fraction", validation_fraction),
        ("data.test_fraction", test_fraction),
    ):
        if not 0.0 <= value < 1.0:
            raise DataError(f"{key} must be in [0, 1), got {value}")
    if validation_fraction + test_fraction >= 1.0:
        raise DataError("data.validation_fraction + data.test_fraction must be below 1")


# --------------------------------------------------------------------------- locations


def check_name(name: str, allow_builtin: bool = True) -> str:
    """A corpus name is a folder name: letters, digits, ``_ . -``; not ``all``."""
    if not _NAME_RE.match(name or "") or name == "all":
        raise DataError(
            f"invalid corpus name {name!r}: use letters, digits, '_', '.', '-' (not 'all'), up to 64 chars"
        )
    if not allow_builtin and name in BUILTIN_CORPORA:
        raise DataError(
            f"corpus name {name!r} is reserved for the built-in corpus; choose another --name"
        )
    return name


def corpus_dir(data_dir: str | Path, corpus: str) -> Path:
    """Folder of one corpus."""
    return Path(data_dir) / corpus


def is_prepared(data_dir: str | Path, corpus: str) -> bool:
    """True when the corpus folder holds a manifest (it is only renamed in when complete)."""
    return (corpus_dir(data_dir, corpus) / MANIFEST).is_file()


def prepare_hint(corpus: str) -> str:
    """The command that prepares ``corpus``."""
    if corpus in BUILTIN_CORPORA:
        return f"run `segsllm data prepare --corpus {corpus}`"
    return f"run `segsllm data prepare --from PATH --name {corpus}` (or --hf-dataset NAME --name {corpus})"


def require_prepared(data_dir: str | Path, corpus: str) -> Path:
    """The corpus folder, or a :class:`DataError` that says how to prepare it."""
    check_name(corpus)
    if not is_prepared(data_dir, corpus):
        raise DataError(
            f"corpus {corpus!r} is not prepared in {Path(data_dir)}; {prepare_hint(corpus)}"
        )
    return corpus_dir(data_dir, corpus)


def list_corpora(data_dir: str | Path) -> list[str]:
    """Names of the prepared corpora in ``data_dir``, sorted (temp folders are ignored)."""
    root = Path(data_dir)
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if not p.name.startswith(".") and (p / MANIFEST).is_file()
    )


def load_manifest(data_dir: str | Path, corpus: str) -> dict[str, Any]:
    """The manifest of a prepared corpus."""
    path = require_prepared(data_dir, corpus) / MANIFEST
    try:
        return read_json(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"corrupted manifest {path}: {exc}; re-run with --force") from None


# --------------------------------------------------------------------------- reading


def truncate_utf8(text: str, max_bytes: int) -> str:
    """At most ``max_bytes`` UTF-8 bytes of ``text``, cut after a newline when there is one."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    cut = data[:max_bytes]
    nl = cut.rfind(b"\n")
    if nl > 0:
        cut = cut[: nl + 1]
    return cut.decode("utf-8", errors="ignore")  # drops a character cut in half


def iter_documents(
    data_dir: str | Path,
    corpus: str,
    split: str,
    max_docs: int | None = None,
    max_doc_bytes: int | None = None,
) -> Iterator[Document]:
    """Stream the documents of one split in stored order.

    ``max_docs`` stops after that many documents; ``max_doc_bytes`` truncates each document
    (after a line end where possible), as ``cfg.data.max_docs`` / ``max_doc_bytes`` ask.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
    path = require_prepared(data_dir, corpus) / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"missing {path}; re-run `segsllm data prepare` with --force")
    return _read_split(path, max_docs, max_doc_bytes)  # errors above are raised right away


def _read_split(path: Path, max_docs: int | None, max_doc_bytes: int | None) -> Iterator[Document]:
    count = 0
    if max_docs is not None and max_docs <= 0:
        return
    # Binary mode: lines end only at b"\n" (JSON escapes every newline inside a string).
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                doc = Document(rec["id"], rec["text"])
            except (ValueError, KeyError, TypeError):
                raise DataError(
                    f"corrupted corpus file {path}:{lineno}; re-run with --force"
                ) from None
            if max_doc_bytes is not None:
                doc = Document(doc.id, truncate_utf8(doc.text, max_doc_bytes))
            yield doc
            count += 1
            if max_docs is not None and count >= max_docs:
                return


def iter_texts(
    data_dir: str | Path, corpus: str, splits: Iterable[str] = SPLITS, max_docs: int | None = None
) -> Iterator[str]:
    """Texts of several splits, one after another (``max_docs`` per split)."""
    for split in splits:
        for doc in iter_documents(data_dir, corpus, split, max_docs=max_docs):
            yield doc.text


def _pick(doc_id: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def sample_texts(
    data_dir: str | Path,
    corpus: str,
    max_bytes: int,
    split: str = "train",
    seed: int = 0,
    max_doc_bytes: int | None = None,
) -> Iterator[str]:
    """About ``max_bytes`` of text spread over the whole split, deterministic for ``seed``.

    Documents are drawn in a random order fixed by ``hash(seed, id)`` until the budget is
    met (so a chronological corpus is not sampled from its beginning only) and yielded in
    stored order; each gives at most ``max_doc_bytes`` so one huge table cannot fill the
    budget alone. Two streaming passes; only ``(hash, index, size)`` per document is held.
    """
    if max_bytes <= 0:
        return
    entries = [
        (_pick(doc.id, seed), i, len(doc.text.encode("utf-8")))
        for i, doc in enumerate(
            iter_documents(data_dir, corpus, split, max_doc_bytes=max_doc_bytes)
        )
    ]
    entries.sort()
    chosen: set[int] = set()
    filled = 0
    for _, i, size in entries:
        if filled >= max_bytes:
            break
        chosen.add(i)
        filled += size
    del entries
    left = max_bytes
    for i, doc in enumerate(iter_documents(data_dir, corpus, split, max_doc_bytes=max_doc_bytes)):
        if i not in chosen:
            continue
        text = truncate_utf8(doc.text, left) if len(doc.text) * 4 > left else doc.text
        if text:
            yield text
            left -= len(text.encode("utf-8"))
        if left <= 0:
            return


def balanced_mix(
    data_dir: str | Path,
    corpora: Iterable[str],
    bytes_per_corpus: int,
    split: str = "train",
    seed: int = 0,
    max_doc_bytes: int | None = None,
) -> Iterator[tuple[str, str]]:
    """``(corpus, text)`` pairs interleaved round-robin, ~``bytes_per_corpus`` from each."""
    streams = {
        name: sample_texts(data_dir, name, bytes_per_corpus, split, seed, max_doc_bytes)
        for name in corpora
    }
    while streams:
        for name in list(streams):
            text = next(streams[name], None)
            if text is None:
                del streams[name]
            else:
                yield name, text


# --------------------------------------------------------------------------- writing


@dataclass
class RawDoc:
    """One record from a source: raw bytes (decoded here) or text already decoded."""

    id: str
    data: bytes | str
    replaced: int = 0  # invalid UTF-8 sequences already replaced by the source (str data)


class Source(Protocol):
    """Where a corpus comes from. ``info()`` is read after ``records()`` is exhausted."""

    name: str
    total: int | None  # number of records when known (progress bars)

    def records(self) -> Iterator[RawDoc]:
        """Stream the raw documents."""
        ...

    def info(self) -> dict[str, Any]:
        """Manifest fields: source, version, sha256, fallback_used, origin ..."""
        ...


class ProgressHook(Protocol):
    """What :func:`write_corpus` reports while it runs (the CLI draws a bar)."""

    def start(self, name: str, total: int | None) -> None: ...

    def advance(self, n: int = 1) -> None: ...


@dataclass
class _Counts:
    documents: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    skipped_binary: int = 0
    skipped_empty: int = 0
    replaced_docs: int = 0
    replaced_chars: int = 0
    file_sha256: dict[str, str] = field(default_factory=dict)
    dedup: DedupPlan | None = None


def _segsllm_version() -> str:
    from segsllm import __version__

    return __version__


def write_corpus(
    data_dir: str | Path,
    source: Source,
    validation_fraction: float = 0.05,
    test_fraction: float = 0.10,
    progress: ProgressHook | None = None,
    dedup: DedupConfig | None = None,
) -> dict[str, Any]:
    """Build ``<data_dir>/<source.name>/`` from ``source`` atomically; returns the manifest.

    Binary records (NUL bytes) and empty ones are skipped and counted; invalid UTF-8 is
    replaced and counted; an existing corpus of that name is replaced only once the new
    one is complete. An empty result is a :class:`DataError` and leaves nothing behind.
    ``dedup`` says how near-duplicates are found (default :class:`DedupConfig`).
    """
    check_name(source.name)
    check_fractions(validation_fraction, test_fraction)
    root = Path(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{source.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    started = time.time()
    try:
        counts = _write_splits(tmp, source, validation_fraction, test_fraction, progress,
                               dedup or DedupConfig())
        total = sum(counts.documents.values())
        if total == 0:
            raise DataError(
                f"corpus {source.name!r} is empty: no text documents found"
                f" ({counts.skipped_binary} binary, {counts.skipped_empty} empty skipped)"
            )
        manifest = _manifest(tmp, source, counts, validation_fraction, test_fraction, started,
                             dedup or DedupConfig())
        atomic_write_json(tmp / MANIFEST, manifest)
        _swap_into_place(tmp, corpus_dir(root, source.name))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _write_splits(
    tmp: Path, source: Source, vf: float, tf: float, progress: ProgressHook | None, cfg: DedupConfig
) -> _Counts:
    """Two passes: decode every record into a scratch file while fingerprinting it, plan
    the duplicates, then copy each kept document into the split of its family."""
    counts = _Counts()
    shingle, minhash = ShingleHasher(cfg.width), MinHasher(cfg.num_perm)
    seen: set[str] = set()
    ids: list[str] = []
    keys: list[str] = []
    sigs: list[Any] = []
    sizes: list[int] = []
    scratch = tmp / ".all.jsonl"
    if progress is not None:
        progress.start(source.name, source.total)
    with open(scratch, "wb") as out:
        for raw in source.records():
            if progress is not None:
                progress.advance(1)
            text, replaced = _to_text(raw, counts)
            if text is None:
                continue
            if raw.id in seen:
                raise DataError(f"duplicate document id {raw.id!r} in corpus {source.name!r}")
            seen.add(raw.id)
            if replaced:
                counts.replaced_docs += 1
                counts.replaced_chars += replaced
            ids.append(raw.id)
            sizes.append(len(text.encode("utf-8")))
            keys.append(content_key(text))
            shingles = shingle(text) if cfg.near_duplicates else None
            sigs.append(minhash(shingles) if shingles is not None and shingles.size else None)
            out.write(json.dumps({"id": raw.id, "text": text}, ensure_ascii=False).encode("utf-8") + b"\n")
    del seen
    counts.dedup = dup = plan(ids, keys, sigs, cfg)
    del keys, sigs
    hashes = {s: hashlib.sha256() for s in SPLITS}
    with contextlib.ExitStack() as stack:
        files = {s: stack.enter_context(open(tmp / f"{s}.jsonl", "wb")) for s in SPLITS}
        with open(scratch, "rb") as fh:
            for i, line in enumerate(fh):
                if not dup.kept[i]:
                    continue
                split = split_of(dup.family_key[i], vf, tf)
                files[split].write(line)
                hashes[split].update(line)
                counts.documents[split] += 1
                counts.bytes[split] += sizes[i]
        for fh in files.values():
            fh.flush()
            os.fsync(fh.fileno())
    scratch.unlink()
    counts.file_sha256 = {s: h.hexdigest() for s, h in hashes.items()}
    _write_duplicates(tmp, dup, ids, vf, tf)
    return counts


def _write_duplicates(tmp: Path, dup: DedupPlan, ids: list[str], vf: float, tf: float) -> None:
    """``duplicates.json``: every collapsed id, and every family with the split it went to."""
    atomic_write_json(
        tmp / DUPLICATES,
        {
            "collapsed": dict(sorted(dup.collapsed.items())),
            "families": [{"split": split_of(f[0], vf, tf), "ids": f} for f in dup.families],
        },
    )


def _to_text(raw: RawDoc, counts: _Counts) -> tuple[str | None, int]:
    """Decode one record; ``None`` when it is skipped (binary or empty)."""
    if isinstance(raw.data, bytes):
        if is_binary(raw.data):
            counts.skipped_binary += 1
            return None, 0
        decoded = decode_utf8(raw.data)
        text, replaced = decoded.text, decoded.replaced
    else:
        text, replaced = raw.data, raw.replaced
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates from a dataset: replace them too
            text, n = _SURROGATE_RE.subn("\ufffd", text)
            replaced += n
    if not text:
        counts.skipped_empty += 1
        return None, 0
    return text, replaced


def _manifest(
    tmp: Path, source: Source, counts: _Counts, vf: float, tf: float, started: float, cfg: DedupConfig
) -> dict[str, Any]:
    info = dict(source.info())
    manifest: dict[str, Any] = {
        "kind": "corpus",
        "name": source.name,
        "source": info.pop("source", None),
        "version": info.pop("version", None),
        "sha256": info.pop("sha256", None),
        "fallback_used": bool(info.pop("fallback_used", False)),
    }
    manifest.update(info)  # origin, license, fallback_reason ...
    manifest.update(
        {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "build_seconds": round(time.time() - started, 3),
            "segsllm_version": _segsllm_version(),
            "format": "jsonl",
            "format_version": FORMAT_VERSION,
            "split_rule": "sha256(family key = smallest id of the near-duplicate family) as uniform"
            " [0,1): < test -> test, < test+validation -> validation",
            "dedup": _dedup_summary(counts.dedup, cfg),
            "fractions": {"validation": vf, "test": tf},
            "documents": counts.documents,
            "bytes": counts.bytes,
            "total_documents": sum(counts.documents.values()),
            "total_bytes": sum(counts.bytes.values()),
            "skipped_binary": counts.skipped_binary,
            "skipped_empty": counts.skipped_empty,
            "replaced_invalid_utf8": counts.replaced_docs,
            "replacement_chars": counts.replaced_chars,
            "files": {
                f"{s}.jsonl": {
                    "sha256": counts.file_sha256[s],
                    "size": (tmp / f"{s}.jsonl").stat().st_size,
                }
                for s in SPLITS
            },
        }
    )
    return manifest


def _dedup_summary(dup: DedupPlan | None, cfg: DedupConfig) -> dict[str, Any]:
    sizes = [len(f) for f in dup.families] if dup is not None else []
    return {
        "exact_rule": "sha256 of the text after CRLF/CR -> LF; the smallest id is kept",
        "near_rule": f"MinHash ({cfg.num_perm} perms, {cfg.bands} LSH bands) over {cfg.width}-token"
        f" shingles; estimated Jaccard >= {cfg.threshold} joins a family"
        if cfg.near_duplicates else "off",
        "collapsed": len(dup.collapsed) if dup is not None else 0,
        "families": len(sizes),
        "grouped": sum(sizes),
        "largest_family": max(sizes, default=0),
        "file": DUPLICATES,
    }


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished temp folder to ``final``, replacing an older corpus."""
    old = None
    if final.exists():
        old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(final.parent)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not supported on every platform
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- prepare


@dataclass
class PrepareResult:
    """What :func:`prepare` did for one corpus."""

    name: str
    status: str  # "prepared" | "already prepared"
    manifest: dict[str, Any]
    seconds: float = 0.0


def prepare(
    data_dir: str | Path,
    name: str,
    make_source: Callable[[], Source],
    validation_fraction: float = 0.05,
    test_fraction: float = 0.10,
    force: bool = False,
    progress: ProgressHook | None = None,
    expected_source: str | None = None,
) -> PrepareResult:
    """Build corpus ``name`` unless it is already prepared (a no-op unless ``force``).

    An existing corpus built with other split fractions, or from another source
    (``expected_source``, for user corpora), is an error rather than a silent mismatch.
    """
    check_fractions(validation_fraction, test_fraction)
    if is_prepared(data_dir, name) and not force:
        manifest = load_manifest(data_dir, name)
        if manifest.get("format_version", 1) < FORMAT_VERSION:
            raise DataError(
                f"corpus {name!r} was prepared by an older segsllm (format"
                f" {manifest.get('format_version', 1)}: duplicates may straddle its splits);"
                f" rebuild it: {prepare_hint(name)} with --force"
            )
        fr = manifest.get("fractions", {})
        if (fr.get("validation"), fr.get("test")) != (validation_fraction, test_fraction):
            raise DataError(
                f"corpus {name!r} was prepared with validation/test fractions "
                f"{fr.get('validation')}/{fr.get('test')}, not {validation_fraction}/{test_fraction};"
                " re-run with --force to rebuild it"
            )
        if expected_source is not None and manifest.get("source") != expected_source:
            raise DataError(
                f"corpus {name!r} already exists from {manifest.get('source')}; "
                "use --force to replace it or choose another --name"
            )
        return PrepareResult(name, "already prepared", manifest)
    started = time.time()
    source = make_source()
    manifest = write_corpus(data_dir, source, validation_fraction, test_fraction, progress)
    return PrepareResult(name, "prepared", manifest, time.time() - started)
