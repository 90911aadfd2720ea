"""Runtimes beside onnxruntime (edgeprune.runtimes): each file matches PyTorch, ships, and is benchmarked
like the ONNX files; a runtime that is missing is one line."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from click.testing import CliRunner

from conftest import assert_one_line_error
from edgeprune.cli import main
from edgeprune.errors import EdgepruneError
from edgeprune.models import build
from edgeprune.runtimes import RUNTIMES, check_runtime, get_runtime, read_sidecar
from edgeprune.runtimes import base as runtime_base
from edgeprune.train import recalibrate_batchnorm
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
    assert len(sidecar["outputs"]) == (3 if case.startswith("heads") else 1)


@pytest.mark.skipif("ncnn" not in INSTALLED, reason="ncnn is not installed")
def test_ncnn_refuses_what_it_cannot_run_in_one_line(tmp_path):
    model = build("resnet20-cifar").model.eval()  # its option-A shortcut slices channels: no ncnn layer for that
    with pytest.raises(EdgepruneError, match="ncnn cannot run this model: .*Tensor.slice"):
        get_runtime("ncnn").export(model, torch.randn(1, 3, 32, 32), tmp_path / "m.ncnn.param")
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
        result = run_cli("bench", str(out), *torch_free, "--runs", "3", "--min-time", "0", "--threads", "1",
                         pythonpath=str(blocker))
        assert result.returncode == 0, result.stderr
        assert not marker.exists(), f"torch was imported by: {marker.read_text()}"
        assert all(f in result.stdout for f in torch_free)
    result = run_cli("bench", *files, "--runs", "3", "--min-time", "0", "--json")
    assert result.returncode == 0, result.stderr
    profiles = json.loads(result.stdout)["profiles"]
    assert [p["settings"]["provider"] for p in profiles] == INSTALLED and all(p["p50_ms"] > 0 for p in profiles)
    wrong = run_cli("bench", files[0], "--input-shape", "1x3x64x64")
    assert_one_line_process_error(wrong, "made for input shape 1x3x32x32")

