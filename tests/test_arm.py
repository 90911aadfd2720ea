"""A model runs on aarch64 onnxruntime (under qemu-user) with the same numbers as on x86, and the
edgeprune profiler itself runs there.

Needs the environment scripts/arm_setup.sh builds (root, unshare, qemu-user-static, an arm64
Debian root with aarch64 onnxruntime). Without it the test skips and says why; with
EDGEPRUNE_ARM_SETUP=1 it runs the setup script first. Emulated timings mean nothing (~500x slower).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgeprune.profile import from_json
from test_profile import make_convnet

pytestmark = pytest.mark.slow  # emulated aarch64 (qemu): minutes when the emulator is there, skipped when not

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("EDGEPRUNE_ARM_CACHE", "~/.cache/edgeprune/arm64")).expanduser()
CPUINFO = Path(os.environ.get("EDGEPRUNE_ARM_CPUINFO", REPO.parent / "shared/arm/cpuinfo-aarch64-neoverse-n1"))
SETUP = REPO / "scripts" / "arm_setup.sh"
FLOAT_ATOL = 1e-5
INT8_RTOL_OF_RANGE = 0.02  # ~2.5 int8 steps of the output range: ARM and x86 kernels may round differently

# Runs on aarch64: every model on the saved input, then the profiler with its workers also emulated.
ARM_SCRIPT = """
import json, platform, sys
import numpy as np, onnxruntime as ort
from edgeprune.profile import BenchConfig, profile_models, to_json
job = json.loads(sys.argv[1])
x = np.load(job["input"])
for path in job["models"]:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    np.save(path + ".arm.npy", session.run(None, {"x": x})[0])
profiles = profile_models(job["models"], BenchConfig(warmup=1, min_runs=3, min_time=0), python=job["python"])
print(json.dumps({"machine": platform.machine(), "onnxruntime": ort.__version__, "profiles": to_json(profiles)}))
"""


def _arm_env_or_skip() -> tuple[Path, Path]:
    """(root, site) of the emulated environment, or skip with the reason."""
    if not (CACHE / "ready").exists() and os.environ.get("EDGEPRUNE_ARM_SETUP"):
        subprocess.run(["bash", str(SETUP)], timeout=900, check=False)
    if not (CACHE / "ready").exists():
        why = (CACHE / "failed").read_text().strip() if (CACHE / "failed").exists() else "it was never built"
        pytest.skip(f"no emulated arm64 onnxruntime at {CACHE} ({why}); run scripts/arm_setup.sh "
                    "or set EDGEPRUNE_ARM_SETUP=1")
    missing = [tool for tool in ("unshare", "qemu-aarch64-static") if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing or not CPUINFO.exists():
        pytest.skip(f"arm64 emulation needs root, unshare, qemu-aarch64-static and {CPUINFO} "
                    f"(root: {os.geteuid() == 0}, missing: {missing or 'none'})")
    return CACHE / "root", CACHE / "site"


def _run_on_arm(root: Path, site: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    """Python code on emulated aarch64 in a private mount namespace with an aarch64 /proc/cpuinfo
    (onnxruntime crashes reading the host's x86 one)."""
    shell = ('mount --bind "$0" /proc/cpuinfo && PYTHONPATH="$1" exec qemu-aarch64-static '
             '-L "$2" "$2/usr/bin/python3.11" -c "$3" "$4"')
    pythonpath = os.pathsep.join([str(site), str(REPO)])
    return subprocess.run(["unshare", "-m", "sh", "-c", shell, str(CPUINFO), pythonpath, str(root), script, *args],
                          capture_output=True, text=True, timeout=600)


class _Calibration:
    """onnxruntime's calibration protocol: get_next() -> feed or None."""

    def __init__(self, count: int = 8) -> None:
        rng = np.random.default_rng(1)
        self.feeds = iter([{"x": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(count)])

    def get_next(self):
        return next(self.feeds, None)


def _int8_copy(path: Path) -> Path:
    from onnxruntime.quantization import QuantFormat, quantize_static

    out = path.with_name("int8.onnx")
    quantize_static(str(path), str(out), _Calibration(), quant_format=QuantFormat.QDQ)
    assert any(node.op_type == "QuantizeLinear" for node in onnx.load(str(out)).graph.node)
    return out


def test_arm_outputs_match_x86_and_profiler_runs(tmp_path):
    root, site = _arm_env_or_skip()
    fp32 = make_convnet(tmp_path / "fp32.onnx", channels=16, layers=3)
    models = [fp32, _int8_copy(fp32)]
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    qemu = [shutil.which("qemu-aarch64-static"), "-L", str(root), str(root / "usr/bin/python3.11")]
    job = {"input": str(tmp_path / "x.npy"), "models": [str(m) for m in models], "python": qemu}

    result = _run_on_arm(root, site, ARM_SCRIPT, json.dumps(job))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["machine"] == "aarch64"

    for model, tolerance in [(models[0], FLOAT_ATOL), (models[1], None)]:
        expected = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        actual = np.load(f"{model}.arm.npy")
        assert expected.std() > 0
        atol = tolerance if tolerance is not None else INT8_RTOL_OF_RANGE * np.abs(expected).max()
        np.testing.assert_allclose(actual, expected, rtol=0, atol=atol, err_msg=str(model))

    profiles = from_json(report["profiles"])
    assert [p.path for p in profiles] == job["models"]
    for profile in profiles:
        assert profile.runs >= 3 and 0 < profile.p50_ms <= profile.p99_ms
        assert profile.settings.onnxruntime_version == report["onnxruntime"]
        assert profile.settings.provider == "CPUExecutionProvider"


def test_latency_table_measures_on_aarch64_with_onnxruntime_and_numpy_only(tmp_path):
    """measure.py, copied alone, on the emulated board: a layer's grid points and the whole dense model."""
    root, site = _arm_env_or_skip()
    script = tmp_path / "measure.py"
    shutil.copy(REPO / "edgeprune" / "latency" / "measure.py", script)
    make_convnet(tmp_path / "dense.onnx", channels=8, layers=2)
    layer = {"key": "conv", "kernel": [3, 3], "stride": [1, 1], "padding": [1, 1, 1, 1], "dilation": [1, 1],
             "in_hw": [8, 8], "depthwise": False, "points": [[4, 4], [8, 8]]}
    settings = {"threads": 1, "inter_op_threads": 1, "graph_optimization": "all", "memory_arena": False}
    spec = {"format": "edgeprune.lut-spec/1", "settings": settings, "layers": [layer],
            "models": [{"key": "dense", "file": "dense.onnx"}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    code = ("import runpy, sys; sys.modules['torch'] = None; sys.modules['edgeprune'] = None; folder = sys.argv[1]; "
            "sys.argv = ['measure.py', folder + '/spec.json', '-o', folder + '/table.json', '--runs', '2', "
            "'--min-time', '0']; runpy.run_path(folder + '/measure.py', run_name='__main__')")
    result = _run_on_arm(root, site, code, str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads((tmp_path / "table.json").read_text())
    assert table["machine"]["machine"] == "aarch64" and table["settings"] == settings
    assert set(table["entries"]["conv"]) == {"4,4", "8,8"} and table["models"]["dense"] > 0


NCNN_SCRIPT = """
import sys
import numpy as np
from edgeprune.runtimes import get_runtime
folder = sys.argv[1]
session = get_runtime("ncnn").open(folder + "/m.ncnn.param", threads=1)
np.save(folder + "/arm.npy", session.run([np.load(folder + "/x.npy")])[0])
"""


def test_ncnn_file_gives_the_same_outputs_on_aarch64(tmp_path):
    """The shipped ncnn files (made on x86) run on aarch64 ncnn with the x86 outputs (correctness only)."""
    import torch

    from edgeprune.models import build
    from edgeprune.runtimes import RUNTIMES
    from edgeprune.train import recalibrate_batchnorm

    root, site = _arm_env_or_skip()
    if RUNTIMES["ncnn"].missing() or not (site / "ncnn").is_dir():
        pytest.skip("ncnn is not installed here or in the arm64 environment (scripts/arm_setup.sh adds it)")
    model = build("mobilenetv1-cifar").model
    recalibrate_batchnorm(model, torch.rand(32, 3, 32, 32).numpy())
    exported = RUNTIMES["ncnn"].export(model.eval(), torch.randn(1, 3, 32, 32), tmp_path / "m.ncnn.param")
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = RUNTIMES["ncnn"].open(exported.path, threads=1).run([x])[0]
    result = _run_on_arm(root, site, NCNN_SCRIPT, str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    actual = np.load(tmp_path / "arm.npy")
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
