"""Latency-driven pruning against uniform FLOPs-target pruning, at equal measured latency.

    python benchmarks/latency_budget.py                    # about 15 min on 2 cores
    python benchmarks/latency_budget.py --models resnet56-cifar --budgets 0.7 --no-accuracy

For each model and each budget (a fraction of the dense model's measured latency):

1. the latency table is built on this machine (x86-avx2 settings, ``--threads`` threads) or read
   from the cache; its size and build time are reported;
2. latency-driven pruning (``l2`` scores, :class:`edgeprune.latency.LatencyPlanner`) meets the
   budget, confirmed by measurement;
3. uniform FLOPs-target pruning (``l2``, every group cut alike, channels rounded to the target's 8)
   is run at a sweep of MACs cuts;
4. dense, every latency-driven and every uniform model are then measured together, interleaved, in
   fresh onnxruntime processes. The uniform models' kept MACs are interpolated at the
   latency-driven model's measured latency. Goals: measured latency within 10 % of the budget, and
   latency-driven keeps more MACs than uniform at the same latency;
5. prediction error: the table's prediction (as a fraction of dense) against the measured fraction,
   for every pruned model of the model.

With ``--accuracy`` (default), the built-in default model (ResNet-20 on the bundled MNIST-5k, real
data) is pruned both ways at equal measured latency and fine-tuned alike; top-1 on its
held-out split is compared.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from criteria import _say, load_splits  # noqa: E402  (the benchmarks share their helpers)
from latency import machine, write_json  # noqa: E402

MODELS = ["resnet56-cifar", "mobilenetv1-cifar", "torchvision:mobilenet_v2"]
UNIFORM_CUTS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
TARGET = "x86-avx2"


def _setup(args):
    from edgeprune.latency import settings_of
    from edgeprune.profile import BenchConfig
    from edgeprune.targets import load_target

    target = load_target(TARGET)
    settings = settings_of(target, args.threads)
    planning = BenchConfig.from_target(target, intra_threads=args.threads, min_runs=20, min_time=0.5)
    final = BenchConfig.from_target(target, intra_threads=args.threads, min_runs=args.runs, min_time=args.min_time)
    return target, settings, planning, final


def _table(model, shape, target, settings):
    from edgeprune.latency import complete, conv_shapes, open_table

    table = open_table(target.name, settings)
    start = time.perf_counter()
    measured = complete(table, list(conv_shapes(model, shape).values()))
    return table, {"points_measured": measured, "seconds": round(time.perf_counter() - start, 1),
                   "points_total": sum(len(r) for r in table.data["entries"].values()), "path": str(table.path)}


def _latency_driven(model, shape, table, budget: float, timer, target):
    from edgeprune.api import prune
    from edgeprune.latency import Budget, LatencyPlanner

    planner = LatencyPlanner(table, Budget(speedup=1 / budget), timer, round_to=target.round_to, progress=_say)
    return prune(model, shape, criterion="l2", planner=planner)


def _export(model, shape, path: Path, opset: int) -> Path:
    from edgeprune.export import export_onnx

    export_onnx(model, shape, path, opset=opset, verify=False)
    return path


def _interpolate_at(latency: float, curve: list[tuple[float, float]]) -> float | None:
    """The value of a (latency, value) curve at ``latency``, or None outside its range."""
    curve = sorted(curve)
    xs, ys = [c[0] for c in curve], [c[1] for c in curve]
    if not xs[0] <= latency <= xs[-1]:
        return None
    return float(np.interp(latency, xs, ys))


def run_model(spec: str, args, folder: Path) -> dict:
    from edgeprune.api import prune
    from edgeprune.counter import count
    from edgeprune.graph import build_graph
    from edgeprune.latency import ModelTimer, Predictor, timed_layers
    from edgeprune.models import build
    from edgeprune.profile import profile_models

    target, settings, planning, final = _setup(args)
    built = build(spec, pretrained=False)  # random weights: latency does not depend on them
    model, shape = built.model.eval(), tuple(built.input_shape)
    _say(f"== {spec}: latency table")
    table, table_info = _table(model, shape, target, settings)
    timer = ModelTimer(shape, planning, target.opset)
    slug = spec.replace(":", "_")
    paths = {"dense": _export(model, shape, folder / f"{slug}-dense.onnx", target.opset)}
    graph = build_graph(model, shape)
    dense_macs = count(graph).macs
    pruned = {}
    for budget in args.budgets:
        _say(f"== {spec}: latency-driven, budget {budget:.0%} of dense")
        result = _latency_driven(model, shape, table, budget, timer, target)
        name = f"latency-{budget:.2f}"
        pruned[name] = {"kind": "latency", "budget": budget, "macs": result.after.macs, "plan": result.plan.details,
                        "keep": result.plan.keep}
        paths[name] = _export(result.model, shape, folder / f"{slug}-{name}.onnx", target.opset)
    for cut in args.uniform_cuts:
        result = prune(model, shape, criterion="l2", flops_cut=cut, round_to=target.round_to)
        name = f"uniform-{cut:.2f}"
        pruned[name] = {"kind": "uniform", "flops_cut": cut, "macs": result.after.macs, "keep": result.plan.keep}
        paths[name] = _export(result.model, shape, folder / f"{slug}-{name}.onnx", target.opset)
    timer.close()
    _say(f"== {spec}: measuring {len(paths)} models side by side")
    profiles = dict(zip(paths, profile_models(list(paths.values()), final)))
    dense_ms = profiles["dense"].p50_ms
    predictor = Predictor(timed_layers(graph), table, planning_dense_ms := statistics.median(
        [p["plan"]["dense_ms_measured"] for p in pruned.values() if p["kind"] == "latency"]))
    rows = []
    for name, entry in pruned.items():
        fraction = profiles[name].p50_ms / dense_ms
        predicted = predictor.predict_keep(graph, entry.pop("keep")) / planning_dense_ms
        rows.append({"name": name, **{k: v for k, v in entry.items() if k != "plan"}, "p50_ms": profiles[name].p50_ms,
                     "latency_fraction": fraction, "macs_kept": entry["macs"] / dense_macs,
                     "predicted_fraction": predicted, "prediction_error": predicted / fraction - 1,
                     **({"plan": entry["plan"]} if "plan" in entry else {})})
    curve = [(r["latency_fraction"], r["macs_kept"]) for r in rows if r["kind"] == "uniform"] + [(1.0, 1.0)]
    for row in rows:
        if row["kind"] == "latency":
            row["budget_error"] = row["latency_fraction"] / row["budget"] - 1
            row["uniform_macs_kept_at_same_latency"] = _interpolate_at(row["latency_fraction"], curve)
    return {"model": spec, "input_shape": list(shape), "dense_macs": dense_macs, "dense_p50_ms": dense_ms,
            "table": table_info, "rows": rows,
            "prediction_error_mean_abs": statistics.mean(abs(r["prediction_error"]) for r in rows)}


def run_accuracy(args, folder: Path) -> list[dict]:
    """The default model: latency-driven vs uniform at equal measured latency, both fine-tuned alike."""
    from edgeprune.calibration import make_loader, sample
    from edgeprune.latency import Budget, LatencyPlanner, ModelTimer
    from edgeprune.models.default import build_default
    from edgeprune.profile import profile_models
    from edgeprune.recipes import RecipeConfig, RecipeData, run_recipe
    from edgeprune.train import evaluate

    target, settings, planning, final = _setup(args)
    finetune, _, test = load_splits(0)
    loader = make_loader(test, 250, shuffle=False)
    dense = build_default().model.eval()
    shape = (1, 1, 32, 32)
    table, _ = _table(dense, shape, target, settings)
    timer = ModelTimer(shape, planning, target.opset)
    results = []
    for budget in args.budgets:
        rows = {}
        for seed in range(args.seeds):
            data = RecipeData(train=finetune, calib=sample(finetune, 640, seed=seed))
            common = dict(epochs=args.epochs, lr=args.lr, seed=seed, recalibrate_bn=True, round_to=target.round_to)
            torch.manual_seed(seed)
            planner = LatencyPlanner(table, Budget(speedup=1 / budget), timer, round_to=target.round_to, progress=_say)
            driven = run_recipe(copy.deepcopy(dense), shape, RecipeConfig("l2", flops_cut=None, planner=planner, **common), data)
            # The uniform cut whose latency matches: bisect the MACs cut on measured latency.
            cut, uniform = _matching_uniform(dense, shape, driven.model, timer, target, common, data)
            for name, result in (("latency", driven), ("uniform", uniform)):
                rows.setdefault(name, []).append({"seed": seed, "top1": evaluate(result.model, loader),
                                                  "macs_kept": result.after.macs / result.before.macs,
                                                  **({"flops_cut": cut} if name == "uniform" else {})})
        paths = [_export(m, shape, folder / f"default-{budget}-{i}.onnx", target.opset)
                 for i, m in enumerate([dense, driven.model, uniform.model])]
        measured = [p.p50_ms for p in profile_models(paths, final)]
        results.append({"budget": budget, "latency_fraction": {"latency": measured[1] / measured[0],
                                                               "uniform": measured[2] / measured[0]},
                        **{name: {"runs": r, "top1_mean": statistics.mean(x["top1"] for x in r),
                                  "macs_kept": statistics.mean(x["macs_kept"] for x in r)} for name, r in rows.items()}})
    timer.close()
    return results


def _matching_uniform(dense, shape, driven_model, timer, target, common: dict, data):
    """Uniform FLOPs-target pruning whose measured latency matches ``driven_model``'s (5 bisection steps)."""
    from edgeprune.api import prune
    from edgeprune.recipes import RecipeConfig, run_recipe

    goal = timer([dense, driven_model])
    goal = goal[1] / goal[0]
    low, high = 0.05, 0.9
    for _ in range(5):
        cut = (low + high) / 2
        candidate = prune(dense, shape, criterion="l2", flops_cut=cut, round_to=target.round_to).model
        now = timer([dense, candidate])
        low, high = (cut, high) if now[1] / now[0] > goal else (low, cut)
    cut = (low + high) / 2
    return cut, run_recipe(copy.deepcopy(dense), shape, RecipeConfig("l2", flops_cut=cut, **common), data)


