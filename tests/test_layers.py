"""The layering contract of pyproject.toml [tool.importlinter] (docs/DESIGN.md §3), under pytest.

`lint-imports` runs on this checkout (the repository root first on the path), so a plain
`python -m pytest` catches an upward import or a cycle without a separate CI step.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def lint_imports(*contracts: str) -> subprocess.CompletedProcess[str]:
    """Run `lint-imports` on this checkout (only ``contracts``, when given)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    args = [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()",
            "--no-cache", "--no-logo"]
    for contract in contracts:
        args += ["--contract", contract]
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_layers_and_no_cycles():
    result = lint_imports()
    assert result.returncode == 0, result.stdout + result.stderr


def test_contract_catches_an_upward_import(tmp_path):
    """The contract is live: a data module importing the training loop breaks it."""
    bad = ROOT / "segsllm" / "data" / "_upward_probe.py"
    bad.write_text("from segsllm.train import loop  # noqa: F401\n")
    try:
        result = lint_imports("layers")
    finally:
        bad.unlink()
    assert result.returncode != 0
    assert "segsllm.data._upward_probe -> segsllm.train" in result.stdout
