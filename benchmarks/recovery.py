"""Recovery after the cut: none, BatchNorm re-estimated, reconstruction, reconstruction + distillation,
gradual pruning + distillation, at the same epoch budget.

Two models, each L2-pruned to 50 % and 70 % of its MACs (``round_to`` 8): the default model
(ResNet-20 trained on mnist5k; top-1 and the logits' cosine on its 500 held-out images) and
MTCNN's pretrained ONet from the facenet-pytorch wheel on the README's unlabelled images
(scikit-image's LFW faces and photo crops, as benchmarks/distill.py makes them; cosine per output
on 780 held-out images). Methods, each from the same dense model:

- ``none``: the cut alone; ``bn``: BatchNorm statistics re-estimated on 640 calibration images;
- ``reconstruct``: each layer refitted by least squares to the dense model's outputs (1,024 images);
- ``reconstruct+distill``: then ``--epochs`` of distillation (plus cross-entropy where labels exist),
  BatchNorm re-estimated after, as ``compress`` recovers;
- ``gradual+distill``: the same cut in 4 rounds, reconstruction after each, one epoch of the budget
  spread over the distillation between rounds and the rest after the last.

Goals (issue 17): right after the cut, reconstruction at least halves the cosine gap (1 - cosine)
left by BatchNorm re-estimation; the default model at 50 % within 0.5 point of dense top-1.

    .venv/bin/pip install --no-deps facenet-pytorch && .venv/bin/pip install scikit-image
    .venv/bin/python benchmarks/recovery.py --threads 1 [--models default onet] [--seeds 0 1 2] [--resume]

Each (model, cut, seed, method) row is written to the JSON as soon as it is measured; ``--resume``
keeps the rows already there and measures the rest.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from edgeprune.latency.measure import write_json_atomic  # noqa: E402

METHODS = ["none", "bn", "reconstruct", "reconstruct+distill", "gradual+distill"]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "recovery.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["default", "onet"], choices=["default", "onet"])
    parser.add_argument("--cuts", type=float, nargs="+", default=[0.5, 0.7])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--epochs", type=int, default=3, help="The epoch budget of the distilling methods.")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--resume", action="store_true", help="Keep the rows already in --out; measure the rest.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def load_model(name: str) -> dict[str, Any]:
    """The dense model, its training and held-out images, its outputs' kinds and dense outputs."""
    from edgeprune.calibration import Preprocess, load_data
    from edgeprune.outputs import describe, output_names
    from edgeprune.quality import torch_outputs

    if name == "default":
        from edgeprune.models.default import DEFAULT, build_default

        built = build_default()
        dense, shape = built.model.eval(), built.input_shape
        train = load_data(DEFAULT.data, split="train", preprocess=built.preprocess)
        held_out = load_data(DEFAULT.data, split="val", preprocess=built.preprocess)
        infos = describe(torch_outputs(dense, train.x[:256]), ["output"], label_output=0)
        label_output = 0
    else:
        from distill import onet_factory, onet_images

        dense, shape = onet_factory(), (1, 3, 48, 48)
        preprocess = Preprocess(**dense.preprocess, source="MTCNN")
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "onet_images.npz")
            np.savez(path, x=onet_images(400))
            common = dict(channels=3, size=48, preprocess=preprocess)
            train, held_out = load_data(path, split="train", **common), load_data(path, split="val", **common)
        infos = describe(torch_outputs(dense, train.x[:256]), output_names(dense, torch.zeros(shape)))
        label_output = None
    return {"dense": dense, "shape": shape, "train": train, "held_out": held_out, "infos": infos,
            "label_output": label_output, "dense_out": torch_outputs(dense, held_out.x)}


def figures(setup: dict[str, Any], model: Any) -> dict[str, Any]:
    from edgeprune.quality import accuracy, compare, torch_outputs

    outputs = torch_outputs(model, setup["held_out"].x)
    rows = compare(setup["dense_out"], outputs, setup["infos"])
    found = {"cosine_min": min(r["cosine"] for r in rows), "outputs": {r["output"]: r["cosine"] for r in rows}}
    if setup["label_output"] is not None:
        found["top1"] = accuracy(outputs, setup["label_output"], setup["held_out"].y)
    return found


