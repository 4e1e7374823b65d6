"""`segsllm train-tokenizer`: byte-level BPE over a balanced mix of the prepared corpora.

The folder it writes is a Hugging Face tokenizer folder (``AutoTokenizer.from_pretrained``
loads it, with BOS/EOS/PAD) plus ``config.yaml`` (the resolved config) and
``manifest.json`` (kind, vocabulary size, fingerprint, the data manifests it was built
from, and the round-trip check). It appears only after every document of every split of
the corpora used has survived ``decode(encode(doc)) == doc``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from segsllm.cli.common import console, handle_errors, stdout_is_terminal
from segsllm.cli.examples import epilog
from segsllm.cli.options import split_list
from segsllm.cli.run_options import RunOptions, run_options

VocabOpt = Annotated[
    int | None,
    typer.Option("--vocab-size", help="Vocabulary size (default: tokenizer.vocab_size)."),
]
DomainsOpt = Annotated[
    str | None,
    typer.Option("--domains", help="Comma-separated corpora to train on (default: data.domains)."),
]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Replace an existing tokenizer folder at --out.")
]

def register(app: typer.Typer) -> None:
    """Add `train-tokenizer` to the app."""
    app.command("train-tokenizer", epilog=epilog("train-tokenizer"))(train_tokenizer)


@handle_errors
@run_options()
def train_tokenizer(
    opts: RunOptions,
    vocab_size: VocabOpt = None,
    domains: DomainsOpt = None,
    force: ForceOpt = False,
) -> None:
    """Train a byte-level BPE tokenizer on a balanced mix of the corpora's train splits.

    Every document of every split must round-trip exactly before anything is written.
    --out gets a Hugging Face tokenizer folder with config.yaml and manifest.json.
    """
    from segsllm.errors import SegsllmError

    flags: dict[str, Any] = {"tokenizer.vocab_size": vocab_size}
    if domains is not None:
        flags["data.domains"] = split_list(domains)
    cfg = opts.resolve(flags, stage="tokenizer")
    if not cfg.run.out:
        raise SegsllmError("--out DIR is required (or set run.out)")
    target = Path(cfg.run.out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not force:
        raise SegsllmError(f"{target} exists and is not empty; use --force to replace it")
    if not cfg.data.domains:
        raise SegsllmError("no corpora to train on: give --domains prose,code,csv")

    from segsllm.data.tokenizer_build import build_tokenizer, data_manifests
    from segsllm.tracking import start_run

    manifests = data_manifests(cfg)
    tags = {"domain": ",".join(cfg.data.domains)}
    with start_run(cfg, stage="tokenizer", tags=tags, manifests=manifests) as run:
        report = build_tokenizer(cfg, target, manifests, progress=stdout_is_terminal())
        run.set_tags({"tokenizer.fingerprint": report["fingerprint"]})
        metrics: dict[str, float] = {
            "vocab_size": report["vocab_size"],
            "roundtrip_docs_checked": report["roundtrip"]["documents"],
            "roundtrip_mismatches": report["roundtrip"]["mismatches"],
            "train_seconds": report["train_seconds"],
        }
        for d, v in report["bytes_per_token"].items():
            if v is not None:
                metrics[f"bytes_per_token/{d}"] = v
        for d, v in report["sample_bytes"].items():
            metrics[f"sample_bytes/{d}"] = v
        run.log_metrics(metrics)
        run.log_artifact(target, "tokenizer")
    _summary(report, target)


def _summary(report: dict[str, Any], target: Path) -> None:
    from rich.table import Table

    table = Table(
        title=f"tokenizer {target} (vocab {report['vocab_size']}, {report['fingerprint']})"
    )
    for col in ("domain", "sampled MB", "docs round-tripped", "bytes/token (validation)"):
        table.add_column(col, justify="left" if col == "domain" else "right")
    rt = report["roundtrip"]
    for d in report["domains"]:
        bpt = report["bytes_per_token"].get(d)
        table.add_row(
            d,
            f"{report['sample_bytes'][d] / 1e6:.2f}",
            str(rt["per_domain"].get(d, 0)),
            "-" if bpt is None else f"{bpt:.3f}",
        )
    console.print(table)
    console.print(
        f"round-trip: {rt['documents']} documents, {rt['mismatches']} mismatches; saved to {target}"
    )
