"""`segsllm data prepare|list`: build the corpora and show what is prepared."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from segsllm.cli.common import console, handle_errors, stdout_is_terminal, warn
from segsllm.cli.examples import epilog
from segsllm.cli.options import split_list
from segsllm.cli.run_options import RunOptions, run_options

app = typer.Typer(help="Prepare and list corpora.", no_args_is_help=True)

BUILTINS = ("prose", "code", "csv")
NEEDS = {"validation": "training stages evaluate on it", "test": "the bench scores on it"}

CorpusOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--corpus",
        help="Built-in corpus to prepare: prose, code, csv or all; repeatable or comma-separated"
        " (default: data.domains).",
    ),
]
FromOpt = Annotated[
    str | None,
    typer.Option("--from", help="Your own corpus from a file, folder or glob (needs --name)."),
]
NameOpt = Annotated[
    str | None, typer.Option("--name", help="Name of the corpus made with --from / --hf-dataset.")
]
TextFieldOpt = Annotated[
    str, typer.Option("--text-field", help="Field holding the text in .jsonl files and datasets.")
]
HFDatasetOpt = Annotated[
    str | None,
    typer.Option(
        "--hf-dataset",
        help="A `datasets` dataset: hub name, local loader path or save_to_disk folder.",
    ),
]
HFConfigOpt = Annotated[
    str | None, typer.Option("--hf-config", help="Configuration of --hf-dataset.")
]
HFSplitOpt = Annotated[
    str | None, typer.Option("--hf-split", help="Split of --hf-dataset (default: every split).")
]
EncodingOpt = Annotated[
    str,
    typer.Option(
        "--encoding",
        help="How --from files are decoded: auto (UTF-8; Latin-1/Windows-1252 files recognised"
        " and decoded as such), utf-8 (invalid bytes replaced), strict (refuse non-UTF-8) or a"
        " codec name (latin-1, cp1252, utf-16 ...).",
    ),
]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Rebuild corpora that are already prepared.")
]


class _Bar:
    """A rich progress task per corpus (hidden when stdout is not a terminal)."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.task: Any = None

    def start(self, name: str, total: int | None) -> None:
        self.task = self.progress.add_task(f"[cyan]{name}[/]", total=total)

    def advance(self, n: int = 1) -> None:
        if self.task is not None:
            self.progress.advance(self.task, n)


def _builtin_names(corpus: list[str] | None, domains: list[str]) -> list[str]:
    """Expand --corpus (repeatable, comma lists, ``all``) or fall back to data.domains."""
    from segsllm.errors import DataError

    names = [n for item in corpus or [] for n in split_list(item) or []]
    if not names:
        names = list(domains) or list(BUILTINS)
    out: list[str] = []
    for name in names:
        for n in BUILTINS if name == "all" else [name]:
            if n not in out:
                out.append(n)
    if corpus:
        unknown = [n for n in out if n not in BUILTINS]
        if unknown:
            raise DataError(
                f"unknown built-in corpus {unknown[0]!r}; choose from prose, code, csv, all"
                " (your own data: --from PATH --name NAME)"
            )
    return out


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


