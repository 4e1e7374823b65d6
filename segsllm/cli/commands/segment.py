"""`segsllm segment` (show how a segmenter cuts a file) and `segsllm segmenters` (list them).

No numpy / torch / transformers import at module level: `segsllm --help` stays fast.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from segsllm.cli.common import console, err_console, handle_errors
from segsllm.cli.examples import epilog
from segsllm.cli.options import SegmenterOpt
from segsllm.cli.run_options import RunOptions, run_options

BINARY_SNIFF_BYTES = 8192
STYLES = ("black on cyan", "black on yellow")  # alternate per segment; backgrounds show spaces

FileArg = Annotated[Path, typer.Argument(help="Text file to segment (read as UTF-8 bytes).")]
TokenizerOpt = Annotated[
    Path | None,
    typer.Option("--tokenizer", "-t", help="Tokenizer folder (default: tokenizer.path of the config)."),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help='Print {"segments": [...], "stats": {...}} on stdout only.')
]
SeparatorOpt = Annotated[
    str | None,
    typer.Option(
        "--separator",
        help="Text printed between segments (default: none on a terminal, where colours mark them;"
        " │ when the output is piped or redirected).",
    ),
]
PIPE_SEPARATOR, ASCII_SEPARATOR = "│", "|"
ShowOpt = Annotated[
    int, typer.Option("--show", help="Segments to draw in the terminal (0: none, -1: all).")
]


def register(app: typer.Typer) -> None:
    """Add `segment` and `segmenters` to the app."""
    app.command("segment", epilog=epilog("segment"))(segment_file)
    app.command("segmenters", epilog=epilog("segmenters"))(list_segmenters_cmd)


def read_text_file(path: Path) -> str:
    """The file's text, exactly (CRLF kept); a clear error for empty or binary files."""
    from segsllm.data.textio import decode_utf8, is_binary
    from segsllm.errors import DataError

    if path.is_dir():
        raise DataError(f"expected a file, got a folder: {path}")
    data = path.read_bytes()
    if not data:
        raise DataError(f"{path} is empty: nothing to segment")
    if is_binary(data[:BINARY_SNIFF_BYTES]):
        raise DataError(f"{path} looks binary (NUL byte in the first {BINARY_SNIFF_BYTES} bytes); give a text file")
    decoded = decode_utf8(data)
    if decoded.replaced:
        from rich.text import Text

        err_console.print(
            Text.assemble(
                ("warning: ", "yellow"),
                f"{path} is not valid UTF-8: {decoded.replaced} invalid byte sequence(s) "
                "replaced with U+FFFD",
            ),
            soft_wrap=True,
        )
    return decoded.text


@handle_errors
@run_options("config", "set_")
def segment_file(
    opts: RunOptions,
    file: FileArg,
    segmenter: SegmenterOpt = None,
    tokenizer: TokenizerOpt = None,
    json_out: JsonOpt = False,
    show: ShowOpt = 200,
    separator: SeparatorOpt = None,
) -> None:
    """Show how a segmenter cuts a text file, with colours and statistics.

    Segments alternate background colours in the terminal; the table gives documents,
    tokens, segments, tokens per segment (mean / p50 / p95 / max), bytes per segment,
    compression ratio and the segmenter's own speed. --json prints the segment texts
    (they join back to the file's text exactly) and the statistics.
    """
    from segsllm.errors import SegsllmError

    flags = {"tokenizer.path": str(tokenizer) if tokenizer is not None else None}
    cfg = opts.resolve(flags, segmenter=segmenter)
    if not cfg.tokenizer.path:
        raise SegsllmError(
            "no tokenizer: pass --tokenizer DIR or set tokenizer.path "
            "(train one with `segsllm train-tokenizer`)"
        )
    text = read_text_file(file)

    from segsllm.data.tokenizer import load_tokenizer
    from segsllm.segment import build_segmenter, segment_stats, segment_texts
    from segsllm.segment.text import encode_ids

    tok = load_tokenizer(cfg.tokenizer.path)
    seg = build_segmenter(cfg.segmenter.spec, tokenizer=tok, max_len=cfg.segmenter.max_len)
    ids = encode_ids(tok, text)  # a 10 MB line is encoded in pieces, in bounded memory
    started = time.perf_counter()
    ends = seg.segment(ids)
    seconds = time.perf_counter() - started
    texts = segment_texts(tok, ids, ends)
    stats = segment_stats([ends], n_bytes=len(text.encode("utf-8")), seconds=seconds).as_dict()
    # "segmenter" as the user typed it (fixed:k=16); "spec" the canonical, rebuildable one.
    stats = {"segmenter": cfg.segmenter.spec.strip(), "spec": seg.spec(), "max_len": seg.max_len, **stats}

    if json_out:
        ascii_only = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "") != "utf8"
        typer.echo(json.dumps({"segments": texts, "stats": stats}, ensure_ascii=ascii_only))
        return
    _draw_segments(texts, show, separator)
    _stats_table(file, stats)


