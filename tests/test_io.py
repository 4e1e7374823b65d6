"""Atomic writes: permissions follow the umask (not tempfile's private 0600 / 0700)."""

from __future__ import annotations

import json
import os

import pytest

from segsllm.io import atomic_write_json, atomic_write_text, make_temp_dir


@pytest.fixture
def umask():
    """Set the process umask for one test and put the old one back."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                             (0o002, 0o664, 0o775)])
def test_atomic_files_and_temp_folders_honour_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    text = atomic_write_text(tmp_path / "a.txt", "hello")
    js = atomic_write_json(tmp_path / "sub" / "b.json", {"x": 1})
    folder = make_temp_dir(tmp_path, prefix=".tmp-")
    assert text.stat().st_mode & 0o777 == file_mode
    assert js.stat().st_mode & 0o777 == file_mode
    assert folder.stat().st_mode & 0o777 == dir_mode
    assert json.loads(js.read_text()) == {"x": 1} and text.read_text() == "hello"
    assert not [p for p in tmp_path.rglob(".*.tmp")]  # no temp file left behind


def test_overwrite_keeps_umask_permissions(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "m.json"
    atomic_write_json(path, {"v": 1})
    os.chmod(path, 0o600)
    atomic_write_json(path, {"v": 2})
    assert path.stat().st_mode & 0o777 == 0o644


def test_record_files_rewrites_the_manifest_last(tmp_path):
    import torch

    from segsllm.errors import ArtifactError
    from segsllm.models.artifact import (
        mark_incomplete,
        read_artifact,
        read_manifest,
        record_files,
        save_artifact,
    )

    out = tmp_path / "art"
    save_artifact(out, kind="unit", config={"a": 1}, state_dict={"w": torch.zeros(2)})
    mark_incomplete(out)
    with pytest.raises(ArtifactError, match="not a complete"):
        read_manifest(out)
    save_artifact(out, kind="unit", config={"a": 1}, state_dict={"w": torch.zeros(2)})
    (out / "metrics.json").write_text("{}")
    record_files(out, ["metrics.json", "absent.json"])
    files = read_manifest(out)["files"]
    assert set(files) == {"model.safetensors", "config.json", "metrics.json"}
    assert files["metrics.json"]["bytes"] == 2
    assert read_artifact(out, kind="unit").config == {"a": 1}