@app.command(epilog=epilog("data prepare"))
@handle_errors
@run_options("config", "set_", "data_dir", "seed", "tracking_uri", "no_track")
def prepare(
    opts: RunOptions,
    corpus: CorpusOpt = None,
    from_: FromOpt = None,
    name: NameOpt = None,
    text_field: TextFieldOpt = "text",
    hf_dataset: HFDatasetOpt = None,
    hf_config: HFConfigOpt = None,
    hf_split: HFSplitOpt = None,
    encoding: EncodingOpt = "auto",
    force: ForceOpt = False,
) -> None:
    """Build corpora offline into --data-dir: the built-ins, or your own with --from / --hf-dataset.

    Splits come from a hash of each document id (never from the seed).
    Re-running is a no-op unless --force.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from segsllm.data import corpora, store, user
    from segsllm.errors import DataError

    cfg = opts.resolve(stage="data")
    root = Path(cfg.data.dir)
    vf, tf = cfg.data.validation_fraction, cfg.data.test_fraction
    store.check_fractions(vf, tf)

    user_mode = from_ is not None or hf_dataset is not None
    if user_mode:
        if corpus:
            raise DataError("use either --corpus or --from/--hf-dataset, not both")
        if from_ is not None and hf_dataset is not None:
            raise DataError("use either --from or --hf-dataset, not both")
        if not name:
            raise DataError("--name is required with --from / --hf-dataset")
        store.check_name(name, allow_builtin=False)
        jobs = [name]
    else:
        if name:
            raise DataError("--name only applies with --from / --hf-dataset")
        jobs = _builtin_names(corpus, cfg.data.domains)
        for n in jobs:  # data.domains may list user corpora: they must exist already
            if n not in BUILTINS and not store.is_prepared(root, n):
                raise DataError(
                    f"corpus {n!r} (from data.domains) is not prepared; {store.prepare_hint(n)}"
                )

    results = []
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not stdout_is_terminal(),
        transient=False,
    )
    with progress:
        for n in jobs:
            bar = _Bar(progress)
            kw = {"validation_fraction": vf, "test_fraction": tf, "force": force, "progress": bar}
            if from_ is not None:
                res = user.prepare_files(root, n, from_, text_field=text_field, encoding=encoding, **kw)
            elif hf_dataset is not None:
                res = user.prepare_hf(
                    root, n, hf_dataset, hf_config, hf_split, text_field=text_field, **kw
                )
            elif n in BUILTINS:
                res = corpora.prepare_builtin(root, n, **kw)
            else:
                res = store.PrepareResult(n, "already prepared", store.load_manifest(root, n))
            if res.status != "prepared":
                console.print(f"{n}: already prepared in {root / n} (use --force to rebuild)")
            results.append(res)

    built = [r for r in results if r.status == "prepared"]
    if built:
        _track(cfg, built)
    _summary(results, root)


def _track(cfg: Any, built: list[Any]) -> None:
    """One MLflow run for the corpora just built: manifests as artifacts, sizes as metrics."""
    from segsllm.tracking import start_run

    manifests = {r.name: r.manifest for r in built}
    with start_run(
        cfg, stage="data", tags={"domain": ",".join(manifests)}, manifests=manifests
    ) as run:
        metrics: dict[str, float] = {}
        for r in built:
            m = r.manifest
            for split in ("train", "validation", "test"):
                metrics[f"{r.name}/docs_{split}"] = m["documents"][split]
                metrics[f"{r.name}/bytes_{split}"] = m["bytes"][split]
            metrics[f"{r.name}/skipped_binary"] = m["skipped_binary"]
            metrics[f"{r.name}/replaced_invalid_utf8"] = m["replaced_invalid_utf8"]
            metrics[f"{r.name}/build_seconds"] = r.seconds
        run.log_metrics(metrics)


def _corpora_table(root: Path, *numbers: str) -> Any:
    """A rich table of corpora: name, source, then right-aligned ``numbers`` columns."""
    from rich.table import Table

    table = Table(title=f"corpora in {root}")
    table.add_column("corpus")
    table.add_column("source", overflow="fold")
    for col in numbers:
        table.add_column(col, justify="right")
    return table


def _summary(results: list[Any], root: Path) -> None:
    table = _corpora_table(root, "train", "val", "test", "MB", "skipped", "s")
    for r in results:
        m = r.manifest
        docs = m["documents"]
        table.add_row(
            r.name,
            _source(m),
            str(docs["train"]),
            str(docs["validation"]),
            str(docs["test"]),
            _mb(m["total_bytes"]),
            str(m.get("skipped_binary", 0) + m.get("skipped_empty", 0)),
            f"{r.seconds:.1f}" if r.status == "prepared" else "-",
        )
    console.print(table)
    from segsllm.data.user import describe_notes

    for r in results:
        notes = r.manifest.get("named_files")
        if r.status != "prepared":
            continue
        if notes is None:  # built-in corpora count, they do not name
            count = r.manifest.get("replaced_invalid_utf8", 0)
            lines = [f"replaced invalid UTF-8 with U+FFFD in {count} document(s)"] if count else []
        else:
            lines = describe_notes(notes)
        for line in lines:
            warn(f"{r.name}: {line}")
        for line in empty_splits(r.manifest):
            warn(f"{r.name}: {line}")


def empty_splits(manifest: dict[str, Any]) -> list[str]:
    """A line per split left without documents (a tiny corpus): stages that read it stop."""
    docs, fractions = manifest.get("documents", {}), manifest.get("fractions", {})
    out = []
    for split in ("validation", "test"):
        if not docs.get(split) and fractions.get(split):
            out.append(
                f"the {split} split is empty ({sum(docs.values())} documents in all, {split}_fraction"
                f" {fractions[split]}); {NEEDS[split]}: add documents"
                f" or raise --set data.{split}_fraction and use --force"
            )
    return out


def _source(m: dict[str, Any]) -> str:
    return str(m.get("source")) + (" (fallback)" if m.get("fallback_used") else "")


@app.command("list", epilog=epilog("data list"))
@handle_errors
@run_options("data_dir", "config", "set_")
def list_(
    opts: RunOptions,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show the prepared corpora: documents and bytes per split."""
    from segsllm.data import store

    cfg = opts.resolve()
    root = Path(cfg.data.dir)
    rows = []
    for n in store.list_corpora(root):
        m = store.load_manifest(root, n)
        rows.append(
            {
                "name": n,
                "source": m.get("source"),
                "version": m.get("version"),
                "fallback_used": m.get("fallback_used", False),
                "documents": m.get("documents", {}),
                "bytes": m.get("bytes", {}),
                "skipped_binary": m.get("skipped_binary", 0),
                "replaced_invalid_utf8": m.get("replaced_invalid_utf8", 0),
                "created": m.get("created"),
                "path": str(root / n),
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print(f"no prepared corpora in {root}; run `segsllm data prepare`")
        return
    table = _corpora_table(root, "docs train", "val", "test", "MB train", "val", "test")
    for r in rows:
        d, b = r["documents"], r["bytes"]
        table.add_row(
            r["name"],
            _source(r),
            *(str(d.get(s, 0)) for s in ("train", "validation", "test")),
            *(_mb(b.get(s, 0)) for s in ("train", "validation", "test")),
        )
    console.print(table)
