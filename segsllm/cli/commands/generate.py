"""`segsllm generate`: stream text from an SLLM segment by segment (and from a baseline LM)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segsllm.cli.common import console, handle_errors, warn
from segsllm.cli.examples import epilog
from segsllm.cli.run_options import RunOptions, run_options

STYLES = ("bold cyan", "bold yellow")  # alternate per generated segment so the cuts show
ENDS = {"max_new_tokens": "budget", "max_positions": "positions", "empty_segment": "empty seg"}


@handle_errors
@run_options("seed", "device", "config", "set_")
def generate_command(
    opts: RunOptions,
    model: Annotated[Path, typer.Option("--model", "-m", help="SLLM folder (`segsllm finetune` output).")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Text to continue.")] = "",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", help="Tokens to generate at most.")] = 128,
    temperature: Annotated[
        float, typer.Option("--temperature", "-t", help="0: greedy (default); > 0: sample at this temperature.")
    ] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass (with --temperature > 0).")] = 1.0,
    baseline: Annotated[
        Path | None, typer.Option("--baseline", help="Token-level LM folder (`segsllm train-lm`) to compare with.")
    ] = None,
    ignore_stop: Annotated[
        bool, typer.Option("--ignore-stop", help="Ignore the stop head / EOS: always generate --max-new-tokens.")
    ] = False,
) -> None:
    """Generate segment by segment with an SLLM (KV caches on), then compare speed and memory."""
    from rich.table import Table
    from rich.text import Text

    from segsllm.errors import ConfigError
    from segsllm.generate import Sampling, generate_lm, generate_sllm, load_sllm
    from segsllm.runtime import pick_device, seed_everything

    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ConfigError("--temperature must be >= 0 and --top-p in (0, 1]")
    cfg = opts.resolve()
    seed_everything(cfg.run.seed)
    dev = pick_device(cfg.run.device)
    sllm, tokenizer, segmenter = load_sllm(model, device=dev)
    sampling = Sampling(greedy=temperature == 0, temperature=temperature or 1.0, top_p=top_p,
                        seed=cfg.run.seed if temperature > 0 else None)

    count = [0]

    def show(text: str) -> None:
        console.print(Text(text, style=STYLES[count[0] % 2]), end="", soft_wrap=True)
        count[0] += 1

    console.print(Text(prompt, style="dim"), end="", soft_wrap=True)
    results = [generate_sllm(sllm, tokenizer, segmenter, prompt, max_new_tokens, on_segment=show,
                             ignore_stop=ignore_stop, sampling=sampling)]
    console.print()
    comparable = True  # same tokenizer: tok/s and KV B/tok count the same units
    if baseline is not None:
        from transformers.utils import logging as hf_logging

        from segsllm.config.backbone import BackboneConfig
        from segsllm.models.backbone import load_backbone

        hf_logging.disable_progress_bar()  # no "Loading weights" bar in the middle of the output
        lm = load_backbone(BackboneConfig(spec=str(baseline)), tokenizer=tokenizer)
        lm.model.to(dev)
        from segsllm.bench.units import same_tokenizer

        comparable = lm.tokenizer is None or same_tokenizer(lm.tokenizer, tokenizer)
        if not comparable:
            warn(f"the baseline {baseline} uses another tokenizer than the SLLM: its tokens are other units,"
                 " so its tok/s and KV B/tok are not shown and no speed ratio is given")
        console.rule("baseline", style="dim")
        console.print(Text(prompt, style="dim"), end="", soft_wrap=True)
        results.append(generate_lm(lm.model, lm.tokenizer or tokenizer, prompt, max_new_tokens,
                                   on_text=lambda t: console.print(t, end="", soft_wrap=True, markup=False),
                                   ignore_eos=ignore_stop, sampling=sampling))
        console.print()

    table = Table(title=f"Generation ({'greedy' if temperature == 0 else f'T={temperature}, top-p={top_p}'}, "
                        f"{dev.type}, batch 1, KV cache on)")
    # backbone calls: the prefill + one per segment (SLLM) or per token (LM); KV: the backbone's cache.
    for col in ("model", "new", "tok/s", "segs", "calls", "KV bytes", "KV B/tok", "end"):
        table.add_column(col, justify="left" if col in ("model", "end") else "right", no_wrap=True)
    for i, r in enumerate(results):
        units = i == 0 or comparable
        table.add_row(r.model, str(r.new_tokens), f"{r.tokens_per_s:,.1f}" if units else "-",
                      str(len(r.segments)) if r.segments else "-", str(r.backbone_steps + 1),
                      f"{r.kv_cache_bytes:,}", f"{r.kv_bytes_per_token:,.0f}" if units else "-",
                      ENDS.get(r.stop_reason, r.stop_reason))
    console.print(table)
    if len(results) == 2 and comparable and results[1].tokens_per_s > 0:
        console.print(f"speed ratio SLLM / baseline: {results[0].tokens_per_s / results[1].tokens_per_s:.2f}x "
                      "(one run, no warm-up: use `segsllm bench` for timings)")


def register(app: typer.Typer) -> None:
    """Add generate."""
    app.command(name="generate", epilog=epilog("generate"))(generate_command)
