"""A benchmark of the benchmark: how far a measured speedup moves between runs, by method.

    python benchmarks/timing.py            # full: 4 pairs x 2 loads x 10 runs x 4 methods, about 35 min on 2 cores
    python benchmarks/timing.py --quick    # 2 pairs x 2 loads x 3 runs x 2 methods, about 3 min

Pairs of ONNX files (exported as ``compress`` ships them, x86-avx512 settings, this host's threads):

- ``face conv1 16``: MTCNN's ONet (facenet-pytorch's architecture) against it with conv1 cut 32 -> 16
  (the face net's plan whose speedup moved 1.48-2.06x over nine rounds);
- ``identical``: the dense ONet against a copy of its own file (every speedup should be 1.00);
- ``default 50 %``: the built-in default model against its 50 % MACs cut (README's first command);
- ``yolo-like``: the tests' YOLO-like detector at 320 x 320 against its 50 % MACs cut.

Each pair is measured ``--repeats`` times, each time from scratch (fresh worker processes), with
the machine as it is (``idle``) and with one more process spinning on one core (``busy``). Methods:

- ``old``: one side-by-side measurement (:func:`~edgeprune.profile.profile_models`), p50 ratio:
  what ``bench`` and the report printed before;
- ``rounds``: :func:`~edgeprune.profile.compare_models`, rounds in fresh processes until the
  speedup's 95 % interval is within +-3 % or ``--cap`` seconds; its speedup from three statistics
  of the same rounds: ``rounds p50`` (the default: median run's wall time), ``rounds min`` (fastest
  run), ``rounds cpu`` (median run's CPU time of the worker, descheduled time not counted);
- ``rounds 1t``, ``rounds 1t pinned``: the same with one onnxruntime thread, unpinned and each
  worker pinned to a core (``os.sched_setaffinity``): whether pinning steadies the figure.

For each pair, load and method: the speedups, their median, their largest deviation from the
median, the median interval width and rounds, and the seconds one measurement took. Goals:
identical files within 1.00 +- 0.03 every time; the face net's speedups within +-5 % of their
median; one busy core moves the median by < 5 %; ``rounds`` costs < 1.5x ``old``.
Writes ``benchmarks/results/timing.json`` (``--out``) and prints the docs' table.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeprune.latency.measure import write_json_atomic  # noqa: E402

PAIRS = ["face conv1 16", "identical", "default 50 %", "yolo-like"]
METHODS = ["old", "rounds", "rounds 1t", "rounds 1t pinned"]
STATISTICS = {"rounds": ["p50", "min", "cpu"], "rounds 1t": ["p50", "cpu"], "rounds 1t pinned": ["p50", "cpu"]}
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "timing.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 pairs, 3 runs, methods old and rounds.")
    parser.add_argument("--pairs", nargs="+", choices=PAIRS)
    parser.add_argument("--methods", nargs="+", choices=METHODS)
    parser.add_argument("--loads", nargs="+", choices=["idle", "busy"], default=["idle", "busy"])
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--cap", type=float, default=8.0, help="--max-bench-seconds of one measurement.")
    parser.add_argument("--target", default="x86-avx512")
    parser.add_argument("--note", default="", help="What else ran on the machine (recorded in the results).")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.pairs = args.pairs or (PAIRS[:2] if args.quick else PAIRS)
    args.methods = args.methods or (METHODS[:2] if args.quick else METHODS)
    args.repeats = args.repeats or (3 if args.quick else 10)
    return args


def _onet() -> Any:
    from facenet_pytorch.models.mtcnn import ONet

    return ONet(pretrained=False).eval()


def make_pairs(names: list[str], folder: Path) -> dict[str, tuple[str, str]]:
    """Each pair's two ONNX files, exported (simplified) as ``compress`` ships them."""
    import torch

    from edgeprune import prune
    from edgeprune.export import export_onnx

    torch.manual_seed(0)
    made: dict[str, tuple[str, str]] = {}

    def export(model: Any, shape: tuple[int, ...], name: str) -> str:
        path = folder / f"{name}.onnx"
        export_onnx(model, shape, path, verify=False)
        return str(path)

    if {"face conv1 16", "identical"} & set(names):
        onet, shape = _onet(), (1, 3, 48, 48)
        dense = export(onet, shape, "onet")
        if "face conv1 16" in names:
            cut = prune(onet, shape, layer_ratios={"conv1": 0.5}).model
            made["face conv1 16"] = (dense, export(cut, shape, "onet_conv1_16"))
        if "identical" in names:
            copy = folder / "onet_copy.onnx"
            shutil.copyfile(dense, copy)
            made["identical"] = (dense, str(copy))
    if "default 50 %" in names:
        from edgeprune.models.default import build_default

        built = build_default()
        model, shape = built.model.eval(), built.input_shape
        made["default 50 %"] = (export(model, shape, "default"),
                                export(prune(model, shape, flops_cut=0.5).model, shape, "default_50"))
    if "yolo-like" in names:
        sys.path.insert(0, str(ROOT / "tests" / "models"))
        from yolo_like import yolo_like_320

        model = yolo_like_320().eval()
        shape = model.input_shape
        made["yolo-like"] = (export(model, shape, "yolo"), export(prune(model, shape, flops_cut=0.5).model, shape, "yolo_50"))
    return {name: made[name] for name in names}


