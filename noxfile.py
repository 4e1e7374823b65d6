"""nox sessions: `nox -s tests` runs the README's test command, `nox -s lint` runs ruff and the
layering contract (import-linter, pyproject.toml [tool.importlinter])."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite in a fresh environment (CPU torch installed first)."""
    session.install("torch==2.13.0")
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint, then the layering contract (import-linter needs the package importable)."""
    session.install("ruff>=0.6", "import-linter>=2.1")
    session.run("ruff", "check", ".")
    session.install("--no-deps", "-e", ".")
    session.run("lint-imports", "--no-cache")
