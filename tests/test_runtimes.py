"""Runtimes beside onnxruntime (edgeprune.runtimes): each file matches PyTorch, ships, and is benchmarked
like the ONNX files; a runtime that is missing is one line."""
from __future__ import annotations

import copy
import importlib.util
import json

import pytest
import torch
from click.testing import CliRunner

from conftest import assert_one_line_error
from edgeprune.api import prune
from edgeprune.checkpoint import load_model
from edgeprune.cli import main
from edgeprune.errors import EdgepruneError
from edgeprune.models import build
from edgeprune.runtimes import RUNTIMES, check_runtime, get_runtime, read_sidecar
from edgeprune.runtimes import base as runtime_base
from edgeprune.train import recalibrate_batchnorm
from models.faces import faces
from models.heads import Heads
from test_profile import assert_one_line_error as assert_one_line_process_error
from test_profile import run_cli, torch_blocker

INSTALLED = [name for name, runtime in RUNTIMES.items() if runtime.missing() is None]
pytestmark = pytest.mark.skipif(not INSTALLED, reason="no runtime beside onnxruntime is installed")


def _trained_like(model: torch.nn.Module, shape: tuple[int, ...]) -> torch.nn.Module:
    """Random weights with BatchNorm statistics of real-looking inputs, so that outputs are not all zero."""
    recalibrate_batchnorm(model, torch.rand((64,) + tuple(shape[1:])).numpy())
    return model.eval()


CASES = {
    "vgg16-cifar": lambda: (build("vgg16-cifar").model, (1, 3, 32, 32)),
    "mobilenetv1-cifar": lambda: (build("mobilenetv1-cifar").model, (1, 3, 32, 32)),
    "heads (3 outputs)": lambda: (Heads(), Heads.input_shape),
    "faces (ONet-shaped, 3 outputs)": lambda: (faces(), (1, 3, 24, 24)),
}


@pytest.mark.parametrize("runtime", INSTALLED)
@pytest.mark.parametrize("case", list(CASES))
def test_runtime_file_matches_pytorch(runtime, case, tmp_path):
    model, shape = CASES[case]()
    model = _trained_like(model, shape)
    target = get_runtime(runtime)
    exported = target.export(model, torch.randn(shape), tmp_path / f"m{target.suffix}")
    assert all(p.is_file() and p.stat().st_size > 0 for p in exported.files)
    assert not list(tmp_path.glob("*.tmp"))
    diff = check_runtime(model, exported)
    assert diff.ok and diff.max_abs < 1e-2
    sidecar = read_sidecar(exported.path)
    assert sidecar["runtime"] == runtime and sidecar["inputs"]["input"] == list(shape)
    assert len(sidecar["outputs"]) == (3 if "3 outputs" in case else 1)


@pytest.mark.skipif("executorch" not in INSTALLED, reason="executorch is not installed")
@pytest.mark.skipif(importlib.util.find_spec("facenet_pytorch") is None, reason="facenet-pytorch is not installed")
def test_executorch_takes_the_pretrained_onet(tmp_path):
    from facenet_pytorch.models.mtcnn import ONet

    model = ONet(pretrained=True).eval()
    exported = get_runtime("executorch").export(model, torch.randn(1, 3, 48, 48), tmp_path / "onet.pte")
    assert check_runtime(model, exported).max_abs < 1e-4


class _Shortcuts(torch.nn.Module):
    """Option-A shortcut layers in the forms pruning leaves them: a plain zero pad, a selection
    that reorders channels and drops one, and one in order that skips a channel (both written as
    a one-hot 1x1 convolution for ncnn; a channel pad would pass the skipped channel)."""

    def __init__(self) -> None:
        super().__init__()
        from edgeprune.layers import ChannelSelect, SpatialSubsample

        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.pad = torch.nn.Sequential(SpatialSubsample(2), ChannelSelect.zero_pad(6, 1, 3))
        self.pick = ChannelSelect(torch.tensor([4, -1, 0, 1, -1, 2, 3]))
        self.gap = ChannelSelect(torch.tensor([-1, 0, 1, 3, 4, 5, -1]))

    def forward(self, x):
        y = self.conv(x)
        return self.pad(y), self.pick(y), self.gap(y)


