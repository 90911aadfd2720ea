"""Detectors and segmenters: is the cut reached, what is pinned, what speed comes of it; and what the
torch.export-style graph costs against the torch.fx graph it replaced.

Three parts (``--parts``, all by default), each a table and a section of the JSON:

- ``yolo``: the YOLO-like net of the tests (tests/models/yolo_like.py: C2f with ``chunk``, a
  ``split((self.c, self.c))`` C2f, SPPF, C2PSA attention, an anchor-free head with a frozen DFL;
  width 16, 80 classes; random weights with BatchNorm statistics of random images) at 320x320 and
  640x640, L2-pruned to 30 / 50 / 70 % of MACs at ``round_to`` 8: the cut reached, the fraction of
  channels pinned, and dense p50 / pruned p50 in onnxruntime, ExecuTorch (XNNPACK) and ncnn, each
  file checked against PyTorch, timed by ``edgeprune bench``'s protocol (1 thread, fresh worker
  per model, interleaved rounds).
- ``torchvision``: SSDlite320-MobileNetV3, RetinaNet, FCOS, LRASPP, DeepLabV3-MobileNetV3 and
  FCN-ResNet50 (random weights) wrapped as a user deploying them would (backbone + head, raw
  outputs; anchors, NMS and resizing in the app), L2-pruned to 30 % of MACs: the cut, the pinned
  fraction, the pruned model against the dense model with the removed channels zeroed (largest
  relative difference over the outputs, goal <= 1e-5), and the ONNX export with its check.
- ``graph``: seconds to build the dependency graph of resnet50 and mobilenet_v2 (224x224), this
  code against the torch.fx code of commit ``FX_COMMIT`` (unpacked with ``git archive`` into a
  temporary folder), alternating fresh processes, median of the medians; also the new graph plus
  its shrink check (what ``prune`` builds). Goal: new / old <= 1.2.

    .venv/bin/python benchmarks/detectors.py [--parts yolo torchvision graph] [--json benchmarks/results/detectors.json]

The rows of parts not run are kept from the JSON file, so a part can be measured again alone.

``--train`` instead trains the YOLO-like net (width 16, 10 classes, ``--size`` 256) on the digits
detection set (edgeprune/calibration/digits_detection.py: mnist5k digits on scikit-image photos),
writing the set under ``--data`` (benchmarks/data/digitsdet/{train,val}, reproducible from the
seed, not committed), the weights (EMA, fp16) to ``benchmarks/weights/yolo_like_digits.pt`` (what
``tests/models/yolo_like.py:yolo_like_digits`` loads) and the run to
``benchmarks/results/yolo_like_digits_train.json``. This path imports only torch, NumPy,
scikit-image, mlxtend and Pillow (no ONNX tooling), so it runs on a bare GPU machine:

    python benchmarks/detectors.py --train --device cuda --images 4000 --epochs 60
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeprune.latency.measure import write_json_atomic  # noqa: E402
from edgeprune.paths import replaced_on_success  # noqa: E402

FX_COMMIT = "a421bbc"
CUTS = (0.3, 0.5, 0.7)
ROUND_TO = 8
YOLO = {320: "tests/models/yolo_like.py:yolo_like_320", 640: "tests/models/yolo_like.py:yolo_like_640"}
DIGITS_WEIGHTS = ROOT / "benchmarks" / "weights" / "yolo_like_digits.pt"
DIGITS_DATA = ROOT / "benchmarks" / "data" / "digitsdet"
DIGITS_RUN = ROOT / "benchmarks" / "results" / "yolo_like_digits_train.json"


def pinned_fraction(graph: Any) -> float:
    """Channels of conv/linear layers that no plan may remove, over all such channels."""
    groups = [g for g in graph.groups if g.producers()]
    total = sum(g.n_units for g in groups)
    free = sum(g.n_prunable for g in graph.prunable_groups())
    return 1 - free / total if total else 0.0


# ---- YOLO-like: cut, pinned channels, speed in each runtime --------------------------------

def _exported(runtime: str, model: nn.Module, shape: tuple, path: Path, images: Any) -> str:
    """The file for ``runtime``, checked against PyTorch on ``images`` (inputs like the model's
    own: random normal pixels drive a detector far out of its range)."""
    from edgeprune.export import export_onnx
    from edgeprune.runtimes import export_checked, get_runtime

    if runtime == "onnxruntime":
        return str(export_onnx(model, shape, path.with_suffix(".onnx"), check_inputs=images).path)
    made = get_runtime(runtime)
    return str(export_checked(made, model, shape, Path(str(path) + made.suffix), check_inputs=images)[0].path)


def yolo_rows(runtimes: list[str], runs: int) -> list[dict[str, Any]]:
    from edgeprune.api import prune
    from edgeprune.errors import EdgepruneError
    from edgeprune.models import build
    from edgeprune.profile import BenchConfig, profile_models

    rows = []
    for size, spec in YOLO.items():
        built = build(spec)
        shape = tuple(built.input_shape)
        images = torch.rand((3,) + shape[1:], generator=torch.Generator().manual_seed(2)).numpy()  # as it was settled on
        variants = {"dense": built.model}
        for cut in CUTS:
            start = time.perf_counter()
            result = prune(built.model, shape, criterion="l2", flops_cut=cut, round_to=ROUND_TO)
            variants[f"{cut:.0%}"] = result.model.eval()
            rows.append({"part": "yolo", "input": size, "target_cut": cut, "macs_before": result.before.macs,
                         "macs_after": result.after.macs, "macs_cut": result.plan.macs_cut,
                         "pinned": pinned_fraction(result.graph), "prune_seconds": time.perf_counter() - start,
                         "speedup": {}, "p50_ms": {}})
            print(f"yolo-like {size}: cut {result.plan.macs_cut:.3f} for {cut}, pinned {rows[-1]['pinned']:.3f}", flush=True)
        mine = rows[-len(CUTS):]
        for runtime in runtimes:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    files = {k: _exported(runtime, m, shape, Path(tmp) / f"m{i}", images)
                             for i, (k, m) in enumerate(variants.items())}
                except EdgepruneError as exc:
                    for row in mine:
                        row["speedup"][runtime] = f"error: {exc}"
                    print(f"yolo-like {size} {runtime}: {exc}", flush=True)
                    continue
                profiles = profile_models(list(files.values()), BenchConfig(intra_threads=1, min_runs=runs, min_time=0.5))
            times = {label: p.p50_ms for label, p in zip(files, profiles)}
            for row in mine:
                label = f"{row['target_cut']:.0%}"
                row["p50_ms"][runtime] = {"dense": times["dense"], "pruned": times[label]}
                row["speedup"][runtime] = times["dense"] / times[label]
                print(f"yolo-like {size} {label} {runtime}: {row['speedup'][runtime]:.2f}x", flush=True)
    return rows


# ---- torchvision detectors and segmenters through a raw-output wrapper ---------------------

class RawDetector(nn.Module):
    """backbone + head of a torchvision detector: the head's raw tensors, no anchors, no NMS."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.backbone, self.head, self.names = model.backbone, model.head, names

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = list(self.backbone(x).values())
        out = self.head(features)
        return tuple(out[name] for name in self.names)


