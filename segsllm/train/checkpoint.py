"""Training checkpoints: safetensors + JSON only, written atomically, pruned to the last k.

Layout of one run folder::

    OUT/checkpoints/
      latest                      "step-0000030" (advisory pointer, replaced atomically)
      step-0000030/
        model.safetensors         weights of the unwrapped model (shared/tied tensors once)
        optimizer.safetensors     every tensor of optimizer.state_dict(), keyed by its path
        optimizer.json            the rest of optimizer.state_dict(), tensors as references
        rng.safetensors           torch CPU/CUDA RNG states, one set per rank
        trainer_state.json        step, config, data position, Python/NumPy RNG, history

A checkpoint is written into ``.tmp-step-…`` and renamed into place only when every file is
on disk; ``trainer_state.json`` is written last. A folder counts as a checkpoint only if its
name is ``step-<digits>`` and it holds ``trainer_state.json``, so a crash mid-write never
yields a checkpoint that looks complete. Nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from segsllm.errors import ArtifactError
from segsllm.io import atomic_write_text, make_temp_dir, read_json, share_tree

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE_FILE = "trainer_state.json"
FORMAT = "segsllm-train-checkpoint/1"
_STEP_RE = re.compile(r"^step-(\d+)$")
_TMP_PREFIX = ".tmp-"


def step_dirname(step: int) -> str:
    return f"step-{step:07d}"


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / CHECKPOINTS


# --------------------------------------------------------------------------- finding


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run folder, oldest first."""
    root = checkpoint_root(out_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run folder, or None.

    The folders themselves are the truth (the rename is atomic); the ``latest`` file is a
    convenience that may lag by one checkpoint after a crash between rename and update.
    """
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (then its latest checkpoint)."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise ArtifactError(f"no complete checkpoint in {path}")
    return latest


# --------------------------------------------------------------------------- nested state <-> (JSON, tensors)


def flatten_state(obj: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state (dicts, lists, tuples, scalars, tensors) into JSON and tensors.

    Tensors become ``{"__tensor__": "<path>"}``; dicts with non-string keys (the optimizer's
    integer parameter ids) become ``{"__dict__": [[key, value], ...]}``; tuples become
    ``{"__tuple__": [...]}``. :func:`unflatten_state` reverses it exactly.
    """
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()

    def enc(x: Any, path: str) -> Any:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            if t.numel() and t.data_ptr() in seen:  # safetensors refuses shared memory
                t = t.clone()
            if t.numel():
                seen.add(t.data_ptr())
            tensors[path] = t
            return {"__tensor__": path}
        if isinstance(x, Mapping):
            keys = list(x)
            if all(isinstance(k, str) for k in keys) and not any(k.startswith("__") for k in keys):
                return {k: enc(v, f"{path}/{k}") for k, v in x.items()}
            return {"__dict__": [[k, enc(v, f"{path}/{k}")] for k, v in x.items()]}
        if isinstance(x, tuple):
            return {"__tuple__": [enc(v, f"{path}/{i}") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [enc(v, f"{path}/{i}") for i, v in enumerate(x)]
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"cannot store {type(x).__name__} at {path or '/'} without pickle")

    return enc(obj, ""), tensors


def unflatten_state(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(obj, list):
        return [unflatten_state(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__tuple__"}:
            return tuple(unflatten_state(v, tensors) for v in obj["__tuple__"])
        if set(obj) == {"__dict__"}:
            return {k: unflatten_state(v, tensors) for k, v in obj["__dict__"]}
        return {k: unflatten_state(v, tensors) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------- RNG


def capture_rng() -> dict[str, Any]:
    """Every global RNG this process uses: torch CPU (+ CUDA/MPS), Python, NumPy."""
    state: dict[str, Any] = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state()
    version, internal, gauss = random.getstate()
    state["python"] = [version, list(internal), gauss]
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng`; device states that do not exist here are skipped."""
    torch.set_rng_state(state["torch_cpu"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # another layout (e.g. one visible GPU per rank): restore the current device
            torch.cuda.set_rng_state(cuda[0])
    if "mps" in state and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _split_rng(states: Sequence[Mapping[str, Any]]) -> tuple[dict[str, torch.Tensor], list[Any]]:
    """Per-rank RNG states -> (tensors keyed ``rank<r>/<name>``, JSON per rank)."""
    tensors: dict[str, torch.Tensor] = {}
    py: list[Any] = []
    for r, s in enumerate(states):
        tensors[f"rank{r}/torch_cpu"] = s["torch_cpu"].contiguous()
        for i, t in enumerate(s.get("cuda", [])):
            tensors[f"rank{r}/cuda{i}"] = t.cpu().contiguous()
        if "mps" in s:
            tensors[f"rank{r}/mps"] = s["mps"].cpu().contiguous()
        py.append({"python": s["python"], "numpy": s["numpy"], "n_cuda": len(s.get("cuda", []))})
    return tensors, py


def _join_rng(tensors: Mapping[str, torch.Tensor], py: Sequence[Mapping[str, Any]], rank: int) -> dict[str, Any]:
    s = py[rank]
    state: dict[str, Any] = {
        "torch_cpu": tensors[f"rank{rank}/torch_cpu"],
        "python": s["python"],
        "numpy": s["numpy"],
    }
    if s["n_cuda"]:
        state["cuda"] = [tensors[f"rank{rank}/cuda{i}"] for i in range(s["n_cuda"])]
    if f"rank{rank}/mps" in tensors:
        state["mps"] = tensors[f"rank{rank}/mps"]
    return state


# --------------------------------------------------------------------------- writing


def save_model_weights(model: torch.nn.Module, path: Path) -> None:
    """Weights via ``save_model``, which stores tied/shared tensors once."""
    save_model(model, str(path))


def save_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """optimizer.state_dict() as optimizer.safetensors + optimizer.json (no pickle)."""
    structure, tensors = flatten_state(optimizer.state_dict())
    save_file(tensors, str(folder / "optimizer.safetensors"))
    (folder / "optimizer.json").write_text(json.dumps(structure), encoding="utf-8")


def save_rng(states: Sequence[Mapping[str, Any]], folder: Path) -> list[Any]:
    """Tensor RNG states to rng.safetensors; returns the JSON part for trainer_state.json."""
    tensors, py = _split_rng(states)
    save_file(tensors, str(folder / "rng.safetensors"))
    return py


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can fsync a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: Mapping[str, Any],
    rng_states: Sequence[Mapping[str, Any]],
    keep_last: int = 0,
) -> Path:
    """Write ``out_dir/checkpoints/step-XXXXXXX`` atomically, point ``latest`` at it, prune.

    ``model`` must be the unwrapped module (no DDP / torch.compile wrapper), so the keys do
    not depend on the layout that wrote them. Call on rank 0 only.
    """
    root = checkpoint_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dirname(step)
    tmp = make_temp_dir(root, prefix=f"{_TMP_PREFIX}{final.name}-")
    try:
        save_model_weights(model, tmp / "model.safetensors")
        save_optimizer(optimizer, tmp)
        rng_json = save_rng(rng_states, tmp)
        state = {"format": FORMAT, **trainer_state, "step": step, "rng": rng_json}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")  # last
        share_tree(tmp)
        _fsync_tree(tmp)
        if final.exists():  # same step written again (e.g. re-run of a finished run)
            old = root / f"{_TMP_PREFIX}old-{final.name}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / LATEST, final.name + "\n")
    prune_checkpoints(out_dir, keep_last)
    return final


def prune_checkpoints(out_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints (<= 0 keeps all)."""
    if keep_last <= 0:
        return []
    doomed = list_checkpoints(out_dir)[:-keep_last]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def remove_stale_temp(out_dir: str | Path) -> None:
    """Remove ``.tmp-*`` folders left by a crash during a checkpoint write."""
    root = checkpoint_root(out_dir)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(_TMP_PREFIX) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------- reading


def read_trainer_state(ckpt: str | Path) -> dict[str, Any]:
    """``trainer_state.json`` of a checkpoint folder, validated."""
    path = Path(ckpt) / STATE_FILE
    try:
        state = read_json(path)
    except FileNotFoundError:
        raise ArtifactError(f"{ckpt} is not a checkpoint (no {STATE_FILE})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"corrupted checkpoint {ckpt}: {STATE_FILE}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ArtifactError(f"{ckpt} is not a segsllm training checkpoint ({FORMAT})")
    return state


def load_model_weights(model: torch.nn.Module, ckpt: str | Path) -> Path:
    """Load a checkpoint's weights into ``model`` (strict); ``ckpt`` may be a run folder.

    Returns the checkpoint folder used. Shape or key mismatches become ArtifactError.
    """
    folder = resolve_checkpoint(ckpt)
    file = folder / "model.safetensors"
    if not file.is_file():
        raise ArtifactError(f"corrupted checkpoint {folder}: model.safetensors is missing")
    try:
        load_model(model, str(file), strict=True)
    except (RuntimeError, SafetensorError, OSError) as exc:
        first = str(exc).strip().splitlines()
        raise ArtifactError(
            f"checkpoint {folder} does not fit this model: {' '.join(first[:3])[:500]}"
        ) from None
    return folder


def load_optimizer(optimizer: torch.optim.Optimizer, ckpt: Path) -> None:
    try:
        structure = json.loads((ckpt / "optimizer.json").read_text(encoding="utf-8"))
        tensors = load_file(str(ckpt / "optimizer.safetensors"))
        optimizer.load_state_dict(unflatten_state(structure, tensors))
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise ArtifactError(f"checkpoint {ckpt}: optimizer state does not load: {exc}") from None


def load_rng(ckpt: Path, state: Mapping[str, Any], rank: int) -> dict[str, Any]:
    """RNG state saved for ``rank`` (rank 0's when the checkpoint has fewer ranks)."""
    py = state["rng"]
    try:
        tensors = load_file(str(ckpt / "rng.safetensors"))
    except (OSError, SafetensorError) as exc:
        raise ArtifactError(f"checkpoint {ckpt}: rng.safetensors does not load: {exc}") from None
    return _join_rng(tensors, py, rank if rank < len(py) else 0)


__all__ = [
    "capture_rng",
    "checkpoint_root",
    "flatten_state",
    "latest_checkpoint",
    "list_checkpoints",
    "load_model_weights",
    "load_optimizer",
    "load_rng",
    "prune_checkpoints",
    "read_trainer_state",
    "remove_stale_temp",
    "resolve_checkpoint",
    "restore_rng",
    "save_checkpoint",
    "step_dirname",
    "unflatten_state",
]
