"""Fine-tuning, evaluation, DDP under torchrun (CPU, gloo), and the shipped default model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.calibration import load_data, make_loader
from edgeprune.errors import EdgepruneError
from edgeprune.train import FinetuneConfig, evaluate, finetune

ROOT = Path(__file__).resolve().parents[1]


def write_stripes(path: Path, n: int = 256, seed: int = 0) -> str:
    """An easy 2-class set: a bright top half (class 0) or bottom half (class 1), plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.integers(0, 60, (n, 1, 8, 8)).astype(np.uint8)
    for i, label in enumerate(y):
        x[i, 0, 4 * label:4 * label + 4] += 150
    np.savez(path, x=x, y=y)
    return str(path)


def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d((2, 1)), nn.Flatten(), nn.Linear(8, 2))


def stripe_loaders(spec: str, batch_size: int = 32, **options) -> tuple:
    train, val = load_data(spec, split="train", val_fraction=0.25), load_data(spec, split="val", val_fraction=0.25)
    return make_loader(train, batch_size, shuffle=True, **options), make_loader(val, 64, shuffle=False)


@pytest.fixture
def stripes(tmp_path: Path) -> tuple:
    return stripe_loaders(write_stripes(tmp_path / "stripes.npz"), seed=1)


def test_finetune_learns_and_reports_every_epoch(stripes: tuple) -> None:
    train, val = stripes
    torch.manual_seed(0)
    model = tiny_net()
    before = evaluate(model, val)
    saved, ended, ticks = [], [], []
    result = finetune(model, train, val, FinetuneConfig(epochs=4, lr=0.1),
                      checkpoint_fn=lambda m, e: saved.append(e), epoch_end=lambda m, e: ended.append(e),
                      progress=lambda done, total: ticks.append((done, total)))
    assert saved == ended == [1, 2, 3, 4] and ticks[-1] == (4 * len(train), 4 * len(train))
    losses = [r.loss for r in result.history]
    assert losses[-1] < losses[0] and result.final_val_acc >= 0.95 > before
    lrs = [r.lr for r in result.history]
    assert lrs[0] == pytest.approx(0.1) and all(a > b for a, b in zip(lrs, lrs[1:]))  # cosine decay
    assert json.dumps(result.to_dict()) and not model.training


def test_finetune_is_deterministic(tmp_path: Path) -> None:
    spec = write_stripes(tmp_path / "stripes.npz")

    def run() -> dict:
        torch.manual_seed(0)
        model = tiny_net()
        train, _ = stripe_loaders(spec, augment="crop+flip", seed=3)  # a fresh loader: same order, same crops
        finetune(model, train, None, FinetuneConfig(epochs=2, lr=0.05, seed=7))
        return model.state_dict()

    first, second = run(), run()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_epoch_end_hook_can_zero_filters(stripes: tuple) -> None:
    def zero_first_filter(model: nn.Module, epoch: int) -> None:
        with torch.no_grad():
            model[0].weight[0].zero_()

    model = tiny_net()
    finetune(model, stripes[0], stripes[1], FinetuneConfig(epochs=2, lr=0.05), epoch_end=zero_first_filter)
    weight = model[0].weight.detach()
    assert float(weight[0].abs().sum()) == 0.0 and float(weight[1].abs().sum()) > 0


def test_bad_labels_and_unlabelled_data_fail_clearly(tmp_path: Path) -> None:
    np.savez(tmp_path / "many.npz", x=np.zeros((8, 1, 8, 8), np.uint8), y=np.arange(8))
    np.savez(tmp_path / "none.npz", x=np.zeros((8, 1, 8, 8), np.uint8))
    many = make_loader(load_data(str(tmp_path / "many.npz"), split="all"), 4, shuffle=False)
    none = make_loader(load_data(str(tmp_path / "none.npz"), split="all"), 4, shuffle=False)
    with pytest.raises(EdgepruneError, match="label 3 in the data, but the model has only 2 outputs"):
        finetune(tiny_net(), many, None, FinetuneConfig(epochs=1))
    with pytest.raises(EdgepruneError, match="no labels"):
        evaluate(tiny_net(), none)
    with pytest.raises(EdgepruneError, match="epochs must be at least 1"):
        finetune(tiny_net(), many, None, FinetuneConfig(epochs=0))


def test_evaluate_counts_top1() -> None:
    class Oracle(nn.Module):  # predicts class 1 for every image
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([[0.0, 1.0]]).expand(len(x), 2)

    batches = [(torch.zeros(3, 1, 2, 2), torch.tensor([1, 0, 1])), (torch.zeros(1, 1, 2, 2), torch.tensor([1]))]
    assert evaluate(Oracle(), batches) == 0.75