class RawSegmenter(nn.Module):
    """A torchvision segmenter's ``out`` map."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def torchvision_models() -> dict[str, Callable[[], nn.Module]]:
    from torchvision.models import detection, segmentation

    free = {"weights": None, "weights_backbone": None}
    return {
        "ssdlite320_mobilenet_v3_large": lambda: RawDetector(detection.ssdlite320_mobilenet_v3_large(**free),
                                                             ("bbox_regression", "cls_logits")),
        "retinanet_resnet50_fpn": lambda: RawDetector(detection.retinanet_resnet50_fpn(**free),
                                                      ("cls_logits", "bbox_regression")),
        "fcos_resnet50_fpn": lambda: RawDetector(detection.fcos_resnet50_fpn(**free),
                                                 ("cls_logits", "bbox_regression", "bbox_ctrness")),
        "lraspp_mobilenet_v3_large": lambda: RawSegmenter(segmentation.lraspp_mobilenet_v3_large(**free)),
        "deeplabv3_mobilenet_v3_large": lambda: RawSegmenter(segmentation.deeplabv3_mobilenet_v3_large(**free)),
        "fcn_resnet50": lambda: RawSegmenter(segmentation.fcn_resnet50(**free)),
    }


def torchvision_rows(size: int) -> list[dict[str, Any]]:
    import copy

    from edgeprune.api import prune
    from edgeprune.errors import EdgepruneError
    from edgeprune.export import export_onnx
    from edgeprune.outputs import flatten
    from edgeprune.surgery import zero_channels
    from edgeprune.train import recalibrate_batchnorm

    shape = (1, 3, size, size)
    rows = []
    for name, make in torchvision_models().items():
        torch.manual_seed(0)
        model = make().eval()
        recalibrate_batchnorm(model, torch.rand((8,) + shape[1:]).numpy())  # outputs that are not all zero
        row: dict[str, Any] = {"part": "torchvision", "model": name, "input": size}
        try:
            start = time.perf_counter()
            result = prune(model, shape, criterion="l2", flops_cut=0.3)
            row.update(macs_before=result.before.macs, macs_after=result.after.macs, macs_cut=result.plan.macs_cut,
                       pinned=pinned_fraction(result.graph), prune_seconds=time.perf_counter() - start,
                       warnings=len(result.warnings))
            reference = zero_channels(copy.deepcopy(model), result.graph, result.plan.keep)
            x = torch.rand((2,) + shape[1:], generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                pairs = zip(flatten(result.model.eval()(x)), flatten(reference.eval()(x)))
                row["zero_masked_rel_diff"] = max(float((a - b).norm() / b.norm()) for a, b in pairs)
            with tempfile.TemporaryDirectory() as tmp:
                exported = export_onnx(result.model, shape, Path(tmp) / "m.onnx")
            row.update(onnx_max_abs_diff=exported.max_abs_diff, onnx_ok=True)
        except EdgepruneError as exc:
            row["error"] = str(exc)
        rows.append(row)
        print(f"{name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                                      if k not in ("part", "model")), flush=True)
    return rows


# ---- graph-building time: this code against the torch.fx code ------------------------------

GRAPH_WORKER = r"""
import json, statistics, sys, time, logging
import torch, torchvision
logging.disable(logging.WARNING)
torch.set_num_threads(1)
from edgeprune.graph import build_graph
try:
    from edgeprune.surgery.check import checked_graph