def table_text(entries: list[dict]) -> str:
    lines = ["| model | budget | measured / dense | vs budget | MACs kept, latency-driven | MACs kept, uniform at same latency | prediction error |",
             "|---|---|---|---|---|---|---|"]
    for e in entries:
        for r in e["rows"]:
            if r["kind"] != "latency":
                continue
            uniform = r["uniform_macs_kept_at_same_latency"]
            lines.append(f"| {e['model']} | {r['budget']:.0%} | {r['latency_fraction']:.3f} | {r['budget_error']:+.1%} | "
                         f"{r['macs_kept']:.1%} | {'-' if uniform is None else f'{uniform:.1%}'} | {r['prediction_error']:+.1%} |")
    lines += ["", "| model | dense p50 ms | table points (measured now) | table build s | mean abs prediction error, all pruned models |",
              "|---|---|---|---|---|"]
    for e in entries:
        t = e["table"]
        lines.append(f"| {e['model']} | {e['dense_p50_ms']:.3f} | {t['points_total']} ({t['points_measured']}) | {t['seconds']} | "
                     f"{e['prediction_error_mean_abs']:.1%} |")
    return "\n".join(lines)


def accuracy_text(results: list[dict]) -> str:
    lines = ["| budget | latency-driven: measured / dense, top-1, MACs kept | uniform: measured / dense, top-1, MACs kept |",
             "|---|---|---|"]
    for r in results:
        cells = [f"{r['latency_fraction'][k]:.3f}, {r[k]['top1_mean']:.2%}, {r[k]['macs_kept']:.1%}" for k in ("latency", "uniform")]
        lines.append(f"| {r['budget']:.0%} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def goals(entries: list[dict], accuracy: list[dict]) -> list[dict]:
    found = []
    for e in entries:
        for r in e["rows"]:
            if r["kind"] == "latency":
                found.append({"goal": f"{e['model']} {r['budget']:.0%}: measured within 10 % of the budget",
                              "value": f"{r['budget_error']:+.1%}", "pass": abs(r["budget_error"]) <= 0.10})
                uniform = r["uniform_macs_kept_at_same_latency"]
                found.append({"goal": f"{e['model']} {r['budget']:.0%}: latency-driven keeps more MACs than uniform at the same latency",
                              "value": f"{r['macs_kept']:.1%} vs {'-' if uniform is None else f'{uniform:.1%}'}",
                              "pass": None if uniform is None else r["macs_kept"] >= uniform})
    for r in accuracy:
        found.append({"goal": f"default model {r['budget']:.0%}: latency-driven top-1 >= uniform at equal latency",
                      "value": f"{r['latency']['top1_mean']:.2%} vs {r['uniform']['top1_mean']:.2%}",
                      "pass": r["latency"]["top1_mean"] >= r["uniform"]["top1_mean"]})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.7, 0.5], help="fractions of dense latency")
    parser.add_argument("--uniform-cuts", nargs="+", type=float, default=UNIFORM_CUTS)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads (1: steadiest on a shared machine)")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--min-time", type=float, default=1.0)
    parser.add_argument("--accuracy", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "latency_budget.json")
    args = parser.parse_args()
    import tempfile

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        entries = [run_model(spec, args, Path(tmp)) for spec in args.models]
        accuracy = run_accuracy(args, Path(tmp)) if args.accuracy else []
    found = goals(entries, accuracy)
    doc = {"command": " ".join(["python", *sys.argv]), "machine": machine(), "target": TARGET, "threads": args.threads,
           "seconds": round(time.perf_counter() - started, 1), "models": entries, "accuracy": accuracy, "goals": found}
    write_json(doc, args.json)
    print(table_text(entries))
    if accuracy:
        print("\nDefault model (ResNet-20, MNIST-5k), equal measured latency, fine-tuned alike:\n" + accuracy_text(accuracy))
    print("\n" + "\n".join(f"{'PASS' if g['pass'] else 'INFO' if g['pass'] is None else 'FAIL'}  {g['goal']}: {g['value']}"
                           for g in found))
    print(f"\nwrote {args.json} ({doc['seconds']} s)")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
