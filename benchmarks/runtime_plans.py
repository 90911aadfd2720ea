"""Does planning a latency budget with a runtime's own table pay off in that runtime?

For each model and each runtime installed (onnxruntime, ExecuTorch/XNNPACK, ncnn), the model is
pruned to ``--speedup`` (default 2x) with that runtime's latency table and confirmation rounds
(``compress --speedup 2 --runtime R``; L2 scores, x86-avx2 settings, 1 thread). Each plan's result is
then timed in every runtime, side by side with dense (fresh worker per model, interleaved rounds).
The figure that matters is on the diagonal (bold): the speedup reached in the runtime planned for,
against the budget, with the MACs the plan keeps (more MACs at the same speed is more capacity
left for accuracy); the other cells show what the same model gives in the runtimes it was not
planned for.

    .venv/bin/python benchmarks/runtime_plans.py     # writes benchmarks/results/runtime_plans.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeprune.latency.measure import write_json_atomic  # noqa: E402

MODELS = ["mobilenetv1-cifar", "vgg16-cifar"]


def plan_for(runtime: str, built: Any, shape: tuple, speedup: float, target: Any) -> tuple[torch.nn.Module, dict]:
    from edgeprune.api import prune
    from edgeprune.latency import Budget, LatencyPlanner, ModelTimer, complete, conv_shapes, open_table, settings_of
    from edgeprune.profile import BenchConfig

    settings = settings_of(target, threads=1, runtime=runtime)
    table = open_table(target.name, settings)
    started = time.perf_counter()
    points = complete(table, list(conv_shapes(built.model, shape).values()))
    table_s = time.perf_counter() - started
    timer = ModelTimer(shape, BenchConfig(intra_threads=1, min_runs=20, min_time=0.5), target.opset, runtime)
    try:
        result = prune(built.model, shape, criterion="l2", planner=LatencyPlanner(
            table, Budget(speedup=speedup), timer, round_to=target.round_to_for(runtime), progress=print))
    finally:
        timer.close()
    plan = result.plan.details
    return result.model.eval(), {"table_points_measured": points, "table_seconds": round(table_s, 1),
                                 "macs_kept": result.after.macs / result.before.macs,
                                 "predicted_ms": plan.get("predicted_ms"), "measured_ms": plan.get("measured_ms")}


def time_in(runtime: str, models: list[torch.nn.Module], shape: tuple, runs: int) -> list[float] | str:
    """p50 of each model in ``runtime`` (dense first), or why it could not run them."""
    from edgeprune.errors import EdgepruneError
    from edgeprune.export import export_onnx
    from edgeprune.profile import BenchConfig, profile_models
    from edgeprune.runtimes import get_runtime

    with tempfile.TemporaryDirectory() as folder:
        files = []
        try:
            for i, model in enumerate(models):
                path = Path(folder) / f"m{i}.onnx"
                if runtime == "onnxruntime":
                    files.append(str(export_onnx(model, shape, path, verify=False).path))
                else:
                    chosen = get_runtime(runtime)
                    files.append(str(chosen.export(model, torch.randn(shape), path.with_suffix(chosen.suffix)).path))
        except EdgepruneError as exc:
            return str(exc)
        return [p.p50_ms for p in profile_models(files, BenchConfig(intra_threads=1, min_runs=runs, min_time=0.5))]


def measure(name: str, speedup: float, runtimes: list[str], runs: int) -> dict[str, Any]:
    from edgeprune.models import build
    from edgeprune.targets import load_target
    from edgeprune.train import recalibrate_batchnorm

    target = load_target("x86-avx2")
    built = build(name)
    shape = tuple(built.input_shape)
    recalibrate_batchnorm(built.model, torch.rand((32,) + shape[1:]).numpy())
    built.model.eval()
    plans, models = {}, [built.model]
    for runtime in runtimes:
        try:
            model, plans[runtime] = plan_for(runtime, built, shape, speedup, target)
            models.append(model)
        except Exception as exc:  # a runtime that cannot run the model has no plan; the others go on
            plans[runtime] = {"error": str(exc).splitlines()[0][:200]}
            print(f"{name}: no plan for {runtime}: {plans[runtime]['error']}", flush=True)
    planned = [r for r in runtimes if "error" not in plans[r]]
    speedups: dict[str, dict[str, float | str]] = {}
    for measured_in in runtimes:
        times = time_in(measured_in, models, shape, runs)
        if isinstance(times, str):
            speedups[measured_in] = {"error": times}
            continue
        speedups[measured_in] = {plan: times[0] / ms for plan, ms in zip(planned, times[1:])}
        print(f"{name} in {measured_in}: " + ", ".join(f"planned for {p} {s:.2f}x" for p, s in speedups[measured_in].items()),
              flush=True)
    return {"model": name, "speedup_asked": speedup, "plans": plans, "speedups": speedups}


def markdown(rows: list[dict[str, Any]], runtimes: list[str]) -> str:
    lines = ["| model | planned for | MACs kept | " + " | ".join(f"speedup in {r}" for r in runtimes) + " |",
             "|---|---|---|" + "---|" * len(runtimes)]
    for row in rows:
        for plan, found in row["plans"].items():
            if "error" in found:
                lines.append(f"| {row['model']} | {plan} | - | {found['error'][:60]} |")
                continue
            cells = []
            for measured_in in runtimes:
                got = row["speedups"][measured_in]
                value = "-" if "error" in got else f"{got[plan]:.2f}x"
                cells.append(f"**{value}**" if measured_in == plan else value)  # in the runtime planned for
            lines.append(f"| {row['model']} | {plan} | {found['macs_kept']:.1%} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from edgeprune.runtimes import RUNTIMES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--speedup", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "runtime_plans.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    runtimes = ["onnxruntime", *(r.name for r in RUNTIMES.values() if r.missing() is None)]
    start = time.perf_counter()
    rows = []
    for name in args.models:
        rows.append(measure(name, args.speedup, runtimes, args.runs))
        write_json_atomic({"rows": rows, "complete": False}, str(args.json))
    payload = {"command": " ".join(["python", "benchmarks/runtime_plans.py", *(argv or sys.argv[1:])]), "threads": 1,
               "target": "x86-avx2", "criterion": "l2", "rows": rows, "complete": True,
               "seconds": round(time.perf_counter() - start, 1)}
    write_json_atomic(payload, str(args.json))
    print("\n" + markdown(rows, runtimes))
    print(f"wrote {args.json} ({payload['seconds']} s)")


if __name__ == "__main__":
    main()
