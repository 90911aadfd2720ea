"""Does a MACs cut turn into speed on every runtime? onnxruntime, ExecuTorch (XNNPACK) and ncnn side by side.

First each runtime's preferred channel multiple is read from its own probe latency table
(`edgeprune lut align`, 1 thread, x86-avx2 settings). Then, for each model, dense and L2-pruned to
30 / 50 / 70 % of MACs are exported for every runtime installed (ONNX, ``.pte``, ncnn
``.param``/``.bin``), each float file checked against PyTorch: pruned at the targets' alignment
(``round_to`` 8) and at the runtime's preferred one. One runtime's files are timed side by side by
``edgeprune bench``'s protocol (fresh worker per model, warm-up apart, interleaved rounds, 1 thread).
Speedup = dense p50 / pruned p50; fidelity = speedup / (dense MACs / pruned MACs). INT8 (where a
runtime has it: onnxruntime's static QDQ, ExecuTorch's XNNPACKQuantizer) of dense and of the 50 %
cut is timed in the same run, against dense float, calibrated on 64 random images (the models have
random weights: speed is what is compared; the INT8 cosine is against float PyTorch on such images).
Goals per runtime, at its own alignment: no pruned model slower than dense; median fidelity >= 0.9,
lowest >= 0.8.

    .venv/bin/python benchmarks/runtimes.py      # writes benchmarks/results/runtimes.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeprune.latency.measure import write_json_atomic  # noqa: E402

MODELS = {"vgg16-cifar": None, "resnet56-cifar": None, "mobilenetv1-cifar": None, "torchvision:mobilenet_v2": (1, 3, 160, 160)}


TARGET_ALIGNMENT = 8
INT8_CUT = 0.5


def preferred_alignments(runtimes: list[str]) -> dict[str, dict[str, Any]]:
    """Each runtime's preferred multiple, from its probe table (cached like `edgeprune lut align`)."""
    from edgeprune.latency import settings_of
    from edgeprune.latency.alignment import preferred_alignment, probe_table
    from edgeprune.targets import load_target

    target = load_target("x86-avx2")
    found = {r: preferred_alignment(probe_table(settings_of(target, threads=1, runtime=r))).to_dict() for r in runtimes}
    for runtime, a in found.items():
        print(f"{runtime}: prefers multiples of {a['preferred']} (relative throughput per multiple {a['score']})", flush=True)
    return found


@dataclass
class Variant:
    label: str
    model: torch.nn.Module
    macs: int
    round_to: int | None = None  # None: dense
    cut: float | None = None


def variants(name: str, shape: Any, cuts: list[float], alignments: set[int]) -> tuple[list[Variant], tuple, Any]:
    from edgeprune.api import prune
    from edgeprune.counter import count_model
    from edgeprune.models import build
    from edgeprune.train import recalibrate_batchnorm

    built = build(name, pretrained=False)  # random weights: latency does not depend on them
    shape = tuple(shape or built.input_shape)
    images = torch.rand((64,) + shape[1:]).numpy()
    recalibrate_batchnorm(built.model, images[:32])  # outputs that are not all zero
    out = [Variant("dense", built.model.eval(), count_model(built.model, shape).macs)]
    for round_to in sorted(alignments):
        for cut in cuts:
            result = prune(built.model, shape, criterion="l2", flops_cut=cut, round_to=round_to)
            out.append(Variant(f"pruned {cut:.0%} /{round_to}", result.model.eval(), result.after.macs, round_to, cut))
    return out, shape, images


