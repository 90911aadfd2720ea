"""Does a MACs cut become a latency cut? Measured onnxruntime speedup vs MACs ratio, per model.

For each model, a dense ONNX and its pruned variants (``--cuts`` MACs cuts, L2 criterion, with the
target's channel alignment ``round_to`` and without it) are exported with ``export_onnx`` and
timed with ``edgeprune.profile``: for each thread count the dense model, a copy of it (a noise
control whose speedup should read 1.00) and all the variants go into ONE ``profile_models`` call,
so each runs in its own fresh torch-free process and they are timed in interleaved rounds.

    speedup  = dense p50 / pruned p50          (same profile call)
    MACs ratio = dense MACs / pruned MACs      (thop convention: conv + linear)
    fidelity = speedup / MACs ratio            (1.0: latency falls exactly as MACs do)

Weights are random (seed 0): latency does not depend on weight values, and the per-layer widths
that a --flops-cut plan picks depend only on the MACs target and the alignment.

    .venv/bin/python benchmarks/latency.py --quick                    # smoke test, ~1 min
    .venv/bin/python benchmarks/latency.py [--runs 30 --min-time 1]   # the full table
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

MODELS = ["vgg16-cifar", "resnet56-cifar", "mobilenetv1-cifar", "torchvision:resnet18", "torchvision:mobilenet_v2"]
CUTS = [0.3, 0.5, 0.7]
GOAL_MODEL, GOAL_CUT, GOAL_FIDELITY = "vgg16-cifar", 0.7, 0.9
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latency.json"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _slug(spec: str) -> str:
    return spec.replace("torchvision:", "tv-").replace(":", "-").replace("/", "-")


def _channels(result, step: int) -> dict:
    """Kept output channels over all conv/linear layers, and how many widths that were multiples
    of ``step`` before pruning still are."""
    rows = result.layers()
    before = sum(r["out_before"] for r in rows)
    after = sum(r["out_after"] for r in rows)
    was = [r for r in rows if r["out_before"] % step == 0]
    still = sum(1 for r in was if r["out_after"] % step == 0)
    return {"out_channels_before": before, "out_channels_after": after, "kept_fraction": after / before,
            "step": step, "layers_multiple_before": len(was), "layers_multiple_after": still,
            "widths_after": [r["out_after"] for r in rows]}


def _note(ch: dict) -> str:
    return (f"kept {ch['out_channels_after']}/{ch['out_channels_before']} ch ({ch['kept_fraction']:.0%}), "
            f"{ch['layers_multiple_after']}/{ch['layers_multiple_before']} layers %{ch['step']}")


def prepare(spec: str, cuts: list[float], round_to: int, opset: int, folder: Path) -> dict:
    """Build, prune and export one model's dense model, control copy and variants."""
    import torch

    from edgeprune.api import prune
    from edgeprune.counter import count_model
    from edgeprune.errors import EdgepruneError
    from edgeprune.export import export_onnx
    from edgeprune.models import build

    torch.manual_seed(0)
    built = build(spec, pretrained=False)  # random weights: latency does not depend on them
    shape = tuple(built.input_shape)
    slug = _slug(spec)
    start = time.perf_counter()
    dense_path = folder / f"{slug}-dense.onnx"
    dense_export = export_onnx(built.model, shape, dense_path, opset=opset)
    control_path = folder / f"{slug}-dense-control.onnx"
    shutil.copyfile(dense_path, control_path)
    dense = count_model(built.model, shape)
    entry = {"model": spec, "input_shape": list(shape), "dense_macs": dense.macs, "dense_params": dense.params,
             "dense_onnx": {"file": dense_path.name, "size_bytes": dense_export.size_bytes,
                            "nodes": dense_export.nodes_after, "exporter": dense_export.exporter,
                            "opset": dense_export.opset},
             "variants": [], "errors": []}
    for cut in cuts:
        for aligned in (True, False):
            k = round_to if aligned else 1
            label = f"{slug}-cut{round(cut * 100)}-{'r' + str(k) if aligned else 'r1'}"
            try:
                result = prune(built.model, shape, criterion="l2", flops_cut=cut, round_to=k)
                path = folder / f"{label}.onnx"
                exported = export_onnx(result.model, shape, path, opset=opset)
            except EdgepruneError as exc:  # e.g. a cut the alignment cannot reach: a result, not a crash
                entry["errors"].append({"cut": cut, "aligned": aligned, "round_to": k, "error": str(exc)})
                _say(f"  {label}: skipped ({exc})")
                continue
            entry["variants"].append({
                "cut": cut, "aligned": aligned, "round_to": k, "macs": result.after.macs,
                "params": result.after.params, "macs_cut_achieved": result.plan.macs_cut,
                "macs_ratio": dense.macs / result.after.macs, "channels": _channels(result, round_to),
                "onnx": {"file": path.name, "size_bytes": exported.size_bytes, "nodes": exported.nodes_after},
                "latency": {},
            })
    entry["prepare_seconds"] = round(time.perf_counter() - start, 1)
    return entry


