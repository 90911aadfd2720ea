"""The face net at chosen widths: speedup in onnxruntime against fidelity after recovery.

Where the floor search on MTCNN's ONet stops (issue 17: 2x with every output's cosine >= 0.99),
one row per plan and criterion: ONet (pretrained, facenet-pytorch) with some groups cut to fixed
ratios (``conv1=0.5``: conv1 keeps half its filters) in the order of each of ``--criteria`` (L2
and ThiNet), timed against the dense model side by side in onnxruntime on the target's settings
(the median of :class:`~edgeprune.latency.ModelTimer`'s three rounds, each model in its own
process), then recovered as ``compress`` recovers (reconstruction,
then ``--epochs`` of distillation at ``--lr``) and compared output by output with the dense model
on the 780 held-out images of the README's crops (``benchmarks/distill.py`` makes them).

    .venv/bin/pip install --no-deps facenet-pytorch && .venv/bin/pip install scikit-image
    .venv/bin/python benchmarks/face_net_widths.py [--plans conv1=0.5 conv1=0.5,conv2=0.25] [--epochs 10 --lr 0.003]

Prints a table and writes ``benchmarks/results/face_net_widths.json``.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from edgeprune.latency.measure import write_json_atomic  # noqa: E402
from recovery import figures, load_model  # noqa: E402

DEFAULT_PLANS = ["conv1=0.5", "conv1=0.5,conv2=0.25", "conv1=0.5,conv2=0.5"]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "face_net_widths.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", nargs="+", default=DEFAULT_PLANS,
                        help="LAYER=RATIO[,LAYER=RATIO...]: the share of each named layer's filters removed.")
    parser.add_argument("--criteria", nargs="+", default=["l2", "thinet"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--target", default="x86-avx512")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="Torch threads for recovery.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def ratios_of(plan: str) -> dict[str, float]:
    """``conv1=0.5,conv2=0.25`` -> {"conv1": 0.5, "conv2": 0.25}.

    >>> ratios_of("conv1=0.5,conv2=0.25")
    {'conv1': 0.5, 'conv2': 0.25}
    """
    return {name: float(ratio) for name, ratio in (part.split("=") for part in plan.split(","))}


def measure(setup: dict[str, Any], plan: str, criterion: str, timer: Any, args: argparse.Namespace) -> dict[str, Any]:
    from edgeprune.calibration import sample
    from edgeprune.plan import PlanConfig, make_plan
    from edgeprune.recipes import RecipeConfig, RecipeData, run_recipe
    from edgeprune.train import DistillConfig
    from edgeprune.train.reconstruct import ReconstructConfig

    planner = partial(make_plan, config=PlanConfig(layer_ratios=ratios_of(plan)))
    config = RecipeConfig(criterion, round_to=1, epochs=args.epochs, lr=args.lr, planner=planner,
                          reconstruct=ReconstructConfig(), distill=DistillConfig() if args.epochs else None)
    data = RecipeData(setup["train"], calib=sample(setup["train"], 640, seed=0), teacher=setup["dense"],
                      outputs=setup["infos"])
    start = time.perf_counter()
    result = run_recipe(copy.deepcopy(setup["dense"]), setup["shape"], config, data,
                        evaluate=lambda m: figures(setup, m))
    seconds = time.perf_counter() - start
    dense_ms, pruned_ms = timer([setup["dense"], result.model])
    return {"plan": plan, "criterion": criterion, "macs_cut": result.macs_cut, "speedup": dense_ms / pruned_ms, "dense_ms": dense_ms,
            "pruned_ms": pruned_ms, "after_cut": result.after_cut, "after": figures(setup, result.model),
            "recovery_seconds": round(seconds, 1)}


def main(argv: list[str] | None = None) -> None:
    from edgeprune.latency import ModelTimer
    from edgeprune.profile import BenchConfig
    from edgeprune.targets import load_target

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    setup = load_model("onet")
    target = load_target(args.target)
    timer = ModelTimer(setup["shape"], BenchConfig.from_target(target, min_runs=20, min_time=0.5), target.opset)
    results = {"command": " ".join(["python", "benchmarks/face_net_widths.py", *(argv or sys.argv[1:])]),
               "target": target.name, "threads": target.host_threads(), "epochs": args.epochs, "lr": args.lr,
               "rows": []}
    try:
        for plan in args.plans:
            for criterion in args.criteria:
                results["rows"].append(measure(setup, plan, criterion, timer, args))
            write_json_atomic(results, str(args.out))
            print(row_line(results["rows"][-1]), flush=True)
    finally:
        timer.close()
    print("\n" + markdown(results))


def row_line(row: dict[str, Any]) -> str:
    cosines = " / ".join(f"{v:.4f}" for v in row["after"]["outputs"].values())
    return (f"{row['plan']:<28} {row['criterion']:<7} {row['macs_cut']:.0%} of MACs, {row['speedup']:.2f}x; cosine right after the cut "
            f"{row['after_cut']['cosine_min']:.4f}, after recovery {cosines}")


def markdown(results: dict[str, Any]) -> str:
    lines = [f"ONet, {results['target']} ({results['threads']} threads), {results['epochs']} epochs at lr "
             f"{results['lr']:g}; cosine per output (box / landmarks / face probability)", "",
             "| plan | criterion | MACs cut | speedup | worst cosine right after the cut | after recovery | recovery s |",
             "|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        cosines = " / ".join(f"{v:.4f}" for v in row["after"]["outputs"].values())
        lines.append(f"| {row['plan']} | {row['criterion']} | {row['macs_cut']:.1%} | {row['speedup']:.2f}x | "
                     f"{row['after_cut']['cosine_min']:.4f} | {cosines} | {row['recovery_seconds']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
