"""INT8 of a detector with its decode in float, against all of it quantised: scores and speed.

The YOLO-like net of the tests at 320x320 (``tests/models/yolo_like.py:yolo_like_320``: 80
classes, random weights) with its BatchNorm statistics estimated on the data (as a trained net's
are), the data being mnist5k digits as 320x320 RGB. Three ONNX files:

- ``float``: the float export;
- ``int8``: ``quantize_int8`` as it is now, the decode of the ``detections`` output (concat, DFL,
  sigmoid, anchor arithmetic) left in float;
- ``int8-all``: ``quantize_int8(float_decode=False)``, every op quantised as before the fix
  (calibrated without the judgement, which refuses it).

Each INT8 file against float on held-out digits (``quality.compare``: boxes and scores apart),
then the three timed by ``edgeprune bench`` (fresh worker per model, interleaved rounds, 1
thread): INT8 / float p50 with and without the float decode. On a loaded machine the times are
indicative only: rerun it on a quiet one.

    .venv/bin/python benchmarks/int8_decode.py [--calib 64] [--held-out 32] [--runs 30]
        # writes benchmarks/results/int8_decode.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from edgeprune.latency.measure import write_json_atomic  # noqa: E402

SIZE = 320


def fidelity(float_path: Path, int8_path: Path, images: Any) -> dict[str, Any]:
    """Each output part of the INT8 file against float (cosine; box IoU and class agreement)."""
    from edgeprune.outputs import describe
    from edgeprune.export.runtime import onnx_outputs
    from edgeprune.quality import compare

    dense, quantised = onnx_outputs(float_path, images), onnx_outputs(int8_path, images)
    rows = compare(dense, quantised, describe(dense, [f"output{i}" for i in range(len(dense))]))
    return {row["output"]: {k: row[k] for k in ("cosine", "box_iou", "top1_agreement") if k in row} for row in rows}


def bench(paths: list[Path], runs: int) -> dict[str, float]:
    """p50 ms of each file by ``edgeprune bench`` (1 thread), in a subprocess as a user runs it."""
    command = [sys.executable, "-m", "edgeprune", "bench", *map(str, paths), "--threads", "1", "--runs", str(runs),
               "--json"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return {Path(row["path"]).stem: row["p50_ms"] for row in json.loads(done.stdout)["profiles"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib", type=int, default=64, help="calibration images (and BatchNorm statistics)")
    parser.add_argument("--held-out", type=int, default=32, help="images the INT8 files are compared on")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/int8_decode.json"))
    args = parser.parse_args()

    from edgeprune.calibration import load_data
    from edgeprune.export import export_onnx, quantize_int8
    from models.yolo_like import norms_from, yolo_like_320

    train = load_data("mnist5k", split="train", channels=3, size=(SIZE, SIZE), limit=args.calib).x
    held_out = load_data("mnist5k", split="val", channels=3, size=(SIZE, SIZE), limit=args.held_out).x
    model = norms_from(yolo_like_320(), torch.from_numpy(train))
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        fp32 = export_onnx(model, (1, 3, SIZE, SIZE), folder / "float.onnx", check_inputs=train[:2]).path
        kept = quantize_int8(fp32, folder / "int8.onnx", train)
        quantised_all = quantize_int8(fp32, folder / "int8-all.onnx", iter([train]), float_decode=False)
        files = {"float": fp32, "int8": kept.path, "int8-all": quantised_all.path}
        result = {
            "model": f"tests/models/yolo_like.py:yolo_like_320, BatchNorm statistics of {args.calib} mnist5k digits",
            "calibration_images": args.calib, "held_out_images": args.held_out,
            "float_nodes": {"int8": kept.float_nodes, "int8-all": quantised_all.float_nodes},
            "quantize_nodes": {"int8": kept.quantize_nodes, "int8-all": quantised_all.quantize_nodes},
            "fidelity": {name: fidelity(fp32, files[name], held_out) for name in ("int8", "int8-all")},
        }
        times = bench(list(files.values()), args.runs)
    result["p50_ms"] = times
    result["int8_over_float"] = {name: times[name] / times["float"] for name in ("int8", "int8-all")}
    write_json_atomic(result, args.json)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