except ImportError:
    checked_graph = None
out = {}
for name in ("resnet50", "mobilenet_v2"):
    model = torchvision.models.get_model(name).eval()
    build_graph(model, (1, 3, 224, 224))
    for label, build in (("graph", build_graph), ("graph+check", checked_graph)):
        if build is None:
            continue
        times = []
        for _ in range(int(sys.argv[1])):
            start = time.perf_counter()
            build(model, (1, 3, 224, 224))
            times.append(time.perf_counter() - start)
        out[f"{name} {label}"] = statistics.median(times)
import edgeprune
out["package"] = edgeprune.__file__
print(json.dumps(out))
"""


def graph_rows(rounds: int, repeats: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "fx"  # not beside the worker: the script's folder comes first on sys.path
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", FX_COMMIT, "edgeprune"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        worker = Path(tmp) / "worker.py"
        worker.write_text(GRAPH_WORKER)
        found: dict[str, dict[str, list[float]]] = {"fx": {}, "export-style": {}}
        for _ in range(rounds):
            for label, path in (("fx", str(old)), ("export-style", str(ROOT))):
                env = dict(os.environ, PYTHONPATH=path)
                proc = subprocess.run([sys.executable, str(worker), str(repeats)], capture_output=True, text=True,
                                      env=env, cwd=tmp, check=True)
                measured = json.loads(proc.stdout.splitlines()[-1])
                if not measured.pop("package").startswith(path):
                    raise RuntimeError(f"the {label} worker imported edgeprune from elsewhere")
                for key, value in measured.items():
                    found[label].setdefault(key, []).append(value)
    rows = []
    for name in ("resnet50", "mobilenet_v2"):
        old = statistics.median(found["fx"][f"{name} graph"])
        for label in ("graph", "graph+check"):
            new = statistics.median(found["export-style"][f"{name} {label}"])
            rows.append({"part": "graph", "model": name, "what": label, "fx_seconds": old, "new_seconds": new,
                         "ratio": new / old, "rounds": rounds, "repeats": repeats})
            print(f"{name} {label}: fx {old * 1000:.0f} ms, new {new * 1000:.0f} ms, ratio {new / old:.2f}", flush=True)
    return rows


# ---- training the YOLO-like net on the digits detection set ---------------------------------

def _yolo_like_module() -> Any:
    """tests/models/yolo_like.py, loaded by its path as the CLI loads a user's model file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("yolo_like", ROOT / "tests" / "models" / "yolo_like.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_digits_detector(args: argparse.Namespace) -> dict[str, Any]:
    from detector_training import TrainConfig, init_detect_biases, letterbox, summary, train

    from edgeprune.calibration.digits_detection import DigitsDetectionConfig, describe, make_digits_detection

    start = time.perf_counter()
    sets = {split: make_digits_detection(n, split, folder=args.data / split, workers=args.workers)
            for split, n in (("train", args.images), ("val", args.val_images))}
    boxed = {split: letterbox(data, args.train_size) for split, data in sets.items()}
    made = time.perf_counter() - start
    print(f"digits detection set: {args.images} train / {args.val_images} val images in {args.data} ({made:.0f} s)",
          flush=True)
    torch.manual_seed(0)
    model = _yolo_like_module().YoloLike(16, 10, args.train_size)
    init_detect_biases(model.model[-1], args.train_size)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=args.lr, device=args.device)
    described = {split: describe(len(data), split, DigitsDetectionConfig()) for split, data in sets.items()}

    def save(average: nn.Module, history: list[dict[str, Any]]) -> dict[str, Any]:
        half = {k: v.half() if v.is_floating_point() else v for k, v in average.state_dict().items()}
        args.weights.parent.mkdir(parents=True, exist_ok=True)
        with replaced_on_success(args.weights) as tmp:
            torch.save({k: v.cpu() for k, v in half.items()}, tmp)
        run = {**summary(config, history), "model": f"tests/models/yolo_like.py YoloLike(width=16, nc=10, size={args.train_size})",
               "set": described, "weights": str(args.weights), "weights_bytes": args.weights.stat().st_size,
               "stored_as": "float16 (loaded as float32)", "set_seconds": made,
               "total_seconds": time.perf_counter() - start,
               "command": " ".join(["python", "benchmarks/detectors.py", *sys.argv[1:]]), "torch": torch.__version__,
               "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"}
        write_json_atomic(run, str(args.json_train))
        return run

    trained, history = train(model, boxed["train"], boxed["val"], config, log=lambda line: print(line, flush=True),
                             on_epoch=save, seconds=args.time_limit)
    run = save(trained, history)
    print(f"wrote {args.weights} ({run['weights_bytes'] / 1e6:.2f} MB) and {args.json_train} "
          f"({run['total_seconds']:.0f} s)", flush=True)
    return run


