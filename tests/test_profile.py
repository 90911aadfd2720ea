"""The onnxruntime profiler and `edgeprune bench`, on tiny conv nets built with onnx.helper."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeprune.errors import EdgepruneError
from edgeprune.profile import (
    BenchConfig, external_data_files, format_table, from_json, inspect_model, profile_models, save_json, to_json,
)
from edgeprune.targets import load_target

REPO = Path(__file__).resolve().parents[1]


def make_convnet(path: Path, channels: int = 8, layers: int = 2, size: int | str = 32, batch: int | str = 1,
                 pads: int = 1, seed: int = 0, external: bool = False) -> Path:
    """Conv-ReLU x layers, then global average pooling; str dims are dynamic."""
    rng = np.random.default_rng(seed)
    nodes, weights, prev, cin = [], [], "x", 3
    for i in range(layers):
        w = (rng.standard_normal((channels, cin, 3, 3)) * (2 / (9 * cin)) ** 0.5).astype(np.float32)
        b = (rng.standard_normal(channels) * 0.1).astype(np.float32)
        weights += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], pads=[pads] * 4),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev, cin = f"r{i}", channels
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["y"]))
    graph = helper.make_graph(
        nodes, "convnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, channels, 1, 1])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path), save_as_external_data=external, location=f"{Path(path).name}.data", size_threshold=0)
    return Path(path)


def run_cli(*args: str, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    """`edgeprune ARGS` in a fresh interpreter (the bench module imported even if unregistered)."""
    code = (f"import sys; sys.argv = ['edgeprune'] + {list(args)!r}; import edgeprune.cli.bench; "
            "from edgeprune.cli import main; main()")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [pythonpath, str(REPO)]))}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeprune: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


FAST = BenchConfig(warmup=2, min_runs=10, min_time=0.2)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {
        "small": make_convnet(folder / "small.onnx", channels=8, layers=2),
        "big": make_convnet(folder / "big.onnx", channels=64, layers=4),  # ~140x the MACs
        "dynamic": make_convnet(folder / "dynamic.onnx", batch="N", size="S"),
        "unpadded": make_convnet(folder / "unpadded.onnx", size="S", pads=0),
        "external": make_convnet(folder / "external.onnx", external=True),
    }


@pytest.fixture(scope="module")
def profiles(models):
    stages = []
    result = profile_models([models["small"], models["big"]], FAST, progress=lambda s, f: stages.append((s, f)))
    return result, stages


def test_every_field_is_present_and_sane(profiles, models):
    result, _ = profiles
    for profile, path in zip(result, [models["small"], models["big"]]):
        assert profile.path == str(path)
        assert profile.min_ms <= profile.p50_ms <= profile.p90_ms <= profile.p99_ms
        assert profile.runs >= FAST.min_runs and profile.runs == len(profile.times_ms)
        assert sum(profile.times_ms) >= FAST.min_time * 1000
        assert len(profile.warmup_ms) == FAST.warmup and profile.first_run_ms > 0 and profile.session_ms > 0
        assert profile.mean_ms > 0 and profile.std_ms >= 0
        assert profile.peak_memory_bytes >= 0 and profile.baseline_rss_bytes > 0
        assert profile.size_bytes == path.stat().st_size
        s = profile.settings
        assert (s.intra_threads, s.inter_threads, s.graph_optimization, s.memory_arena) == (1, 1, "all", True)
        assert s.onnxruntime_version == ort.__version__ and s.provider == "CPUExecutionProvider"
        assert s.input_shapes == {"x": [1, 3, 32, 32]} and s.execution_mode == "sequential"


def test_bigger_model_is_slower_and_larger(profiles):
    (small, big), _ = profiles
    assert big.p50_ms > small.p50_ms
    assert big.size_bytes > 20 * small.size_bytes


def test_progress_reaches_the_end(profiles):
    _, stages = profiles
    assert [s for s, _ in stages[:3]] == ["starting", "sessions", "sessions"]
    assert stages[-1] == ("timing", 1.0)


def test_json_round_trip_and_atomic_save(profiles, tmp_path):
    result, _ = profiles
    assert from_json(to_json(result)) == result
    out = tmp_path / "results.json"
    save_json(result, out)
    assert from_json(out.read_text()) == result
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_table_shows_ratios_against_the_first_model(profiles):
    (small, big), _ = profiles
    table = format_table([small, big])
    assert f"{small.p50_ms / big.p50_ms:.2f}x" in table
    assert f"{big.size_bytes / small.size_bytes:.2f}x" in table
    assert "speedup" in table and "onnxruntime" in table and str(big.path) in table


def test_dynamic_dims_become_one_or_the_override(models):
    assert inspect_model(models["dynamic"]).inputs == {"x": [1, 3, 1, 1]}
    assert inspect_model(models["dynamic"], (2, 3, 16, 16)).inputs == {"x": [2, 3, 16, 16]}
    config = BenchConfig(warmup=0, min_runs=3, min_time=0, input_shape=(2, 3, 8, 8))
    [profile] = profile_models([models["dynamic"]], config)
    assert profile.settings.input_shapes == {"x": [2, 3, 8, 8]} and profile.warmup_ms == []


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (3, 32, 32), (2, 3, 32, 32)])
def test_shape_that_contradicts_the_model_is_refused(models, shape):
    with pytest.raises(EdgepruneError, match=r"does not fit .*small.onnx: input 'x' has shape 1x3x32x32"):
        inspect_model(models["small"], shape)


def test_external_data_counts_in_the_size(models):
    path = models["external"]
    [data] = external_data_files(path)
    assert data.name == "external.onnx.data"
    assert inspect_model(path).size_bytes == path.stat().st_size + data.stat().st_size


def test_run_time_failure_is_one_clear_error(models):
    with pytest.raises(EdgepruneError, match="unpadded.onnx: .*give an input shape") as caught:
        profile_models([models["unpadded"]], BenchConfig(warmup=0, min_runs=1, min_time=0))
    assert "\n" not in str(caught.value) and "ONNXRuntimeError" not in str(caught.value)


def test_config_validation_and_target_settings():
    with pytest.raises(EdgepruneError, match="min_runs must be an integer >= 1"):
        BenchConfig(min_runs=0)
    with pytest.raises(EdgepruneError, match="graph_optimization must be one of"):
        BenchConfig(graph_optimization="max")
    config = BenchConfig.from_target(load_target("arm-cortex-a53"), min_runs=7, warmup=None)
    here = min(4, os.cpu_count() or 1)  # the target's 4 threads, capped to this machine's cores
    assert (config.intra_threads, config.memory_arena, config.min_runs, config.warmup) == (here, False, 7, 5)


def test_a_targets_threads_are_capped_to_the_cores_here_everywhere(monkeypatch, caplog):
    from edgeprune.latency import settings_of
    from edgeprune.targets import loader

    monkeypatch.setattr(loader.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(loader, "_CAPPED", set())
    target = load_target("x86-avx512")  # 4 threads
    assert BenchConfig.from_target(target).intra_threads == 2  # bench --target, compress, the latency planner
    assert settings_of(target)["threads"] == 2 and settings_of(target, runtime="ncnn")["threads"] == 2  # lut tables
    assert settings_of(target, host=False)["threads"] == 4  # a spec measured on the board itself
    assert BenchConfig.from_target(target, intra_threads=4).intra_threads == 4  # --threads 4: as asked
    warnings = [r.getMessage() for r in caplog.records if "capped" in r.getMessage()]
    assert warnings == ["target x86-avx512's 4 threads capped to the 2 cores of this machine (on the device itself "
                        "they run as the target says; --threads N sets them)"]
    assert load_target("arm-cortex-a53").host_threads() == 2
    assert sum("capped" in r.getMessage() for r in caplog.records) == 2  # one warning per target


def test_cli_bench_table_json_and_output_file(models, tmp_path):
    out = tmp_path / "r.json"
    args = ["bench", str(models["small"]), str(models["big"]), "--runs", "3", "--min-time", "0", "--warmup", "1",
            "--max-bench-seconds", "0"]
    table = run_cli(*args, "-o", str(out))
    assert table.returncode == 0, table.stderr
    assert "speedup" in table.stdout and "1.00x" in table.stdout and "side-by-side rounds" in table.stdout
    assert [p.path for p in from_json(out.read_text())] == [str(models["small"]), str(models["big"])]
    as_json = run_cli(*args, "--json", "--threads", "2")
    found = json.loads(as_json.stdout)
    assert found["profiles"][1]["settings"]["intra_threads"] == 2
    [speedup] = found["speedups"]  # the second model against the first, with its interval over 3 rounds
    assert speedup["path"] == str(models["big"]) and speedup["rounds"] == 3
    assert speedup["ci_low"] <= speedup["speedup"] <= speedup["ci_high"] and speedup["speedup"] < 1
    assert found["profiles"][1]["runs"] >= 3 * 1 and found["profiles"][1]["cpu_p50_ms"] > 0


def test_a_speedup_estimate_is_the_t_interval_of_its_rounds_log_ratios():
    """The paired t interval on log ratios: exact t quantiles, the interval of identical rounds is
    a point, and the verdict is the interval's."""
    from scipy import stats

    from edgeprune.profile import SpeedupEstimate
    from edgeprune.profile.estimate import t975

    assert all(abs(t975(df) - stats.t.ppf(0.975, df)) < 2e-3 for df in range(1, 200))
    ratios = [1.9, 2.05, 2.2, 1.95]
    logs = np.log(ratios)
    half = stats.t.ppf(0.975, 3) * logs.std(ddof=1) / 2
    estimate = SpeedupEstimate.of(ratios)
    assert estimate.ci_low == pytest.approx(np.exp(logs.mean() - half), rel=1e-3)
    assert estimate.ci_high == pytest.approx(np.exp(logs.mean() + half), rel=1e-3)
    assert estimate.verdict(2.0) == "undecided" and not estimate.precise()
    steady = SpeedupEstimate.of([1.5, 1.5, 1.5])
    assert (steady.ci_low, steady.ci_high, steady.precise(), steady.verdict(1.5)) == (1.5, 1.5, True, "met")
    assert SpeedupEstimate.of([3.0, 3.0]).verdict(2.0) == "undecided"  # two rounds decide nothing
    assert SpeedupEstimate.of([1.2]).text() == "1.20x (1 round)"
    with pytest.raises(ValueError):
        SpeedupEstimate.of([1.0, 0.0])


