"""Train, verify and write a tokenizer folder (the library side of `train-tokenizer`).

The folder is a Hugging Face tokenizer folder (``AutoTokenizer.from_pretrained`` loads it,
with BOS/EOS/PAD) plus ``config.yaml`` and ``manifest.json`` (kind, vocabulary size,
fingerprint, the data manifests it was built from, and the round-trip check). It appears
only after every document read from the corpora survived ``decode(encode(doc)) == doc``.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

ROUNDTRIP_BATCH_BYTES = 4_000_000  # encode/decode in batches of about this many bytes
DEFAULT_DOC_CAP_DIVISOR = 64  # one document gives at most 1/64 of a domain's sample




def data_manifests(cfg: Any) -> dict[str, dict[str, Any]]:
    """Manifests of the corpora named in data.domains (clear error if one is missing)."""
    from segsllm.data import store

    return {d: store.load_manifest(cfg.data.dir, d) for d in cfg.data.domains}


def _lineage(manifest: dict[str, Any]) -> dict[str, Any]:
    """What identifies a corpus (:data:`~segsllm.data.store.IDENTITY_KEYS`)."""
    from segsllm.data.store import IDENTITY_KEYS

    return {k: manifest.get(k) for k in IDENTITY_KEYS}


def build_tokenizer(
    cfg: Any,
    target: Path,
    manifests: dict[str, dict[str, Any]] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train, verify and write the tokenizer folder atomically; returns its manifest.

    Training text: ``tokenizer.sample_bytes_per_domain`` bytes from each domain's train
    split, spread over the split and interleaved across domains; one document gives at
    most ``data.max_doc_bytes`` (default: 1/64 of the budget) so a huge table cannot
    dominate. A round-trip mismatch on any document is an error and writes nothing.
    """
    from segsllm import __version__
    from segsllm.config import save_config
    from segsllm.data import store
    from segsllm.data.tokenizer import (
        load_tokenizer,
        save_tokenizer,
        tokenizer_fingerprint,
        train_bpe,
    )
    from segsllm.errors import SegsllmError
    from segsllm.io import atomic_write_json

    data_dir, domains = cfg.data.dir, list(cfg.data.domains)
    manifests = manifests or data_manifests(cfg)
    budget = int(cfg.tokenizer.sample_bytes_per_domain)
    if budget <= 0:
        raise SegsllmError("tokenizer.sample_bytes_per_domain must be positive")
    cap = cfg.data.max_doc_bytes or max(budget // DEFAULT_DOC_CAP_DIVISOR, 4096)
    sampled = dict.fromkeys(domains, 0)

    def texts() -> Iterator[str]:
        for domain, text in store.balanced_mix(
            data_dir, domains, budget, "train", cfg.run.seed, cap
        ):
            sampled[domain] += len(text.encode("utf-8"))
            yield text

    started = time.time()
    from rich.console import Console

    console = Console(stderr=True)
    with console.status("training BPE", spinner="dots") if progress else nullcontext():
        try:
            tok = train_bpe(texts(), cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency)
        except ValueError as exc:
            raise SegsllmError(f"tokenizer.vocab_size: {exc}") from None
    train_seconds = time.time() - started
    if not any(sampled.values()):
        raise SegsllmError(f"no training text in the train splits of {', '.join(domains)}")

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        save_tokenizer(tok, tmp)
        loaded = load_tokenizer(tmp)  # verify what users will load, not the in-memory object
        roundtrip, bpt = _verify_roundtrip(
            loaded, data_dir, domains, manifests, cfg.data.max_docs, cfg.data.max_doc_bytes, progress
        )
        if roundtrip["mismatches"]:
            raise SegsllmError(
                f"tokenizer round-trip failed on {roundtrip['mismatches']} of {roundtrip['documents']}"
                f" documents (first: {', '.join(roundtrip['first_mismatches'])}); nothing was written"
            )
        save_config(cfg, tmp / "config.yaml")
        report = {
            "kind": "tokenizer",
            "type": "byte-level BPE",
            "segsllm_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "vocab_size": len(loaded),
            "requested_vocab_size": cfg.tokenizer.vocab_size,
            "min_frequency": cfg.tokenizer.min_frequency,
            "fingerprint": tokenizer_fingerprint(loaded),
            "special_tokens": {
                "bos": [loaded.bos_token, loaded.bos_token_id],
                "eos": [loaded.eos_token, loaded.eos_token_id],
                "pad": [loaded.pad_token, loaded.pad_token_id],
            },
            "domains": domains,
            "sample_bytes_per_domain": budget,
            "max_doc_bytes": cap,
            "sample_bytes": sampled,
            "train_seconds": round(train_seconds, 3),
            "seed": cfg.run.seed,
            "bytes_per_token": bpt,
            "roundtrip": roundtrip,
            "data": {d: _lineage(m) for d, m in manifests.items()},
        }
        atomic_write_json(tmp / "manifest.json", report)
        _swap_into_place(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return report


def _verify_roundtrip(
    tok: Any,
    data_dir: str,
    domains: list[str],
    manifests: dict[str, dict[str, Any]],
    max_docs: int | None = None,
    max_doc_bytes: int | None = None,
    show_progress: bool = False,
) -> tuple[dict[str, Any], dict[str, float | None]]:
    """decode(encode(doc)) == doc for every document of every split, in batches.

    With ``data.max_docs`` / ``data.max_doc_bytes`` set (small presets) only what later
    stages will read is checked, and the report says so (``complete: false``).
    Returns the counts and bytes/token per domain on the validation split (None if empty).
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from segsllm.data import store

    checked, bad = 0, 0
    first_bad: list[str] = []
    per_domain: dict[str, int] = {}
    bpt: dict[str, float | None] = {}
    total = sum(
        min(n, max_docs) if max_docs is not None else n
        for d in domains
        for n in manifests[d]["documents"].values()
    )
    progress = Progress(
        TextColumn("round-trip {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not show_progress,
    )
    with progress:
        task = progress.add_task("", total=total)
        for domain in domains:
            progress.update(task, description=domain)
            val_bytes = val_tokens = 0
            per_domain[domain] = 0
            for split in store.SPLITS:
                docs = store.iter_documents(data_dir, domain, split, max_docs, max_doc_bytes)
                for batch in _batches(docs):
                    texts = [d.text for d in batch]
                    ids = tok(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
                    back = tok.batch_decode(
                        ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
                    )
                    for doc, orig, dec, seq in zip(batch, texts, back, ids, strict=True):
                        if dec != orig:
                            bad += 1
                            if len(first_bad) < 5:
                                first_bad.append(f"{domain}/{doc.id}")
                        if split == "validation":
                            val_bytes += len(orig.encode("utf-8"))
                            val_tokens += len(seq)
                    checked += len(batch)
                    per_domain[domain] += len(batch)
                    progress.advance(task, len(batch))
            bpt[domain] = round(val_bytes / val_tokens, 4) if val_tokens else None
    report = {
        "documents": checked,
        "mismatches": bad,
        "first_mismatches": first_bad,
        "per_domain": per_domain,
        "complete": max_docs is None and max_doc_bytes is None,
        "max_docs": max_docs,
        "max_doc_bytes": max_doc_bytes,
    }
    return report, bpt


def _batches(docs: Iterator[Any]) -> Iterator[list[Any]]:
    batch: list[Any] = []
    size = 0
    for doc in docs:
        batch.append(doc)
        size += len(doc.text)
        if size >= ROUNDTRIP_BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished temp folder to ``final``, replacing an older one."""
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
