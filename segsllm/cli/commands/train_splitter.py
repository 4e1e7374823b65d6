"""`segsllm train-splitter`: train the learned segmenter (boundary predictor) from a teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segsllm.cli.common import console, err_console, handle_errors
from segsllm.cli.examples import epilog
from segsllm.cli.options import DomainsOpt, ResumeOpt, TokenizerDirOpt, split_list
from segsllm.cli.run_options import RunOptions, run_options

TEACHER_HELP = (
    "punctuation (distil the rule) | entropy (base LM next-token entropy, needs --base-lm) | "
    "vae (reconstruction-optimal spans up to max_len, needs --vae trained on random spans) | "
    "vae-rule (the earlier vae teacher: a rule's VAE, spans up to 2x target) | "
    "sllm (what the SLLM pays: --sllm DIR for one step, else hard EM from --vae [+ --base-lm]) | "
    "joint (no labels: trained end to end with an SLLM built from --vae [+ --base-lm]) "
    "(default: splitter.teacher)."
)


@handle_errors
@run_options()
def train_splitter_command(
    opts: RunOptions,
    teacher: Annotated[str | None, typer.Option("--teacher", help=TEACHER_HELP)] = None,
    domains: DomainsOpt = None,
    target_len: Annotated[
        float | None,
        typer.Option("--target-len", help="Mean tokens per segment (default: 8; punctuation: the rule's own)."),
    ] = None,
    max_len: Annotated[
        int | None, typer.Option("--max-len", help="Hard cap on tokens per segment (default: segmenter.max_len).")
    ] = None,
    base_lm: Annotated[
        Path | None, typer.Option("--base-lm", help="Token-level LM folder (`segsllm train-lm`) for --teacher entropy; the SLLM backbone of --teacher sllm EM and joint.")
    ] = None,
    vae: Annotated[
        Path | None,
        typer.Option("--vae", help="SentenceVAE folder (`segsllm train-vae`) for --teacher vae / vae-rule / sllm (EM) / joint."),
    ] = None,
    sllm: Annotated[
        Path | None, typer.Option("--sllm", help="SLLM folder (`segsllm finetune`): one --teacher sllm step, no EM.")
    ] = None,
    em_rounds: Annotated[
        int | None, typer.Option("--em-rounds", help="Hard-EM rounds of --teacher sllm (default: 2).")
    ] = None,
    tokenizer: TokenizerDirOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """Train the learned segmenter from a teacher; report lengths, boundary F1 and speed per domain."""
    from rich import box
    from rich.table import Table

    from segsllm.errors import ConfigError
    from segsllm.train.sllm_em import run_splitter_stage

    extra = {
        "data.domains": split_list(domains),
        "splitter.teacher": teacher,
        "splitter.target_len": target_len,
        "splitter.max_len": max_len,
        "splitter.base_lm": str(base_lm) if base_lm else None,
        "splitter.vae": str(vae) if vae else None,
        "splitter.sllm": str(sllm) if sllm else None,
        "splitter.em_rounds": em_rounds,
        "tokenizer.path": str(tokenizer) if tokenizer else None,
    }
    cfg = opts.resolve(extra, stage="splitter")
    cfg.splitter.validate()
    if cfg.splitter.teacher == "entropy" and not cfg.splitter.base_lm:
        raise ConfigError("--teacher entropy needs the base LM: --base-lm DIR (a `segsllm train-lm` folder)")
    sp = cfg.splitter
    if sp.teacher in ("vae", "vae-rule") and not sp.vae:
        raise ConfigError(f"--teacher {sp.teacher} needs a trained SentenceVAE: --vae DIR (a `segsllm train-vae` folder)")
    if sp.teacher == "sllm" and not (sp.sllm or sp.vae):
        raise ConfigError("--teacher sllm needs --sllm DIR (one step) or, for hard EM, --vae DIR (a SentenceVAE "
                          "trained on random spans) and optionally --base-lm DIR")
    if sp.teacher == "joint" and not sp.vae:
        raise ConfigError("--teacher joint needs --vae DIR (a SentenceVAE trained on random spans) and usually "
                          "--base-lm DIR (the token LM): the SLLM it trains with")
    if not cfg.tokenizer.path:
        raise ConfigError("no tokenizer: pass --tokenizer DIR (see `segsllm train-tokenizer`)")

    def log(msg: str) -> None:
        err_console.print(f"[dim]{msg}[/]")

    result, rounds = run_splitter_stage(cfg, resume=resume, progress=True, log=log)
    if rounds:
        em = Table(title="hard EM: validation bits/byte of the SLLM trained on each round's segmentation",
                   box=box.SIMPLE_HEAD, padding=(0, 1))
        em.add_column("round", justify="right")
        em.add_column("segmentation", no_wrap=True)
        for d in cfg.data.domains:
            em.add_column(f"{d} bpb", justify="right")
            em.add_column(f"{d} len", justify="right")
        for r in rounds:
            cells = [f"{r.bits_per_byte.get(d, float('nan')):.3f}|{r.mean_segment_len.get(d, float('nan')):.1f}"
                     for d in cfg.data.domains]
            em.add_row(str(r.round), r.segmentation if len(r.segmentation) < 40 else "…" + r.segmentation[-39:],
                       *[x for c in cells for x in c.split("|")])
        console.print(em)

    cal = result.calibration
    table = Table(title=(f"learned segmenter: {result.teacher} teacher, target {result.target_len:.1f}, "
                         f"max_len {result.max_len}, {result.steps} steps (validation; lengths in tokens)"))
    # teacher: the teacher's mean length; mean / p95: the segmenter (batch mode); stream: its
    # streaming mode; test: mean on the test split; P / R / F1: boundaries against the teacher.
    cols = ("domain", "teacher", "mean", "p95", "stream", "test", "P", "R", "F1", "tok/s")
    table = Table(title=table.title, box=box.SIMPLE_HEAD, padding=(0, 1))
    for col in cols:
        table.add_column(col, justify="left" if col == "domain" else "right", no_wrap=True)

    def f(m: dict, key: str, fmt: str = "{:.2f}") -> str:
        v = m.get(key)
        return "-" if v is None or v != v else fmt.format(v)

    for d, m in result.metrics.items():
        speed = m.get("tokens_per_s", 0.0)
        table.add_row(
            d, f(m, "teacher_mean_len", "{:.1f}"), f(m, "mean_len", "{:.1f}"), f(m, "p95_len", "{:.0f}"),
            f(m, "mean_len_stream", "{:.1f}"), f(m, "mean_len_test", "{:.1f}"), f(m, "teacher_precision"),
            f(m, "teacher_recall"), f(m, "teacher_f1", "{:.3f}"), f"{speed / 1000:,.0f}k" if speed > 0 else "-",
        )
    console.print(table)
    console.print(f"threshold {cal['threshold']:.3f}  viterbi penalty {cal['viterbi_penalty']:.3f}  "
                  f"segmenter: learned:{result.out_dir}  ({result.wall_time_s:.0f} s)")


def register(app: typer.Typer) -> None:
    """Add train-splitter."""
    app.command(name="train-splitter", epilog=epilog("train-splitter"))(train_splitter_command)
