"""Where a pipeline writes each artifact: folder names in one place, no string surgery.

``segsllm pipeline --out DIR`` writes, and ``segsllm bench --from DIR`` reads::

    DIR/data/                  the data stage's record (the corpora live in data.dir)
    DIR/tokenizer/             the tokenizer every model shares
    DIR/lm/                    fine-tuned token baseline (train-lm output)
    DIR/base-lm/               untouched base LM, a HF folder (optional)
    DIR/vae-<slug>/            SentenceVAE of one segmenter (train-vae output)
    DIR/sllm-<slug>/           SLLM of one segmenter (finetune output)
    DIR/splitter-<teacher>/    learned segmenter taught by one teacher (train-splitter output)
    DIR/lm-matched/<slug>/     the lm continued for exactly sllm-<slug>'s training tokens
    DIR/budgets.json           every model's training budget in tokens (see budgets.py)
    DIR/seed-<k>/              one whole run per seed (``pipeline --seeds``), each laid out as DIR
    DIR/bench/                 the bench's results

``<slug>`` is :func:`segmenter_slug` of the segmenter spec as written in the list of
segmenters (``punctuation`` -> ``punctuation``, ``fixed:k=16`` -> ``fixed-k-16``,
``learned:runs/x/splitter-entropy`` -> ``learned-splitter-entropy``).

With several seeds (``segsllm pipeline --seeds 0,1,2``) the data and tokenizer stay shared
at ``DIR/data`` and ``DIR/tokenizer`` and everything else (models, budgets.json, bench)
moves one level down, into ``DIR/seed-<k>/`` with the layout above:
``PipelineLayout(DIR, seed=k)`` names those folders, :meth:`PipelineLayout.seeds` finds them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from segsllm.errors import ConfigError

TOKENIZER_DIR, BASELINE_DIR, BASE_LM_DIR, BENCH_DIR = "tokenizer", "lm", "base-lm", "bench"
DATA_DIR, MATCHED_DIR, BUDGETS_FILE, SEED_PREFIX = "data", "lm-matched", "budgets.json", "seed-"
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
    """``<run>/budgets.json``: every model's training budget in tokens (see budgets.py)."""
    return Path(run_dir) / BUDGETS_FILE


def seed_dirname(seed: int) -> str:
    """Folder name of one seed's models: ``seed-<k>``."""
    return f"{SEED_PREFIX}{int(seed)}"


@dataclass(frozen=True)
class PipelineLayout:
    """The artifact folders under one pipeline output folder; with ``seed`` set, the
    folders of that seed's models (``root/seed-<k>/...``; data and tokenizer stay shared)."""

    root: Path
    seed: int | None = None

    @property
    def models(self) -> Path:
        """Where the trained models, budgets.json and the bench live."""
        return self.root if self.seed is None else self.root / seed_dirname(self.seed)

    @property
    def data(self) -> Path:
        return self.root / DATA_DIR

    @property
    def tokenizer(self) -> Path:
        return self.root / TOKENIZER_DIR

    @property
    def lm(self) -> Path:
        return self.models / BASELINE_DIR

    @property
    def base_lm(self) -> Path:
        return self.models / BASE_LM_DIR

    @property
    def bench(self) -> Path:
        return self.models / BENCH_DIR

    @property
    def matched_root(self) -> Path:
        """The ``lm-matched`` stage's folder (its checkpoints; one snapshot per SLLM below)."""
        return self.models / MATCHED_DIR

    @property
    def budgets(self) -> Path:
        return self.models / BUDGETS_FILE

    def vae(self, spec: str) -> Path:
        return self.models / vae_name(spec)

    def sllm(self, spec: str) -> Path:
        return self.models / sllm_name(spec)

    def lm_matched(self, spec: str) -> Path:
        """The token LM trained for as many tokens as the SLLM of segmenter ``spec``."""
        return self.matched_root / segmenter_slug(spec)

    def splitter(self, teacher: str) -> Path:
        return self.models / splitter_name(teacher)

    def for_seed(self, seed: int) -> PipelineLayout:
        return PipelineLayout(self.root, seed)

    def seeds(self) -> list[int]:
        """The seeds with a ``seed-<k>`` folder under ``root``, sorted (empty: a one-seed run)."""
        found = (p.name[len(SEED_PREFIX):] for p in self.root.glob(f"{SEED_PREFIX}*") if p.is_dir())
        return sorted(int(k) for k in found if k.isdigit())


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
    "seed_dirname",
    "seed_dirs",
    "segmenter_slug",
    "sllm_name",
    "splitter_name",
    "vae_name",
]
