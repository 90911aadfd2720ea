"""Recovery without labels: distillation from the dense model, against fine-tuning on labels.

Part 1, the default model (ResNet-20 trained on mnist5k), pruned by L2 to 50 % and 70 % of its
MACs, BatchNorm re-estimated, then recovered with the same epoch budget four ways: not at all,
cross-entropy on the labels, distillation with the labels hidden, and both. Top-1 and the
fidelity to the dense model on the 500 held-out images (never trained on), over seeds.
Goals: label-free distillation within 0.5 points of top-1 of the labelled fine-tune, and
cross-entropy plus distillation at least as good as cross-entropy alone.

Part 2, a real pretrained multi-output network a package ships: MTCNN's ONet (facenet-pytorch;
box, landmarks and face probability from a 48x48 crop), on real images with no labels: the
200 LFW faces and non-faces of scikit-image and crops of scikit-image's photos. Per-output
fidelity right after the cut, after BatchNorm re-calibration (ONet has none: unchanged) and
after distillation. Goal: every output's cosine similarity above 0.99 at a 50 % MACs cut.

    .venv/bin/pip install --no-deps facenet-pytorch && .venv/bin/pip install scikit-image requests tqdm
    .venv/bin/python benchmarks/distill.py            # writes benchmarks/results/distill.json
"""
from __future__ import annotations

import argparse
import copy
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

from edgeprune.latency.measure import write_json_atomic  # noqa: E402