def recover(setup: dict[str, Any], cut: float, seed: int, method: str, args: argparse.Namespace) -> dict[str, Any]:
    from edgeprune.calibration import sample
    from edgeprune.recipes import RecipeConfig, RecipeData, run_recipe
    from edgeprune.train import DistillConfig
    from edgeprune.train.reconstruct import ReconstructConfig

    distilling = method.endswith("+distill")
    config = RecipeConfig("l2", flops_cut=cut, round_to=8, epochs=args.epochs if distilling else 0, lr=args.lr,
                          seed=seed, steps=4 if method.startswith("gradual") else 1,
                          recalibrate_bn=method != "none",
                          reconstruct=ReconstructConfig(seed=seed) if method not in ("none", "bn") else None,
                          distill=DistillConfig() if distilling else None)
    data = RecipeData(setup["train"], calib=sample(setup["train"], 640, seed=seed), teacher=setup["dense"],
                      outputs=setup["infos"], label_output=setup["label_output"])
    torch.manual_seed(seed)
    start = time.perf_counter()
    result = run_recipe(copy.deepcopy(setup["dense"]), setup["shape"], config, data,
                        evaluate=lambda m: figures(setup, m))
    seconds = time.perf_counter() - start
    return {"macs_cut": result.macs_cut, "seconds": round(seconds, 1), "stage_seconds": result.seconds,
            "after_cut": result.after_cut, "after": figures(setup, result.model)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"rows": []}
    if args.resume and args.out.exists():
        results = json.loads(args.out.read_text())
    results.update(command=" ".join(["python", "benchmarks/recovery.py", *(argv or sys.argv[1:])]),
                   torch=torch.__version__, threads=args.threads, epochs=args.epochs, lr=args.lr)
    done = {(r["model"], r["cut"], r["seed"], r["method"]) for r in results["rows"]}
    for name in args.models:
        wanted = [(name, c, s, m) for c in args.cuts for s in args.seeds for m in args.methods]
        if all(key in done for key in wanted):
            continue
        setup = load_model(name)
        results.setdefault("dense", {})[name] = figures(setup, setup["dense"])
        for key in wanted:
            if key in done:
                continue
            _, cut, seed, method = key
            row = {"model": name, "cut": cut, "seed": seed, "method": method, **recover(setup, cut, seed, method, args)}
            results["rows"].append(row)
            write_json_atomic(results, str(args.out))
            after = row["after"]
            top1 = f"top-1 {after['top1']:.2%}, " if "top1" in after else ""
            print(f"{name:<8} {cut:.0%} seed {seed} {method:<20} {top1}cosine "
                  + " / ".join(f"{v:.4f}" for v in after["outputs"].values())
                  + f" (right after the cut {row['after_cut']['cosine_min']:.4f}) {row['seconds']} s", flush=True)
    print("\n" + markdown(results))


def markdown(results: dict[str, Any]) -> str:
    """One table per model: each method's figures, mean (± sd) over the seeds measured."""
    lines = []
    for name in sorted({r["model"] for r in results["rows"]}):
        rows = [r for r in results["rows"] if r["model"] == name]
        outputs = list(rows[0]["after"]["outputs"])
        labelled = "top1" in rows[0]["after"]
        head = (["top-1 right after the cut", "top-1 after recovery"] if labelled else []) + \
               [f"cosine {o} right after the cut" for o in outputs] + [f"cosine {o}" for o in outputs] + ["seconds"]
        lines += [f"{name}: mean over seeds {sorted({r['seed'] for r in rows})}", "",
                  "| cut | method | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(head)]
        for cut in sorted({r["cut"] for r in rows}):
            for method in METHODS:
                found = [r for r in rows if r["cut"] == cut and r["method"] == method]
                if not found:
                    continue
                cells = []
                if labelled:
                    cells += [_mean_sd([100 * r[k]["top1"] for r in found], ".2f") for k in ("after_cut", "after")]
                cells += [_mean_sd([r["after_cut"]["outputs"][o] for r in found], ".4f") for o in outputs]
                cells += [_mean_sd([r["after"]["outputs"][o] for r in found], ".4f") for o in outputs]
                cells.append(f"{statistics.mean(r['seconds'] for r in found):.0f}")
                lines.append(f"| {cut:.0%} | {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _mean_sd(values: list[float], fmt: str) -> str:
    mean = statistics.mean(values)
    return f"{mean:{fmt}}" + (f" ± {statistics.stdev(values):{fmt}}" if len(values) > 1 else "")


if __name__ == "__main__":
    main()
