"""Checkpoints reload everything: per-module state_dict metadata (versions), and one clear line when they cannot."""
import torch
import pytest
from click.testing import CliRunner
from conftest import assert_one_line_error, randomize_norms

from edgeprune.api import prune
from edgeprune.checkpoint import load_model, save_checkpoint
from edgeprune.cli import main
from edgeprune.models import build

SHAPE = (1, 3, 224, 224)


@pytest.fixture(scope="module")
def mnasnet(tmp_path_factory):
    """torchvision's MNASNet refuses to load a state_dict without its version: pruned 30 %, saved once."""
    torch.manual_seed(0)
    built = build("torchvision:mnasnet0_5?weights=none")
    result = prune(randomize_norms(built.model), built.input_shape, criterion="l2", ratio=0.3)
    # saved as the pretrained model's checkpoint: reloading it reads no hub file (its state_dict replaces them)
    path = save_checkpoint(result.model, tmp_path_factory.mktemp("ckpt") / "mnasnet.pt", spec="torchvision:mnasnet0_5",
                           input_shape=built.input_shape, kwargs=built.kwargs)
    return result, path


def _edit(source, target, change):
    """A copy of the checkpoint at ``source``, with ``change(payload)`` applied, saved at ``target``."""
    payload = torch.load(source, weights_only=True)
    change(payload)
    torch.save(payload, target)
    return target


def _same_outputs(a, b, shape=SHAPE):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return torch.allclose(a.eval()(x), b.eval()(x), rtol=1e-4, atol=1e-5)


def test_pruned_mnasnet_round_trip(mnasnet):
    result, path = mnasnet
    assert result.after.macs < result.before.macs
    loaded = load_model(str(path))
    assert loaded.spec == "torchvision:mnasnet0_5" and loaded.input_shape == SHAPE
    assert _same_outputs(loaded.model, result.model)
    info = CliRunner().invoke(main, ["info", str(path)])
    assert info.exit_code == 0, info.output
    assert "torchvision:mnasnet0_5" in info.stdout


def test_metadata_is_plain_data_that_survives_weights_only(mnasnet):
    result, path = mnasnet
    payload = torch.load(path, weights_only=True)
    saved = payload["state_dict_metadata"]
    expected = result.model.state_dict()._metadata
    assert saved == {k: dict(v) for k, v in expected.items()}
    assert saved[""] == {"version": 2}  # MNASNet's own, the one it checks when loading
    assert all(type(k) is str and type(v) is dict for k, v in saved.items())
    assert all(type(x) in (bool, int, float, str, type(None)) for v in saved.values() for x in v.values())


@pytest.mark.parametrize("name", ["torchvision:mnasnet0_5", "resnet20-cifar"])
def test_checkpoint_written_before_the_metadata_still_loads(tmp_path, mnasnet, name):
    if name == "torchvision:mnasnet0_5":
        result, path = mnasnet
    else:
        built = build(name)
        result = prune(randomize_norms(built.model), built.input_shape, criterion="l2", ratio=0.3)
        path = save_checkpoint(result.model, tmp_path / "r.pt", spec=built.spec, input_shape=built.input_shape)
    old = _edit(path, tmp_path / "old.pt", lambda p: p.pop("state_dict_metadata"))
    loaded = load_model(str(old))
    assert _same_outputs(loaded.model, result.model, loaded.input_shape)


def test_weights_option_reads_a_checkpoints_metadata(mnasnet):
    result, path = mnasnet
    loaded = load_model("torchvision:mnasnet0_5", weights=path)
    assert _same_outputs(loaded.model, result.model)


def _drop_mnasnet_version(payload):
    payload["state_dict_metadata"][""] = {}


def _swap_in_a_number(payload):
    payload["state_dict"]["classifier.1.weight"] = 3


@pytest.mark.parametrize("change, fragments", [
    (_drop_mnasnet_version, ["ValueError: version should be set to 1 or 2 instead of None"]),
    (lambda p: p.update(kwargs={"no_such_argument": 1}), ["cannot rebuild the model in", "TypeError", "no_such_argument"]),
    (lambda p: p.update(state_dict=[1, 2, 3]), ["cannot rebuild the model in"]),
    (lambda p: p.pop("spec"), ["cannot rebuild the model in", "KeyError: 'spec'"]),
    (_swap_in_a_number, ["cannot load", "into MNASNet", "AttributeError"]),
    (lambda p: p.update(spec="resnet20-cifar", kwargs={}), ["does not fit this model"]),
    (lambda p: p.update(spec="nope-net", kwargs={}), ["unknown model 'nope-net'"]),  # an EdgepruneError, as it was
])
def test_mismatching_checkpoint_is_one_clear_line(tmp_path, mnasnet, change, fragments):
    bad = _edit(mnasnet[1], tmp_path / "bad.pt", change)
    result = CliRunner().invoke(main, ["info", str(bad)])
    where = [] if "nope-net" in fragments[0] else [str(bad)]
    assert_one_line_error(result, *where, *fragments)


def test_truncated_checkpoint_is_one_clear_line(tmp_path, mnasnet):
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(mnasnet[1].read_bytes()[:5000])
    assert_one_line_error(CliRunner().invoke(main, ["info", str(bad)]), str(bad), "cannot read")
