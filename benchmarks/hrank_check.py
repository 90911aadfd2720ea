"""Is HRank below random a defect of edgeprune's HRank or a property of the model? (issue 10)

HRank's published procedure (github.com/lmbxmu/HRank, rank_generation.py): the rank of each
channel's map after the conv's ReLU (after the add for a residual block's last conv), by
``torch.matrix_rank``, averaged over 5 x 128 training images; keep the highest ranks, layer by
layer. This script checks edgeprune's reading of it three ways, all measured right after the cut
with BatchNorm re-estimated and no fine-tuning:

1. the default model (ResNet-20 on mnist5k), per layer: how HRank's order relates to L2's
   (Spearman), and how many ties the averaged ranks have;
2. the default model pruned by HRank, by HRank's order reversed, by L2 and at random, at 50 % and
   70 % MACs cut, and with only the blocks' inner layers cut 60 % (one resolution per group, the
   paper's own setting): if the reversed order wins, the ranks point the wrong way on this model;
3. the same on a network trained on natural images (MTCNN's ONet, if facenet-pytorch is
   installed; its real images as in benchmarks/distill.py): mean cosine over its outputs.

    .venv/bin/python benchmarks/hrank_check.py      # writes benchmarks/results/hrank_check.json
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeprune.latency.measure import write_json_atomic  # noqa: E402
sys.path.insert(0, str(ROOT / "benchmarks"))


def reversed_criterion(name: str) -> Any:
    """``name``'s scores with the sign flipped: prunes what it would keep."""
    from edgeprune.criteria import create_criterion
    from edgeprune.criteria.base import Criterion

    class Reversed(Criterion):
        needs_data = True

        def __init__(self) -> None:
            self.inner = create_criterion(name)
            self.name = f"-{name}"

        def prepare(self, graph, data=None) -> None:
            self.inner.prepare(graph, data)

        def __call__(self, graph, group) -> torch.Tensor:
            return -self.inner(graph, group)

    return Reversed()


CRITERIA = {"l2": lambda: "l2", "hrank": lambda: "hrank", "hrank reversed": lambda: reversed_criterion("hrank"),
            "random": lambda: "random"}


def default_model(seeds: list[int]) -> dict[str, Any]:
    from edgeprune.api import prune
    from edgeprune.calibration import load_data, make_loader, sample
    from edgeprune.criteria import create_criterion
    from edgeprune.graph import build_graph
    from edgeprune.models.default import build_default
    from edgeprune.train import evaluate, recalibrate_batchnorm

    built = build_default()
    train = load_data("mnist5k", split="train", preprocess=built.preprocess)
    val = make_loader(load_data("mnist5k", split="val", preprocess=built.preprocess), 250, shuffle=False)
    calib = sample(train, 640, seed=0)
    graph = build_graph(built.model, built.input_shape)
    hrank, l2 = create_criterion("hrank"), create_criterion("l2")
    hrank.prepare(graph, calib.x)
    layers = []
    for group in graph.prunable_groups():
        ranks, norms = hrank(graph, group).numpy(), l2(graph, group).numpy()
        spearman = float(np.corrcoef(np.argsort(np.argsort(ranks)), np.argsort(np.argsort(norms)))[0, 1])
        layers.append({"group": group.name, "units": group.n_units, "spearman_hrank_l2": round(spearman, 3),
                       "ties": int(len(ranks) - len(np.unique(np.round(ranks, 6))))})
    inner = {g.spaces[0].module: 0.6 for g in graph.prunable_groups()[1:]}
    settings = {"50% MACs": dict(flops_cut=0.5, round_to=8), "70% MACs": dict(flops_cut=0.7, round_to=8),
                "inner layers 60%": dict(ratio=0.0, layer_ratios=inner)}
    cuts = {}
    for setting, target in settings.items():
        cuts[setting] = {}
        for name, make in CRITERIA.items():
            top1 = []
            for seed in seeds if name == "random" else seeds[:1]:
                torch.manual_seed(seed)
                result = prune(built.model, built.input_shape, criterion=make(), data=calib.x, **target)
                recalibrate_batchnorm(result.model, calib.x)
                top1.append(evaluate(result.model, val))
            cuts[setting][name] = float(np.mean(top1))
        print(f"default model, {setting}: " + ", ".join(f"{k} {v:.1%}" for k, v in cuts[setting].items()), flush=True)
    return {"layers": layers, "top1_after_cut": cuts}


def onet(seeds: list[int]) -> dict[str, Any] | None:
    try:
        from distill import onet_factory, onet_images
    except ImportError:
        return None
    try:
        dense = onet_factory()
    except ImportError as exc:
        print(f"ONet skipped: {exc}")
        return None
    from edgeprune.api import prune
    from edgeprune.calibration import Preprocess, load_data, sample
    from edgeprune.outputs import describe, output_names
    from edgeprune.quality import compare, torch_outputs

    preprocess = Preprocess(**dense.preprocess)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "images.npz")
        np.savez(path, x=onet_images(100))
        train = load_data(path, split="train", channels=3, size=48, preprocess=preprocess)
        val = load_data(path, split="val", channels=3, size=48, preprocess=preprocess)
    infos = describe(torch_outputs(dense, train.x[:256]), output_names(dense, torch.zeros(1, 3, 48, 48)))
    reference, calib = torch_outputs(dense, val.x), sample(train, 640, seed=0)
    cuts = {}
    for cut in (0.3, 0.5):
        cuts[f"{cut:.0%} MACs"] = {}
        for name, make in CRITERIA.items():
            cosine = []
            for seed in seeds if name == "random" else seeds[:1]:
                torch.manual_seed(seed)
                result = prune(dense, (1, 3, 48, 48), criterion=make(), flops_cut=cut, round_to=8, data=calib.x)
                rows = compare(reference, torch_outputs(result.model, val.x), infos)
                cosine.append(np.mean([r["cosine"] for r in rows]))
            cuts[f"{cut:.0%} MACs"][name] = float(np.mean(cosine))
        print(f"ONet, {cut:.0%} MACs: " + ", ".join(f"{k} {v:.3f}" for k, v in cuts[f'{cut:.0%} MACs'].items()),
              flush=True)
    return {"mean_cosine_after_cut": cuts, "images": {"train": len(train), "held_out": len(val)}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Seeds of the random criterion.")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "hrank_check.json")
    args = parser.parse_args(argv)
    results = {"default": default_model(args.seeds), "onet": onet(args.seeds)}
    for layer in results["default"]["layers"]:
        print(f"  {layer['group']:<28} units {layer['units']:3d}  Spearman(HRank, L2) {layer['spearman_hrank_l2']:+.2f}"
              f"  ties {layer['ties']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(results, str(args.json))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
