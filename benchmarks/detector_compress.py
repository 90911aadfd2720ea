"""The trained digits detector through ``edgeprune compress``: mAP lost and speed gained in
onnxruntime, ExecuTorch (XNNPACK) and ncnn, float and INT8.

The detector is ``tests/models/yolo_like.py:yolo_like_digits`` (YoloLike width 16, 10 classes,
256 px; trained by ``benchmarks/detectors.py --train``). The data is the digits detection set's val
split (500 images, written once by ``--write-data``; ``compress`` holds out its quality images from
it). Each configuration runs the CLI in a subprocess with ``--int8 --runtime all`` on
``benchmarks/targets/x86-1thread.json`` (one thread) and keeps its ``report.json`` under ``--out``:

    .venv/bin/python benchmarks/detector_compress.py --write-data
    .venv/bin/python benchmarks/detector_compress.py [--configs cut30 cut50 speed1.5 speed2] [--smoke]
    .venv/bin/python benchmarks/detector_compress.py --collect   # reports of runs made by hand, in parallel

Rows of configurations not run are kept from the JSON (``not run``), so they can be run one by one.
Timings taken on a loaded machine are noisy: rerun on a quiet one before drawing speed conclusions.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeprune.latency.measure import write_json_atomic  # noqa: E402

MODEL = "tests/models/yolo_like.py:yolo_like_digits"
DATA = Path("benchmarks/data/digitsdet/val")
TARGET = "benchmarks/targets/x86-1thread.json"
CONFIGS = {
    "cut30": ["--flops-cut", "0.3"],
    "cut50": ["--flops-cut", "0.5"],
    "speed1.5": ["--speedup", "1.5"],
    "speed2": ["--speedup", "2", "--max-drop", "1"],
}
# The JSON also keeps "cut50-norecon": the 50 % cut under the defaults before a detector had its own
# (3 epochs of distillation alone, --no-reconstruct); it is no configuration of today's defaults.
SMOKE = ["--finetune-epochs", "1", "--eval-images", "20", "--runs", "3", "--min-time", "0.1", "--search-trials", "1"]
JSON_OUT = ROOT / "benchmarks" / "results" / "detectors_digits.json"
MAP_KEYS = ("map50", "map50_95")


def command(config: str, out: Path, smoke: bool, runtimes: list[str] = ("all",), device: str | None = None) -> list[str]:
    return [sys.executable, "-m", "edgeprune", "compress", MODEL, "--calib", f"yolo:{DATA}", "-t", TARGET,
            *CONFIGS[config], "--int8", *[a for r in runtimes for a in ("--runtime", r)],
            *(["--device", device] if device else []), *(SMOKE if smoke else []), "-o", str(out)]


def _maps(entry: dict | None) -> dict:
    return {k: entry.get(k) for k in MAP_KEYS} if entry else {}


def _speed(entry: dict) -> dict:
    """The speedup and whatever spread the report gives it (rounds, interval)."""
    return {k: v for k, v in entry.items() if "speedup" in k or k.endswith("p50_ms") or k in ("ci_low", "ci_high", "rounds")}


def summarise(report: dict) -> dict:
    """mAP of every variant and runtime file, and each runtime's measured speedup, from report.json."""
    variants = {v["name"]: {**_maps(v), **_speed(v)} for v in report["variants"]}
    runtimes = {}
    for name, r in (report.get("runtimes") or {}).items():
        int8 = r.get("int8") or {}
        runtimes[name] = {**_speed({k: v for k, v in r.items() if not isinstance(v, dict)}),
                          "dense": _maps(r.get("dense")), "pruned": _maps(r.get("pruned")),
                          "int8": ({"error": int8["error"]} if "error" in int8 else
                                   {"dense": _maps(int8.get("dense")), "pruned": {**_maps(int8.get("pruned")),
                                                                                   **_speed(int8.get("pruned") or {})}})}
    pruning = report.get("pruning", {})
    return {**{k: pruning.get(k) for k in ("macs_before", "macs_after", "macs_cut")}, "variants": variants,
            "runtimes": {"onnxruntime": _onnxruntime(variants), **runtimes}}