class BusyCore:
    """Another process spinning on one core while measuring (``busy``), none for ``idle``."""

    def __init__(self, load: str) -> None:
        self.load, self.proc = load, None

    def __enter__(self) -> BusyCore:
        if self.load == "busy":
            self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.5)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def measure_once(files: tuple[str, str], method: str, config: Any, cap: float) -> dict[str, Any]:
    """One measurement of a pair by ``method``: its speedups (per statistic), interval, rounds, seconds."""
    from edgeprune.profile import compare_models, profile_models
    from edgeprune.profile.compare import STATISTICS as PICK, estimates_of

    start = time.perf_counter()
    if method == "old":
        dense, pruned = profile_models(list(files), config)
        return {"p50": dense.p50_ms / pruned.p50_ms, "seconds": time.perf_counter() - start}
    if method != "rounds":
        config = config.updated(intra_threads=1, pin_cores=method.endswith("pinned"))
    found = compare_models(list(files), config, max_seconds=cap)
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {"seconds": seconds, "rounds": len(found.rounds), "decided": found.decided}
    for statistic in STATISTICS[method]:
        [estimate] = estimates_of([[PICK[statistic](p) for p in r] for r in found.rounds])
        result[statistic] = estimate.speedup
        result[f"{statistic}_ci"] = [estimate.ci_low, estimate.ci_high]
    return result


def summary(values: list[float]) -> dict[str, float]:
    """Median, largest deviation from it (a fraction), lowest and highest."""
    median = statistics.median(values)
    return {"median": median, "max_dev": max(abs(v / median - 1) for v in values), "low": min(values),
            "high": max(values)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from edgeprune.profile import BenchConfig
    from edgeprune.targets import load_target

    target = load_target(args.target)
    config = BenchConfig.from_target(target)  # `bench --target`: 1 s of timed runs per model
    results: dict[str, Any] = {
        "command": shlex.join(["python", "benchmarks/timing.py", *sys.argv[1:]]), "target": target.name,
        "threads": config.intra_threads, "cpus": os.cpu_count(), "cap_s": args.cap, "repeats": args.repeats,
        "note": args.note, "loadavg_start": os.getloadavg(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="edgeprune-timing-") as folder:
        pairs = make_pairs(args.pairs, Path(folder))
        for name, files in pairs.items():
            for load in args.loads:
                with BusyCore(load):
                    for method in args.methods:
                        found = [measure_once(files, method, config, args.cap) for _ in range(args.repeats)]
                        results["runs"].append({"pair": name, "load": load, "method": method, "measurements": found})
                        print(row_line(results["runs"][-1]), flush=True)
                        write_json_atomic(results, str(args.out))
    results["loadavg_end"] = os.getloadavg()
    write_json_atomic(results, str(args.out))
    return results


def rows(run_: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per statistic of a (pair, load, method) run."""
    found = run_["measurements"]
    picks = ["p50"] if run_["method"] == "old" else STATISTICS[run_["method"]]
    out = []
    for statistic in picks:
        speeds = [m[statistic] for m in found]
        widths = [(m[f"{statistic}_ci"][1] - m[f"{statistic}_ci"][0]) / 2 / m[statistic] for m in found
                  if f"{statistic}_ci" in m]
        out.append({"pair": run_["pair"], "load": run_["load"], "method": f"{run_['method']} {statistic}".replace(
            "old p50", "old (1 measurement)"), **summary(speeds),
            "half_width": statistics.median(widths) if widths else None,
            "rounds": statistics.median(m["rounds"] for m in found) if "rounds" in found[0] else 1,
            "seconds": statistics.median(m["seconds"] for m in found), "speedups": speeds})
    return out


def row_line(run_: dict[str, Any]) -> str:
    return "\n".join(f"{r['pair']:<14} {r['load']:<5} {r['method']:<22} median {r['median']:.3f}x, "
                     f"+-{r['max_dev']:.1%} ({r['low']:.3f}-{r['high']:.3f}), {r['rounds']:g} rounds, "
                     f"{r['seconds']:.1f} s" for r in rows(run_))


def markdown(results: dict[str, Any]) -> str:
    all_rows = [r for run_ in results["runs"] for r in rows(run_)]
    idle = {(r["pair"], r["method"]): r["median"] for r in all_rows if r["load"] == "idle"}
    lines = [f"{results['target']}, {results['threads']} threads, {results['cpus']} CPUs, {results['repeats']} "
             f"measurements each, cap {results['cap_s']:g} s; {results['note'] or 'no note'}", "",
             "| pair | load | method | median speedup | largest deviation | lowest - highest | interval +- | rounds "
             "| s per measurement | busy core moves median |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in all_rows:
        moved = (f"{r['median'] / idle[(r['pair'], r['method'])] - 1:+.1%}"
                 if r["load"] == "busy" and (r["pair"], r["method"]) in idle else "")
        width = f"{r['half_width']:.1%}" if r["half_width"] is not None else "-"
        lines.append(f"| {r['pair']} | {r['load']} | {r['method']} | {r['median']:.3f}x | {r['max_dev']:.1%} | "
                     f"{r['low']:.3f}-{r['high']:.3f} | {width} | {r['rounds']:g} | {r['seconds']:.1f} | {moved} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = run(args)
    print("\n" + markdown(results))


if __name__ == "__main__":
    main()
