"""What the first README command (`edgeprune compress -o OUT` on the built-in default) costs in
this checkout against another one (an earlier commit's worktree), run alternately in fresh
processes so both see the same host:

    git worktree add --detach ../before b920908^1      # main before the timing with intervals
    python benchmarks/readme_cost.py ../before --runs 2

Prints a table and writes benchmarks/results/readme_cost.json: each run's wall seconds, the
medians and their ratio (this checkout / the other). Quote the ratio, not the seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeprune.latency.measure import write_json_atomic  # noqa: E402

JSON_OUT = ROOT / "benchmarks" / "results" / "readme_cost.json"


def one_run(checkout: Path) -> float:
    """Wall seconds of the README's first command with ``checkout``'s edgeprune (same Python)."""
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "PYTHONPATH": str(checkout)}
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "edgeprune", "compress", "-o", f"{out}/o"], cwd=checkout,
                              env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: compress failed: {done.stderr.strip().splitlines()[-1:]}")
    return round(seconds, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="The checkout to compare with (e.g. a worktree of an earlier commit).")
    parser.add_argument("--runs", type=int, default=2, help="Runs of each, alternating (default 2).")
    parser.add_argument("--note", default="", help="The machine and what else ran on it.")
    parser.add_argument("--json", type=Path, default=JSON_OUT)
    args = parser.parse_args()
    checkouts = {"this": ROOT, "other": args.other.resolve()}
    seconds: dict[str, list[float]] = {name: [] for name in checkouts}
    for index in range(args.runs):
        for name in (list(checkouts) if index % 2 == 0 else list(checkouts)[::-1]):
            seconds[name].append(one_run(checkouts[name]))
            print(f"run {index + 1} {name}: {seconds[name][-1]} s", flush=True)
    medians = {name: statistics.median(found) for name, found in seconds.items()}
    commits = {name: subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=path, capture_output=True,
                                    text=True).stdout.strip() for name, path in checkouts.items()}
    result = {"command": "edgeprune compress -o OUT", "commits": commits, "seconds": seconds, "medians": medians,
              "ratio": round(medians["this"] / medians["other"], 3), "note": args.note}
    write_json_atomic(result, str(args.json))
    print("| checkout | commit | runs (s) | median (s) |\n|---|---|---|---|")
    for name in checkouts:
        print(f"| {name} | {commits[name]} | {', '.join(map(str, seconds[name]))} | {medians[name]} |")
    print(f"this / other: {result['ratio']:.2f}x")


if __name__ == "__main__":
    main()