def test_compared_models_are_timed_until_the_interval_is_narrow_or_the_cap(models):
    """compare_models: rounds in fresh processes, the order reversed every other round, pooled
    profiles; at least 3 rounds, and the cap stops them."""
    from edgeprune.profile import compare_models

    config = BenchConfig(warmup=1, min_runs=3, min_time=0)
    found = compare_models([models["small"], models["big"]], config, max_seconds=0)
    assert len(found.rounds) == len(found.round_ms) == 3 and found.estimates[0] is None
    assert [r[0].path for r in found.rounds] == [str(models["small"])] * 3  # un-reversed, in the order given
    assert found.profiles[1].runs == sum(r[1].runs for r in found.rounds)
    estimate = found.estimates[1]
    assert estimate.rounds == 3 and estimate.speedup == pytest.approx(
        np.exp(np.mean([np.log(r[0] / r[1]) for r in found.round_ms])))
    assert found.decided == estimate.precise()
    fields = found.speed_fields(1)
    assert set(fields) == {"speedup", "ci_low", "ci_high", "rounds", "round_ms"} and len(fields["round_ms"]) == 3


def torch_blocker(folder: Path) -> tuple[Path, Path]:
    """(a PYTHONPATH entry, a marker file): a fake `torch` that records any import attempt in the
    marker, then fails it. Stricter than sys.modules['torch'] = None, which would miss
    `try: import torch` in the parent, and it reaches worker processes too."""
    blocker, marker = folder / "blocker", folder / "torch-import-attempts"
    (blocker / "torch").mkdir(parents=True)
    (blocker / "torch" / "__init__.py").write_text(
        f"import os, sys\nopen({str(marker)!r}, 'a').write(' '.join(sys.argv) + os.linesep)\n"
        "raise ImportError('torch is blocked')\n")
    return blocker, marker