OPTION_A = {  # the default model dense ships in ncnn in test_compress (--runtime all)
    "default model pruned": lambda: prune(load_model(None).model, (1, 1, 32, 32), ratio=0.4).model,
    # dense option-A shortcuts at CIFAR's shape: resnet20 has the same two stage changes as resnet56 (which took
    # three times as long to export and compare, for no other layer kind)
    "resnet20-cifar": lambda: _trained_like(build("resnet20-cifar").model, (1, 3, 32, 32)),
    "shortcut layers": lambda: _Shortcuts().eval(),
}


@pytest.mark.skipif("ncnn" not in INSTALLED, reason="ncnn is not installed")
@pytest.mark.parametrize("case", list(OPTION_A))
def test_ncnn_runs_option_a_shortcuts(case, tmp_path):
    from edgeprune.layers import ChannelSelect

    model = OPTION_A[case]()
    shape = (1, 1 if case.startswith("default") else 3, 32, 33 if case == "shortcut layers" else 32)  # odd: ::2 rounds up
    selects = [m.index.clone() for m in model.modules() if isinstance(m, ChannelSelect)]
    exported = get_runtime("ncnn").export(model, torch.randn(shape), tmp_path / "m.ncnn.param")
    assert check_runtime(model, exported, atol=1e-5, rtol=1e-4).ok
    param = exported.path.read_text()
    assert "Padding" in param and "Tensor.slice" not in param and "torch.index_select" not in param
    after = [m.index for m in model.modules() if isinstance(m, ChannelSelect)]
    assert len(after) == len(selects) and all(torch.equal(a, b) for a, b in zip(after, selects))  # a copy was changed


@pytest.mark.parametrize("index", [[-1, 0, 1, 2, 3, -1], [0, 1, 3], [-1, 0, 2, 3], [3, -1, 0, 1], [0, 1, 2, 3]])
def test_ncnn_channel_selection_computes_the_selection(index):
    """Output i is input ``index[i]`` (zeros for -1), whichever layer stands in: a pad for the
    whole input in order, a one-hot convolution otherwise (in order with a gap included)."""
    from edgeprune.runtimes._ncnn_layers import ChannelPad, channel_select

    x = torch.randn(2, 4, 3, 3)
    want = torch.stack([x[:, i] if i >= 0 else torch.zeros_like(x[:, 0]) for i in index], dim=1)
    layer = channel_select(index, 4)
    assert isinstance(layer, ChannelPad) == (sorted(i for i in index if i >= 0) == [0, 1, 2, 3])
    with torch.no_grad():
        assert torch.equal(layer(x), want)


