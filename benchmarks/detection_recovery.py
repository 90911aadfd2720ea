"""Recovery of a pruned detector: distillation alone against distillation plus the detection loss on
box labels (edgeprune.train.objectives.DetectionObjective), on the trained YOLO-like digits net.

The net (tests/models/yolo_like.py:yolo_like_digits, trained by ``benchmarks/detectors.py --train``)
is L2-pruned to ``--cut`` of its MACs (with ``--reconstruct N``, its layers then refitted on N
training images, label-free, as ``edgeprune compress`` does by default), then fine-tuned by
edgeprune's own loop (SGD, cosine; the loop ``compress`` recovers with) on the digits set's train
split, once per objective, from the same pruned weights and seed. Each recovered net is saved as
an edgeprune checkpoint under ``--out``; each row holds the held-out mAP50 and mAP50-95 (COCO's,
edgeprune.metrics.detection: NMS at 0.7, scores from 0.001) and a quick check (recall at IoU 0.5,
score 0.25).

Distillation of the head's raw maps is edgeprune.train.objectives.detector_distillation (class
scores by soft-target BCE, box bins by KL weighted by the teacher's score).

    python benchmarks/detection_recovery.py --cut 0.5 --epochs 10 [30 ...] [--device cuda] [--weight 1.0] [--reconstruct 1024]
"""
from __future__ import annotations

import argparse
import copy
import itertools
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detector_training import Letterboxed, inputs, letterbox, recall  # noqa: E402

from edgeprune.calibration.digits_detection import make_digits_detection  # noqa: E402
from edgeprune.latency.measure import write_json_atomic  # noqa: E402
from edgeprune.metrics.detection import box_map  # noqa: E402
from edgeprune.outputs import describe, flatten  # noqa: E402
from edgeprune.train import DetectionObjective, Distillation, FinetuneConfig, finetune  # noqa: E402
from edgeprune.train.reconstruct import ReconstructConfig, kept_layers, reconstruct  # noqa: E402

SPEC = f"{ROOT / 'tests' / 'models' / 'yolo_like.py'}:yolo_like_digits"


@torch.no_grad()
def quality(model: torch.nn.Module, val: Letterboxed, batch_size: int = 64) -> dict[str, float]:
    """Held-out mAP50, mAP50-95 and the recall check of ``model`` (on the CPU, in eval mode)."""
    model = model.cpu().eval()
    decoded = torch.cat([model(inputs(val.pixels[i:i + batch_size]))[0].float() for i in range(0, len(val), batch_size)])
    labels = [rows[rows[:, 0] >= 0].numpy() for rows in val.targets]
    size = val.pixels.shape[-1]
    return {**box_map(decoded.numpy(), labels, size=(size, size)), **recall(model, val)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cut", type=float, default=0.5, help="fraction of MACs to remove")
    parser.add_argument("--epochs", type=int, nargs="+", default=[10],
                        help="recovery epochs; several: each objective once per value, from the same pruned weights")
    parser.add_argument("--images", type=int, default=2000, help="training images for recovery")
    parser.add_argument("--val-images", type=int, default=500)
    parser.add_argument("--weight", type=float, default=1.0, help="the detection loss's weight beside distillation")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reconstruct", type=int, default=0, metavar="N",
                        help="refit the pruned layers on N training images before recovery (0: no)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "data" / "detection_recovery")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "detection_recovery.json")
    args = parser.parse_args()

    from edgeprune.api import prune
    from edgeprune.checkpoint import save_checkpoint
    from edgeprune.models import build

    start = time.perf_counter()
    built = build(SPEC)
    size = built.input_shape[-1]
    train = letterbox(make_digits_detection(args.images, "train", workers=4), size)
    val = letterbox(make_digits_detection(args.val_images, "val", workers=4), size)
    dense = built.model.eval()
    with torch.no_grad():
        arrays = [t.numpy() for t in flatten(dense(inputs(train.pixels[:64])))]
    outputs = describe(arrays, [f"output{i}" for i in range(len(arrays))], kinds={"output0": "detections"})
    result = prune(dense, built.input_shape, criterion="l2", flops_cut=args.cut)
    pruned = result.model
    rows = {"dense": quality(dense, val), "pruned, not recovered": quality(copy.deepcopy(pruned), val)}
    if args.reconstruct:
        found = reconstruct(pruned, dense, kept_layers(result.graph, result.plan.keep),
                            inputs(train.pixels[:args.reconstruct]), ReconstructConfig(device=args.device, batch_size=32))
        rows["pruned, reconstructed"] = {**quality(copy.deepcopy(pruned), val), "layers": len(found.layers)}
    dataset = TensorDataset(inputs(train.pixels), train.targets)
    objectives = {
        "distillation": lambda: Distillation(dense, outputs),
        f"distillation + detection x{args.weight:g}": lambda: DetectionObjective(Distillation(dense, outputs), args.weight),
    }
    for (name, make), epochs in itertools.product(objectives.items(), args.epochs):
        model = copy.deepcopy(pruned)
        config = FinetuneConfig(epochs=epochs, lr=args.lr, device=args.device, seed=0)
        loader = DataLoader(dataset, batch_size=args.batch, shuffle=True, generator=torch.Generator().manual_seed(0))
        history = finetune(model, loader, None, config, objective=make())
        model = model.cpu().eval()
        row = name if len(args.epochs) == 1 else f"{name}, {epochs} epochs"
        rows[row] = {**quality(model, val), "epochs": epochs, "loss": [r.loss for r in history.history]}
        path = args.out / (name.split()[0] + ("_detection" if "detection" in name else "") + f"_{epochs}.pt")
        save_checkpoint(model, path, spec=SPEC, input_shape=built.input_shape, preprocess=built.preprocess,
                        metadata={"recovery": name, "cut": args.cut, "epochs": epochs,
                                  "reconstruct": args.reconstruct})
        rows[row]["checkpoint"] = str(path)
        print(f"{row}: {rows[row]}", flush=True)
    write_json_atomic({"command": " ".join(["python", *sys.argv]), "seconds": time.perf_counter() - start,
                       "rows": rows, "note": "map50 / map50_95: COCO mAP on val; recall50: a quick check"},
                      str(args.json))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