def test_cli_bench_works_with_torch_blocked(models, tmp_path):
    blocker, marker = torch_blocker(tmp_path)
    result = run_cli("bench", str(models["small"]), "--runs", "3", "--min-time", "0", "--target", "arm",
                     pythonpath=str(blocker))
    assert result.returncode == 0, result.stderr
    assert f"intra-op threads {min(4, os.cpu_count() or 1)}" in result.stdout
    assert ("capped to the" in result.stderr) == ((os.cpu_count() or 1) < 4)
    assert not marker.exists(), f"torch was imported by: {marker.read_text()}"


def test_cli_corrupt_model_is_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not protobuf" * 10)
    assert_one_line_error(run_cli("bench", str(bad)), "bad.onnx is not a valid ONNX model: ")


def test_cli_wrong_input_shape_is_one_line(models):
    assert_one_line_error(run_cli("bench", str(models["small"]), "--input-shape", "1x3x64x64"),
                          "input shape 1x3x64x64 does not fit")


def test_cli_unknown_target_and_missing_file_are_one_line(models):
    assert_one_line_error(run_cli("bench", str(models["small"]), "--target", "cortex-m0"),
                          "unknown target 'cortex-m0'", "arm-cortex-a72")
    assert_one_line_error(run_cli("bench", "missing.onnx"), "missing.onnx: no such file")