@pytest.mark.skipif("ncnn" not in INSTALLED, reason="ncnn is not installed")
def test_a_runtime_file_records_what_it_was_checked_on(tmp_path):
    """Like the ONNX check's ``checked_on``: the model's own inputs when given, else noise."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    exported = get_runtime("ncnn").export(model, torch.randn(1, 3, 8, 8), tmp_path / "m.ncnn.param")
    check_runtime(model, exported, inputs=torch.rand(5, 3, 8, 8).numpy())
    assert exported.checked_on == "5 images"
    check_runtime(model, exported)
    assert exported.checked_on == "noise"


@pytest.mark.skipif("ncnn" not in INSTALLED, reason="ncnn is not installed")
def test_ncnn_refuses_what_it_cannot_run_in_one_line(tmp_path):
    class Strided(torch.nn.Module):  # a user's own strided slice: ncnn has no layer for it
        def forward(self, x):
            return x[:, :, ::2, ::2] * 2

    with pytest.raises(EdgepruneError, match="ncnn cannot run this model: .*Tensor.slice"):
        get_runtime("ncnn").export(Strided(), torch.randn(1, 3, 8, 8), tmp_path / "m.ncnn.param")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_missing_runtime_is_one_line_and_exit_2(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(runtime_base.importlib.util, "find_spec", lambda name, *a: None if name == "ncnn" else real(name, *a))
    result = CliRunner().invoke(main, ["export", "-o", str(tmp_path / "m.onnx"), "--runtime", "ncnn"])
    assert_one_line_error(result, "runtime 'ncnn' is not installed (ncnn): pip install ncnn pnnx")
    assert not list(tmp_path.iterdir())
    unknown = CliRunner().invoke(main, ["export", "-o", str(tmp_path / "m.onnx"), "--runtime", "tflite"])
    assert_one_line_error(unknown, "unknown runtime 'tflite'")


def test_export_ships_runtime_files_and_bench_runs_them_without_torch(tmp_path):
    out = tmp_path / "m.onnx"
    model = _trained_like(build("vgg16-cifar").model, (1, 3, 32, 32))
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    exported = CliRunner().invoke(main, ["export", "vgg16-cifar", "--weights", str(weights), "-o", str(out),
                                         "--runtime", "all", "--json"])
    assert exported.exit_code == 0, exported.output
    summary = json.loads(exported.stdout)
    assert set(summary["runtimes"]) == set(INSTALLED)
    files = [str(out.with_suffix(get_runtime(name).suffix)) for name in INSTALLED]
    torch_free = [f for f, name in zip(files, INSTALLED) if not get_runtime(name).imports_torch]
    blocker, marker = torch_blocker(tmp_path)
    if torch_free:
        result = run_cli("bench", str(out), *torch_free, "--runs", "3", "--min-time", "0", "--max-bench-seconds", "0", "--threads", "1",
                         pythonpath=str(blocker))
        assert result.returncode == 0, result.stderr
        assert not marker.exists(), f"torch was imported by: {marker.read_text()}"
        assert all(f in result.stdout for f in torch_free)
    result = run_cli("bench", *files, "--runs", "3", "--min-time", "0", "--max-bench-seconds", "0", "--json")
    assert result.returncode == 0, result.stderr
    profiles = json.loads(result.stdout)["profiles"]
    assert [p["settings"]["provider"] for p in profiles] == INSTALLED and all(p["p50_ms"] > 0 for p in profiles)
    wrong = run_cli("bench", files[0], "--input-shape", "1x3x64x64")
    assert_one_line_process_error(wrong, "made for input shape 1x3x32x32")



# --- latency tables, plans and bench per runtime ------------------------------------------------

HEADS = "tests/models/heads.py:heads"


@pytest.mark.skipif("ncnn" not in INSTALLED, reason="ncnn is not installed")
@pytest.mark.parametrize("layer", [
    {"kernel": [3, 3], "stride": [1, 1], "padding": [1, 1, 1, 1], "dilation": [1, 1], "in_hw": [9, 9], "depthwise": False},
    {"kernel": [3, 1], "stride": [2, 1], "padding": [1, 0, 1, 0], "dilation": [1, 1], "in_hw": [9, 7], "depthwise": False},
    {"kernel": [3, 3], "stride": [1, 1], "padding": [2, 2, 2, 2], "dilation": [2, 2], "in_hw": [8, 8], "depthwise": True},
])
def test_ncnn_table_convolution_is_the_convolution_torch_computes(layer, tmp_path):
    import numpy as np

    from edgeprune.runtimes.ncnn_pnnx import _NcnnSession, conv_files

    cin, cout = (6, 6) if layer["depthwise"] else (5, 7)
    param, weights = conv_files(layer, cin, cout)
    (tmp_path / "c.ncnn.param").write_text(param)
    (tmp_path / "c.ncnn.bin").write_bytes(weights)
    conv = torch.nn.Conv2d(cin, cout, tuple(layer["kernel"]), tuple(layer["stride"]), tuple(layer["padding"][:2]),
                           tuple(layer["dilation"]), groups=cin if layer["depthwise"] else 1)
    n = conv.weight.numel()
    conv.weight.data = torch.from_numpy(np.frombuffer(weights[4:4 + 4 * n], "<f4").reshape(conv.weight.shape).copy())
    conv.bias.data = torch.from_numpy(np.frombuffer(weights[4 + 4 * n:], "<f4").copy())
    x = torch.randn(1, cin, *layer["in_hw"])
    (got,) = _NcnnSession(tmp_path / "c.ncnn.param", 1, 1).run([x.numpy()])
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), conv(x), atol=1e-4, rtol=1e-4)


@pytest.mark.skipif("executorch" not in INSTALLED, reason="executorch is not installed")
def test_executorch_times_table_convolutions_in_one_program():
    layer = {"kernel": [3, 3], "stride": [1, 1], "padding": [1, 1, 1, 1], "dilation": [1, 1], "in_hw": [8, 8],
             "depthwise": False}
    times = get_runtime("executorch").conv_times(layer, [(4, 4), (8, 8)], threads=1, runs=3, min_time=0)
    assert len(times) == 2 and all(t > 0 for t in times)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "lut"


@pytest.mark.skipif("ncnn" not in INSTALLED, reason="ncnn is not installed")
def test_lut_build_keeps_a_table_per_runtime(cache):
    args = ["lut", "build", HEADS, "--target", "x86-avx2", "--runtime", "onnxruntime", "--runtime", "ncnn", "--json"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    tables = {t["runtime"]: t for t in json.loads(first.stdout)["tables"]}
    assert set(tables) == {"onnxruntime", "ncnn"} and all(t["points_measured"] > 0 for t in tables.values())
    ncnn = json.loads(open(tables["ncnn"]["table"]).read())
    assert ncnn["settings"]["runtime"] == "ncnn" and "-ncnn-" in tables["ncnn"]["table"]
    assert all(ms > 0 for row in ncnn["entries"].values() for ms in row.values())
    assert tables["ncnn"]["table"] != tables["onnxruntime"]["table"]
    again = json.loads(CliRunner().invoke(main, args).stdout)["tables"]
    assert [t["points_measured"] for t in again] == [0, 0]  # cached per runtime
    refused = CliRunner().invoke(main, ["lut", "build", HEADS, "--runtime", "ncnn", "--spec-only", "s.json"])
    assert_one_line_error(refused, "a board measures onnxruntime tables only")


@pytest.mark.skipif("ncnn" not in INSTALLED, reason="ncnn is not installed")
def test_compress_plans_a_speedup_for_the_targets_runtime_with_its_alignment(cache, tmp_path):
    board = json.loads(open("edgeprune/targets/x86-avx2.json").read())
    board.update(name="ncnn-box", runtime="ncnn", round_to_by_runtime={"ncnn": 4})
    target = tmp_path / "ncnn-box.json"
    target.write_text(json.dumps(board))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["compress", HEADS, "--target", str(target), "--speedup", "1.2",
                                       "--finetune-epochs", "0", "--no-reconstruct", "--no-int8", "--runs", "5",
                                       "--min-time", "0.1", "--max-bench-seconds", "0", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    plan, ncnn = report["pruning"]["plan"], report["runtimes"]["ncnn"]
    assert plan["runtime"] == "ncnn" and report["pruning"]["round_to"] == 4
    final = plan["final"]  # ncnn's times, and ncnn's speedup judged against the 1.2x asked
    assert (final["dense_ms"], final["pruned_ms"]) == (ncnn["dense_p50_ms"], ncnn["pruned_p50_ms"])
    assert (final["speedup"], final["ci_low"], final["ci_high"], final["rounds"]) == pytest.approx(
        (ncnn["speedup"], ncnn["ci_low"], ncnn["ci_high"], ncnn["rounds"]), rel=1e-3)
    assert final["speed_verdict"] in {"met", "missed", "undecided"}
    assert plan["table"].endswith(".json") and "-ncnn-" in plan["table"]
    assert (out / "pruned.ncnn.param").is_file() and "in ncnn" in (out / "report.md").read_text()
    assert "latency budget" in result.stdout and "in ncnn" in result.stdout


@pytest.mark.skipif("ncnn" not in INSTALLED, reason="ncnn is not installed")
def test_bench_runtime_times_the_files_beside_the_onnx_without_torch(tmp_path):
    out = tmp_path / "m.onnx"
    exported = CliRunner().invoke(main, ["export", HEADS, "-o", str(out), "--runtime", "ncnn"])
    assert exported.exit_code == 0, exported.output
    blocker, marker = torch_blocker(tmp_path)
    result = run_cli("bench", str(out), str(out), "--runtime", "onnxruntime", "--runtime", "ncnn", "--runs", "3",
                     "--min-time", "0", "--max-bench-seconds", "0", "--threads", "1", "--json", pythonpath=str(blocker))
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), f"torch was imported by: {marker.read_text()}"
    providers = [p["settings"]["provider"] for p in json.loads(result.stdout)["profiles"]]
    assert providers[:2] == ["CPUExecutionProvider"] * 2 and providers[2:] == ["ncnn", "ncnn"]
    missing = run_cli("bench", str(out), "--runtime", "executorch") if "executorch" in INSTALLED else None
    if missing is not None:
        assert_one_line_process_error(missing, "no executorch file")


@pytest.mark.skipif("executorch" not in INSTALLED, reason="executorch is not installed")
def test_export_int8_writes_an_int8_pte_beside_the_float_one(tmp_path):
    from edgeprune.models.default import DEFAULT_DATA

    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(main, ["export", "-o", str(out), "--int8", "--calib", DEFAULT_DATA, "--calib-limit", "16",
                                       "--eval-limit", "0", "--runtime", "executorch", "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)["runtimes"]["executorch"]
    assert found["int8"]["file"] == str(tmp_path / "m.int8.pte") and (tmp_path / "m.int8.pte").is_file()
    assert read_sidecar(tmp_path / "m.int8.pte")["int8"] is True and read_sidecar(tmp_path / "m.pte")["int8"] is False
    assert found["int8"]["max_abs"] > found["max_abs"]  # quantised: further from float than the float file
    assert found["int8"]["cosine"] > 0.9  # judged: its worst output's cosine to float on calibration images


@pytest.mark.skipif("executorch" not in INSTALLED, reason="executorch is not installed")
def test_a_broken_int8_pte_is_refused(tmp_path, monkeypatch):
    from edgeprune.runtimes import export_checked
    from edgeprune.runtimes.executorch_xnnpack import ExecuTorchRuntime

    model, runtime = faces(), get_runtime("executorch")
    calibration = torch.rand(16, 3, 24, 24).numpy()
    good, _ = export_checked(runtime, model, (1, 3, 24, 24), tmp_path / "good.pte", calibration)
    assert good.int8_cosine > 0.9
    real = ExecuTorchRuntime._quantised

    def broken(self, model, example, images):  # a quantisation that gets the numbers wrong
        wrong = copy.deepcopy(model)
        for name in ("box", "landmarks", "face"):
            getattr(wrong, name).weight.data.neg_()
        return real(self, wrong, example, images)

    monkeypatch.setattr(ExecuTorchRuntime, "_quantised", broken)
    with pytest.raises(EdgepruneError, match="bad.pte: the INT8 file is broken: its worst output has cosine"):
        export_checked(runtime, model, (1, 3, 24, 24), tmp_path / "bad.pte", calibration)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.pte", "good.pte.io.json"]  # nothing of the broken one


@pytest.mark.skipif("ncnn" not in INSTALLED, reason="ncnn is not installed")
def test_ncnn_says_in_one_line_why_it_has_no_int8(tmp_path):
    with pytest.raises(EdgepruneError, match="ncnn's INT8 needs its ncnn2table and ncnn2int8 tools"):
        get_runtime("ncnn").export(Heads().eval(), torch.randn(Heads.input_shape), tmp_path / "h.ncnn.param",
                                   calibration=torch.rand(4, *Heads.input_shape[1:]).numpy())
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif("ncnn" not in INSTALLED, reason="ncnn is not installed")
def test_a_table_of_another_runtime_is_refused_in_one_line(cache, tmp_path):
    built = CliRunner().invoke(main, ["lut", "build", HEADS, "--target", "x86-avx2", "--runtime", "onnxruntime",
                                      "--json"])
    assert built.exit_code == 0, built.output
    (table,) = json.loads(built.stdout)["tables"]
    result = CliRunner().invoke(main, ["compress", HEADS, "--target", "x86-avx2", "--runtime", "ncnn", "--speedup", "1.2",
                                       "--lut", table["table"], "--no-int8", "-o", str(tmp_path / "out")])
    assert_one_line_error(result, "was measured in onnxruntime, but the plan is for ncnn")
    assert not (tmp_path / "out").exists()
