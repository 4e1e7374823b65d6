"""`segsllm pipeline`: every stage from one preset, resumable (the main job)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from segsllm.cli.common import console, handle_errors
from segsllm.cli.examples import epilog
from segsllm.cli.options import seed_list, split_list
from segsllm.cli.run_options import RunOptions, run_options


@handle_errors
@run_options()
def pipeline_command(
    opts: RunOptions,
    segmenters: Annotated[
        str | None,
        typer.Option("--segmenters", help="Comma-separated segmenter specs (default: pipeline.segmenters)."),
    ] = None,
    teachers: Annotated[
        str | None,
        typer.Option("--teachers", help="Comma-separated splitter teachers (default: pipeline.teachers)."),
    ] = None,
    seeds: Annotated[
        str | None,
        typer.Option("--seeds", help="Comma-separated seeds, e.g. 0,1,2: every model is trained once per "
                                     "seed into OUT/seed-<k>/ (data and tokenizer shared; default: "
                                     "pipeline.seeds, else once with --seed in OUT/)."),
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option("--jobs", "-j", metavar="<int>",
                     help="Stages run at once, each in its own process with cores/N threads "
                          "(default: pipeline.jobs, 1). 2 on a 2-core box: seeds and segmenters train side by side."),
    ] = None,
) -> None:
    """Run every stage from a preset: data, tokenizer, LM, VAE + SLLM per segmenter, splitters, bench.

    Finished stages are skipped on a rerun (same config), interrupted ones resume.
    """
    from rich.table import Table

    from segsllm.pipeline import run_pipeline

    extra: dict[str, list[Any] | None] = {
        "pipeline.segmenters": split_list(segmenters),
        "pipeline.teachers": split_list(teachers),
        "pipeline.seeds": seed_list(seeds),
    }
    scalar = {"pipeline.jobs": jobs}
    cfg = opts.resolve({**extra, **scalar})
    if not cfg.run.out:
        cfg.run.out = "runs/pipeline"
    overrides = list(opts.set_)
    if opts.data_dir is not None:
        overrides.append(f"data.dir={opts.data_dir}")
    for key, value in extra.items():
        if value is not None:
            overrides.append(f"{key}=[{','.join(repr(v) for v in value)}]")

    def report(name: str, status: str) -> None:
        console.rule(f"[bold]{name}[/] — {status}")

    outcomes = run_pipeline(cfg, opts.config, overrides, on_stage=report)
    table = Table(title=f"pipeline {cfg.run.out}")
    for col in ("stage", "status", "seconds", "output"):
        table.add_column(col)
    for o in outcomes:
        table.add_row(o.name, o.status, f"{o.seconds:.0f}", str(o.out))
    console.print(table)
    if outcomes:
        _print_results(outcomes[-1].out)


def _print_results(bench_dir: Path) -> None:
    """The bench's headline table, drawn as a rich table (results.md holds every column)."""
    import json
    from types import SimpleNamespace

    from segsllm.bench.report import rich_table

    path = bench_dir / "results.json"
    if not path.is_file():
        return
    doc = json.loads(path.read_text(encoding="utf-8"))
    console.print(rich_table(SimpleNamespace(rows=doc.get("rows", []), meta=doc.get("meta", {}))))
    for name in ("results.md", "results.csv", "speed_quality.png", "memory.png"):
        if (bench_dir / name).is_file():
            console.print(f"{name}: {bench_dir / name}")


pipeline_command.interrupt_hint = (  # type: ignore[attr-defined]
    "rerun the same command to resume (finished stages are skipped, the interrupted one continues)"
)


def register(app: typer.Typer) -> None:
    """Add pipeline."""
    app.command(name="pipeline", epilog=epilog("pipeline"))(pipeline_command)
