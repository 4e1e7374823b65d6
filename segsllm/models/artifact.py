"""Self-describing model folders: ``config.json`` + ``model.safetensors`` + ``manifest.json``.

Every trained model (SentenceVAE, SLLM, boundary predictor) is saved the same way so any
later stage can be pointed at the folder (docs/DESIGN.md §2, §12):

- ``model.safetensors`` — the weights (safetensors only, never pickle). Tensors that share
  storage (tied embeddings) are stored once; the alias map travels in the file's metadata.
- ``config.json``       — the model's dataclass config, enough to rebuild the module.
- tokenizer files      — when a tokenizer object is given (``load_tokenizer(DIR)`` works).
- ``manifest.json``     — kind, format and segsllm versions, tokenizer fingerprint, lineage
  (the artifacts this one was built from), and the size + sha256 of the weights and config.

Each file is written atomically (temp + rename). The manifest is removed first and written
last, and it carries checksums of the files it describes, so a crash mid-save or a
mixture of two saves is refused on load instead of silently loading the wrong weights.

Reading (:func:`read_artifact`; :func:`segsllm.models.loading.load_artifact` builds the
model) refuses, with a one-line :class:`~segsllm.errors.ArtifactError`: a missing folder
or file, unreadable JSON, another kind of artifact, a checksum mismatch, a corrupted or
truncated safetensors file, and a tokenizer whose fingerprint differs from the one the
model was trained with. :func:`check_state_dict` refuses weights whose names or shapes do
not match the module built from the config.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from segsllm.errors import ArtifactError, ConfigError
from segsllm.io import atomic_path, atomic_write_json

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
_ALIASES_KEY = "segsllm.aliases"  # safetensors metadata: {"dropped name": "stored name"}
# Manifest keys written by save_artifact; extra_manifest cannot override them.
_RESERVED = ("kind", "format_version", "segsllm_version", "created", "tokenizer_fingerprint", "files")


@dataclass
class LoadedArtifact:
    """What :func:`read_artifact` read: the config dict, the tensors and the manifest."""

    path: Path
    config: dict[str, Any]
    state_dict: dict[str, Any]  # name -> torch.Tensor (aliases restored)
    manifest: dict[str, Any]

    def load_into(self, model: Any) -> Any:
        """Check and load the weights into ``model`` (built from the config), attach the
        manifest as ``model.manifest``; returns ``model``. One-line ArtifactError on a mismatch."""
        check_state_dict(model, self.state_dict, self.path)
        model.load_state_dict(self.state_dict)
        model.manifest = self.manifest
        return model


# --------------------------------------------------------------------------- helpers


def fingerprint_of(tokenizer: Any) -> str | None:
    """A tokenizer's fingerprint; ``tokenizer`` may be a tokenizer object, a fingerprint or None."""
    if tokenizer is None or isinstance(tokenizer, str):
        return tokenizer
    from segsllm.data.tokenizer import tokenizer_fingerprint

    return tokenizer_fingerprint(tokenizer)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_entry(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _split_shared(state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Store tensors that alias each other (tied weights) once: safetensors refuses shared storage."""
    kept: dict[str, Any] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, tensor in state_dict.items():
        t = tensor.detach()
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
               tuple(t.stride()), t.dtype)
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        kept[name] = t.to("cpu").contiguous()
    return kept, aliases


# --------------------------------------------------------------------------- save


def save_artifact(
    out_dir: str | Path,
    *,
    kind: str,
    config: Mapping[str, Any],
    state_dict: Mapping[str, Any],
    tokenizer: Any = None,
    lineage: Mapping[str, Any] | None = None,
    extra_manifest: Mapping[str, Any] | None = None,
) -> Path:
    """Write weights, config, tokenizer files (if a tokenizer object is given) and manifest.

    ``tokenizer`` may be a tokenizer object (its files are saved beside the weights and its
    fingerprint recorded) or just a fingerprint string. ``lineage`` names the artifacts this
    one was built from (paths, run ids). ``extra_manifest`` adds free-form keys.
    """
    from safetensors.torch import save_file

    from segsllm import __version__

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Remove the manifest first: until the new one lands, the folder reads as incomplete.
    (out / MANIFEST_NAME).unlink(missing_ok=True)

    tensors, aliases = _split_shared(state_dict)
    metadata = {"format": "pt", _ALIASES_KEY: json.dumps(aliases, sort_keys=True)}
    with atomic_path(out / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    atomic_write_json(out / CONFIG_NAME, dict(config))

    if tokenizer is not None and not isinstance(tokenizer, str):
        from segsllm.data.tokenizer import save_tokenizer

        save_tokenizer(tokenizer, out)

    manifest: dict[str, Any] = {k: v for k, v in (extra_manifest or {}).items() if k not in _RESERVED}
    if lineage is not None:
        manifest["lineage"] = dict(lineage)
    manifest.setdefault("lineage", {})
    manifest.update(
        kind=kind,
        format_version=FORMAT_VERSION,
        segsllm_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        tokenizer_fingerprint=fingerprint_of(tokenizer),
        files={name: _file_entry(out / name) for name in (WEIGHTS_NAME, CONFIG_NAME)},
    )
    atomic_write_json(out / MANIFEST_NAME, manifest)
    return out


def mark_incomplete(out_dir: str | Path) -> None:
    """Remove the manifest before writing a folder's other files (``config.yaml``,
    ``metrics.json``): until :func:`save_artifact` writes it last, the folder reads as incomplete."""
    (Path(out_dir) / MANIFEST_NAME).unlink(missing_ok=True)


def record_files(out_dir: str | Path, names: Sequence[str]) -> None:
    """Add size + sha256 of files written after the weights to the manifest, rewriting it
    (atomically) so the completeness marker is again the last file written."""
    out = Path(out_dir)
    manifest = read_manifest(out)
    files = dict(manifest.get("files") or {})
    files.update({n: _file_entry(out / n) for n in names if (out / n).is_file()})
    manifest["files"] = files
    atomic_write_json(out / MANIFEST_NAME, manifest)


# --------------------------------------------------------------------------- load


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of an artifact folder; ArtifactError if absent or unreadable."""
    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"no artifact folder at {root}")
    mpath = root / MANIFEST_NAME
    if not mpath.is_file():
        raise ArtifactError(f"{root} is not a complete segsllm artifact (no {MANIFEST_NAME}; "
                            "was the save interrupted?)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read {mpath}: {_one_line(exc)}") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{mpath} is not a JSON object")
    return manifest


