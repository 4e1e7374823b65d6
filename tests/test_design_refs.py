"""Every "docs/DESIGN.md §N" cited in the code, tests and docs points into docs/DESIGN.md."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "DESIGN.md"
CITE = re.compile(r"(\S*)DESIGN\.md((?:,? ?§\d+)+)")


def _tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / p for p in out if p.endswith((".py", ".md", ".toml", ".yaml")) and (ROOT / p).is_file()]


def test_design_doc_sections_are_numbered_in_order():
    numbers = [int(n) for n in re.findall(r"^## (\d+)\. ", DESIGN.read_text(encoding="utf-8"), re.M)]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 14


def test_every_citation_names_an_existing_section_of_docs_design():
    sections = set(re.findall(r"^## (\d+)\. ", DESIGN.read_text(encoding="utf-8"), re.M))
    bad: list[str] = []
    for path in _tracked_text_files():
        if path == DESIGN:
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for prefix, cited in CITE.findall(line):
                where = f"{path.relative_to(ROOT)}:{i}"
                if not prefix.endswith("docs/"):
                    bad.append(f"{where}: cite docs/DESIGN.md, not {prefix}DESIGN.md")
                bad += [f"{where}: no section {n}" for n in re.findall(r"\d+", cited) if n not in sections]
    assert not bad, "\n".join(bad)
