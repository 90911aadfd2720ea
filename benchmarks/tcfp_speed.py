"""TCFP's fast default reading against SPEC's full one: the same clusters? and in how long?

For 5 conv layers spread over the depth of the default model (ResNet-20 trained on mnist5k) and of
resnet56-cifar (random weights), each layer's filters are clustered by:

- ``full``: SPEC's reading (activation maximisation, 200 Adam steps at lr 0.05, model resolution);
- ``full, seed 1``: the same from another start and jitter: how far the full reading agrees with itself;
- ``fast``: the default reading (half resolution, at most 30 steps at lr 0.3, stopped once the
  clusters settle);
- ``probe``: each filter's mean activation on 640 calibration images.

Agreement is the adjusted Rand index (ARI) with the ``full`` clusters. Then the time the default
reading (and probe) take to score all of resnet56-cifar with 640 calibration images.

    .venv/bin/python benchmarks/tcfp_speed.py      # about 8 min on 2 cores; writes results/tcfp_speed.json
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeprune.latency.measure import write_json_atomic  # noqa: E402

IMAGES = 640


def setup(name: str):
    from edgeprune.calibration import load_data
    from edgeprune.graph import build_graph
    from edgeprune.models import build
    from edgeprune.models.default import build_default

    built = build_default() if name == "default" else build(name)
    _, channels, *size = built.input_shape
    data = load_data("mnist5k", split="train", channels=channels, size=tuple(size), preprocess=built.preprocess,
                     limit=IMAGES)
    return built, build_graph(built.model, built.input_shape), data.x


def layers(graph) -> list:
    spaces = [s for g in graph.prunable_groups() for s in g.spaces if s.kind == "conv"]
    return [spaces[i] for i in (1, len(spaces) // 4, len(spaces) // 2, 3 * len(spaces) // 4, len(spaces) - 2)]


def clusters(criterion, graph, space, data) -> tuple[Any, float]:
    from edgeprune.criteria.tcfp import cluster_functions

    start = time.perf_counter()
    (function,) = criterion.functions(graph, [space], data).values()
    return cluster_functions(function, **criterion.cluster).numpy(), time.perf_counter() - start


def compare_layers(name: str) -> list[dict[str, Any]]:
    from sklearn.metrics import adjusted_rand_score

    from edgeprune.criteria.tcfp import TCFP

    built, graph, data = setup(name)
    readings = {"full": TCFP(**TCFP.FULL), "full, seed 1": TCFP(**TCFP.FULL, seed=1), "fast": TCFP(),
                "probe": TCFP(function="probe")}
    rows = []
    for space in layers(graph):
        found = {label: clusters(c, graph, space, data) for label, c in readings.items()}
        reference = found["full"][0]
        row = {"model": name, "layer": space.module, "filters": space.size,
               "ari": {label: adjusted_rand_score(reference, labels) for label, (labels, _) in found.items() if label != "full"},
               "seconds": {label: round(s, 2) for label, (_, s) in found.items()},
               "fast_steps": readings["fast"].steps_taken.get(space.module)}
        rows.append(row)
        print(f"{name} {space.module} ({space.size} filters): " + ", ".join(f"{k} {v:.2f}" for k, v in row["ari"].items())
              + f"  (fast: {row['fast_steps']} steps)", flush=True)
    return rows


def time_whole_model(name: str = "resnet56-cifar") -> list[dict[str, Any]]:
    from edgeprune.criteria.tcfp import TCFP

    _, graph, data = setup(name)
    out = []
    for label, criterion in (("fast (default)", TCFP()), ("probe", TCFP(function="probe"))):
        start = time.perf_counter()
        criterion.prepare(graph, data)
        seconds = time.perf_counter() - start
        out.append({"model": name, "reading": label, "images": IMAGES, "seconds": round(seconds, 1)})
        print(f"{name}, {IMAGES} images: tcfp {label} {seconds:.1f} s [{'PASS' if seconds < 60 else 'FAIL'} < 60 s]",
              flush=True)
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | layer | filters | ARI full seed 1 | ARI fast | ARI probe | fast steps |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        a = r["ari"]
        lines.append(f"| {r['model']} | {r['layer']} | {r['filters']} | {a['full, seed 1']:.2f} | {a['fast']:.2f} | "
                     f"{a['probe']:.2f} | {r['fast_steps']} |")
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r["ari"] for r in rows if r["model"] == model]
        lines.append(f"| {model} | median | | " + " | ".join(f"{statistics.median(a[k] for a in mine):.2f}"
                                                         for k in ("full, seed 1", "fast", "probe")) + " | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["default", "resnet56-cifar"])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "tcfp_speed.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    timing = time_whole_model()
    rows = [row for name in args.models for row in compare_layers(name)]
    payload = {"command": " ".join(["python", "benchmarks/tcfp_speed.py", *(argv or sys.argv[1:])]),
               "threads": args.threads, "load_average_at_start": os.getloadavg(), "timing": timing, "layers": rows,
               "seconds": round(time.perf_counter() - start, 1)}
    write_json_atomic(payload, str(args.json))
    print("\n" + markdown(rows))
    print(f"wrote {args.json} ({payload['seconds']} s)")


if __name__ == "__main__":
    main()
