"""One way to open any model folder this project writes: :func:`load_artifact` ``(kind, path)``.

The folder is checked before anything is built: it exists, its manifest names ``kind``,
and it holds the tokenizer the model was trained with when the kind needs one; every
failure is a one-line :class:`~segsllm.errors.ArtifactError` saying which command writes
such a folder. The model comes back with its tokenizer and manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segsllm.errors import ArtifactError


@dataclass(frozen=True)
class ArtifactKind:
    """How one kind of folder is described, whether it must ship a tokenizer, and its class."""

    what: str  # e.g. "SentenceVAE"
    command: str  # the command that writes it
    module: str  # where the model class lives
    cls: str
    needs_tokenizer: bool = True


KINDS = {
    "sentence_vae": ArtifactKind("SentenceVAE", "segsllm train-vae", "segsllm.models.vae", "SentenceVAE"),
    "sllm": ArtifactKind("SLLM", "segsllm finetune", "segsllm.models.sllm", "SLLM"),
    "boundary_predictor": ArtifactKind("splitter", "segsllm train-splitter", "segsllm.models.boundary",
                                       "BoundaryPredictor", needs_tokenizer=False),
}


@dataclass
class LoadedModel:
    """A model folder opened by :func:`load_artifact`."""

    model: Any
    tokenizer: Any  # None when the folder has no tokenizer files (a splitter may not)
    manifest: dict[str, Any] = field(default_factory=dict)


def load_artifact(kind: str, path: str | Path, *, device: Any = "cpu") -> LoadedModel:
    """The model of kind ``kind`` (a key of :data:`KINDS`) saved in ``path``, on ``device``,
    with its own tokenizer (checked against the manifest's fingerprint)."""
    from importlib import import_module

    from segsllm.data.tokenizer import load_tokenizer
    from segsllm.models.artifact import read_manifest

    spec = KINDS[kind]
    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"no {spec.what} folder at {root} (train one with `{spec.command}`)")
    manifest = read_manifest(root)  # a missing or incomplete folder is a one-line error
    found = manifest.get("kind")
    if found != kind:
        raise ArtifactError(f"{root} holds a {found!r} artifact, not a {spec.what} (`{spec.command}` output)")
    has_tokenizer = (root / "tokenizer.json").is_file()
    if spec.needs_tokenizer and not has_tokenizer:
        raise ArtifactError(f"{root} has no tokenizer files: a {spec.what} is used with the tokenizer it was "
                            "trained with")
    tokenizer = load_tokenizer(root) if has_tokenizer else None
    model_cls = getattr(import_module(spec.module), spec.cls)
    model = model_cls.from_pretrained(root, tokenizer=tokenizer, map_location=device)
    return LoadedModel(model=model, tokenizer=tokenizer, manifest=manifest)


__all__ = ["KINDS", "ArtifactKind", "LoadedModel", "load_artifact"]
