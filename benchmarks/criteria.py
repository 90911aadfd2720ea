"""Every criterion at the same MACs cut and the same recovery, from the same trained model.

Part 1 (accuracy), in the protocol ``compress`` uses: the shipped default model (ResNet-20 trained
on the real mnist5k digits) is pruned by each criterion's recipe (:mod:`edgeprune.recipes`:
one-shot, CSCTFP's 4 rounds, SFP's and TCFP's soft stages) to each MACs cut at ``round_to`` 8
(the targets' alignment), BatchNorm is re-estimated, and the model recovers by compress's recipe
(3 epochs of distillation from the dense model plus cross-entropy, BatchNorm re-estimated after).
Plans: ``uniform`` (one ratio for all groups) and ``sensitivity`` (each group's cut from its
measured sensitivity to that criterion's order; one-shot criteria only, CSCTFP in one round).
Figures on mnist5k's held-out split (500 images the default model never trained on), right after
the cut and after recovery: top-1 and the cosine of the logits to the dense model's, over seeds
(the seed drives the calibration sample, the random criterion, the data order and augmentation).
300 training images are held out of fine-tuning; TCFP judges its clusters on them.

Part 2 (readings, ``--readings``): the readings SPEC.md leaves open for the paper criteria, each
measured right after the cut (BatchNorm re-estimated, no fine-tuning) with the uniform plan.

Part 3 (time): each data-driven criterion scoring resnet56-cifar with 640 calibration images.

    .venv/bin/python benchmarks/criteria.py                       # ~60 min on 2 cores
    .venv/bin/python benchmarks/criteria.py --readings --skip-accuracy --skip-timing
    .venv/bin/python benchmarks/criteria.py --quick               # a smoke run
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeprune.latency.measure import write_json_atomic  # noqa: E402

CRITERIA = ["l1", "l2", "fpgm", "random", "hrank", "sfp", "fms", "tcfp", "csctfp"]
PAPER = {"fms", "tcfp", "csctfp"}
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "criteria.json"
HOLDOUT = 300
CALIB = 640
ROUND_TO = 8
READINGS = {  # SPEC.md's open choices, one change from the default at a time
    "csctfp": [{"key_fraction": 0.05}, {"key_fraction": 0.25}, {"key_fraction": 0.5}, {"similarity": "spatial"},
               {"steps": 1}, {"steps": 2}],
    "fms": [{"tau": 0.6}, {"tau": 0.7}, {"tau": 0.9}, {"tau": 0.95}],
    "tcfp": [{"function": "probe"}, {"tcfp_soft_share": 0.0}, {"tcfp_soft_share": 0.6}, {"tcfp_theta": 0.01}],
}
RECIPE_KEYS = {"steps", "tcfp_soft_share", "tcfp_theta"}  # readings that belong to the recipe, not the criterion


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def load_splits(seed: int = 0):
    """mnist5k: fine-tuning images, the held-out part of training, and the evaluation split."""
    from dataclasses import replace

    from edgeprune.calibration import load_data
    from edgeprune.models.default import DEFAULT

    train = load_data("mnist5k", split="train", preprocess=DEFAULT.preprocess)
    order = np.random.default_rng(seed).permutation(len(train))
    holdout = replace(train, x=train.x[order[:HOLDOUT]], y=train.y[order[:HOLDOUT]])
    finetune = replace(train, x=train.x[order[HOLDOUT:]], y=train.y[order[HOLDOUT:]])
    return finetune, holdout, load_data("mnist5k", split="val", preprocess=DEFAULT.preprocess)


class Bench:
    """The dense model, its outputs on the evaluation split, the splits, and sensitivity curves made once."""

    def __init__(self) -> None:
        from edgeprune.models.default import build_default
        from edgeprune.outputs import describe
        from edgeprune.quality import torch_outputs

        self.built = build_default()
        self.finetune, self.holdout, self.test = load_splits()
        self.infos = describe(torch_outputs(self.built.model, self.finetune.x[:128]), ["output"], label_output=0)
        self.dense_out = torch_outputs(self.built.model, self.test.x)
        self.curves: dict[tuple, Any] = {}

    def figures(self, model: torch.nn.Module) -> dict[str, float]:
        from edgeprune.quality import accuracy, compare, summary, torch_outputs

        outputs = torch_outputs(model, self.test.x)
        return {"top1": accuracy(outputs, 0, self.test.y), "cosine": summary(compare(self.dense_out, outputs, self.infos))["cosine_min"]}

    def sensitivity(self, criterion: str, options: dict, seed: int) -> Any:
        """Curves measured on training images, as compress measures them (never the evaluation split)."""
        from edgeprune.calibration import sample
        from edgeprune.criteria import create_criterion
        from edgeprune.sensitivity import analyse

        key = (criterion, tuple(sorted(options.items())), seed)
        if key not in self.curves:
            self.curves[key] = analyse(self.built.model, self.built.input_shape, create_criterion(criterion, **options),
                                       sample(self.finetune, 256, seed=seed).x, sample(self.finetune, 256, seed=seed + 1).x,
                                       outputs=self.infos, round_to=ROUND_TO,
                                       criterion_data=sample(self.finetune, CALIB, seed=seed).x)
        return self.curves[key]


def run_one(bench: Bench, criterion: str, cut: float, seed: int, plan: str, reading: dict, epochs: int,
            distill: bool, reconstruct: bool = False) -> dict:
    from edgeprune.allocation import SensitivityPlanner
    from edgeprune.calibration import sample
    from edgeprune.recipes import RecipeConfig, RecipeData, run_recipe
    from edgeprune.train import DistillConfig
    from edgeprune.train.reconstruct import ReconstructConfig

    recipe = {k: v for k, v in reading.items() if k in RECIPE_KEYS}
    options = {k: v for k, v in reading.items() if k not in RECIPE_KEYS}
    target: dict[str, Any] = {"flops_cut": cut}
    if plan == "sensitivity":
        recipe.setdefault("steps", 1)  # an allocation cuts once
        target = {"flops_cut": None, "planner": SensitivityPlanner(bench.sensitivity(criterion, options, seed), cut, ROUND_TO)}
    torch.manual_seed(seed)
    config = RecipeConfig(criterion, round_to=ROUND_TO, epochs=epochs, seed=seed, criterion_options=options,
                          recalibrate_bn=True, distill=DistillConfig() if distill else None, **recipe, **target,
                          reconstruct=ReconstructConfig(seed=seed) if reconstruct else None,
                          keep_better=reconstruct and epochs > 0)
    data = RecipeData(train=bench.finetune, holdout=bench.holdout, calib=sample(bench.finetune, CALIB, seed=seed),
                      teacher=bench.built.model, outputs=bench.infos, label_output=0)
    start = time.perf_counter()
    result = run_recipe(copy.deepcopy(bench.built.model), bench.built.input_shape, config, data, evaluate=bench.figures)
    after = bench.figures(result.model) if epochs else result.after_cut
    return {"criterion": criterion, "reading": reading, "plan": plan, "cut": cut, "seed": seed, "recipe": result.recipe,
            "macs_cut": result.macs_cut, "params_after": result.after.params, "after_cut": result.after_cut,
            "after_recovery": after if epochs else None, "criterion_seconds": result.seconds.get("prune", 0.0),
            "total_seconds": time.perf_counter() - start, "warnings": result.warnings, "kept": result.kept}


def _mean_sd(values: list[float]) -> list[float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return [None, None]
    return [statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def summarise(runs: list[dict]) -> list[dict]:
    rows: dict[tuple, list[dict]] = {}
    for r in runs:
        rows.setdefault((r["cut"], r["plan"], r["criterion"], _label(r["reading"])), []).append(r)
    out = []
    for (cut, plan, criterion, reading), mine in sorted(rows.items(), key=lambda kv: kv[0][:2]):
        out.append({"cut": cut, "plan": plan, "criterion": criterion, "reading": reading, "seeds": len(mine),
                    "recipe": mine[0]["recipe"], "macs_cut": statistics.mean(r["macs_cut"] for r in mine),
                    **{f"{when}_{figure}": _mean_sd([(r[when] or {}).get(figure) for r in mine])
                       for when in ("after_cut", "after_recovery") for figure in ("top1", "cosine")},
                    "criterion_seconds": statistics.median(r["criterion_seconds"] for r in mine)})
    return out


def _label(reading: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in reading.items()) or "default"


def table(rows: list[dict]) -> str:
    def pct(pair) -> str:
        return "-" if pair[0] is None else f"{100 * pair[0]:.2f} ± {100 * pair[1]:.2f}"

    def cos(pair) -> str:
        return "-" if pair[0] is None else f"{pair[0]:.4f}"

    lines = ["| cut | plan | criterion | reading | seeds | MACs cut | top-1 right after the cut (%) | cosine | "
             "top-1 after recovery (%) | cosine | criterion s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = r["criterion"] + (" *" if r["criterion"] in PAPER else "")
        lines.append(f"| {r['cut']:.0%} | {r['plan']} | {name} | {r['reading']} | {r['seeds']} | {r['macs_cut']:.1%} | "
                     f"{pct(r['after_cut_top1'])} | {cos(r['after_cut_cosine'])} | {pct(r['after_recovery_top1'])} | "
                     f"{cos(r['after_recovery_cosine'])} | {r['criterion_seconds']:.1f} |")
    return "\n".join(lines)


def verdict(rows: list[dict], figure: str = "after_recovery_top1") -> list[str]:
    """Per cut and plan: the best paper criterion against the best baseline (default readings)."""
    out = []
    for cut, plan in sorted({(r["cut"], r["plan"]) for r in rows}):
        here = [r for r in rows if r["cut"] == cut and r["plan"] == plan and r["reading"] == "default"
                and r[figure][0] is not None]
        paper = max((r for r in here if r["criterion"] in PAPER), key=lambda r: r[figure][0], default=None)
        base = max((r for r in here if r["criterion"] not in PAPER), key=lambda r: r[figure][0], default=None)
        if paper and base:
            ok = paper[figure][0] >= base[figure][0]
            out.append(f"{cut:.0%} {plan}: best paper criterion {paper['criterion']} {100 * paper[figure][0]:.2f} % vs "
                       f"best baseline {base['criterion']} {100 * base[figure][0]:.2f} % ({figure}) -> "
                       f"{'PASS' if ok else 'FAIL'}")
    return out


def time_criteria(names: list[str], options: dict, images: int) -> list[dict]:
    """Seconds each data-driven criterion takes to score resnet56-cifar with ``images`` images."""
    from edgeprune.api import prune
    from edgeprune.calibration import load_data
    from edgeprune.models import build

    calib = load_data("mnist5k", split="train", channels=3, size=32, limit=images)
    out = []
    for name, opts in [(n, o) for n in names for o in options.get(n, [{}])]:
        built = build("resnet56-cifar")
        torch.manual_seed(0)
        result = prune(built.model, built.input_shape, criterion=name, flops_cut=0.5, data=calib.x,
                       criterion_options=opts, inplace=True)
        out.append({"criterion": name, "options": opts, "images": images, "seconds": result.seconds["criterion"]})
        _say(f"  time {name} {opts or ''}: {result.seconds['criterion']:.1f} s")
    return out


def plans_for(criterion: str, plans: list[str]) -> list[str]:
    from edgeprune.recipes import prunes_softly

    return [p for p in plans if p != "sensitivity" or not prunes_softly(criterion)]  # soft recipes cut during training


def run_all(args, doc: dict, bench: Bench) -> None:
    done = {(r["criterion"], _label(r["reading"]), r["plan"], r["cut"], r["seed"]) for r in doc["runs"]}
    jobs = [(c, reading, plan, cut, seed) for cut in args.cuts for seed in args.seeds for c in args.criteria
            for plan in plans_for(c, args.plans) for reading in ([{}] + (READINGS.get(c, []) if args.readings else []))]
    for criterion, reading, plan, cut, seed in jobs:
        if (criterion, _label(reading), plan, cut, seed) in done:
            continue
        if args.readings and reading == {} and not args.with_defaults:
            continue
        epochs = 0 if args.readings else args.epochs
        run = run_one(bench, criterion, cut, seed, plan, {**args.options.get(criterion, {}), **reading}, epochs,
                      not args.cross_entropy, args.reconstruct)
        run["reading"] = {**args.options.get(criterion, {}), **reading}
        doc["runs"].append(run)
        after, tuned = run["after_cut"], run["after_recovery"]
        _say(f"{criterion:7s} {_label(reading):22s} {plan:11s} cut {cut:.0%} seed {seed}: MACs -{run['macs_cut']:.1%}  "
             f"right after top-1 {100 * after['top1']:.2f} % cos {after['cosine']:.4f}"
             + (f"; recovered {100 * tuned['top1']:.2f} % cos {tuned['cosine']:.4f}" if tuned else "")
             + f"  ({run['total_seconds']:.0f} s)")
        write_json_atomic(doc, str(args.out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--criteria", nargs="+", default=CRITERIA)
    parser.add_argument("--cuts", nargs="+", type=float, default=[0.5, 0.7])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--plans", nargs="+", default=["uniform", "sensitivity"], choices=["uniform", "sensitivity"])
    parser.add_argument("--epochs", type=int, default=3, help="Recovery epochs (compress's default).")
    parser.add_argument("--reconstruct", action="store_true",
                        help="compress's recovery since reconstruction: each layer refitted right after the cut, and "
                             "the better of the cut and the fine-tuned model (on the held-out training images) kept.")
    parser.add_argument("--cross-entropy", action="store_true", help="Recover by cross-entropy alone (no distillation).")
    parser.add_argument("--readings", action="store_true",
                        help="Part 2: SPEC's open readings of the paper criteria, right after the cut only.")
    parser.add_argument("--with-defaults", action="store_true", help="With --readings: the default readings too.")
    parser.add_argument("--resume", action="store_true", help="Keep the runs already in --out and add the missing ones.")
    parser.add_argument("--option", action="append", default=[], metavar="CRITERION.KEY=VALUE",
                        help="A reading for part 1, e.g. csctfp.key_fraction=0.5 (values read as JSON).")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--quick", action="store_true", help="l2 and csctfp, one cut, one seed, 1 epoch.")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads (1 when something else runs beside it: oversubscribed threads are slow)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.quick:
        args.criteria, args.cuts, args.seeds, args.epochs, args.out = ["l2", "csctfp"], [0.5], [0], 1, Path("/tmp/criteria-quick.json")
        args.skip_timing = True
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    args.options = {}
    for text in args.option:
        name, value = text.split("=", 1)
        criterion, key = name.split(".", 1)
        args.options.setdefault(criterion, {})[key] = json.loads(value)
    doc = {"benchmark": "criteria", "model": "default (resnet20-cifar, 1x32x32, trained on mnist5k)",
           "data": {"source": "mnist5k", "finetune_images": 4500 - HOLDOUT, "holdout_images": HOLDOUT,
                    "eval": "mnist5k val split, 500 images", "calibration_images": CALIB},
           "settings": {"epochs": args.epochs, "recovery": "cross-entropy" if args.cross_entropy else "distillation + cross-entropy",
                        "bn_recalibrate": True, "reconstruct": args.reconstruct, "round_to": ROUND_TO, "cuts": args.cuts, "seeds": args.seeds,
                        "plans": args.plans, "readings": args.readings},
           "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "load_average_at_start": os.getloadavg()},
           "command": " ".join(["python"] + sys.argv), "runs": [], "complete": False}
    if args.resume and args.out.exists():
        doc["runs"] = json.loads(args.out.read_text())["runs"]
    started = time.perf_counter()
    if not args.skip_accuracy:
        run_all(args, doc, Bench())
    if doc["runs"]:
        doc["summary"] = summarise(doc["runs"])
        doc["verdict"] = verdict(doc["summary"], "after_cut_top1" if args.readings else "after_recovery_top1")
    if not args.skip_timing:
        _say("timing the data-driven criteria on resnet56-cifar")
        doc["timing"] = time_criteria(["hrank", "fms", "tcfp", "csctfp"], {}, CALIB)
    doc["complete"], doc["seconds"] = True, round(time.perf_counter() - started, 1)
    write_json_atomic(doc, str(args.out))
    if "summary" in doc:
        print(table(doc["summary"]))
        print("\n".join(doc["verdict"]))
    for t in doc.get("timing", []):
        verdict_60 = "PASS" if t["seconds"] < 60 else "FAIL"
        print(f"resnet56-cifar, {t['images']} images: {t['criterion']} {t['options'] or '(defaults)'} "
              f"{t['seconds']:.1f} s  [{verdict_60} < 60 s]")
    print(f"wrote {args.out} ({doc['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