def export_files(runtime: str, chosen: list[Variant], shape: tuple, images: Any, folder: Path) -> dict[str, str]:
    """label -> file for ``runtime`` (float, checked against PyTorch; and INT8 where it has it)."""
    import numpy as np

    from edgeprune.export import export_onnx, quantize_int8
    from edgeprune.runtimes import export_checked, get_runtime

    files = {}
    for i, v in enumerate(chosen):
        if runtime == "onnxruntime":
            files[v.label] = str(export_onnx(v.model, shape, folder / f"v{i}.onnx").path)
        else:
            made = get_runtime(runtime)
            files[v.label] = str(export_checked(made, v.model, shape, folder / f"v{i}{made.suffix}")[0].path)
    if runtime != "onnxruntime" and get_runtime(runtime).int8_missing:
        return files
    for i, v in enumerate(chosen):
        if v.round_to is None or (v.cut == INT8_CUT and v.round_to == TARGET_ALIGNMENT):
            path = folder / f"v{i}_int8"
            if runtime == "onnxruntime":
                quantize_int8(files[v.label], path.with_suffix(".onnx"), images)
                files[v.label + " int8"] = str(path.with_suffix(".onnx"))
            else:
                chosen_runtime = get_runtime(runtime)
                made = chosen_runtime.export(v.model, torch.randn(shape), Path(str(path) + chosen_runtime.suffix),
                                             np.ascontiguousarray(images))
                files[v.label + " int8"] = str(made.path)
    return files


def int8_cosine(runtime: str, variant: Variant, path: str, images: Any) -> float:
    """Cosine of the INT8 file's outputs with float PyTorch's on 16 of the calibration images."""
    import numpy as np

    from edgeprune.runtimes import get_runtime

    if runtime == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        run = lambda x: session.run(None, {session.get_inputs()[0].name: x})[0]  # noqa: E731
    else:
        opened = get_runtime(runtime).open(path, threads=1)
        run = lambda x: opened.run([x])[0]  # noqa: E731
    got, want = [], []
    for image in images[:16]:
        x = np.ascontiguousarray(image[None], dtype=np.float32)
        got.append(np.asarray(run(x)).ravel())
        with torch.no_grad():
            want.append(variant.model(torch.from_numpy(x)).numpy().ravel())
    a, b = np.concatenate(got), np.concatenate(want)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def measure(name: str, shape: Any, cuts: list[float], runtimes: list[str], aligned: dict[str, int],
            runs: int) -> list[dict[str, Any]]:
    from edgeprune.errors import EdgepruneError
    from edgeprune.profile import BenchConfig, profile_models

    models, shape, images = variants(name, shape, cuts, {TARGET_ALIGNMENT, *aligned.values()})
    rows = []
    for runtime in runtimes:
        chosen = [v for v in models if v.round_to in (None, TARGET_ALIGNMENT, aligned[runtime])]
        by_label = {v.label: v for v in chosen}
        with tempfile.TemporaryDirectory() as tmp:
            try:
                files = export_files(runtime, chosen, shape, images, Path(tmp))
            except EdgepruneError as exc:
                rows.append({"model": name, "runtime": runtime, "error": str(exc)})
                print(f"{name} {runtime}: {exc}", flush=True)
                continue
            profiles = profile_models(list(files.values()), BenchConfig(intra_threads=1, min_runs=runs, min_time=0.5))
            times = {label: p.p50_ms for label, p in zip(files, profiles)}
            dense_ms, dense_macs = times["dense"], models[0].macs
            for label, ms in times.items():
                if label == "dense":
                    continue
                v = by_label[label.removesuffix(" int8")]
                row = {"model": name, "runtime": runtime, "variant": label, "round_to": v.round_to, "cut": v.cut,
                       "int8": label.endswith(" int8"), "dense_ms": dense_ms, "p50_ms": ms, "speedup": dense_ms / ms,
                       "macs_ratio": dense_macs / v.macs, "fidelity": dense_ms / ms / (dense_macs / v.macs),
                       "preferred_alignment": v.round_to == aligned[runtime]}
                if row["int8"]:
                    row["int8_cosine"] = int8_cosine(runtime, v, files[label], images)
                rows.append(row)
                print(f"{name} {runtime} {label}: speedup {row['speedup']:.2f}x for {row['macs_ratio']:.2f}x fewer MACs "
                      f"(fidelity {row['fidelity']:.2f})", flush=True)
    return rows


