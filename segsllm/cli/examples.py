"""One worked example per command, shown at the foot of its ``--help`` (Typer's epilog).

Kept in one table so the examples stay consistent with each other and with the README's
"Stage commands" block (the same folders: runs/tok, runs/lm, runs/vae, runs/sllm).
"""

from __future__ import annotations

EXAMPLES: dict[str, list[str]] = {
    "data prepare": [
        "segsllm data prepare --corpus all",
        "segsllm data prepare --from ~/notes --name notes      # your own files: folder, file or glob",
    ],
    "data list": ["segsllm data list --json"],
    "train-tokenizer": ["segsllm train-tokenizer --config tiny --out runs/tok"],
    "train-lm": ["segsllm train-lm --config tiny --tokenizer runs/tok --out runs/lm"],
    "train-vae": [
        "segsllm train-vae --config tiny --tokenizer runs/tok --segmenter fixed:k=16 --depth 2 --out runs/vae",
    ],
    "finetune": ["segsllm finetune --config tiny --vae runs/vae --backbone runs/lm --out runs/sllm"],
    "generate": ['segsllm generate --model runs/sllm --prompt "The state of the Union is" --baseline runs/lm'],
    "train-splitter": [
        "segsllm train-splitter --config tiny --tokenizer runs/tok --teacher entropy --base-lm runs/lm"
        " --out runs/splitter",
    ],
    "pipeline": [
        "segsllm pipeline --config smoke --out runs/smoke      # every stage, a few minutes on 2 CPU cores",
    ],
    "bench": ["segsllm bench --config tiny --from runs/tiny --domains csv"],
    "segment": [
        "segsllm segment README.md --tokenizer runs/tok --segmenter fixed:k=16",
        "segsllm segment notes.txt -t runs/tok | less        # piped: segments separated by │",
    ],
    "segmenters": ["segsllm segmenters --json"],
    "presets": ["segsllm presets"],
}


def epilog(command: str) -> str:
    """The ``Examples`` block of ``command``'s help (rich markup; lines kept apart)."""
    lines = "\n\n".join(f"  [bold]$[/] {line}" for line in EXAMPLES[command])
    return f"[bold]Examples[/]\n\n{lines}"
