"""Where to spend a MACs cut: each group's measured sensitivity against one ratio for all and a global ranking.

The same criterion (L2) orders the channels of every group; only how many each group loses
differs: ``uniform`` (one ratio, aligned), ``global`` (one ranking over all groups, each group's
scores divided by its mean, at most 90 % of a group) and ``sensitivity`` (edgeprune's
allocation: each group cut alone to 10-90 %, BatchNorm re-estimated, output fidelity measured;
then the cheapest predicted loss per MAC first). All at ``round_to`` 8, the targets' alignment.

- the default model (ResNet-20 trained on mnist5k): fidelity to the dense model and top-1 right
  after the cut (BatchNorm re-estimated), then top-1 after compress's recovery (3 epochs of
  distillation plus cross-entropy), seeds 0, 1, 2;
- resnet56-cifar and mobilenetv1-cifar (random weights, BatchNorm statistics re-estimated on the
  images): fidelity right after the cut only.

Sensitivity is measured on training images (256 for BatchNorm, 256 compared), never on the
held-out split the figures come from. Goal: the allocated plan never worse, and better by more
than the seed spread at 70 % on the default model.

    .venv/bin/python benchmarks/allocate.py     # writes benchmarks/results/allocate.json
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeprune.latency.measure import write_json_atomic  # noqa: E402
PLANS = ("uniform", "global", "sensitivity")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuts", type=float, nargs="+", default=[0.5, 0.7])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["default", "resnet56-cifar", "mobilenetv1-cifar"])
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "allocate.json")
    return parser.parse_args(argv)


def planner_kwargs(plan: str, cut: float, curves: Any) -> dict[str, Any]:
    from edgeprune.allocation import SensitivityPlanner

    if plan == "sensitivity":
        return {"planner": SensitivityPlanner(curves, cut, round_to=8)}
    return {"flops_cut": cut, "round_to": 8, "global_ranking": plan == "global"}


def figures(dense_out, model, x, infos, labels) -> dict[str, Any]:
    from edgeprune.quality import accuracy, compare, summary, torch_outputs

    outputs = torch_outputs(model, x)
    found = summary(compare(dense_out, outputs, infos))
    if labels is not None:
        found["top1"] = accuracy(outputs, 0, labels)
    return found


def setup(name: str):
    """The model, its preprocessing-applied training and held-out images (mnist5k as the data)."""
    from edgeprune.calibration import load_data
    from edgeprune.models import build
    from edgeprune.models.default import build_default
    from edgeprune.train import recalibrate_batchnorm

    built = build_default() if name == "default" else build(name)
    _, channels, *size = built.input_shape
    common = dict(channels=channels, size=tuple(size), preprocess=built.preprocess)
    train, held = load_data("mnist5k", split="train", **common), load_data("mnist5k", split="val", **common)
    if name != "default":  # random weights: statistics that fit the images, as a trained network's would
        recalibrate_batchnorm(built.model, train.x[:512])
    return built, train, held


def run_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from edgeprune.api import prune
    from edgeprune.calibration import make_loader, sample
    from edgeprune.outputs import describe
    from edgeprune.quality import torch_outputs
    from edgeprune.recipes import RecipeConfig, RecipeData, run_recipe
    from edgeprune.sensitivity import analyse
    from edgeprune.train import DistillConfig, evaluate, recalibrate_batchnorm

    built, train, held = setup(name)
    trained = name == "default"
    infos = describe(torch_outputs(built.model, train.x[:128]), ["output"], label_output=0 if trained else None)
    dense_out = torch_outputs(built.model, held.x)
    start = time.perf_counter()
    curves = analyse(built.model, built.input_shape, "l2", sample(train, 256, seed=0).x, sample(train, 256, seed=1).x,
                     outputs=infos, round_to=8)
    sensitivity_s = round(time.perf_counter() - start, 1)
    print(f"{name}: sensitivity of {len(curves.curves)} groups in {sensitivity_s} s", flush=True)
    bn = sample(train, 640, seed=0).x
    rows = []
    for cut in args.cuts:
        for plan in PLANS:
            try:
                result = prune(built.model, built.input_shape, criterion="l2", **planner_kwargs(plan, cut, curves))
            except Exception as exc:  # a plan that cannot reach the cut is a result too
                rows.append({"cut": cut, "plan": plan, "error": str(exc)})
                print(f"{name} {cut:.0%} {plan}: {exc}", flush=True)
                continue
            recalibrate_batchnorm(result.model, bn)
            row = {"cut": cut, "plan": plan, "macs_cut": result.plan.macs_cut,
                   "after_cut": figures(dense_out, result.model, held.x, infos, held.y if trained else None),
                   "predicted_loss": result.plan.details.get("predicted_loss")}
            if trained:
                recovered = []
                for seed in args.seeds:
                    torch.manual_seed(seed)
                    config = RecipeConfig("l2", round_to=8, epochs=args.epochs, seed=seed, recalibrate_bn=True,
                                          distill=DistillConfig(), **_recipe_target(plan, cut, curves))
                    data = RecipeData(train, calib=sample(train, 640, seed=seed), teacher=built.model, outputs=infos,
                                      label_output=0)
                    tuned = run_recipe(copy.deepcopy(built.model), built.input_shape, config, data)
                    recovered.append(evaluate(tuned.model, make_loader(held, 250, shuffle=False)))
                row["top1_after_recovery"] = recovered
            rows.append(row)
            tail = (f", top-1 after recovery {statistics.mean(row['top1_after_recovery']):.2%}"
                    if trained else "")
            print(f"{name} {cut:.0%} {plan:<11}: MACs cut {row['macs_cut']:.1%}, right after the cut cosine "
                  f"{row['after_cut']['cosine_min']:.4f}" + (f" top-1 {row['after_cut']['top1']:.2%}" if trained else "")
                  + tail, flush=True)
    return {"model": name, "sensitivity_seconds": sensitivity_s, "rows": rows}


def _recipe_target(plan: str, cut: float, curves: Any) -> dict[str, Any]:
    """run_recipe's way of saying the same plan (it has no global ranking: a planner does it)."""
    if plan == "uniform":
        return {"flops_cut": cut}
    if plan == "sensitivity":
        return {"flops_cut": None, "planner": planner_kwargs(plan, cut, curves)["planner"]}
    return {"flops_cut": None, "planner": _GlobalPlanner(cut)}