def measure(entry: dict, folder: Path, target, threads: list[int], runs: int, min_time: float, warmup: int | None) -> None:
    """One interleaved profile call per thread count: dense, control copy and all variants."""
    from edgeprune.profile import BenchConfig, profile_models

    names = [entry["dense_onnx"]["file"], entry["dense_onnx"]["file"].replace("-dense.onnx", "-dense-control.onnx")]
    paths = [str(folder / name) for name in names + [v["onnx"]["file"] for v in entry["variants"]]]
    entry["dense_latency"], entry["control"] = {}, {}
    for t in threads:
        config = BenchConfig.from_target(target, intra_threads=t, min_runs=runs, min_time=min_time, warmup=warmup)
        start = time.perf_counter()
        profiles = profile_models(paths, config)
        seconds = time.perf_counter() - start
        dense, control, rest = profiles[0], profiles[1], profiles[2:]
        key = f"{t}t"
        entry["dense_latency"][key] = {"p50_ms": dense.p50_ms, "p90_ms": dense.p90_ms, "runs": dense.runs,
                                       "profile_seconds": round(seconds, 1)}
        entry["control"][key] = {"p50_ms": control.p50_ms, "p90_ms": control.p90_ms, "runs": control.runs,
                                 "speedup": dense.p50_ms / control.p50_ms}
        for variant, p in zip(entry["variants"], rest):
            speedup = dense.p50_ms / p.p50_ms
            variant["latency"][key] = {"p50_ms": p.p50_ms, "p90_ms": p.p90_ms, "runs": p.runs, "speedup": speedup,
                                       "fidelity": speedup / variant["macs_ratio"]}
        entry.setdefault("settings", {})[key] = {
            "intra_threads": config.intra_threads, "inter_threads": config.inter_threads,
            "graph_optimization": config.graph_optimization, "memory_arena": config.memory_arena,
            "warmup": config.warmup, "min_runs": config.min_runs, "min_time": config.min_time,
            "onnxruntime_version": dense.settings.onnxruntime_version, "provider": dense.settings.provider,
            "execution_mode": dense.settings.execution_mode}
        _say(f"  {t} thread(s): dense p50 {dense.p50_ms:.3f} ms, control {dense.p50_ms / control.p50_ms:.2f}x, "
             f"{len(paths)} models in {seconds:.0f} s")


def _cell(variant: dict, key: str, field: str, spec: str) -> str:
    value = variant["latency"].get(key, {}).get(field)
    return "-" if value is None else format(value, spec)


def table(entries: list[dict], threads: list[int]) -> str:
    header = ["model", "cut", "aligned", "MACs ratio"]
    for t in threads:
        header += [f"speedup@{t}t", f"fidelity@{t}t"]
    header.append("kept channels note")
    rows = []
    for e in entries:
        for v in e["variants"]:
            row = [e["model"], f"{v['cut']:.0%}", f"r{v['round_to']}" if v["aligned"] else "no (r1)", f"{v['macs_ratio']:.2f}x"]
            for t in threads:
                row += [_cell(v, f"{t}t", "speedup", ".2f") + "x", _cell(v, f"{t}t", "fidelity", ".2f")]
            row.append(_note(v["channels"]))
            rows.append(row)
        for err in e["errors"]:
            rows.append([e["model"], f"{err['cut']:.0%}", f"r{err['round_to']}" if err["aligned"] else "no (r1)",
                         "-", *(["-"] * (2 * len(threads))), "not pruned: " + err["error"][:60]])
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i in (0, 2, len(header) - 1) else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in [header] + rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    lines.append("")
    for e in entries:
        dense = ", ".join(f"{k} {v['p50_ms']:.3f} ms (p90 {v['p90_ms']:.3f})" for k, v in e.get("dense_latency", {}).items())
        control = ", ".join(f"{k} {v['speedup']:.2f}x" for k, v in e.get("control", {}).items())
        lines.append(f"{e['model']} {'x'.join(map(str, e['input_shape']))}: {e['dense_macs'] / 1e6:.1f} M MACs dense; "
                     f"dense p50 {dense}; noise control (dense copy) speedup {control}")
    return "\n".join(lines)