def _onnxruntime(variants: dict) -> dict:
    """The onnxruntime files (the report's variants) in the shape of the other runtimes' rows."""
    dense, pruned, int8 = (variants.get(n, {}) for n in ("dense", "pruned", "pruned-int8"))
    return {**_speed(pruned), "dense": _maps(dense), "pruned": _maps(pruned),
            "int8": {"dense": _maps(variants.get("dense-int8")), "pruned": int8}}


def run(config: str, out_root: Path, smoke: bool, collect: bool, runtimes: list[str] = ("all",),
        device: str | None = None) -> dict | None:
    """Run one configuration (or, with ``collect``, read the report a run already left) and summarise it."""
    out = out_root / config
    cmd = command(config, out, smoke, runtimes, device)
    shown = "edgeprune compress " + " ".join(cmd[4:])
    seconds = None
    if not collect:
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}, capture_output=True, text=True)
        seconds = round(time.perf_counter() - start, 1)
        if done.returncode != 0:
            return {"command": shown, "seconds": seconds, "error": done.stderr.strip().splitlines()[-1:]}
    elif not (out / "report.json").exists():
        return None
    report = json.loads((out / "report.json").read_text())
    return {"command": shown, "seconds": seconds, "smoke": smoke, **summarise(report)}


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _speedup(entry: dict) -> str:
    if entry.get("speedup") is None:
        return "-"
    spread = f" [{entry['ci_low']:.2f}-{entry['ci_high']:.2f}]" if entry.get("ci_low") is not None else ""
    return f"{entry['speedup']:.2f}x{spread}"


def _unfinished(row: dict | None) -> str:
    """Why a configuration has no figures: not run, refused (its floor not met: the line says the
    nearest point), or failed."""
    if row is None:
        return "not run or not finished"
    said = " ".join(row["error"]).removeprefix("edgeprune: error: ")
    return ("refused: " if "is not met" in said else "failed: ") + said


def markdown(results: dict) -> str:
    """One row per configuration and runtime: mAP50-95 dense / pruned / pruned INT8 and the speedups."""
    lines = ["| config | runtime | dense mAP50-95 | pruned mAP50-95 | drop (points) | pruned INT8 mAP50-95 "
             "| speedup | INT8 speedup |", "|---|---|---|---|---|---|---|---|"]
    for config in CONFIGS:
        row = results.get(config)
        if row is None or "error" in row:
            lines.append(f"| {config} | {_unfinished(row)} | | | | | | |")
            continue
        for name, r in row["runtimes"].items():
            dense = r["dense"].get("map50_95") or row["runtimes"]["onnxruntime"]["dense"].get("map50_95")  # PyTorch's
            pruned = r["pruned"].get("map50_95")
            drop = None if dense is None or pruned is None else round(100 * (dense - pruned), 2)
            int8 = r["int8"].get("pruned", {})
            lines.append(f"| {config} | {name} | {_cell(dense)} | {_cell(pruned)} | {_cell(drop)} "
                         f"| {_cell(int8.get('map50_95'))} | {_speedup(r)} | {_speedup(int8)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--smoke", action="store_true", help="Smallest option values: time each configuration.")
    parser.add_argument("--collect", action="store_true",
                        help="Run nothing: summarise the reports runs already left under --out.")
    parser.add_argument("--write-data", action="store_true", help="Write the 500-image val set and stop.")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "data" / "detector_compress")
    parser.add_argument("--json", type=Path, default=JSON_OUT)
    parser.add_argument("--runtime", nargs="+", default=["all"], help="compress's --runtime (default: all)")
    parser.add_argument("--device", help="compress's --device for recovery (e.g. cuda)")
    parser.add_argument("--note", default="", help="The machine and what else ran on it (recorded in the results).")
    args = parser.parse_args()
    if args.write_data:
        from edgeprune.calibration.digits_detection import make_digits_detection
        make_digits_detection(500, "val", folder=str(ROOT / DATA))
        return
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    for config in args.configs:
        results[config] = run(config, args.out, args.smoke, args.collect, args.runtime, args.device) or results.get(config)
        if results[config] is not None and (args.note or not args.collect):
            results[config]["note"] = args.note
        write_json_atomic(results, str(args.json))
        args.json.with_suffix(".md").write_text(markdown(results))
        print(config, (results[config] or {}).get("seconds"), (results[config] or {}).get("error", ""), flush=True)


if __name__ == "__main__":
    main()
