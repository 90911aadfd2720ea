"""Graph + prune time and peak memory at 50 %: edgeprune vs Torch-Pruning, side by side.

Each (tool, model) pair runs in a fresh process: the model is built, the process's peak-memory
mark is reset, then ``--repeats`` prunes of fresh copies are timed. Reported: median seconds,
peak RSS above the post-build baseline, whether the pruned model still runs, and ratios.

    .venv/bin/pip install -e ".[bench]"        # Torch-Pruning, benchmark-only
    .venv/bin/python benchmarks/prune_speed.py [--repeats 5] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

MODELS = {"resnet50": "torchvision:resnet50", "mobilenet_v2": "torchvision:mobilenet_v2", "resnet56-cifar": "resnet56-cifar"}
RATIO = 0.5


def _peak_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _edgeprune(model, shape):
    from edgeprune.api import prune

    return prune(model, shape, criterion="l2", ratio=RATIO, inplace=True).model


def _torch_pruning(model, shape):
    import torch
    import torch_pruning as tp

    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]
    pruner = tp.pruner.MetaPruner(model, torch.zeros(shape), importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=RATIO, ignored_layers=classifier)
    pruner.step()
    return model


def worker(tool: str, spec: str, repeats: int) -> dict:
    """Runs inside the fresh process."""
    import copy
    import logging
    import time

    import torch

    logging.disable(logging.WARNING)
    from edgeprune.models import build

    built = build(spec, pretrained=False)  # random weights: latency does not depend on them
    copies = [copy.deepcopy(built.model) for _ in range(repeats)]
    run = _edgeprune if tool == "edgeprune" else _torch_pruning
    _reset_peak()
    base = _peak_kib()
    times, works, error = [], True, ""
    for model in copies:
        start = time.perf_counter()
        try:
            pruned = run(model, built.input_shape)
        except Exception as exc:  # the peer may fail on a model; that is a result
            return {"seconds": None, "peak_mib": None, "runs": False, "error": f"{type(exc).__name__}: {exc}"[:120]}
        times.append(time.perf_counter() - start)
    peak = (_peak_kib() - base) / 1024
    try:
        with torch.no_grad():
            pruned(torch.randn(built.input_shape))
    except Exception as exc:
        works, error = False, f"{type(exc).__name__}: {exc}"[:120]
    return {"seconds": statistics.median(times), "peak_mib": peak, "runs": works, "error": error}


def measure(tool: str, spec: str, repeats: int) -> dict:
    code = f"import json, sys; sys.path.insert(0, {repr(sys.path[0])}); import prune_speed as b; print(json.dumps(b.worker({tool!r}, {spec!r}, {repeats})))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"seconds": None, "peak_mib": None, "runs": False, "error": proc.stderr.strip().splitlines()[-1][:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    rows = []
    for name, spec in MODELS.items():
        ours, peer = measure("edgeprune", spec, args.repeats), measure("torch-pruning", spec, args.repeats)
        ratio = ours["seconds"] / peer["seconds"] if ours["seconds"] and peer["seconds"] else None
        rows.append({"model": name, "edgeprune": ours, "torch_pruning": peer, "time_ratio": ratio})
    print(f"{'model':<16}{'edgeprune s':>12}{'TP s':>10}{'ratio':>8}{'edgeprune MiB':>15}{'TP MiB':>9}  pruned model runs (edgeprune / TP)")
    for r in rows:
        o, p = r["edgeprune"], r["torch_pruning"]
        fmt = lambda v, spec: format(v, spec) if v is not None else "fail"
        print(f"{r['model']:<16}{fmt(o['seconds'], '12.3f')}{fmt(p['seconds'], '10.3f')}{fmt(r['time_ratio'], '8.2f')}"
              f"{fmt(o['peak_mib'], '15.0f')}{fmt(p['peak_mib'], '9.0f')}  {o['runs']} / {p['runs']} {p['error'] or o['error']}")
    print(json.dumps({"ratio": RATIO, "repeats": args.repeats, "rows": rows}))
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"ratio": RATIO, "repeats": args.repeats, "command": " ".join(sys.argv), "rows": rows}, f, indent=2)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
