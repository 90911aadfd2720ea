"""Train the shipped default model: ResNet-20 (1 channel, 10 classes) on mnist5k, on the CPU.

Writes ``edgeprune/assets/default_resnet20_mnist5k.pt`` (a plain dict of float32 tensors, loadable
with ``torch.load(..., weights_only=True)``) and ``edgeprune/assets/default.json``.

mnist5k has no test split: accuracy is measured on the held-out validation split (10 % of the
5,000 images, chosen by split seed 0, never trained on).

    PYTHONPATH=. python scripts/train_default.py    # from the repository root; ~2 min on 2 idle cores
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import torch

from edgeprune.calibration import train_val_loaders
from edgeprune.models import build
from edgeprune.models.default import DEFAULT, build_default
from edgeprune.train import FinetuneConfig, evaluate, finetune

VAL_FRACTION = 0.1
SPLIT_SEED = 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT.weights.parent)
    return parser.parse_args(argv)


def train(args: argparse.Namespace) -> tuple[torch.nn.Module, dict]:
    """Train from scratch and return the model and its record for default.json."""
    torch.manual_seed(args.seed)
    built = build(DEFAULT.spec, **DEFAULT.kwargs)
    train_loader, val_loader = train_val_loaders(
        DEFAULT.data, built.input_shape, batch_size=args.batch_size, augment="crop", seed=args.seed,
        val_fraction=VAL_FRACTION, split_seed=SPLIT_SEED, preprocess=DEFAULT.preprocess,
    )
    config = FinetuneConfig(epochs=args.epochs, lr=args.lr, weight_decay=5e-4, seed=args.seed)
    result = finetune(built.model, train_loader, val_loader, config)
    accuracy = evaluate(built.model, val_loader)
    record = {
        "model": {"spec": DEFAULT.spec, "kwargs": DEFAULT.kwargs, "input_shape": list(built.input_shape)},
        "weights": DEFAULT.weights.name,
        "data": {
            "source": DEFAULT.data, "train_split": "train", "eval_split": "val",
            "val_fraction": VAL_FRACTION, "split_seed": SPLIT_SEED,
            "train_images": len(train_loader.dataset), "eval_images": len(val_loader.dataset),
            "note": "mnist5k has no test split; accuracy is on the held-out val split (never trained on)",
        },
        "accuracy": {"val_top1": round(accuracy, 4)},
        "training": {
            "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed,
            "optimizer": "SGD momentum 0.9 nesterov, weight decay 5e-4, cosine schedule per step",
            "augment": "crop", "seconds": round(result.seconds, 1),
            "history": [{"epoch": r.epoch, "loss": round(r.loss, 4), "val_acc": r.val_acc, "seconds": round(r.seconds, 1)}
                        for r in result.history],
        },
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "threads": torch.get_num_threads(), "machine": platform.machine()},
        "command": " ".join(["PYTHONPATH=.", "python", "scripts/train_default.py", *sys.argv[1:]]),
    }
    return built.model, record


def save(model: torch.nn.Module, record: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, out_dir / DEFAULT.weights.name)
    (out_dir / DEFAULT.record.name).write_text(json.dumps(record, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    t0 = time.perf_counter()
    model, record = train(args)
    save(model, record, args.out_dir)
    if args.out_dir.resolve() == DEFAULT.weights.parent.resolve():
        reloaded = build_default().model
        same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))
        print(f"reloaded weights identical: {same}")
    print(f"val top-1 {record['accuracy']['val_top1']:.4f}  training {record['training']['seconds']:.0f} s  "
          f"total {time.perf_counter() - t0:.0f} s  -> {args.out_dir}")


if __name__ == "__main__":
    main()
