"""A user's own model with several outputs and unlabelled images, through every stage.

The model (tests/models/heads.py) returns a dict of three tensors and has a concat skip and a
permute + reshape before a Linear; its data is an npz of uint8 pixels with no labels.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgeprune.api import prune
from edgeprune.calibration import Preprocess
from edgeprune.checkpoint import load_model
from edgeprune.cli import main
from edgeprune.export import make_session
from edgeprune.outputs import flatten
from edgeprune.surgery import zero_channels

from conftest import assert_one_line_error

MODELS = Path(__file__).resolve().parent / "models" / "heads.py"
HEADS = f"{MODELS}:heads"
FAST = ["--target", "x86-avx2", "--round-to", "1", "--flops-cut", "0.4", "--runs", "3", "--min-time", "0.05", "--max-bench-seconds", "0"]
OUTPUTS = ["scores", "boxes", "embedding"]


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def write_pixels(path: Path, n: int = 320, labels: np.ndarray | None = None, seed: int = 0) -> str:
    x = np.random.default_rng(seed).integers(0, 256, (n, 3, 16, 16), dtype=np.uint8)
    np.savez(path, x=x, **({} if labels is None else {"y": labels}))
    return str(path)


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("own")
    data = write_pixels(folder / "pixels.npz")
    out = folder / "out"
    result = run("compress", HEADS, "--calib", data, *FAST, "--int8", "--bake-preprocess", "--finetune-epochs", "1",
                 "--eval-images", "64", "--runtime", "all", "-o", str(out))
    assert result.exit_code == 0, result.output
    return {"out": out, "result": result, "data": data, "report": json.loads((out / "report.json").read_text())}


def test_report_has_per_output_fidelity_for_every_variant(compressed):
    report = compressed["report"]
    assert [v["name"] for v in report["variants"]] == ["dense", "pruned", "dense-int8", "pruned-int8"]
    assert [o["name"] for o in report["inputs"]["outputs"]] == OUTPUTS
    for variant in report["variants"]:
        rows = variant["fidelity"]
        assert [r["output"] for r in rows] == OUTPUTS
        assert all(0 <= r["rel_l2"] and -1 <= r["cosine"] <= 1 for r in rows)
        assert variant["cosine_min"] == min(r["cosine"] for r in rows) and variant["accuracy"] is None
    assert report["variants"][0]["cosine_min"] == 1.0 and report["variants"][0]["rel_l2_max"] == 0.0
    assert report["variants"][2]["cosine_min"] > 0.9  # INT8 of the dense model stays close
    history = report["pruning"]["finetune"]["history"]
    assert len(history) == 1 and history[0]["distill"] > 0 and "ce" not in history[0]  # no labels: distillation
    markdown = (compressed["out"] / "report.md").read_text()
    assert "| pruned-int8 | boxes | regression |" in markdown and ".partial-" not in markdown
    header = next(line for line in compressed["result"].stdout.splitlines() if line.startswith("variant"))
    assert "cosine" in header and "top-1 agree" in header


def test_compress_ships_and_measures_each_installed_runtime(compressed):
    from edgeprune.runtimes import RUNTIMES

    out, report = compressed["out"], compressed["report"]
    assert set(report["runtimes"]) == {n for n, r in RUNTIMES.items() if r.missing() is None}
    onnx_pruned = report["variants"][1]
    for name, found in report["runtimes"].items():
        assert found["speedup"] > 0 and found["pruned"]["max_abs"] < 1e-2  # all three outputs checked
        assert all((out / f).is_file() for f in found["dense"]["files"] + found["pruned"]["files"])
        # held-out quality per output, as for the ONNX files: the same model gives the same figures
        assert [r["output"] for r in found["pruned"]["fidelity"]] == OUTPUTS
        assert found["pruned"]["cosine_min"] == pytest.approx(onnx_pruned["cosine_min"], abs=1e-3)
        if RUNTIMES[name].int8_missing:  # --int8 was asked: a runtime without INT8 says why
            assert found["int8"] == {"error": RUNTIMES[name].int8_missing}
        else:
            int8 = found["int8"]["pruned"]
            assert (out / int8["file"]).is_file() and int8["speedup"] > 0 and int8["cosine_min"] > 0.5
    if report["runtimes"]:
        assert "## Other runtimes" in (out / "report.md").read_text() and "pruned files" in compressed["result"].stdout


def test_a_broken_int8_file_is_dropped_and_the_work_ships(tmp_path, monkeypatch):
    """compress keeps the pruned float files when a quantisation comes out broken, and says why."""
    import onnx
    import onnxruntime.quantization as ortq
    from onnx import numpy_helper

    real = ortq.quantize_static

    def broken(model_input, model_output, *args, **kwargs):  # the scores head's INT8 weights negated
        real(model_input, model_output, *args, **kwargs)
        model = onnx.load(str(model_output))
        for tensor in model.graph.initializer:
            values = numpy_helper.to_array(tensor)
            if values.dtype == np.int8 and values.ndim == 2:
                tensor.CopyFrom(numpy_helper.from_array(-np.maximum(values, -127), tensor.name))
        onnx.save(model, str(model_output))

    monkeypatch.setattr(ortq, "quantize_static", broken)
    out = tmp_path / "out"
    result = run("compress", HEADS, "--calib", write_pixels(tmp_path / "p.npz", 96), *FAST, "--int8",
                 "--finetune-epochs", "0", "--eval-images", "16", "-o", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert [v["name"] for v in report["variants"]] == ["dense", "pruned"]
    assert all("the INT8 file is broken" in v["int8_error"] for v in report["variants"])
    assert "the float files ship" in result.stderr and not list(out.glob("*int8*"))


def test_onnx_files_have_one_named_output_per_tensor(compressed):
    for name in ("dense.onnx", "pruned.onnx", "pruned_int8.onnx"):
        assert [o.name for o in make_session(compressed["out"] / name).get_outputs()] == OUTPUTS


@pytest.mark.parametrize("factory", ["heads", "heads_tuple"])
def test_pruned_model_equals_dense_with_removed_channels_zeroed(factory):
    built = load_model(f"{MODELS}:{factory}")
    result = prune(built.model, built.input_shape, criterion="l2", ratio=0.5)
    assert result.after.macs < 0.6 * result.before.macs
    reference = zero_channels(copy.deepcopy(built.model), result.graph, result.plan.keep)
    x = torch.randn(4, *built.input_shape[1:])
    with torch.no_grad():
        for got, want in zip(flatten(result.model(x)), flatten(reference(x))):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_input_shape_and_preprocessing_round_trip_through_the_checkpoint(tmp_path):
    out = tmp_path / "p.pt"
    result = run("prune", "resnet20-cifar", "--ratio", "0.25", "--input-shape", "1x3x40x48", "--mean", "0.4,0.5,0.6",
                 "--std", "0.2", "-o", str(out))
    assert result.exit_code == 0, result.output
    loaded = load_model(str(out))
    assert loaded.input_shape == (1, 3, 40, 48)
    assert loaded.preprocess.mean == (0.4, 0.5, 0.6) and loaded.preprocess.std == (0.2,)
    assert json.loads(run("info", str(out), "--json").stdout)["input_shape"] == [1, 3, 40, 48]
    again = tmp_path / "again.pt"
    assert run("prune", str(out), "--ratio", "0.2", "-o", str(again)).exit_code == 0  # nothing repeated
    assert load_model(str(again)).input_shape == (1, 3, 40, 48)
    assert load_model(str(again)).preprocess == loaded.preprocess
    assert_one_line_error(run("info", HEADS, "--input-shape", "1x3x24x24"),
                          "--input-shape 1x3x24x24 does not fit", "(input 1x3x16x16)")
    assert json.loads(run("info", HEADS, "--json").stdout)["outputs"] == OUTPUTS


def test_compress_keeps_the_models_preprocessing(compressed):
    loaded = load_model(str(compressed["out"] / "pruned.pt"))
    assert loaded.preprocess.mean == (0.5, 0.5, 0.5) and loaded.input_shape == (1, 3, 16, 16)
    assert compressed["report"]["inputs"]["preprocess"]["std"] == [0.25, 0.25, 0.25]


def test_baked_onnx_on_raw_pixels_matches_the_plain_onnx_on_inputs(compressed):
    pixels = np.random.default_rng(5).integers(0, 256, (1, 3, 16, 16)).astype(np.float32)
    inputs = Preprocess(mean=(0.5,), std=(0.25,)).apply(pixels)
    baked, plain = make_session(compressed["out"] / "pruned.pixels.onnx"), make_session(compressed["out"] / "pruned.onnx")
    for got, want in zip(baked.run(None, {"input": pixels}), plain.run(None, {"input": inputs})):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)


def test_export_bakes_bgr_and_0_255_preprocessing(tmp_path):
    out = tmp_path / "m.onnx"
    result = run("export", HEADS, "--bake-preprocess", "--channel-order", "bgr", "--pixel-range", "0-255",
                 "--mean", "100,110,120", "--std", "50", "-o", str(out))
    assert result.exit_code == 0, result.output
    model = load_model(HEADS).model
    pixels = np.random.default_rng(2).integers(0, 256, (1, 3, 16, 16)).astype(np.float32)
    inputs = (pixels[:, ::-1] - np.array([100, 110, 120], np.float32)[None, :, None, None]) / 50
    with torch.no_grad():
        want = flatten(model(torch.from_numpy(np.ascontiguousarray(inputs))))
    for got, expected in zip(make_session(out).run(None, {"input": pixels}), want):
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, rtol=1e-3)


def test_finetune_distils_unlabelled_data_from_a_teacher(tmp_path):
    data = write_pixels(tmp_path / "pixels.npz", 256)
    pruned = tmp_path / "p.pt"
    assert run("prune", HEADS, "--ratio", "0.5", "-o", str(pruned)).exit_code == 0
    refused = run("finetune", str(pruned), "--data", data, "--epochs", "1", "-o", str(tmp_path / "f.pt"))
    assert_one_line_error(refused, "has no labels: fine-tune it by distillation from --teacher MODEL")
    tuned = tmp_path / "tuned.pt"
    result = run("finetune", str(pruned), "--data", data, "--teacher", HEADS, "--epochs", "2", "--augment", "none",
                 "-o", str(tuned))
    assert result.exit_code == 0, result.output
    assert "held-out cosine" in result.stdout and load_model(str(tuned)).preprocess.mean == (0.5, 0.5, 0.5)
    before = json.loads(run("eval", str(pruned), "--data", data, "--against", HEADS, "--json").stdout)
    after = json.loads(run("eval", str(tuned), "--data", data, "--against", HEADS, "--json").stdout)
    error = {r["output"]: r["rel_l2"] for r in before["fidelity"]}
    assert [r["output"] for r in after["fidelity"]] == OUTPUTS
    assert sum(r["rel_l2"] for r in after["fidelity"]) < sum(error.values())  # distillation brought it closer


# --- bad input: one line, exit 2, before any work, nothing written -----------------------------

def test_nan_or_inf_in_calibration_data(tmp_path):
    x = np.random.default_rng(0).standard_normal((40, 3, 16, 16)).astype(np.float32)
    x[3, 1, 2, 2] = np.nan
    np.savez(tmp_path / "nan.npz", x=x)
    assert_one_line_error(run("compress", HEADS, "--calib", str(tmp_path / "nan.npz"), *FAST, "-o", str(tmp_path / "o")),
                          "are NaN or Inf")
    assert_one_line_error(run("prune", HEADS, "--criterion", "fms", "--ratio", "0.3", "--calib",
                              str(tmp_path / "nan.npz"), "-o", str(tmp_path / "p.pt")), "are NaN or Inf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.npz"]


@pytest.mark.parametrize("labels, extra, fragment", [
    (np.arange(40) % 10, ["--label-output", "scores"], "has label 9, but output scores has only 5 classes"),
    (np.arange(40) % 3, [], "the model has 3 outputs (scores (Nx5), boxes (Nx4x8x8), embedding (Nx6)): name the "
                           "class-score output with --label-output"),
    (np.arange(40) % 3, ["--label-output", "boxes"], "output boxes is Nx4x8x8, not class scores N x K"),
    (np.arange(40) % 3, ["--label-output", "logits"], "--label-output logits: the model's outputs are scores, boxes"),
])
def test_labels_that_do_not_fit_the_outputs(tmp_path, labels, extra, fragment):
    data = write_pixels(tmp_path / "labelled.npz", 40, labels=labels)
    result = run("compress", HEADS, "--calib", data, *FAST, *extra, "-o", str(tmp_path / "out"))
    assert_one_line_error(result, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labelled.npz"]


def test_compress_measures_each_groups_sensitivity_when_asked_to_spend_by_it(tmp_path):
    out = tmp_path / "out"
    result = run("compress", HEADS, "--calib", write_pixels(tmp_path / "p.npz", 96), *FAST, "--allocate", "sensitivity",
                 "--flops-cut", "0.3", "--finetune-epochs", "0", "--no-reconstruct", "--no-int8", "--eval-images", "20", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "measuring each group's sensitivity" in result.output
    pruning = json.loads((out / "report.json").read_text())["pruning"]
    assert pruning["plan"]["allocation"] == "sensitivity" and abs(pruning["macs_cut"] - 0.3) <= 0.02
    assert "## Allocation by sensitivity" in (out / "report.md").read_text()


def test_labels_on_the_named_output_train_with_cross_entropy_too(tmp_path):
    data = write_pixels(tmp_path / "labelled.npz", 200, labels=np.arange(200) % 5)
    out = tmp_path / "out"
    result = run("compress", HEADS, "--calib", data, *FAST, "--label-output", "scores", "--finetune-epochs", "1",
                 "--eval-images", "20", "-o", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"]["label_output"] == "scores"
    assert {o["name"]: o["kind"] for o in report["inputs"]["outputs"]}["scores"] == "logits"
    assert report["pruning"]["finetune"]["history"][0]["ce"] > 0
    assert all(v["accuracy"] is not None and "top1_agreement_min" in v for v in report["variants"])


@pytest.mark.parametrize("command", [
    ["prune", "vgg16-cifar", "--ratio", "0.3", "-o", "/proc/x/y.pt"],
    ["export", "resnet20-cifar", "-o", "/proc/x/m.onnx"],
    ["compress", "resnet20-cifar", "--target", "x86-avx2", "-o", "/proc/x/out"],
])
def test_output_that_cannot_be_written(command):
    assert_one_line_error(run(*command), "cannot write /proc/x/")


def test_int8_without_data_fails_before_any_work(tmp_path, monkeypatch):
    from edgeprune.pipeline import stages

    def never(*args, **kwargs):
        raise AssertionError("pruned before checking the input")

    monkeypatch.setattr(stages, "prune_and_recover", never)
    result = run("compress", HEADS, "--target", "arm", "-o", str(tmp_path / "out"))
    assert_one_line_error(result, "INT8 for target arm-cortex-a72 needs calibration data")
    assert list(tmp_path.iterdir()) == []


def test_export_int8_of_a_multi_output_model_compares_every_output(tmp_path):
    data = write_pixels(tmp_path / "pixels.npz", 120)
    out = tmp_path / "heads.onnx"
    result = run("export", HEADS, "-o", str(out), "--int8", "--calib", data, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["onnx"]["output_names"] == OUTPUTS and summary["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    rows = summary["int8"]["fidelity"]["outputs"]
    assert [r["output"] for r in rows] == OUTPUTS and all(r["cosine"] > 0.9 for r in rows)
    assert "accuracy" not in summary["int8"]  # no labels
    assert [o.name for o in make_session(tmp_path / "heads.int8.onnx").get_outputs()] == OUTPUTS
