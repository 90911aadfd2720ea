"""Every criterion at the same MACs cut and the same fine-tune budget, from the same trained model.

Part 1 (accuracy): the shipped default model (ResNet-20 trained on the real mnist5k digits) is
pruned by each criterion's recipe (:mod:`edgeprune.recipes`: one-shot, CSCTFP's 4 rounds, SFP's
and TCFP's soft stages) to each MACs cut, then fine-tuned for the same number of epochs on the
same images. Top-1 is measured on mnist5k's held-out split (500 images the default model never
trained on) right after the cut and after fine-tuning, over several seeds (the seed drives the
calibration sample, the random criterion, the data order and augmentation). 300 training images
are held out of fine-tuning for every criterion; TCFP judges its clusters on them.

Part 2 (time): each data-driven criterion scoring resnet56-cifar with 640 calibration images.

    .venv/bin/python benchmarks/criteria.py                       # ~40 min on 2 cores
    .venv/bin/python benchmarks/criteria.py --quick               # a smoke run
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

CRITERIA = ["l1", "l2", "fpgm", "random", "hrank", "sfp", "fms", "tcfp", "csctfp"]
PAPER = {"fms", "tcfp", "csctfp"}
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "criteria.json"
HOLDOUT = 300
CALIB = 640


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def write_json(doc: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


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


def run_one(criterion: str, cut: float, seed: int, args, splits, options: dict) -> dict:
    from edgeprune.calibration import make_loader, sample
    from edgeprune.models.default import build_default
    from edgeprune.recipes import RecipeConfig, RecipeData, run_recipe
    from edgeprune.train import evaluate

    finetune, holdout, test = splits
    loader = make_loader(test, 250, shuffle=False)
    torch.manual_seed(seed)
    model = build_default().model
    data = RecipeData(train=finetune, holdout=holdout, calib=sample(finetune, CALIB, seed=seed))
    config = RecipeConfig(criterion, flops_cut=cut, epochs=args.epochs, lr=args.lr, seed=seed,
                          criterion_options=options.get(criterion, {}), recalibrate_bn=args.bn_recalibrate)
    start = time.perf_counter()
    result = run_recipe(model, (1, 1, 32, 32), config, data, evaluate=lambda m: evaluate(m, loader))
    return {"criterion": criterion, "cut": cut, "seed": seed, "recipe": result.recipe,
            "macs_cut": result.macs_cut, "params_after": result.after.params,
            "top1_before_finetune": result.accuracy_before_finetune, "top1_after_finetune": evaluate(result.model, loader),
            "criterion_seconds": result.seconds.get("prune", 0.0), "finetune_seconds": result.seconds.get("finetune", 0.0),
            "total_seconds": time.perf_counter() - start, "warnings": result.warnings}


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for cut in sorted({r["cut"] for r in runs}):
        for criterion in dict.fromkeys(r["criterion"] for r in runs):
            mine = [r for r in runs if r["cut"] == cut and r["criterion"] == criterion]
            if not mine:
                continue

            def stats(key: str) -> tuple[float, float]:
                values = [r[key] for r in mine if r[key] is not None]
                return (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0) if values else (None, None)

            rows.append({"criterion": criterion, "cut": cut, "seeds": len(mine), "recipe": mine[0]["recipe"],
                         "macs_cut": statistics.mean(r["macs_cut"] for r in mine),
                         "before": stats("top1_before_finetune"), "after": stats("top1_after_finetune"),
                         "criterion_seconds": statistics.median(r["criterion_seconds"] for r in mine)})
    return rows


def table(rows: list[dict]) -> str:
    def pct(pair) -> str:
        return "-" if pair[0] is None else f"{100 * pair[0]:6.2f} ± {100 * pair[1]:4.2f}"

    lines = ["| cut | criterion | recipe | MACs cut | top-1 before FT (%) | top-1 after FT (%) | criterion s (median) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        name = r["criterion"] + (" *" if r["criterion"] in PAPER else "")
        lines.append(f"| {r['cut']:.0%} | {name} | {r['recipe']} | {r['macs_cut']:.1%} | {pct(r['before'])} | "
                     f"{pct(r['after'])} | {r['criterion_seconds']:.1f} |")
    return "\n".join(lines)


def verdict(rows: list[dict]) -> list[str]:
    out = []
    for cut in sorted({r["cut"] for r in rows}):
        here = [r for r in rows if r["cut"] == cut and r["after"][0] is not None]
        best = max(here, key=lambda r: r["after"][0])
        best_paper = max((r for r in here if r["criterion"] in PAPER), key=lambda r: r["after"][0], default=None)
        best_base = max((r for r in here if r["criterion"] not in PAPER), key=lambda r: r["after"][0], default=None)
        line = f"{cut:.0%}: best {best['criterion']} {100 * best['after'][0]:.2f} %"
        if best_paper and best_base:
            ok = best_paper["after"][0] >= best_base["after"][0]
            line += (f"; best paper criterion {best_paper['criterion']} {100 * best_paper['after'][0]:.2f} % vs best baseline "
                     f"{best_base['criterion']} {100 * best_base['after'][0]:.2f} % -> {'PASS' if ok else 'FAIL'}")
        out.append(line)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--criteria", nargs="+", default=CRITERIA)
    parser.add_argument("--cuts", nargs="+", type=float, default=[0.5, 0.7])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2, help="Fine-tune budget of every criterion.")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--tcfp-steps", type=int, default=40,
                        help="TCFP activation-maximisation steps in part 1 (SPEC default 200; see README).")
    parser.add_argument("--bn-recalibrate", action="store_true",
                        help="Re-estimate BatchNorm statistics after each cut (off in the published table).")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--quick", action="store_true", help="l1 and csctfp, one cut, one seed, 1 epoch.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.quick:
        args.criteria, args.cuts, args.seeds, args.epochs, args.out = ["l1", "csctfp"], [0.5], [0], 1, Path("/tmp/criteria-quick.json")
        args.skip_timing = True
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(os.cpu_count() or 1)
    options = {"tcfp": {"steps": args.tcfp_steps}}
    doc = {"benchmark": "criteria", "model": "default (resnet20-cifar, 1x32x32, trained on mnist5k)",
           "data": {"source": "mnist5k", "finetune_images": 4500 - HOLDOUT, "holdout_images": HOLDOUT,
                    "eval": "mnist5k val split, 500 images", "calibration_images": CALIB},
           "settings": {"epochs": args.epochs, "lr": args.lr, "cuts": args.cuts, "seeds": args.seeds, "options": options,
                        "bn_recalibrate": args.bn_recalibrate},
           "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "load_average_at_start": os.getloadavg()},
           "command": " ".join(["python"] + sys.argv), "runs": [], "complete": False}
    started = time.perf_counter()
    if not args.skip_accuracy:
        splits = load_splits()
        for cut in args.cuts:
            for seed in args.seeds:
                for criterion in args.criteria:
                    run = run_one(criterion, cut, seed, args, splits, options)
                    doc["runs"].append(run)
                    _say(f"{criterion:7s} cut {cut:.0%} seed {seed}: MACs -{run['macs_cut']:.1%}  "
                         f"top-1 {100 * (run['top1_before_finetune'] or 0):.2f} -> {100 * run['top1_after_finetune']:.2f} %  "
                         f"criterion {run['criterion_seconds']:.1f} s, total {run['total_seconds']:.0f} s")
                    write_json(doc, args.out)
        doc["summary"] = summarise(doc["runs"])
        doc["verdict"] = verdict(doc["summary"])
    if not args.skip_timing:
        _say("timing the data-driven criteria on resnet56-cifar")
        timing_options = {"tcfp": [{"function": "probe"}, {"steps": args.tcfp_steps}]}
        doc["timing"] = time_criteria(["hrank", "fms", "tcfp"], timing_options, CALIB)
    doc["complete"], doc["seconds"] = True, round(time.perf_counter() - started, 1)
    write_json(doc, args.out)
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