class _GlobalPlanner:
    def __init__(self, cut: float) -> None:
        self.cut = cut

    def __call__(self, graph, scores):
        from edgeprune.plan import PlanConfig, make_plan

        return make_plan(graph, scores, PlanConfig(flops_cut=self.cut, global_ranking=True, round_to=8))


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| model | cut | plan | MACs cut | cosine right after the cut | top-1 right after | top-1 after recovery |",
             "|---|---|---|---|---|---|---|"]
    for part in results:
        for row in part["rows"]:
            if "error" in row:
                lines.append(f"| {part['model']} | {row['cut']:.0%} | {row['plan']} | - | {row['error'][:60]} | | |")
                continue
            after = row["after_cut"]
            top1 = f"{after['top1']:.2%}" if "top1" in after else "-"
            recovered = row.get("top1_after_recovery")
            tuned = (f"{100 * statistics.mean(recovered):.2f} ± {100 * statistics.stdev(recovered):.2f}"
                     if recovered and len(recovered) > 1 else "-")
            lines.append(f"| {part['model']} | {row['cut']:.0%} | {row['plan']} | {row['macs_cut']:.1%} | "
                         f"{after['cosine_min']:.4f} | {top1} | {tuned} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    results = [run_model(name, args) for name in args.models]
    payload = {"command": " ".join(["python", "benchmarks/allocate.py", *(argv or sys.argv[1:])]),
               "seconds": round(time.perf_counter() - start, 1), "results": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(payload, str(args.json))
    print("\n" + markdown(results))
    print(f"wrote {args.json} ({payload['seconds']} s)")


if __name__ == "__main__":
    main()
