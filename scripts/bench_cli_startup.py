"""Time `segsllm --help` (warm): median of repeated runs in fresh interpreters.

Usage: python scripts/bench_cli_startup.py [--repeats 10]
Also prints which heavy modules (torch, transformers, mlflow) the help path imported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

PROBE = (
    "import sys, json\n"
    "sys.argv = ['segsllm', '--help']\n"
    "from segsllm.cli.app import main\n"
    "try:\n    main()\nexcept SystemExit:\n    pass\n"
    "sys.stderr.write(json.dumps([m for m in ('torch', 'transformers', 'mlflow') if m in sys.modules]))\n"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    subprocess.run([sys.executable, "-c", PROBE], capture_output=True, check=True)  # warm-up
    times = []
    heavy: list[str] = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - start)
        heavy = json.loads(out.stderr.strip().splitlines()[-1])
    print(f"segsllm --help: median {statistics.median(times):.3f} s, min {min(times):.3f} s "
          f"over {args.repeats} runs; heavy modules imported: {heavy or 'none'}")


if __name__ == "__main__":
    main()
