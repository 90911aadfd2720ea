"""The README's own-model command, run several times: does the promise reach the same verdict each time?

    python benchmarks/face_promise.py [--runs 3] [--target x86-avx512]

Writes the face crops once (``benchmarks/data/onet_crops``: LFW's 200 faces and non-faces, then 400
random square crops of each of scikit-image's 19 photos, 48 x 48, as ``benchmarks/distill.py``
makes them; 7,800 PNGs), then runs, one after the other, each in a fresh process::

    edgeprune compress benchmarks/distill.py:onet_factory --calib images:benchmarks/data/onet_crops \\
        --speedup 2 --min-cosine 0.99 --runtime all --criterion thinet --allocate sensitivity -t TARGET -o OUT

(MTCNN's ONet with the weights the facenet-pytorch wheel ships, as the README's ``my_nets.py:onet``).
For each run: the exit code, the verdict (delivered or refused), the last line, the seconds, and the
promise of a delivered run or the refusal's points (``OUT.curve.json``). Results:
``benchmarks/results/face_promise.json`` (written after every run).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeprune.latency.measure import write_json_atomic  # noqa: E402

MODEL = "benchmarks/distill.py:onet_factory"
ASK = ["--speedup", "2", "--min-cosine", "0.99", "--runtime", "all", "--criterion", "thinet", "--allocate", "sensitivity"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--target", default="x86-avx512")
    parser.add_argument("--crops", type=Path, default=ROOT / "benchmarks" / "data" / "onet_crops")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "data" / "face_promise")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "face_promise.json")
    parser.add_argument("--note", default="", help="What else ran on the machine (recorded in the results).")
    return parser.parse_args(argv)


def write_crops(folder: Path) -> None:
    """The 7,800 crops as PNGs, written to a temporary folder and renamed when complete."""
    if folder.is_dir():
        return
    from PIL import Image

    from distill import onet_images

    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(onet_images(400)):
        Image.fromarray(image.transpose(1, 2, 0)).save(partial / f"{i:05d}.png")
    partial.rename(folder)


def summary(out: Path, rc: int, lines: list[str]) -> dict[str, Any]:
    """What one run delivered (its promise) or refused (its points)."""
    found: dict[str, Any] = {"rc": rc, "verdict": "delivered" if rc == 0 else "refused", "last_line": lines[-1] if lines else ""}
    report = out / "report.json"
    if rc == 0 and report.is_file():
        found["promise"] = json.loads(report.read_text()).get("promise")
    curve = out.with_name(out.name + ".curve.json")
    if rc != 0 and curve.is_file():
        points = json.loads(curve.read_text()).get("curve", [])
        found["points"] = [{k: p.get(k) for k in ("plan", "macs_cut", "speedup", "ci_low", "ci_high", "rounds",
                                                   "speed_verdict", "cosine_min", "meets")} for p in points]
    found["trials"] = [line for line in lines if line.startswith("[edgeprune] trial")]
    return found


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    write_crops(args.crops)
    results: dict[str, Any] = {"command": " ".join(["edgeprune", "compress", MODEL, "--calib", f"images:{args.crops}",
                                                    *ASK, "-t", args.target, "-o", "OUT"]),
                               "note": args.note, "runs": []}
    args.out.mkdir(parents=True, exist_ok=True)
    for i in range(args.runs):
        out = args.out / f"run{i + 1}"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "edgeprune", "compress", MODEL, "--calib", f"images:{args.crops}",
                               *ASK, "-t", args.target, "-o", str(out)], cwd=ROOT, capture_output=True, text=True)
        lines = (done.stdout + done.stderr).strip().splitlines()
        (args.out / f"run{i + 1}.log").write_text(done.stdout + done.stderr)
        results["runs"].append({**summary(out, done.returncode, lines), "seconds": round(time.perf_counter() - start, 1)})
        print(f"run {i + 1}: {results['runs'][-1]['verdict']} in {results['runs'][-1]['seconds']} s: "
              f"{results['runs'][-1]['last_line']}", flush=True)
        write_json_atomic(results, str(args.json))
    verdicts = {r["verdict"] for r in results["runs"]}
    print(f"verdicts: {', '.join(r['verdict'] for r in results['runs'])} ({'the same' if len(verdicts) == 1 else 'differ'})")


if __name__ == "__main__":
    main()
