"""Atomic file writes: a temp file in the same folder, fsync, then rename.

Readers never see half-written artifacts, and a crash leaves the previous file intact.
``tempfile`` creates private files (0600) and folders (0700); what lands in place gets the
permissions an ordinary ``open``/``mkdir`` would give (0644 / 0755 under umask 022), so
teammates can read the models and results.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process umask (read by setting it and putting it back: Python 3.11 has no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a new ordinary file under the current umask (0644 under umask 022)."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """Mode of a new ordinary folder under the current umask (0755 under umask 022)."""
    return 0o777 & ~current_umask()


def make_temp_dir(parent: str | Path, prefix: str, suffix: str = "") -> Path:
    """``tempfile.mkdtemp`` in ``parent``, but with the umask's permissions (not 0700), so the
    folder it becomes once renamed into place is readable as a plain ``mkdir`` would be."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    os.chmod(tmp, dir_mode())
    return tmp


def share_tree(folder: str | Path) -> None:
    """Give every file and folder under ``folder`` the umask's permissions (libraries such as
    safetensors write private 0600 files)."""
    fmode, dmode = file_mode(), dir_mode()
    for dirpath, _dirnames, filenames in os.walk(folder):
        os.chmod(dirpath, dmode)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), fmode)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success rename it over ``path`` (umask permissions)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, file_mode())  # mkstemp made it 0600
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write pretty JSON atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
