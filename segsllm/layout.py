"""Where a pipeline writes each artifact: folder names in one place, no string surgery.

``segsllm pipeline --out DIR`` writes, and ``segsllm bench --from DIR`` reads::

    DIR/data/                  the data stage's record (the corpora live in data.dir)
    DIR/tokenizer/             the tokenizer every model shares
    DIR/lm/                    fine-tuned token baseline (train-lm output)
    DIR/base-lm/               untouched base LM, a HF folder (optional)
    DIR/vae-<slug>/            SentenceVAE of one segmenter (train-vae output)
    DIR/sllm-<slug>/           SLLM of one segmenter (finetune output)
    DIR/splitter-<teacher>/    learned segmenter taught by one teacher (train-splitter output)
    DIR/lm-matched/<slug>/     token LM trained on as many tokens as the SLLM of <slug> (HF folder)
    DIR/budgets.json           stage folder name -> training tokens it saw
    DIR/seed-<k>/              one whole run per seed (``pipeline --seeds``), each laid out as DIR
    DIR/bench/                 the bench's results

``<slug>`` is :func:`segmenter_slug` of the segmenter spec as written in the list of
segmenters (``punctuation`` -> ``punctuation``, ``fixed:k=16`` -> ``fixed-k-16``,
``learned:runs/x/splitter-entropy`` -> ``learned-splitter-entropy``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from segsllm.errors import ConfigError

TOKENIZER_DIR, BASELINE_DIR, BASE_LM_DIR, BENCH_DIR = "tokenizer", "lm", "base-lm", "bench"
MATCHED_DIR, BUDGETS_FILE, SEED_PREFIX = "lm-matched", "budgets.json", "seed-"
VAE_PREFIX, SLLM_PREFIX, SPLITTER_PREFIX = "vae-", "sllm-", "splitter-"


def segmenter_slug(spec: str) -> str:
    """Folder-safe name of a segmenter spec (see the module docstring)."""
    text = spec.strip()
    if ":" in text:
        name, rest = text.split(":", 1)
        if name.strip().lower() == "learned":  # a path: keep its last component only
            text = f"learned-{Path(rest.rstrip('/')).name}"
    slug = re.sub(r"[^a-z0-9._]+", "-", text.lower()).strip("-.")
    if not slug:
        raise ConfigError(f"segmenter spec {spec!r} gives an empty folder name")
    return slug


def vae_name(spec: str) -> str:
    """Folder name of the SentenceVAE trained on segmenter ``spec``."""
    return VAE_PREFIX + segmenter_slug(spec)


def sllm_name(spec: str) -> str:
    """Folder name of the SLLM built on segmenter ``spec``."""
    return SLLM_PREFIX + segmenter_slug(spec)


def splitter_name(teacher: str) -> str:
    """Folder name of the learned segmenter taught by ``teacher``."""
    return SPLITTER_PREFIX + teacher


def matched_lm_dir(run_dir: str | Path, seg_slug: str) -> Path:
    """The token LM trained for as many tokens as the SLLM of segmenter slug ``seg_slug``."""
    return Path(run_dir) / MATCHED_DIR / seg_slug


def seed_dirs(run_dir: str | Path) -> list[Path]:
    """The per-seed run folders ``<run>/seed-<k>/`` in seed order, else ``[run_dir]``."""
    root = Path(run_dir)
    found = []
    for p in root.glob(f"{SEED_PREFIX}*"):
        k = p.name[len(SEED_PREFIX):]
        if p.is_dir() and k.isdigit():
            found.append((int(k), p))
    return [p for _, p in sorted(found)] or [root]


def budgets_path(run_dir: str | Path) -> Path:
    """``<run>/budgets.json``: stage folder name -> training tokens."""
    return Path(run_dir) / BUDGETS_FILE


@dataclass(frozen=True)
class PipelineLayout:
    """The artifact folders under one pipeline output folder."""

    root: Path

    @property
    def tokenizer(self) -> Path:
        return self.root / TOKENIZER_DIR

    @property
    def lm(self) -> Path:
        return self.root / BASELINE_DIR

    @property
    def base_lm(self) -> Path:
        return self.root / BASE_LM_DIR

    @property
    def bench(self) -> Path:
        return self.root / BENCH_DIR

    def vae(self, spec: str) -> Path:
        return self.root / vae_name(spec)

    def sllm(self, spec: str) -> Path:
        return self.root / sllm_name(spec)

    def splitter(self, teacher: str) -> Path:
        return self.root / splitter_name(teacher)


__all__ = [
    "BASELINE_DIR",
    "BASE_LM_DIR",
    "BENCH_DIR",
    "BUDGETS_FILE",
    "MATCHED_DIR",
    "SEED_PREFIX",
    "SLLM_PREFIX",
    "PipelineLayout",
    "budgets_path",
    "matched_lm_dir",
    "seed_dirs",
    "segmenter_slug",
    "sllm_name",
    "splitter_name",
    "vae_name",
]