DDP_SCRIPT = textwrap.dedent("""
    import json, os, sys, torch
    from edgeprune.train import FinetuneConfig, finetune
    sys.path.insert(0, {tests!r})
    from test_train import stripe_loaders, tiny_net

    spec, out = sys.argv[1], sys.argv[2]
    rank = int(os.environ["RANK"])
    torch.manual_seed(rank)  # different initial weights: finetune must broadcast rank 0's
    model = tiny_net()
    train, val = stripe_loaders(spec, 16, augment="crop")
    saved = []
    result = finetune(model, train, val, FinetuneConfig(epochs=3, lr=0.1),
                      checkpoint_fn=lambda m, e: saved.append(e))
    torch.save(model.state_dict(), f"{{out}}/rank{{rank}}.pt")
    json.dump({{"losses": [r.loss for r in result.history], "world": result.world_size, "saved": saved,
                "val": result.final_val_acc}}, open(f"{{out}}/rank{{rank}}.json", "w"))
""")


def test_ddp_two_processes_on_cpu(tmp_path: Path) -> None:
    script = tmp_path / "ddp_job.py"
    script.write_text(DDP_SCRIPT.format(tests=str(ROOT / "tests")))
    spec = write_stripes(tmp_path / "stripes.npz", n=512)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), spec, str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    weights = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert [r["world"] for r in reports] == [2, 2] and reports[0]["losses"] == reports[1]["losses"]
    assert reports[0]["losses"][-1] < reports[0]["losses"][0] and reports[0]["val"] >= 0.9
    assert reports[0]["saved"] == [1, 2, 3] and reports[1]["saved"] == []  # only rank 0 checkpoints


def test_default_model_ships_and_is_accurate() -> None:
    from edgeprune.models.default import DEFAULT, build_default, default_record

    assert DEFAULT.weights.stat().st_size < 2 * 2**20
    state = torch.load(DEFAULT.weights, weights_only=True)
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())
    built = build_default()
    record = default_record()
    assert record["model"]["spec"] == built.spec and record["model"]["kwargs"] == built.kwargs
    val = load_data(DEFAULT.data, split=record["data"]["eval_split"], channels=1, size=32,
                    val_fraction=record["data"]["val_fraction"], seed=record["data"]["split_seed"],
                    preprocess=built.preprocess)
    accuracy = evaluate(built.model, make_loader(val, 250, shuffle=False))
    assert accuracy == pytest.approx(record["accuracy"]["val_top1"], abs=1e-3) and accuracy >= 0.97


def test_batchnorm_recalibration_after_a_cut() -> None:
    from edgeprune.api import prune
    from edgeprune.calibration import load_data, make_loader
    from edgeprune.models.default import build_default
    from edgeprune.train import evaluate, recalibrate_batchnorm

    built = build_default()
    cut = prune(built.model, built.input_shape, criterion="l2", flops_cut=0.5).model
    val = make_loader(load_data("mnist5k", split="val", preprocess=built.preprocess), 250, shuffle=False)
    weights = {k: v.clone() for k, v in cut.state_dict().items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    before = evaluate(cut, val)
    assert recalibrate_batchnorm(cut, load_data("mnist5k", split="train", limit=512, preprocess=built.preprocess)) == 19
    after = evaluate(cut, val)
    assert before < 0.2 and after > 0.6  # chance -> about 0.9, with no gradient step
    assert not cut.training and all(m.momentum == 0.1 for m in cut.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert all(torch.equal(v, cut.state_dict()[k]) for k, v in weights.items())


def test_device_choices_resolve_or_fail_in_one_line(monkeypatch) -> None:
    from click.testing import CliRunner

    from edgeprune.cli import main
    from edgeprune.errors import EdgepruneError
    from edgeprune.train import resolve_device

    from conftest import assert_one_line_error

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == "cpu" and resolve_device("auto") == "cpu"
    with pytest.raises(EdgepruneError, match="no CUDA device here"):
        resolve_device("cuda:0")
    with pytest.raises(EdgepruneError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda:0" and resolve_device("cuda:1") == "cuda:1"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("cuda") == "cuda:1"  # each torchrun rank on its own GPU
    with pytest.raises(EdgepruneError, match="has 2 CUDA device"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("WORLD_SIZE")
    for command in (["compress", "-o", "out"], ["finetune", "resnet20-cifar", "--data", "mnist5k", "--epochs", "1",
                                                "-o", "x.pt"], ["sensitivity", "resnet20-cifar"]):
        assert_one_line_error(CliRunner().invoke(main, [*command, "--device", "cuda"]), "no CUDA device here")