def _pipe_separator() -> str:
    """│ between segments in piped output, | when stdout cannot encode it."""
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
    return PIPE_SEPARATOR if encoding == "utf8" else ASCII_SEPARATOR


def _draw_segments(texts: list[str], show: int, separator: str | None = None) -> None:
    from rich.text import Text

    from segsllm.cli.common import stdout_is_terminal

    if show == 0 or not texts:
        return
    shown = texts if show < 0 else texts[:show]
    if separator is None and not stdout_is_terminal():
        separator = _pipe_separator()  # colours are gone in a pipe: mark the cuts with text
    out = Text()
    for i, piece in enumerate(shown):
        if i and separator:
            out.append(separator, style="bold")
        out.append(piece.replace("\r\n", "\n").replace("\r", "\n"), style=STYLES[i % 2])
    console.print(out, soft_wrap=True, end="" if out.plain.endswith("\n") else "\n")
    if len(shown) < len(texts):
        console.print(f"[dim]… {len(texts) - len(shown)} more segments (use --show -1 to see all)[/]")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _stats_table(path: Path, stats: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    rows = [
        ("segmenter", stats["segmenter"]),
        *([("resolved spec", stats["spec"])] if stats["spec"] != stats["segmenter"] else []),
        ("max_len", stats["max_len"]),
        ("documents", stats["documents"]),
        ("tokens", stats["tokens"]),
        ("segments", stats["segments"]),
        ("tokens / segment (mean)", stats["mean_tokens_per_segment"]),
        ("tokens / segment (p50)", stats["p50_tokens_per_segment"]),
        ("tokens / segment (p95)", stats["p95_tokens_per_segment"]),
        ("tokens / segment (max)", stats["max_tokens_per_segment"]),
        ("bytes / segment", stats["bytes_per_segment"]),
        ("compression ratio", stats["compression_ratio"]),
        ("segmenter tokens/s", stats["segmenter_tokens_per_s"]),
    ]
    table = Table(title=Text(f"segments of {path.name}"), show_header=False, title_justify="left")
    table.add_column("statistic", style="bold")
    table.add_column("value", justify="right")
    for key, value in rows:
        table.add_row(key, Text(_fmt(value)))
    console.print(table)


@handle_errors
def list_segmenters_cmd(
    json_out: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """List the built-in segmenters and installed plug-ins, with their parameters."""
    import warnings

    from rich.table import Table
    from rich.text import Text

    from segsllm.segment import list_segmenters

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = list_segmenters()
    for w in caught:
        err_console.print(Text.assemble(("warning: ", "yellow"), str(w.message)), soft_wrap=True)
    if json_out:
        payload = [
            {
                "name": r.name,
                "source": r.source,
                "description": r.description,
                "params": {p.name: {"type": p.type, "default": None if p.required else p.default,
                                    "required": p.required} for p in r.params},
                "error": r.error,
            }
            for r in rows
        ]
        typer.echo(json.dumps(payload, ensure_ascii=False, default=str))
        return
    table = Table(title="segmenters (use as --segmenter NAME:key=value,...)", title_justify="left")
    table.add_column("name", style="bold cyan", no_wrap=True)
    table.add_column("source")
    table.add_column("parameters")
    table.add_column("description")
    for r in rows:
        params = Text("\n".join(str(p) for p in r.params) or "-")
        desc = Text(r.description)
        if r.error is not None:
            desc.append(f" ({r.error})" if r.description else f"({r.error})", style="red")
        table.add_row(Text(r.name), Text(r.source), params, desc)
    console.print(table)
    console.print("[dim]also: any class as module.path:ClassName[:key=value,...][/]")
