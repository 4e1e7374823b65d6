"""User corpora: local files, folders and globs, or a ``datasets`` dataset named by the user.

Files: ``.jsonl`` / ``.ndjson`` give one document per line (a string field, ``text`` by
default); every other file (``.txt``, ``.md``, ``.py``, ``.csv`` ...) is one document.
Folders are walked recursively (hidden entries skipped, dangling symlinks skipped and
named). Binary (NUL byte) and empty files are skipped; text is decoded by
:func:`segsllm.data.textio.decode_text` (UTF-8; Latin-1 / Windows-1252 files are
recognised and decoded as such, see its module; ``encoding`` can force a codec or refuse
anything but UTF-8). Every file skipped, decoded with the fallback or with bytes replaced
is counted and the first few are named in the manifest (``named_files``), which
``segsllm data prepare`` prints. Nothing is loaded from a hub unless the user names a
dataset with ``--hf-dataset``.
"""

from __future__ import annotations

import codecs
import glob
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from segsllm.data.store import PrepareResult, ProgressHook, RawDoc, check_name, prepare
from segsllm.data.textio import ENCODING_MODES, decode_text, decode_utf8, is_binary, sha256_of_pairs
from segsllm.errors import DataError

JSONL_SUFFIXES = (".jsonl", ".ndjson")
_MAGIC = "*?["
NAMED = 5  # files named per kind of note (skipped, replaced ...); the rest are counted


class FileNotes:
    """Files that were skipped or altered, by kind: a count and the first :data:`NAMED` names."""

    def __init__(self) -> None:
        self.kinds: dict[str, dict[str, Any]] = {}

    def add(self, kind: str, name: str) -> None:
        entry = self.kinds.setdefault(kind, {"count": 0, "first": []})
        entry["count"] += 1
        if len(entry["first"]) < NAMED:
            entry["first"].append(name)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {k: {"count": v["count"], "first": list(v["first"])} for k, v in self.kinds.items()}


def describe_notes(notes: dict[str, dict[str, Any]]) -> list[str]:
    """One line per kind: ``skipped 3 binary file(s): a.png, b.bin, c.o`` (+ ``and N more``)."""
    what = {
        "dangling_symlink": "skipped {n} dangling symlink(s)",
        "unreadable": "skipped {n} unreadable file(s)",
        "binary": "skipped {n} binary file(s)",
        "empty": "skipped {n} empty file(s)",
        "replaced_invalid_utf8": "replaced invalid UTF-8 with U+FFFD in {n} document(s)",
        "decoded_cp1252": "decoded {n} non-UTF-8 file(s) as Windows-1252 (Latin-1)",
        "decoded_latin-1": "decoded {n} non-UTF-8 file(s) as Latin-1",
    }
    lines = []
    for kind, entry in notes.items():
        n, first = entry["count"], entry["first"]
        head = what.get(kind, f"{kind}: {{n}} file(s)").format(n=n)
        more = f" and {n - len(first)} more" if n > len(first) else ""
        lines.append(f"{head}: {', '.join(first)}{more}")
    return lines


# --------------------------------------------------------------------------- local files


def _dangling(path: Path) -> bool:
    """A symlink whose target does not exist."""
    return path.is_symlink() and not path.exists()