def goals(entries: list[dict], threads: list[int]) -> list[dict]:
    """fidelity >= 0.9 for vgg16-cifar at a 70 % cut; no pruned model slower than dense."""
    found = []
    entry = next((e for e in entries if e["model"] == GOAL_MODEL), None)
    variants = [v for v in (entry["variants"] if entry else []) if abs(v["cut"] - GOAL_CUT) < 1e-9]
    for v in sorted(variants, key=lambda v: not v["aligned"]):
        for t in threads:
            f = v["latency"][f"{t}t"]["fidelity"]
            found.append({"goal": f"fidelity >= {GOAL_FIDELITY} for {GOAL_MODEL} at {GOAL_CUT:.0%} "
                                  f"({'aligned r' + str(v['round_to']) if v['aligned'] else 'unaligned'}, {t} thread(s))",
                          "value": f"{f:.2f}", "pass": f >= GOAL_FIDELITY})
    if not variants:
        found.append({"goal": f"fidelity >= {GOAL_FIDELITY} for {GOAL_MODEL} at {GOAL_CUT:.0%}",
                      "value": "not measured in this run", "pass": None})
    for aligned in (True, False):  # the goal is about the target's settings, i.e. its alignment
        mine = [(e, v) for e in entries for v in e["variants"] if v["aligned"] == aligned]
        slower = [f"{e['model']} {v['cut']:.0%} r{v['round_to']} @{k}: {lat['speedup']:.2f}x"
                  for e, v in mine for k, lat in v["latency"].items() if lat["speedup"] < 1.0]
        count = sum(len(v["latency"]) for _, v in mine)
        label = "under the target's alignment" if aligned else "unaligned (round_to 1; not the target's setting, for contrast)"
        found.append({"goal": f"no pruned model slower than dense {label} (speedup >= 1, {count} measurements)",
                      "value": "; ".join(slower) or "all >= 1", "pass": not slower if aligned else None, "info": not aligned})
    return found


def machine() -> dict:
    import onnxruntime
    import torch

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {"platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(), "cpus_usable": affinity,
            "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def write_json(doc: dict, path: Path) -> None:
    """Temp file beside ``path``, then a rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def document(args, target, host: dict, entries: list[dict], results: list[dict] | None, total: float) -> dict:
    """The JSON results; ``complete`` is false while models are still to come (``goals`` then null)."""
    return {"benchmark": "edgeprune latency fidelity", "complete": results is not None,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": host,
            "settings": {"models": args.models, "cuts": args.cuts, "threads": args.threads, "runs": args.runs,
                         "min_time": args.min_time, "warmup": args.warmup, "quick": args.quick, "criterion": "l2",
                         "target": target.name, "round_to": target.round_to, "opset": target.opset,
                         "weights": "random (torch.manual_seed(0)); latency does not depend on weight values"},
            "results": entries, "goals": results, "total_seconds": round(total, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS, help="model specs (default: %(default)s)")
    parser.add_argument("--cuts", nargs="+", type=float, default=CUTS, help="MACs cuts, fractions (default: %(default)s)")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="onnxruntime intra-op threads (default: 1 2)")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per model at least (default: %(default)s)")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of timed runs per model at least (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs per model (default: the profiler's)")
    parser.add_argument("--target", default="arm", help="target whose round_to, opset and session settings are used (default: arm)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default: benchmarks/results/latency.json)")
    parser.add_argument("--workdir", type=Path, help="keep the ONNX files here (default: a temporary folder, deleted)")
    parser.add_argument("--quick", action="store_true", help="smoke test: first model, 50 %% cut only, few runs")
    args = parser.parse_args()
    if args.quick:
        args.models, args.cuts = args.models[:1], [0.5]
        args.runs, args.min_time = min(args.runs, 5), min(args.min_time, 0.2)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from edgeprune.targets import load_target

    target = load_target(args.target)
    started = time.perf_counter()
    host = machine()
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="edgeprune-latency-"))
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    try:
        for spec in args.models:
            _say(f"{spec}: pruning and exporting ({len(args.cuts)} cuts x aligned r{target.round_to} / r1)")
            entry = prepare(spec, args.cuts, target.round_to, target.opset, folder)
            _say(f"  exported {1 + len(entry['variants'])} models in {entry['prepare_seconds']:.0f} s")
            measure(entry, folder, target, args.threads, args.runs, args.min_time, args.warmup)
            entries.append(entry)
            write_json(document(args, target, host, entries, None, time.perf_counter() - started), args.out)
    finally:
        if args.workdir is None:
            shutil.rmtree(folder, ignore_errors=True)
    total = time.perf_counter() - started

    print(table(entries, args.threads))
    print("\nweights are random (seed 0): latency does not depend on weight values. speedup = dense p50 / pruned p50 "
          "(interleaved in one profile call), MACs ratio = dense / pruned MACs, fidelity = speedup / MACs ratio.")
    print(f"target {target.name}: round_to {target.round_to}, opset {target.opset}, graph optimisation "
          f"{target.graph_optimization}; runs >= {args.runs}, min time {args.min_time} s per model; "
          f"onnxruntime {host['onnxruntime']}, {host['cpu_count']} CPUs, load average at start "
          f"{', '.join(f'{x:.2f}' for x in host['load_average'] or [])}")
    results = goals(entries, args.threads)
    print()
    for g in results:
        status = "INFO" if g.get("info") else "SKIP" if g["pass"] is None else "PASS" if g["pass"] else "FAIL"
        print(f"{status}: {g['goal']}: {g['value']}")
    host["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    doc = document(args, target, host, entries, results, total)
    write_json(doc, args.out)
    print(f"\nwrote {args.out} ({total:.0f} s in all)")


if __name__ == "__main__":
    main()