# ---- output ---------------------------------------------------------------------------------

def markdown(rows: list[dict[str, Any]]) -> str:
    lines = []
    yolo = [r for r in rows if r["part"] == "yolo"]
    if yolo:
        runtimes = list(dict.fromkeys(k for r in yolo for k in r["speedup"]))
        lines += ["| input | target cut | cut reached | pinned | " + " | ".join(f"speedup {r}" for r in runtimes) + " |",
                  "|---|---|---|---|" + "---|" * len(runtimes)]
        for r in yolo:
            speed = [f"{r['speedup'][k]:.2f}x" if isinstance(r["speedup"].get(k), float) else "-" for k in runtimes]
            lines.append(f"| {r['input']} | {r['target_cut']:.0%} | {r['macs_cut']:.1%} | {r['pinned']:.1%} | "
                         + " | ".join(speed) + " |")
        lines.append("")
    tv = [r for r in rows if r["part"] == "torchvision"]
    if tv:
        lines += ["| model | cut reached | pinned | pruned vs zero-masked (rel.) | ONNX check (max abs) |", "|---|---|---|---|---|"]
        for r in tv:
            if "error" in r:
                lines.append(f"| {r['model']} | - | - | - | {r['error'][:80]} |")
            else:
                lines.append(f"| {r['model']} | {r['macs_cut']:.1%} | {r['pinned']:.1%} | {r['zero_masked_rel_diff']:.1e} | "
                             f"{r['onnx_max_abs_diff']:.1e} |")
        lines.append("")
    graph = [r for r in rows if r["part"] == "graph"]
    if graph:
        lines += ["| model | built | torch.fx (ms) | new (ms) | new / fx |", "|---|---|---|---|---|"]
        for r in graph:
            lines.append(f"| {r['model']} | {r['what']} | {r['fx_seconds'] * 1000:.0f} | {r['new_seconds'] * 1000:.0f} | "
                         f"{r['ratio']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["yolo", "torchvision", "graph"],
                        choices=["yolo", "torchvision", "graph"])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per model and runtime, at least")
    parser.add_argument("--size", type=int, default=320, help="input size of the torchvision models")
    parser.add_argument("--rounds", type=int, default=5, help="graph timing: alternating processes per side")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "detectors.json",
                        help="rows of the parts not run are kept from this file")
    training = parser.add_argument_group("--train: the YOLO-like net on the digits detection set")
    training.add_argument("--train", action="store_true", help="train (and nothing else)")
    training.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    training.add_argument("--images", type=int, default=4000, help="training images")
    training.add_argument("--val-images", type=int, default=500, help="held-out images (recall printed per epoch)")
    training.add_argument("--epochs", type=int, default=60)
    training.add_argument("--batch", type=int, default=64)
    training.add_argument("--lr", type=float, default=2e-3)
    training.add_argument("--train-size", type=int, default=256, help="input side (letterboxed)")
    training.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="processes drawing the set")
    training.add_argument("--data", type=Path, default=DIGITS_DATA, help="where the set is written (SPLIT/ below)")
    training.add_argument("--weights", type=Path, default=DIGITS_WEIGHTS)
    training.add_argument("--json-train", type=Path, default=DIGITS_RUN)
    training.add_argument("--time-limit", type=float, default=None,
                          help="seconds of training at most: stop after the last epoch that fits (saved every epoch)")
    args = parser.parse_args(argv)
    if args.train:
        train_digits_detector(args)
        return
    from edgeprune.runtimes import RUNTIMES

    torch.set_num_threads(1)
    start = time.perf_counter()
    previous = json.loads(args.json.read_text()) if args.json.is_file() else {"rows": [], "runs": []}
    rows: list[dict[str, Any]] = [r for r in previous["rows"] if r["part"] not in args.parts]  # parts not run again
    runs = [r for r in previous.get("runs", []) if not set(r["parts"]) & set(args.parts)]
    if "graph" in args.parts:
        rows += graph_rows(args.rounds, 7)
    if "torchvision" in args.parts:
        rows += torchvision_rows(args.size)
    if "yolo" in args.parts:
        runtimes = ["onnxruntime", *(r.name for r in RUNTIMES.values() if r.missing() is None)]
        rows += yolo_rows(runtimes, args.runs)
    command = " ".join(["python", "benchmarks/detectors.py", *(argv or sys.argv[1:])])
    runs.append({"parts": args.parts, "command": command, "seconds": round(time.perf_counter() - start, 1)})
    payload = {"threads": 1, "round_to": ROUND_TO, "criterion": "l2", "fx_commit": FX_COMMIT, "runs": runs, "rows": rows}
    write_json_atomic(payload, str(args.json))
    table = markdown(rows)
    commands = "\n".join(f"- `{r['command']}` ({r['seconds']} s)" for r in runs)
    args.json.with_suffix(".md").write_text(f"{commands}\n\n{table}\n")
    print("\n" + table)
    print(f"wrote {args.json} ({runs[-1]['seconds']} s)")


if __name__ == "__main__":
    main()