def _walk(folder: Path, dangling: list[Path] | None = None) -> Iterator[Path]:
    """Files under ``folder``, sorted, hidden files and folders skipped, folder links not
    followed; dangling symlinks are left out (appended to ``dangling``)."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            if not fname.startswith("."):
                p = Path(dirpath) / fname
                if _dangling(p):
                    if dangling is not None:
                        dangling.append(p)
                    continue
                yield p


def expand_paths(pattern: str, dangling: list[Path] | None = None) -> tuple[Path, list[Path]]:
    """``(root, files)`` for a file, a folder (recursive) or a glob (``**`` allowed).

    Document ids are paths relative to ``root``: the folder given, the folder of the file
    given, or the part of a glob before its first wildcard. Dangling symlinks are skipped
    and appended to ``dangling``.
    """
    path = Path(pattern).expanduser()
    if path.is_file():
        return path.parent, [path]
    if path.is_dir():
        return path, list(_walk(path, dangling))
    if not any(c in pattern for c in _MAGIC):
        raise DataError(f"no such file or folder: {pattern}")
    parts = Path(pattern).expanduser().parts
    fixed = []
    for part in parts:
        if any(c in part for c in _MAGIC):
            break
        fixed.append(part)
    root = Path(*fixed) if fixed else Path(".")
    files: list[Path] = []
    for match in sorted(glob.glob(str(Path(pattern).expanduser()), recursive=True)):
        m = Path(match)
        if m.is_file():
            files.append(m)
        elif m.is_dir():
            files.extend(_walk(m, dangling))
        elif _dangling(m) and dangling is not None:
            dangling.append(m)
    unique = list(dict.fromkeys(files))  # a file matched twice is one document
    if not unique:
        raise DataError(f"no files match {pattern}")
    return root, unique


class UserFilesSource:
    """Documents from local files; sha256 over sorted (relative path, file sha256)."""

    def __init__(self, name: str, pattern: str, text_field: str = "text", encoding: str = "auto") -> None:
        self.name = check_name(name, allow_builtin=False)
        self.pattern = pattern
        self.text_field = text_field
        self.encoding = check_encoding(encoding)
        dangling: list[Path] = []
        self.root, self.files = expand_paths(pattern, dangling)
        # relpath, not resolve(): a dangling link resolves to its missing target
        self.dangling = [Path(os.path.relpath(p, self.root)).as_posix() for p in dangling]
        has_jsonl = any(f.suffix.lower() in JSONL_SUFFIXES for f in self.files)
        self.total: int | None = None if has_jsonl else len(self.files)
        self._pairs: list[tuple[str, str]] = []
        self.notes = FileNotes()

    def _rel(self, path: Path) -> str:
        try:
            return path.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return path.as_posix()

    def records(self) -> Iterator[RawDoc]:
        import hashlib

        self._pairs = []
        self.notes = FileNotes()
        for rel in self.dangling:
            self.notes.add("dangling_symlink", rel)
        for path in self.files:
            rel = self._rel(path)
            if path.suffix.lower() in JSONL_SUFFIXES:
                h = hashlib.sha256()
                yield from self._jsonl(path, rel, h)
                self._pairs.append((rel, h.hexdigest()))
                continue
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # removed (or its link target removed) since the walk
                self.notes.add("unreadable", rel)
                continue
            self._pairs.append((rel, hashlib.sha256(data).hexdigest()))
            # A named codec (utf-16 ...) may hold NUL bytes: then NUL *characters* mark binary.
            codec = self.encoding not in ENCODING_MODES
            if not data or (not codec and is_binary(data)):
                self.notes.add("binary" if data else "empty", rel)
                yield RawDoc(rel, data)  # the store counts it as skipped
                continue
            try:
                decoded = decode_text(data, self.encoding)
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}: not valid UTF-8 (byte {exc.start}); --encoding strict refuses it:"
                    " use --encoding auto (Latin-1 fallback) or name the codec, e.g. --encoding latin-1"
                ) from None
            if codec and "\x00" in decoded.text:
                self.notes.add("binary", rel)
                yield RawDoc(rel, b"\x00")  # the store counts it as binary
                continue
            if decoded.replaced:
                self.notes.add("replaced_invalid_utf8", rel)
            elif decoded.encoding != "utf-8" and self.encoding == "auto":
                self.notes.add(f"decoded_{decoded.encoding}", rel)
            yield RawDoc(rel, decoded.text, decoded.replaced)

    def _jsonl(self, path: Path, rel: str, h: Any) -> Iterator[RawDoc]:
        """One document per line; bad JSON or a missing field names the file and line."""
        with open(path, "rb") as fh:
            head = fh.read(8192)
            if is_binary(head):
                h.update(head)
                yield RawDoc(rel, head)  # the store counts it as binary and skips it
                return
            fh.seek(0)
            for lineno, line in enumerate(fh, 1):
                h.update(line)
                if not line.strip():
                    continue
                decoded = decode_utf8(line)
                if decoded.replaced:
                    self.notes.add("replaced_invalid_utf8", f"{rel}:{lineno}")
                try:
                    rec = json.loads(decoded.text)
                except ValueError as exc:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                if not isinstance(rec, dict) or self.text_field not in rec:
                    keys = ", ".join(rec) if isinstance(rec, dict) else type(rec).__name__
                    raise DataError(
                        f"{path}:{lineno}: no field {self.text_field!r} (has: {keys}); use --text-field"
                    )
                value = rec[self.text_field]
                if value is None:
                    value = ""
                if not isinstance(value, str):
                    raise DataError(f"{path}:{lineno}: field {self.text_field!r} is not a string")
                yield RawDoc(f"{rel}:{lineno}", value, decoded.replaced)

    def info(self) -> dict[str, Any]:
        return {
            "source": f"files:{self.pattern}",
            "version": None,
            "sha256": sha256_of_pairs(self._pairs),
            "fallback_used": False,
            "origin": str(self.root.resolve()),
            "source_files": len(self._pairs),
            "text_field": self.text_field,
            "encoding": self.encoding,
            "named_files": self.notes.as_dict(),
        }


def check_encoding(encoding: str) -> str:
    """``auto`` / ``utf-8`` / ``strict`` or a codec Python knows; DataError otherwise."""
    if encoding in ENCODING_MODES:
        return encoding
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DataError(
            f"unknown --encoding {encoding!r}; use auto, utf-8, strict or a codec name such as latin-1"
        ) from None
    return encoding


# --------------------------------------------------------------------------- datasets


def _load_dataset(dataset: str, config: str | None, split: str | None) -> Any:
    """A ``save_to_disk`` folder via ``load_from_disk``, anything else via ``load_dataset``."""
    try:
        import datasets
    except ImportError:
        raise DataError(
            "--hf-dataset needs the `datasets` package: pip install 'segsllm[hf]'"
        ) from None
    path = Path(dataset).expanduser()
    saved = path.is_dir() and any(
        (path / f).is_file() for f in ("dataset_info.json", "dataset_dict.json", "state.json")
    )
    try:
        if saved:
            ds = datasets.load_from_disk(str(path))
            if split is not None and isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        else:
            ds = datasets.load_dataset(dataset, config, split=split)
    except KeyError:
        raise DataError(f"dataset {dataset!r} has no split {split!r}") from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot load dataset {dataset!r}: {first}") from None
    return ds


class HFDatasetSource:
    """Documents from a ``datasets`` Dataset or DatasetDict (one per row)."""

    def __init__(
        self,
        name: str,
        dataset: str,
        config: str | None = None,
        split: str | None = None,
        text_field: str = "text",
    ) -> None:
        self.name = check_name(name, allow_builtin=False)
        self.dataset, self.config, self.split, self.text_field = dataset, config, split, text_field
        ds = _load_dataset(dataset, config, split)
        # A DatasetDict (no split named) contributes every split; ids say which.
        import datasets

        self.parts: list[tuple[str | None, Any]] = (
            [(k, ds[k]) for k in sorted(ds)]
            if isinstance(ds, datasets.DatasetDict)
            else [(None, ds)]
        )
        for part_name, part in self.parts:
            if text_field not in part.column_names:
                where = f" split {part_name!r}" if part_name else ""
                raise DataError(
                    f"dataset {dataset!r}{where} has no column {text_field!r}"
                    f" (columns: {', '.join(part.column_names)}); use --text-field"
                )
        self.total: int | None = sum(len(p) for _, p in self.parts)

    def records(self) -> Iterator[RawDoc]:
        for part_name, part in self.parts:
            prefix = f"{part_name}/" if part_name else ""
            for i, row in enumerate(part.select_columns([self.text_field])):
                value = row[self.text_field]
                if value is not None and not isinstance(value, str):
                    raise DataError(
                        f"dataset {self.dataset!r} row {prefix}{i}: {self.text_field!r} is not a string"
                    )
                yield RawDoc(f"{prefix}{i}", value or "")

    def info(self) -> dict[str, Any]:
        import datasets

        fingerprints = [(str(n), str(getattr(p, "_fingerprint", ""))) for n, p in self.parts]
        desc = (
            self.dataset
            + (f"/{self.config}" if self.config else "")
            + (f":{self.split}" if self.split else "")
        )
        return {
            "source": f"hf:{desc}",
            "version": f"datasets {datasets.__version__}",
            "sha256": sha256_of_pairs(fingerprints),
            "sha256_of": "datasets fingerprints",
            "fallback_used": False,
            "text_field": self.text_field,
        }


# --------------------------------------------------------------------------- prepare


def prepare_files(
    data_dir: str | Path,
    name: str,
    pattern: str,
    text_field: str = "text",
    validation_fraction: float = 0.05,
    test_fraction: float = 0.10,
    force: bool = False,
    progress: ProgressHook | None = None,
    encoding: str = "auto",
) -> PrepareResult:
    """Prepare corpus ``name`` from local files (a no-op when done, unless ``force``);
    ``encoding``: see :func:`segsllm.data.textio.decode_text`."""
    check_name(name, allow_builtin=False)
    check_encoding(encoding)
    return prepare(
        data_dir,
        name,
        lambda: UserFilesSource(name, pattern, text_field, encoding),
        validation_fraction,
        test_fraction,
        force=force,
        progress=progress,
        expected_source=f"files:{pattern}",
    )


def prepare_hf(
    data_dir: str | Path,
    name: str,
    dataset: str,
    config: str | None = None,
    split: str | None = None,
    text_field: str = "text",
    validation_fraction: float = 0.05,
    test_fraction: float = 0.10,
    force: bool = False,
    progress: ProgressHook | None = None,
) -> PrepareResult:
    """Prepare corpus ``name`` from a ``datasets`` dataset the user named."""
    check_name(name, allow_builtin=False)
    desc = dataset + (f"/{config}" if config else "") + (f":{split}" if split else "")
    return prepare(
        data_dir,
        name,
        lambda: HFDatasetSource(name, dataset, config, split, text_field),
        validation_fraction,
        test_fraction,
        force=force,
        progress=progress,
        expected_source=f"hf:{desc}",
    )
