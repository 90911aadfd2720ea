"""Does a MACs cut turn into speed on every runtime? onnxruntime, ExecuTorch (XNNPACK) and ncnn side by side.

For each model, dense and L2-pruned to 30 / 50 / 70 % of MACs at ``round_to`` 8 (the targets'
alignment) are exported for every runtime installed (ONNX, ``.pte``, ncnn ``.param``/``.bin``),
each file checked against PyTorch, then the four variants of one runtime are timed side by side by
``edgeprune bench``'s protocol (fresh worker per model, warm-up apart, interleaved rounds, 1 thread).
Speedup = dense p50 / pruned p50; fidelity = speedup / (dense MACs / pruned MACs). Goals per
runtime: no pruned model slower than dense; median fidelity >= 0.9, lowest >= 0.8.

    .venv/bin/python benchmarks/runtimes.py      # writes benchmarks/results/runtimes.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeprune.latency.measure import write_json_atomic  # noqa: E402

MODELS = {"vgg16-cifar": None, "resnet56-cifar": None, "mobilenetv1-cifar": None, "torchvision:mobilenet_v2": (1, 3, 160, 160)}


def variants(name: str, shape: Any, cuts: list[float]) -> tuple[list[tuple[str, torch.nn.Module, int]], tuple]:
    from edgeprune.api import prune
    from edgeprune.counter import count_model
    from edgeprune.models import build
    from edgeprune.train import recalibrate_batchnorm

    built = build(name)
    shape = tuple(shape or built.input_shape)
    recalibrate_batchnorm(built.model, torch.rand((32,) + shape[1:]).numpy())  # outputs that are not all zero
    out = [("dense", built.model.eval(), count_model(built.model, shape).macs)]
    for cut in cuts:
        result = prune(built.model, shape, criterion="l2", flops_cut=cut, round_to=8)
        out.append((f"pruned {cut:.0%}", result.model.eval(), result.after.macs))
    return out, shape


def export_all(models, shape, runtimes, folder: Path) -> dict[str, list[str] | str]:
    """runtime -> the files of every variant, or the one-line reason it could not make them."""
    from edgeprune.errors import EdgepruneError
    from edgeprune.export import export_onnx
    from edgeprune.runtimes import check_runtime

    files: dict[str, Any] = {"onnxruntime": []}
    for i, (_, model, _) in enumerate(models):
        files["onnxruntime"].append(str(export_onnx(model, shape, folder / f"v{i}.onnx").path))
    for runtime in runtimes:
        try:
            made = []
            for i, (_, model, _) in enumerate(models):
                exported = runtime.export(model, torch.randn(shape), folder / f"v{i}{runtime.suffix}")
                check_runtime(model, exported)
                made.append(str(exported.path))
            files[runtime.name] = made
        except EdgepruneError as exc:
            files[runtime.name] = str(exc)
    return files


def measure(name: str, shape: Any, cuts: list[float], runtimes: list[Any], runs: int) -> list[dict[str, Any]]:
    from edgeprune.profile import BenchConfig, profile_models

    models, shape = variants(name, shape, cuts)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for runtime, files in export_all(models, shape, runtimes, Path(tmp)).items():
            if isinstance(files, str):
                rows.append({"model": name, "runtime": runtime, "error": files})
                print(f"{name} {runtime}: {files}", flush=True)
                continue
            profiles = profile_models(files, BenchConfig(intra_threads=1, min_runs=runs, min_time=0.5))
            dense_ms, dense_macs = profiles[0].p50_ms, models[0][2]
            for (label, _, macs), p in zip(models[1:], profiles[1:]):
                speedup = dense_ms / p.p50_ms
                rows.append({"model": name, "runtime": runtime, "variant": label, "dense_ms": dense_ms, "p50_ms": p.p50_ms,
                             "speedup": speedup, "macs_ratio": dense_macs / macs,
                             "fidelity": speedup / (dense_macs / macs)})
                print(f"{name} {runtime} {label}: speedup {speedup:.2f}x for {dense_macs / macs:.2f}x fewer MACs "
                      f"(fidelity {rows[-1]['fidelity']:.2f})", flush=True)
    return rows


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for runtime in dict.fromkeys(r["runtime"] for r in rows):
        mine = [r for r in rows if r["runtime"] == runtime and "error" not in r]
        if not mine:
            continue
        fidelity = [r["fidelity"] for r in mine]
        slower = [f"{r['model']} {r['variant']}" for r in mine if r["speedup"] < 1]
        ok = not slower and statistics.median(fidelity) >= 0.9 and min(fidelity) >= 0.8
        out.append(f"{runtime}: median fidelity {statistics.median(fidelity):.2f}, lowest {min(fidelity):.2f}, "
                   f"slower than dense: {', '.join(slower) or 'none'} -> {'PASS' if ok else 'FAIL'}")
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | runtime | variant | MACs ratio | speedup | fidelity |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['runtime']} | - | - | - | {r['error'][:70]} |")
        else:
            lines.append(f"| {r['model']} | {r['runtime']} | {r['variant']} | {r['macs_ratio']:.2f}x | "
                         f"{r['speedup']:.2f}x | {r['fidelity']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from edgeprune.runtimes import RUNTIMES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--cuts", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "runtimes.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    runtimes = [r for r in RUNTIMES.values() if r.missing() is None]
    skipped = {r.name: r.missing() for r in RUNTIMES.values() if r.missing()}
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for name in args.models:
        rows += measure(name, MODELS.get(name), args.cuts, runtimes, args.runs)
        write_json_atomic({"rows": rows, "complete": False}, str(args.json))  # nothing lost if a later model fails
    payload = {"command": " ".join(["python", "benchmarks/runtimes.py", *(argv or sys.argv[1:])]),
               "threads": 1, "round_to": 8, "criterion": "l2", "not_installed": skipped, "rows": rows, "complete": True,
               "verdicts": verdicts(rows), "seconds": round(time.perf_counter() - start, 1)}
    write_json_atomic(payload, str(args.json))
    print("\n" + markdown(rows))
    print("\n".join(payload["verdicts"]))
    print(f"wrote {args.json} ({payload['seconds']} s)")


if __name__ == "__main__":
    main()
