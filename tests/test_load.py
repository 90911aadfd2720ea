"""One loader for every MODEL form (``edgeprune.load``, ``edgeprune.models.build``, the CLI), the
top-level entry points, and torchvision names meaning pretrained weights read from the hub cache."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from click.testing import CliRunner

import edgeprune
from conftest import assert_one_line_error
from edgeprune.cli import main
from edgeprune.models import build

HEADS = f"{Path(__file__).resolve().parent / 'models' / 'heads.py'}:heads"
TV = "torchvision:squeezenet1_1"  # small, quick to build


def test_package_root_imports_no_torch():
    code = "import sys, edgeprune; edgeprune.__version__; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty TORCH_HOME on a machine that cannot download: returns the checkpoints folder."""
    def offline(url, *args, **kwargs):
        raise URLError("Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch" / "hub" / "checkpoints"


def _hub_file() -> str:
    import torchvision

    return Path(torchvision.models.SqueezeNet1_1_Weights.DEFAULT.url).name


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_torchvision_name_means_the_pretrained_weights_in_the_hub_cache(hub):
    torch.manual_seed(5)
    trained = build(f"{TV}?weights=none").model  # stands for the real weights: a draw of our own, saved
    hub.mkdir(parents=True)
    torch.save(trained.state_dict(), hub / _hub_file())  # under the name torchvision's weights url gives
    loaded = edgeprune.load(TV)
    assert _same_weights(loaded.model, trained) and loaded.preprocess.source.startswith("torchvision")
    random = edgeprune.load(f"{TV}?weights=none")
    assert not _same_weights(random.model, trained)


def test_torchvision_weights_offline_with_nothing_cached_is_one_line(hub, tmp_path):
    result = CliRunner().invoke(main, ["info", TV])
    assert_one_line_error(result, f"put {_hub_file()}", str(hub), "--weights FILE", f"{TV}?weights=none")
    weights = tmp_path / "w.pt"
    torch.save(build(f"{TV}?weights=none").model.state_dict(), weights)
    given = CliRunner().invoke(main, ["info", TV, "--weights", str(weights)])  # --weights needs no hub file
    assert given.exit_code == 0, given.output
    unknown = CliRunner().invoke(main, ["info", f"{TV}?weights=IMAGENET9K"])
    assert_one_line_error(unknown, "has no weights 'IMAGENET9K'", "IMAGENET1K_V1")


class _Runs:
    """Unpickling this runs os.makedirs(marker): what a full unpickle of a planted hub file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.makedirs, (str(self.marker),)


def test_a_hub_file_holding_objects_is_not_unpickled(hub, tmp_path):
    hub.mkdir(parents=True)
    marker = tmp_path / "ran"
    state = build(f"{TV}?weights=none").model.state_dict()
    torch.save({**state, "features.0.weight": _Runs(marker)}, hub / _hub_file())
    result = CliRunner().invoke(main, ["info", TV])
    assert_one_line_error(result, f"cannot load {hub / _hub_file()} into torchvision squeezenet1_1")
    assert not marker.exists()


def test_one_loader_for_every_model_form(tmp_path, hub):
    pruned = edgeprune.prune("resnet20-cifar", ratio=0.5)
    checkpoint = pruned.save(tmp_path / "p.pt")
    forms = {"resnet20-cifar": (1, 3, 32, 32), f"{TV}?weights=none": (1, 3, 224, 224), HEADS: (1, 3, 16, 16),
             str(checkpoint): (1, 3, 32, 32), None: (1, 1, 32, 32)}
    for form, shape in forms.items():
        loaded = edgeprune.load(form)
        assert loaded.input_shape == shape and isinstance(loaded.model, torch.nn.Module), form
    rebuilt = build(str(checkpoint))  # the registry builds a checkpoint too
    assert sum(p.numel() for p in rebuilt.model.parameters()) == pruned.after.params
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.model(x), pruned.model(x))
    assert edgeprune.load(str(checkpoint)).metadata["pruned"]["macs_after"] == pruned.after.macs


def test_top_level_prune_and_compress_mirror_the_cli(tmp_path):
    result = edgeprune.prune(HEADS, criterion="l1", flops_cut=0.4)
    assert abs(result.summary()["macs_cut"] - 0.4) <= 0.01
    loaded = edgeprune.load(str(result.save(tmp_path / "heads.pt")))
    assert loaded.preprocess.mean == (0.5, 0.5, 0.5)  # the model's own, kept
    report = edgeprune.compress(HEADS, tmp_path / "out", target="x86-avx2", flops_cut=0.4, round_to=1, runs=3,
                                min_time=0.05, max_bench_seconds=0)
    assert abs(report["pruning"]["macs_cut"] - 0.4) <= 0.01 and (tmp_path / "out" / "pruned.onnx").is_file()
    with pytest.raises(edgeprune.EdgepruneError, match="unknown compress option"):
        edgeprune.compress(None, tmp_path / "again", flops_cutt=0.5)