def verdicts(rows: list[dict[str, Any]], alignments: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for runtime in dict.fromkeys(r["runtime"] for r in rows):
        preferred = alignments[runtime]["preferred"]
        for round_to in dict.fromkeys((TARGET_ALIGNMENT, preferred)):
            mine = [r for r in rows if r["runtime"] == runtime and "error" not in r and not r["int8"]
                    and r["round_to"] == round_to]
            if not mine:
                continue
            fidelity = [r["fidelity"] for r in mine]
            slower = [f"{r['model']} {r['variant']}" for r in mine if r["speedup"] < 1]
            ok = not slower and statistics.median(fidelity) >= 0.9 and min(fidelity) >= 0.8
            which = "its own alignment" if round_to == preferred else "the targets' alignment"
            goal = f" -> {'PASS' if ok else 'FAIL'}" if round_to == preferred else ""
            out.append(f"{runtime}, round_to {round_to} ({which}): median fidelity {statistics.median(fidelity):.2f}, "
                       f"lowest {min(fidelity):.2f}, slower than dense: {', '.join(slower) or 'none'}{goal}")
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | runtime | variant | MACs ratio | speedup | fidelity | INT8 cosine |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['runtime']} | - | - | - | - | {r['error'][:70]} |")
        else:
            cosine = f"{r['int8_cosine']:.4f}" if "int8_cosine" in r else "-"
            lines.append(f"| {r['model']} | {r['runtime']} | {r['variant']} | {r['macs_ratio']:.2f}x | "
                         f"{r['speedup']:.2f}x | {r['fidelity']:.2f} | {cosine} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from edgeprune.runtimes import RUNTIMES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--cuts", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "runtimes.json")
    parser.add_argument("--update", action="store_true",
                        help="Re-measure only --models into the existing --json: its other rows and its alignments "
                             "stay (the alignment probe is not re-run, so the rows stay comparable).")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    runtimes = ["onnxruntime", *(r.name for r in RUNTIMES.values() if r.missing() is None)]
    skipped = {r.name: r.missing() for r in RUNTIMES.values() if r.missing()}
    start = time.perf_counter()
    previous = json.loads(args.json.read_text()) if args.update else None
    alignments = previous["alignments"] if previous else preferred_alignments(runtimes)
    aligned = {r: a["preferred"] for r, a in alignments.items()}
    kept = [r for r in previous["rows"] if r["model"] not in args.models] if previous else []
    rows: list[dict[str, Any]] = []
    for name in args.models:
        rows += measure(name, MODELS.get(name), args.cuts, runtimes, aligned, args.runs)
        if not previous:  # nothing lost if a later model fails (an update writes once, at the end)
            write_json_atomic({"rows": rows, "complete": False}, str(args.json))
    order = list(MODELS)
    rows = sorted(kept + rows, key=lambda r: order.index(r["model"]) if r["model"] in order else len(order))
    command = " ".join(["python", "benchmarks/runtimes.py", *(argv or sys.argv[1:])])
    payload = {"command": f"{previous['command']}; then {command}" if previous else command,
               "threads": 1, "target_round_to": TARGET_ALIGNMENT, "alignments": alignments, "criterion": "l2",
               "not_installed": skipped, "int8_missing": {r.name: r.int8_missing for r in RUNTIMES.values()
                                                          if r.int8_missing and r.missing() is None},
               "rows": rows, "complete": True,
               "verdicts": verdicts(rows, alignments),
               "seconds": round(time.perf_counter() - start + (previous["seconds"] if previous else 0.0), 1)}
    write_json_atomic(payload, str(args.json))
    print("\n" + markdown(rows))
    print("\n".join(payload["verdicts"]))
    print(f"wrote {args.json} ({payload['seconds']} s)")


if __name__ == "__main__":
    main()