def _stat(idle: int, busy: int, cpus: int = 2) -> str:
    """A /proc/stat whose summary line holds ``busy`` user and ``idle`` idle jiffies."""
    return f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\n" + "".join(f"cpu{i} 0 0 0 0\n" for i in range(cpus)) + "intr 1\n"


def test_the_hosts_load_is_read_from_two_samples_of_proc_stat(tmp_path):
    from edgeprune.profile.host import busy_cores, crowded_note

    stat = tmp_path / "stat"
    stat.write_text(_stat(idle=1000, busy=1000))
    later = _stat(idle=1050, busy=1150)  # 150 of 200 jiffies busy on 2 cpus: 1.5 cores
    assert busy_cores(0.3, stat, sleep=lambda s: stat.write_text(later)) == 1.5
    assert busy_cores(0.3, tmp_path / "missing", sleep=lambda s: None) is None  # not Linux: unknown
    assert busy_cores(0.3, stat, sleep=lambda s: None) is None  # no time passed: unknown
    assert crowded_note(1.5, 2, cores=2).startswith("host busy: 1.5 of 2 cores")
    assert crowded_note(1.5, 1, cores=2) is None  # one thread still has a free core
    assert crowded_note(0.4, 2, cores=2) is None and crowded_note(None, 2, cores=2) is None
    assert crowded_note(1.0, 0, cores=2) is not None  # 0 threads: onnxruntime takes every core


def test_cli_bench_warns_when_the_host_is_busy(models, monkeypatch):
    from click.testing import CliRunner

    import edgeprune.profile.compare as compare
    from edgeprune.cli import main

    args = ["bench", str(models["small"]), str(models["small"]), "--runs", "3", "--min-time", "0", "--warmup", "1",
            "--max-bench-seconds", "0", "--threads", "2", "--json"]
    cores = os.cpu_count() or 1
    monkeypatch.setattr(compare, "busy_cores", lambda: float(cores))  # every core already taken
    busy = CliRunner().invoke(main, args)
    assert busy.exit_code == 0, busy.output
    assert f"warning: host busy: {cores:.1f} of {cores} cores" in busy.stderr and json.loads(busy.stdout)["speedups"]
    monkeypatch.setattr(compare, "busy_cores", lambda: 0.0)
    quiet = CliRunner().invoke(main, args)
    assert quiet.exit_code == 0 and "host busy" not in quiet.stderr