MODES = {"none": (False, False), "ce": (True, False), "distill": (False, True), "ce+distill": (True, True)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuts", type=float, nargs="+", default=[0.5, 0.7])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3, help="Epoch budget of the default model (compress's default).")
    parser.add_argument("--onet-epochs", type=int, default=20, help="Epoch budget of ONet's distillation.")
    parser.add_argument("--onet-crops", type=int, default=400, help="Crops per scikit-image photo (19 photos).")
    parser.add_argument("--onet-cuts", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--max-grad-norm", type=float, default=5.0, help="Gradient clipping (compress's default); 0: off.")
    parser.add_argument("--parts", nargs="+", default=["default", "onet"], choices=["default", "onet"])
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "distill.json")
    return parser.parse_args(argv)


# --- shared ---------------------------------------------------------------------------------------

def figures(dense_out: list[np.ndarray], model: Any, x: np.ndarray, infos: list, labels: np.ndarray | None,
            label_output: int | None) -> dict[str, Any]:
    from edgeprune.quality import accuracy, compare, summary, torch_outputs

    outputs = torch_outputs(model, x)
    rows = compare(dense_out, outputs, infos)
    found = {**summary(rows), "outputs": {r["output"]: r for r in rows}}
    if labels is not None and label_output is not None:
        found["top1"] = accuracy(outputs, label_output, labels)
    return found


def recover(dense: Any, shape: tuple[int, ...], train: Any, calib: Any, cut: float, epochs: int, seed: int,
            args: argparse.Namespace, mode: str, infos: list, label_output: int | None, evaluate) -> tuple[Any, dict]:
    """compress's own recipe (one-shot L2, BatchNorm re-estimated) with one way of recovering."""
    from dataclasses import replace

    from edgeprune.recipes import RecipeConfig, RecipeData, run_recipe
    from edgeprune.train import DistillConfig

    labels, distill = MODES[mode]
    config = RecipeConfig("l2", flops_cut=cut, round_to=8, epochs=epochs if mode != "none" else 0, lr=args.lr, seed=seed,
                          recalibrate_bn=True, distill=DistillConfig() if distill else None,
                          max_grad_norm=args.max_grad_norm or None)
    data = RecipeData(train if labels else replace(train, y=None), calib=calib, teacher=dense if distill else None,
                      outputs=infos, label_output=label_output if labels else None)
    torch.manual_seed(seed)
    start = time.perf_counter()
    result = run_recipe(copy.deepcopy(dense), shape, config, data, evaluate=evaluate)
    return result, {"seconds": round(time.perf_counter() - start, 1), "macs_cut": result.macs_cut}


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


# --- part 1: the default model ------------------------------------------------------------------

def run_default(args: argparse.Namespace) -> dict[str, Any]:
    from edgeprune.calibration import load_data, sample
    from edgeprune.models.default import DEFAULT, build_default
    from edgeprune.outputs import describe
    from edgeprune.quality import torch_outputs

    built = build_default()
    dense, shape = built.model.eval(), built.input_shape
    train = load_data(DEFAULT.data, split="train", preprocess=built.preprocess)
    held_out = load_data(DEFAULT.data, split="val", preprocess=built.preprocess)
    infos = describe(torch_outputs(dense, train.x[:256]), ["output"], label_output=0)
    dense_out = torch_outputs(dense, held_out.x)
    rows = []
    for cut in args.cuts:
        for seed in args.seeds:
            calib = sample(train, 640, seed=seed)
            for mode in MODES:
                measure = lambda m: figures(dense_out, m, held_out.x, infos, held_out.y, 0)  # noqa: E731
                result, info = recover(dense, shape, train, calib, cut, args.epochs, seed, args, mode, infos, 0,
                                       measure)
                row = {"cut": cut, "seed": seed, "mode": mode, **info, "after_cut": _brief(result.after_cut),
                       "after": _brief(measure(result.model))}
                rows.append(row)
                print(f"default  cut {cut:.0%} seed {seed} {mode:<11} top-1 {row['after']['top1']:.2%} "
                      f"(after the cut {row['after_cut']['top1']:.2%}), cosine {row['after']['cosine_min']:.4f}, "
                      f"{info['seconds']} s", flush=True)
    return {"model": "default (resnet20-cifar on mnist5k)", "epochs": args.epochs, "lr": args.lr,
            "max_grad_norm": args.max_grad_norm,
            "held_out": {"source": DEFAULT.data, "split": "val", "images": len(held_out)},
            "rows": rows, "summary": _summarise_default(rows, args)}


def _brief(found: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in found.items() if k != "outputs"}


def _summarise_default(rows: list[dict], args: argparse.Namespace) -> list[dict]:
    out = []
    for cut in args.cuts:
        stats = {mode: mean_sd([r["after"]["top1"] for r in rows if r["cut"] == cut and r["mode"] == mode])
                 for mode in MODES}
        cosine = {mode: statistics.mean(r["after"]["cosine_min"] for r in rows if r["cut"] == cut and r["mode"] == mode)
                  for mode in MODES}
        out.append({"cut": cut, "top1": {m: {"mean": s[0], "sd": s[1]} for m, s in stats.items()}, "cosine": cosine,
                    "goal_label_free_within_half_a_point": stats["distill"][0] >= stats["ce"][0] - 0.005,
                    "goal_ce_plus_distill_at_least_ce": stats["ce+distill"][0] >= stats["ce"][0]})
    return out


# --- part 2: ONet on real images ----------------------------------------------------------------

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "cat", "camera", "page", "text", "moon", "coins", "horse",
          "hubble_deep_field", "immunohistochemistry", "retina", "colorwheel", "logo", "brick", "grass", "gravel"]


def onet_images(crops_per_photo: int, seed: int = 0) -> np.ndarray:
    """uint8 48x48 RGB: LFW's 200 faces and non-faces, then random square crops of each photo."""
    import skimage.data as data
    import torch.nn.functional as F

    def to48(image: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        return F.interpolate(t, size=(48, 48), mode="bilinear", antialias=True).round().clamp(0, 255)[0].numpy()

    faces = [np.repeat(to48(face[None] * 255.0), 3, axis=0) for face in data.lfw_subset()]
    rng = np.random.default_rng(seed)
    crops = []
    for name in PHOTOS:
        photo = np.asarray(getattr(data, name)())
        photo = np.repeat(photo[..., None], 3, axis=2) if photo.ndim == 2 else photo[..., :3]
        photo = photo if photo.dtype == np.uint8 else (photo / photo.max() * 255).astype(np.uint8)
        height, width = photo.shape[:2]
        for _ in range(crops_per_photo):
            side = int(rng.integers(24, min(height, width) // 2 + 25))
            top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
            crops.append(to48(photo[top:top + side, left:left + side].transpose(2, 0, 1)))
    return np.stack(faces + crops).astype(np.uint8)


def onet_factory():
    from facenet_pytorch.models.mtcnn import ONet

    model = ONet(pretrained=True).eval()
    model.input_shape = (1, 3, 48, 48)
    model.preprocess = {"mean": [127.5], "std": [128.0], "pixel_range": "0-255"}  # MTCNN's (x - 127.5) / 128
    return model


def run_onet(args: argparse.Namespace) -> dict[str, Any]:
    from edgeprune.calibration import Preprocess, load_data, sample
    from edgeprune.outputs import describe, output_names
    from edgeprune.quality import torch_outputs

    dense = onet_factory()
    preprocess = Preprocess(**dense.preprocess, source="MTCNN")
    names = output_names(dense, torch.zeros(1, 3, 48, 48))
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "onet_images.npz")
        np.savez(path, x=onet_images(args.onet_crops))
        common = dict(channels=3, size=48, preprocess=preprocess)
        train, held_out = load_data(path, split="train", **common), load_data(path, split="val", **common)
    infos = describe(torch_outputs(dense, train.x[:256]), names)
    dense_out = torch_outputs(dense, held_out.x)
    measure = lambda m: figures(dense_out, m, held_out.x, infos, None, None)  # noqa: E731
    rows = []
    for cut in args.onet_cuts:
        for seed in args.seeds:
            calib = sample(train, 640, seed=seed)
            raw, _ = recover(dense, (1, 3, 48, 48), train, calib, cut, 0, seed, args, "none", infos, None, None)
            stages = {"after_cut": measure(raw.model)}
            result, info = recover(dense, (1, 3, 48, 48), train, calib, cut, args.onet_epochs, seed, args, "distill",
                                   infos, None, measure)
            stages.update(after_bn_recalibration=result.after_cut, after_distillation=measure(result.model))
            rows.append({"cut": cut, "seed": seed, **info, **stages})
            print(f"onet     cut {cut:.0%} seed {seed}: cosine per output " + "; ".join(
                f"{stage} " + ", ".join(f"{o} {r['cosine']:.4f}" for o, r in found["outputs"].items())
                for stage, found in stages.items()) + f" ({info['seconds']} s)", flush=True)
    return {"model": "facenet-pytorch MTCNN ONet (pretrained)", "outputs": [i.to_dict() for i in infos],
            "images": {"train": len(train), "held_out": len(held_out), "crops_per_photo": args.onet_crops},
            "epochs": args.onet_epochs, "lr": args.lr, "rows": rows}


# --- report -------------------------------------------------------------------------------------

def markdown(results: dict[str, Any]) -> str:
    lines = []
    if "default" in results:
        part = results["default"]
        lines += [f"Default model, {part['epochs']} epochs at lr {part['lr']}, top-1 on {part['held_out']['images']} "
                  "held-out images (mean ± sd over seeds); cosine: mean over seeds", "",
                  "| cut | no fine-tuning | cross-entropy (labels) | distillation (no labels) | cross-entropy + distillation |",
                  "|---|---|---|---|---|"]
        for s in part["summary"]:
            cells = [f"{100 * s['top1'][m]['mean']:.2f} ± {100 * s['top1'][m]['sd']:.2f} (cos {s['cosine'][m]:.4f})"
                     for m in MODES]
            lines.append(f"| {s['cut']:.0%} | " + " | ".join(cells) + " |")
        lines.append("")
    if "onet" in results:
        part = results["onet"]
        outputs = [o["name"] for o in part["outputs"]]
        lines += [f"ONet, {part['images']['train']} training and {part['images']['held_out']} held-out real images, "
                  f"{part['epochs']} epochs of distillation; cosine per output (mean over seeds, lowest in brackets)", "",
                  "| cut | stage | " + " | ".join(f"{o} ({k['kind']})" for o, k in zip(outputs, part["outputs"])) + " |",
                  "|---|---|" + "---|" * len(outputs)]
        for cut in sorted({r["cut"] for r in part["rows"]}):
            rows = [r for r in part["rows"] if r["cut"] == cut]
            for stage in ("after_cut", "after_bn_recalibration", "after_distillation"):
                cells = []
                for o in outputs:
                    values = [r[stage]["outputs"][o]["cosine"] for r in rows]
                    cells.append(f"{statistics.mean(values):.4f} ({min(values):.4f})")
                lines.append(f"| {cut:.0%} | {stage.replace('_', ' ')} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    start = time.perf_counter()
    results: dict[str, Any] = {"command": " ".join(["python", "benchmarks/distill.py", *(argv or sys.argv[1:])]),
                               "torch": torch.__version__, "cpus": os.cpu_count()}
    if "default" in args.parts:
        results["default"] = run_default(args)
    if "onet" in args.parts:
        results["onet"] = run_onet(args)
    results["seconds"] = round(time.perf_counter() - start, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(results, str(args.json))
    print("\n" + markdown(results))
    print(f"wrote {args.json} ({results['seconds']} s)")


if __name__ == "__main__":
    main()