def read_artifact(
    path: str | Path,
    *,
    kind: str,
    tokenizer: Any = None,
    verify_checksums: bool = True,
) -> LoadedArtifact:
    """Read and validate an artifact folder written by :func:`save_artifact` (tensors on CPU).

    ``tokenizer`` (object or fingerprint) is compared with the recorded fingerprint. With
    ``verify_checksums`` the sha256 of the weights is checked against the manifest (about a
    second per GB); sizes are always checked.
    """
    from safetensors import safe_open

    root = Path(path)
    manifest = read_manifest(root)
    found = manifest.get("kind")
    if found != kind:
        raise ArtifactError(f"{root} holds a {found!r} artifact, expected {kind!r}")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(f"{root}: unsupported artifact format_version {version!r} "
                            f"(this segsllm reads up to {FORMAT_VERSION})")

    # Tokenizer before anything expensive: it is the most likely user mistake.
    stored_fp = manifest.get("tokenizer_fingerprint")
    given_fp = fingerprint_of(tokenizer)
    if given_fp is not None and stored_fp is not None and given_fp != stored_fp:
        raise ArtifactError(f"{root} was built with another tokenizer (fingerprint {stored_fp}, "
                            f"given {given_fp}); use the tokenizer it was trained with")

    files = manifest.get("files") or {}
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        fpath = root / name
        if not fpath.is_file():
            raise ArtifactError(f"{root} is incomplete: {name} is missing")
        entry = files.get(name)
        if not isinstance(entry, dict):
            raise ArtifactError(f"{root}/{MANIFEST_NAME} does not describe {name}")
        if fpath.stat().st_size != entry.get("bytes"):
            raise ArtifactError(f"{fpath} is truncated or was replaced ({fpath.stat().st_size} bytes, "
                                f"manifest says {entry.get('bytes')})")
        if verify_checksums and _sha256(fpath) != entry.get("sha256"):
            raise ArtifactError(f"{fpath} is corrupted (sha256 differs from {MANIFEST_NAME})")

    try:
        config = json.loads((root / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read {root / CONFIG_NAME}: {_one_line(exc)}") from None
    if not isinstance(config, dict):
        raise ArtifactError(f"{root / CONFIG_NAME} is not a JSON object")

    wpath = root / WEIGHTS_NAME
    try:
        state_dict: dict[str, Any] = {}
        with safe_open(str(wpath), framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            for name in fh.keys():  # noqa: SIM118 - safe_open is not a Mapping
                state_dict[name] = fh.get_tensor(name)
        aliases = json.loads(metadata.get(_ALIASES_KEY, "{}"))
    except Exception as exc:  # safetensors raises its own error types for bad headers/data
        raise ArtifactError(f"{wpath} is corrupted or not a safetensors file: {_one_line(exc)}") from None
    for alias, target in aliases.items():
        if target not in state_dict:
            raise ArtifactError(f"{wpath} is corrupted: alias {alias!r} points to missing {target!r}")
        state_dict[alias] = state_dict[target]
    return LoadedArtifact(path=root, config=config, state_dict=state_dict, manifest=manifest)


@contextmanager
def config_errors(path: str | Path, what: str) -> Iterator[None]:
    """Turn a malformed config.json (missing key, wrong type or value) read inside the block
    into one ArtifactError line naming ``path`` and the ``what`` it should configure."""
    try:
        yield
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: invalid {what} config.json: {exc}") from None


def check_state_dict(module: Any, state_dict: Mapping[str, Any], where: str | Path) -> None:
    """Refuse weights whose names or shapes differ from ``module``'s (one-line ArtifactError)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise ArtifactError(f"{where}: weights do not match the config: {', '.join(parts)}")
    for name, tensor in expected.items():
        got = state_dict[name]
        if tuple(got.shape) != tuple(tensor.shape):
            raise ArtifactError(f"{where}: weight {name} has shape {tuple(got.shape)}, the config "
                                f"expects {tuple(tensor.shape)}")
        if got.is_floating_point() != tensor.is_floating_point():
            raise ArtifactError(f"{where}: weight {name} has dtype {got.dtype}, expected {tensor.dtype}")
