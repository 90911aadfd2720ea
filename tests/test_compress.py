"""`edgeprune compress` end to end on the built-in default model, and its answers to bad input.

The runs go through click's CliRunner in this process (torch is imported once). To stay fast on
a small shared machine the fine-tune epoch sees a fixed subset of mnist5k's train split; the
accuracies are measured on the whole held-out split, as in a normal run.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import edgeprune.calibration as calibration
import edgeprune.profile.compare as profile_compare
from edgeprune.checkpoint import load_model
from edgeprune.cli import main
from edgeprune.counter import count_model
from edgeprune.export import make_session
from edgeprune.report import format_table

from conftest import assert_one_line_error

FAST = ["--target", "x86-avx2", "--runs", "5", "--min-time", "0.1", "--max-bench-seconds", "0"]
TRAIN_IMAGES = 768
FILES = {"pruned.pt", "dense.onnx", "pruned.onnx", "report.json", "report.md", "report.png"}
INT8_FILES = {"dense_int8.onnx", "pruned_int8.onnx"}


def compress(*args: str):
    return CliRunner().invoke(main, ["compress", *args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One run with a fine-tune epoch and INT8 (and reconstruction, the default), then one with none of
    them and no BatchNorm re-estimation into the same folder, on a host said to be busy."""
    real_load_data = calibration.load_data

    def small_train_split(spec, *, split="train", **kw):
        if split == "train":
            kw.setdefault("limit", TRAIN_IMAGES)
        return real_load_data(spec, split=split, **kw)

    out = tmp_path_factory.mktemp("compress") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(calibration, "load_data", small_train_split)
        first = compress(*FAST, "--finetune-epochs", "1", "--int8", "-o", str(out))
        assert first.exit_code == 0, first.output
        assert first.exception is None
        files_first = {p.name for p in out.iterdir()}
        report_first = json.loads((out / "report.json").read_text())
        mp.setattr(profile_compare, "busy_cores", lambda: 9.0)  # a crowded host: the second run says so
        second = compress(*FAST, "--finetune-epochs", "0", "--no-int8", "--no-bn-recalibrate", "--no-reconstruct",
                          "--runtime", "all",
                          "-o", str(out))
        assert second.exit_code == 0, second.output
    return {"out": out, "first": (first, files_first, report_first),
            "second": (second, {p.name for p in out.iterdir()}, json.loads((out / "report.json").read_text()))}


def _variants(report):
    return {v["name"]: v for v in report["variants"]}


def test_folder_holds_every_output(runs):
    _, files_first, _ = runs["first"]
    _, files_second, _ = runs["second"]
    _, _, report_second = runs["second"]
    shipped = {f for found in report_second["runtimes"].values() for m in ("dense", "pruned") for f in found[m]["files"]}
    assert files_first == FILES | INT8_FILES
    assert files_second - {f for f in files_second if f.endswith(".io.json")} == FILES | shipped  # replaced, not merged
    assert not list(runs["out"].parent.glob(".*partial*"))
    assert (runs["out"] / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("which", ["first", "second"])
def test_report_has_the_measured_figures(runs, which):
    _, _, report = runs[which]
    variants = _variants(report)
    expected = ["dense", "pruned", "dense-int8", "pruned-int8"] if which == "first" else ["dense", "pruned"]
    assert [v["name"] for v in report["variants"]] == expected
    dense, pruned = variants["dense"], variants["pruned"]
    assert abs(report["pruning"]["macs_cut"] - 0.5) <= 0.01
    assert abs(pruned["macs"] / dense["macs"] - 0.5) <= 0.01
    assert pruned["params"] < dense["params"]
    assert dense["accuracy"] > 0.9  # the shipped weights: 0.988 on mnist5k's val split
    assert report["pruning"]["eval_data"] == {"source": "mnist5k", "split": "val", "images": 500, "labelled": True}
    for v in report["variants"]:
        assert v["size_bytes"] > 0 and 0 < v["p50_ms"] <= v["p90_ms"] <= v["p99_ms"]
        assert isinstance(v["peak_memory_bytes"], int) and v["peak_memory_bytes"] >= 0
        assert 0.0 <= v["accuracy"] <= 1.0 and v["runs"] >= 5
        assert v["ci_low"] <= v["speedup"] <= v["ci_high"] and v["rounds"] == len(v["round_ms"]) == 3
        assert v["speedup"] == pytest.approx(statistics.geometric_mean(
            d / t for d, t in zip(dense["round_ms"], v["round_ms"])), rel=1e-3)  # over the rounds, with its interval
        assert v["macs_ratio"] == pytest.approx(dense["macs"] / v["macs"])
    assert (dense["speedup"], dense["ci_low"], dense["ci_high"]) == (1.0, 1.0, 1.0)
    assert report["target"]["name"] == "x86-avx2" and report["bench_settings"]["intra_threads"] >= 1
    busy = report["bench_settings"]["busy_cores"]  # the host's load, measured before timing
    assert busy == 9.0 if which == "second" else busy is None or 0 <= busy <= (os.cpu_count() or 1) + 0.01
    assert {e["checked_on"] for e in report["export"].values()} == {"8 images"}  # the model's own inputs, not noise
    if which == "first":
        assert report["pruning"]["finetune"]["epochs"] == 1
        assert variants["pruned-int8"]["size_bytes"] < 0.5 * pruned["size_bytes"]
        assert variants["pruned-int8"]["macs"] == pruned["macs"]
    else:
        assert report["pruning"]["finetune"] is None and report["options"]["int8"] is False


def test_runtime_all_ships_checked_files_for_every_runtime(runs):
    """The default model (option-A shortcuts) in every runtime installed: .pte, ncnn, each checked."""
    from edgeprune.runtimes import RUNTIMES

    _, files, report = runs["second"]
    assert set(report["runtimes"]) == {name for name, r in RUNTIMES.items() if r.missing() is None}
    for name, found in report["runtimes"].items():
        assert "error" not in found, found
        for variant in ("dense", "pruned"):
            made = found[variant]
            assert made["file"].endswith(RUNTIMES[name].suffix) and set(made["files"]) <= files
            assert made["max_abs"] < 1e-3  # matched PyTorch within the check's tolerance
            assert made["checked_on"] == "8 images"  # on the model's own inputs, as the ONNX files, not noise
        assert found["pruned"]["cosine_min"] == pytest.approx(_variants(report)["pruned"]["cosine_min"], abs=1e-4)


def test_reconstruction_restores_accuracy_right_after_the_cut(runs):
    report = runs["first"][2]
    reconstructed = report["pruning"]["accuracy_before_finetune"]
    left_alone = runs["second"][2]["pruning"]["accuracy_before_finetune"]
    assert left_alone < 0.2 and reconstructed > 0.95  # chance -> about 0.98 with no gradient step
    [found] = report["pruning"]["reconstruction"]
    judged_on = TRAIN_IMAGES // 4  # held out from recovery to judge the cut against the fine-tuned model
    assert found["images"] == TRAIN_IMAGES - judged_on and len(found["layers"]) == 18 and found["seconds"] > 0
    layers = found["layers"]  # each kept or refitted as judged on images its fit did not see: test_reconstruct
    assert all(layer["refit"] for layer in layers)
    assert max(f["error_after"] for f in layers) < 0.5 * max(f["error_before"] for f in layers)  # README: 0.62 -> 0.09
    assert "reconstruction" not in runs["second"][2]["pruning"]
    assert "[edgeprune] reconstructed 18 of 18 layers" in runs["first"][0].stderr
    kept = report["pruning"]["kept"]
    states = ["after the cut", "fine-tuned", "fine-tuned, BatchNorm re-estimated"]
    assert kept["images"] == judged_on and [s["state"] for s in kept["states"]] == states and kept["kept"] in states
    assert "[edgeprune] kept the model" in runs["first"][0].stderr and "kept" not in runs["second"][2]["pruning"]


def test_recovered_model_keeps_its_accuracy(runs):
    report = runs["first"][2]
    tuned = _variants(report)["pruned"]["accuracy"]
    untuned = _variants(runs["second"][2])["pruned"]["accuracy"]
    assert tuned > untuned + 0.5 and tuned >= 0.95
    [epoch] = report["pruning"]["finetune"]["history"]
    assert epoch["distill"] > 0 and epoch["ce"] > 0 and 0 < epoch["held_out"]["cosine_min"] <= 1


def test_checkpoint_reloads_and_matches_the_onnx_file(runs):
    out = runs["out"]
    _, _, report = runs["second"]
    loaded = load_model(str(out / "pruned.pt"))
    assert loaded.input_shape == (1, 1, 32, 32) and loaded.metadata["target"] == "x86-avx2"
    assert count_model(loaded.model, loaded.input_shape).macs == _variants(report)["pruned"]["macs"]
    x = np.random.default_rng(0).standard_normal(loaded.input_shape, dtype=np.float32)
    with torch.no_grad():
        expected = loaded.model(torch.from_numpy(x)).numpy()
    assert expected.shape == (1, 10)
    session = make_session(out / "pruned.onnx")
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("which", ["first", "second"])
def test_console_ends_with_the_table(runs, which):
    from edgeprune.runtimes import RUNTIMES

    result, _, report = runs[which]
    out = runs["out"]
    shipped = "".join(f", *{RUNTIMES[name].suffix}" for name, found in report["runtimes"].items() if "error" not in found)
    assert f"\n\nwrote {out}/: pruned.pt, *.onnx{shipped}, report.json, report.md, report.png" in result.stdout
    assert format_table(report) in result.stdout
    assert f"resnet20-cifar for x86-avx2: {report['pruning']['macs_cut']:.1%} of MACs removed" in result.stdout
    assert "[edgeprune] measuring latency" in result.stderr and "[edgeprune]" not in result.stdout
    if which == "second":  # the host's load is said beside the figures, for every runtime's too
        assert "[edgeprune] host busy: 9.0 of" in result.stderr
        assert {found["busy_cores"] for found in report["runtimes"].values() if "error" not in found} == {9.0}
    assert "| dense | " in (out / "report.md").read_text()


# --- bad input: one line on stderr, exit code 2, nothing left behind ---------------------------

TARGET_FIELDS = {"name": "wrong", "description": "", "threads": 1, "inter_op_threads": 1, "round_to": 8, "opset": 18,
                 "graph_optimization": "all", "int8": False, "memory_arena": True}


def assert_nothing_left(folder: Path, *keep: str) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(keep)


@pytest.mark.parametrize("args, fragment", [
    (["--target", "cortex-m0"], "unknown target 'cortex-m0'; known targets: arm"),
    (["--target", "missing.json"], "target file missing.json does not exist"),
    (["--target", "x86-avx2", "--criterion", "nope"], "unknown criterion 'nope' (known: "),
    (["--target", "x86-avx2", "--flops-cut", "1.5"], "flops cut must be in [0, 1)"),
])
def test_bad_choices_fail_before_any_work(tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(compress(*args, "-o", "out"), fragment)
    assert_nothing_left(tmp_path)


def test_target_input_shape_that_does_not_fit(tmp_path):
    target = tmp_path / "rgb.json"
    target.write_text(json.dumps({**TARGET_FIELDS, "input_shape": [1, 3, 32, 32]}))
    result = compress("--target", str(target), "--finetune-epochs", "0", "-o", str(tmp_path / "out"))
    assert_one_line_error(result, "target wrong's input shape 1x3x32x32 does not fit resnet20-cifar (input 1x1x32x32)")
    assert_nothing_left(tmp_path, "rgb.json")


@pytest.mark.parametrize("content", [b"", b"not a protobuf \x00\xff garbage" * 4])
def test_corrupt_model_file_keeps_the_earlier_output(tmp_path, content):
    """A corrupt ONNX or checkpoint file as MODEL: the error is one line and an earlier output stays."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    earlier = tmp_path / "out"
    earlier.mkdir()
    (earlier / "report.json").write_text("{}")
    assert_one_line_error(compress(str(bad), *FAST, "-o", str(earlier)), f"cannot read {bad}")
    assert_nothing_left(tmp_path, "bad.onnx", "out")
    assert_nothing_left(earlier, "report.json")


def test_folder_that_is_not_an_earlier_output_is_refused(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert_one_line_error(compress(*FAST, "-o", str(mine)), f"{mine} exists and is not an earlier edgeprune output")
    assert_nothing_left(tmp_path, "mine")
    assert (mine / "notes.txt").read_text() == "keep me"


def test_interrupted_run_removes_its_staging_folder(tmp_path, monkeypatch):
    from edgeprune.pipeline import stages

    staged = []

    def interrupt(model, shape, path, target, inputs=None):
        staged.append((path.parent.name, sorted(p.name for p in path.parent.iterdir())))
        raise KeyboardInterrupt

    monkeypatch.setattr(stages, "export_onnx", interrupt)
    result = compress(*FAST, "--finetune-epochs", "0", "--no-reconstruct", "-o", str(tmp_path / "out"))
    assert result.exit_code == 130 and result.stderr.endswith("edgeprune: interrupted\n"), result.output
    [(name, files)] = staged
    assert name.startswith(".out.partial-") and files == ["pruned.pt"]
    assert_nothing_left(tmp_path)


def test_export_corrupt_checkpoint_and_weights_that_do_not_fit(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a torch file")
    out = tmp_path / "m.onnx"
    assert_one_line_error(CliRunner().invoke(main, ["export", str(bad), "-o", str(out)]), f"cannot read {bad}")
    weights = tmp_path / "w.pt"
    torch.save({"conv.weight": torch.zeros(1)}, weights)
    result = CliRunner().invoke(main, ["export", "resnet20-cifar", "--weights", str(weights), "-o", str(out)])
    assert_one_line_error(result, f"{weights} does not fit this model")
    assert_nothing_left(tmp_path, "bad.pt", "w.pt")


def test_real_process_prints_one_line(tmp_path):
    """The same contract outside CliRunner: logging set up, no traceback, nothing written."""
    target = tmp_path / "big.json"
    target.write_text(json.dumps({**TARGET_FIELDS, "input_shape": [1, 3, 32, 32]}))
    proc = subprocess.run([sys.executable, "-m", "edgeprune", "compress", "--target", str(target), "-o",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=170)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("edgeprune: error: target wrong's input shape")
    assert_nothing_left(tmp_path, "big.json")


TORCHRUN_SCRIPT = """
import sys
import edgeprune.calibration as calibration
from edgeprune.cli import main

real = calibration.load_data


def small(spec, *, split="train", **kw):
    if split == "train":
        kw.setdefault("limit", 256)
    return real(spec, split=split, **kw)


calibration.load_data = small
main(["compress", "--target", "x86-avx2", "--runs", "3", "--min-time", "0.05", "--max-bench-seconds", "0", "--finetune-epochs", "1", "--no-int8",
      "--eval-images", "100", "-o", sys.argv[1]])
"""


def test_compress_recovers_under_torchrun_with_two_processes(tmp_path):
    script = tmp_path / "compress_ddp.py"
    script.write_text(TORCHRUN_SCRIPT)
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["pruning"]["finetune"]["epochs"] == 1 and _variants(report)["pruned"]["accuracy"] > 0.9
    assert done.stdout.count("wrote ") == 1 and len(list(tmp_path.glob(".out.partial*"))) == 0  # rank 0 alone writes
