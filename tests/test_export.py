"""ONNX export, numerical check, INT8 and ORT format (edgeprune.export) and `edgeprune export`."""
import json
import logging

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from conftest import randomize_norms
from edgeprune.errors import EdgepruneError
from edgeprune.export import (export_onnx, load_onnx_checked, make_session, onnx_accuracy, quantize_int8,
                              run_batches, to_ort_format)
from edgeprune.export import onnx_export
from edgeprune.models import build


def _inputs(n: int, shape=(3, 32, 32), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape), dtype=np.float32)


def _torch_out(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def resnet20(tmp_path_factory):
    """resnet20-cifar (option-A shortcuts: ChannelSelect) and its fixed-batch export."""
    built = build("resnet20-cifar")
    randomize_norms(built.model)
    result = export_onnx(built.model, built.input_shape, tmp_path_factory.mktemp("r20") / "resnet20.onnx")
    return built, result


class ExportsDifferently(nn.Module):
    """Adds 1 only while torch.export traces it: the ONNX file cannot match eager PyTorch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1.0 if torch.compiler.is_exporting() else x


def test_resnet20_with_channel_select_exports_and_matches(resnet20):
    built, result = resnet20
    assert result.exporter == "dynamo" and result.opset >= 18 and result.simplified
    assert result.input_shape == [1, 3, 32, 32] and result.input_names == ["input"]
    assert result.max_abs_diff < 1e-4 and result.max_rel_diff < 1e-3
    assert result.nodes_after <= result.nodes_before
    assert sum(result.ops_after.values()) <= sum(result.ops_before.values())
    assert result.size_bytes == result.path.stat().st_size
    assert sorted(p.name for p in result.path.parent.iterdir()) == ["resnet20.onnx"]  # no staging left
    x = _inputs(1, seed=5)
    out = make_session(result.path).run(None, {"input": x})[0]
    np.testing.assert_allclose(out, _torch_out(built.model, x), atol=1e-4, rtol=1e-3)


def test_batchnorm_from_0_1_images_exports_and_passes_the_check(tmp_path):
    """What LRASPP met: a file that matches on the model's own inputs, and only misses an element-wise
    tolerance on N(0, 1) noise (outputs in the hundreds, some near 0): it is checked on its images."""
    from edgeprune.export.checks import Diff
    from models.segmenter import segmenter_bn_from_pixels

    model = segmenter_bn_from_pixels()
    images = np.random.default_rng(1).random((8, 3, 64, 64), dtype=np.float32)  # pixels / 255, as the model saw
    # the torchscript exporter is quicker here; the check is the same for both exporters
    result = export_onnx(model, (1, 3, 64, 64), tmp_path / "seg.onnx", exporter="torchscript", check_inputs=images)
    assert result.checked_on == "8 images" and result.max_rel_diff < 1e-4 and result.path.is_file()
    session = make_session(result.path)
    noise = _inputs(1, (3, 64, 64))
    got, want = session.run(None, {"input": noise})[0], _torch_out(model, noise)
    assert np.abs(want).max() > 100  # noise far outside what BatchNorm was estimated on
    assert not np.all(np.abs(got - want) <= 1e-4 + 1e-3 * np.abs(want))  # the element-wise check refused this
    assert Diff.between([got], [want], 1e-4, 1e-3).ok  # against the output's scale it is float32 rounding


def test_check_inputs_that_do_not_fit_are_one_line(tmp_path):
    with pytest.raises(EdgepruneError, match=r"check inputs of shape \(4, 1, 32, 32\) do not fit the model's input"):
        export_onnx(build("resnet20-cifar").model, (1, 3, 32, 32), tmp_path / "m.onnx",
                    check_inputs=np.zeros((4, 1, 32, 32), np.float32))
    assert not list(tmp_path.iterdir())


def test_mobilenet_exports_and_simplifies(zoo_model, tmp_path):
    built = zoo_model("mobilenetv1-cifar")
    built.model.train()
    result = export_onnx(built.model, built.input_shape, tmp_path / "mbv1.onnx")
    assert result.max_abs_diff < 1e-4 and result.nodes_after <= result.nodes_before
    assert result.ops_after.get("Conv") == 27 and "BatchNormalization" not in result.ops_after
    assert load_onnx_checked(result.path).graph.output[0].name == "output"
    assert built.model.training  # exported in eval mode, then given back its mode


def test_dynamic_batch_checks_two_batch_sizes(zoo_model, tmp_path, caplog):
    built = zoo_model("resnet20-cifar")
    with caplog.at_level(logging.DEBUG, logger="edgeprune.export"):
        result = export_onnx(built.model, built.input_shape, tmp_path / "dyn.onnx", dynamic_batch=True)
    assert result.input_shape[0] == "batch" and result.dynamic_batch
    assert "over batches [1, 3, 1]" in caplog.text
    x = _inputs(5)
    out = make_session(result.path).run(None, {"input": x})[0]
    np.testing.assert_allclose(out, _torch_out(built.model, x), atol=1e-4, rtol=1e-3)


def test_failed_check_raises_with_numbers_and_writes_nothing(tmp_path):
    target = tmp_path / "bad.onnx"
    target.write_bytes(b"previous file")
    with pytest.raises(EdgepruneError, match=r"max abs diff 1,.*bad.onnx was not written"):
        export_onnx(ExportsDifferently(), (1, 2, 4, 4), target)
    assert target.read_bytes() == b"previous file"
    assert [p.name for p in tmp_path.iterdir()] == ["bad.onnx"]


def test_no_output_when_export_itself_fails(tmp_path):
    with pytest.raises(EdgepruneError, match="ONNX"):
        export_onnx(nn.Conv2d(3, 4, 3), (1, 5, 8, 8), tmp_path / "wrong_channels.onnx")
    assert list(tmp_path.iterdir()) == []


def test_falls_back_to_torchscript_with_warning(tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator\nlong trace")

    monkeypatch.setattr(onnx_export, "_export_dynamo", broken)
    with caplog.at_level(logging.WARNING, logger="edgeprune.export"):
        result = export_onnx(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), (1, 3, 8, 8), tmp_path / "ts.onnx")
    assert result.exporter == "torchscript" and result.max_abs_diff < 1e-5
    assert "falling back" in caplog.text and "unsupported operator" in caplog.text
    with pytest.raises(EdgepruneError, match="dynamo ONNX exporter failed: unsupported operator$"):
        export_onnx(nn.Conv2d(3, 4, 3), (1, 3, 8, 8), tmp_path / "d.onnx", exporter="dynamo")


def test_external_data_above_the_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "MAX_EMBEDDED_BYTES", 0)
    result = export_onnx(nn.Conv2d(3, 8, 3), (1, 3, 8, 8), tmp_path / "big.onnx")
    assert result.external_data and not result.simplified
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert result.size_bytes > result.path.stat().st_size
    make_session(result.path)


@pytest.mark.parametrize("content", [b"", b"not a protobuf \x00\xff garbage"])
def test_corrupt_onnx_is_one_line_error(tmp_path, content):
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(content)
    with pytest.raises(EdgepruneError, match="corrupt.onnx is not a valid ONNX model: ") as info:
        load_onnx_checked(path)
    assert "\n" not in str(info.value)
    with pytest.raises(EdgepruneError, match="missing.onnx is not a valid ONNX model: file not found"):
        load_onnx_checked(tmp_path / "missing.onnx")


def test_int8_qdq_smaller_runs_and_stays_close(resnet20, tmp_path):
    built, fp32 = resnet20
    calibration = [_inputs(8, seed=1), _inputs(8, seed=2)]
    q = quantize_int8(fp32.path, tmp_path / "r20.int8.onnx", calibration)
    assert q.calibration_images == 16 and q.quantize_nodes > 0
    assert q.float_size_bytes == fp32.size_bytes and q.size_bytes < 0.5 * fp32.size_bytes
    assert "QuantizeLinear" in {n.op_type for n in load_onnx_checked(q.path).graph.node}
    x = _inputs(8, seed=3)
    float_out = run_batches(make_session(fp32.path), x)
    int8_out = run_batches(make_session(q.path), x)
    assert np.isfinite(int8_out).all()
    assert np.linalg.norm(int8_out - float_out) < 0.3 * np.linalg.norm(float_out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r20.int8.onnx"]


def _negated_fc(quantize_static):
    """``quantize_static`` that writes a broken file: the classifier's INT8 weights negated."""
    import onnx
    from onnx import numpy_helper

    def broken(model_input, model_output, *args, **kwargs):
        quantize_static(model_input, model_output, *args, **kwargs)
        model = onnx.load(str(model_output))
        for tensor in model.graph.initializer:
            values = numpy_helper.to_array(tensor)
            if values.dtype == np.int8 and values.ndim == 2:  # the Linear layer's weights
                tensor.CopyFrom(numpy_helper.from_array(-np.maximum(values, -127), tensor.name))
        onnx.save(model, str(model_output))
    return broken


def test_int8_files_are_judged_and_a_broken_one_is_refused(resnet20, tmp_path, monkeypatch):
    import onnxruntime.quantization as ortq

    _, fp32 = resnet20
    calibration = _inputs(16, seed=1)
    good = quantize_int8(fp32.path, tmp_path / "good.int8.onnx", calibration)
    assert good.cosine_min > 0.9  # worst output's cosine to float on the calibration images
    monkeypatch.setattr(ortq, "quantize_static", _negated_fc(ortq.quantize_static))
    with pytest.raises(EdgepruneError, match=r"bad.int8.onnx: the INT8 file is broken: its worst output has cosine -0\.9"):
        quantize_int8(fp32.path, tmp_path / "bad.int8.onnx", calibration)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.int8.onnx"]


@pytest.mark.parametrize("cosine, kept", [(0.51, True), (0.49, False)])
def test_the_int8_judgement_draws_its_line_at_a_cosine_of_one_half(cosine, kept):
    """Just above INT8_MIN_COSINE (0.5) a file is kept, just below it is refused (the broken file
    above sits far below it, at -0.9)."""
    from edgeprune.quality import judge_int8

    reference = [np.array([[1.0, 0.0], [0.0, 2.0]])]  # two images; each quantised one at the same angle
    quantised = [np.array([[cosine, np.sqrt(1 - cosine ** 2)], [2 * np.sqrt(1 - cosine ** 2), 2 * cosine]])]
    if kept:
        assert judge_int8(reference, quantised, "m.int8.onnx") == pytest.approx(cosine)
    else:
        with pytest.raises(EdgepruneError, match=r"m.int8.onnx: the INT8 file is broken: its worst output has cosine "
                                                 r"0\.490 .* on 2 calibration images \(a correct one stays above 0\.5\)"):
            judge_int8(reference, quantised, "m.int8.onnx")


def test_int8_takes_a_get_next_reader(tmp_path):
    fp32 = export_onnx(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), (2, 3, 8, 8), tmp_path / "net.onnx")

    class Reader:
        def __init__(self):
            self.feeds = iter([{"input": _inputs(2, (3, 8, 8), seed=s)} for s in range(3)])

        def get_next(self):
            return next(self.feeds, None)

    q = quantize_int8(fp32.path, tmp_path / "net.int8.onnx", Reader(), per_channel=False, method="entropy")
    assert q.calibration_images == 6 and q.method == "entropy"


def test_int8_bad_calibration_writes_nothing(resnet20, tmp_path):
    _, fp32 = resnet20
    out = tmp_path / "q.onnx"
    with pytest.raises(EdgepruneError, match="no images"):
        quantize_int8(fp32.path, out, [])
    with pytest.raises(EdgepruneError, match="4-D"):
        quantize_int8(fp32.path, out, [np.zeros((3, 32, 32), np.float32)])
    with pytest.raises(EdgepruneError, match="unknown calibration method"):
        quantize_int8(fp32.path, out, _inputs(2), method="kl")
    assert list(tmp_path.iterdir()) == []


def test_onnx_accuracy_batches_and_remainders(tmp_path):
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).eval()
    x = _inputs(10, (3, 2, 2))
    labels = _torch_out(net, x).argmax(1)
    for shape, dynamic in [((1, 3, 2, 2), False), ((4, 3, 2, 2), False), ((1, 3, 2, 2), True)]:
        result = export_onnx(net, shape, tmp_path / f"{shape[0]}{dynamic}.onnx", dynamic_batch=dynamic)
        assert onnx_accuracy(result.path, x, labels, batch_size=4) == 1.0
    assert onnx_accuracy(result.path, x, (labels + 1) % 5) == 0.0


def test_ort_format_written_and_loadable(resnet20, tmp_path):
    _, fp32 = resnet20
    ort_path = to_ort_format(fp32.path, tmp_path / "r20.ort")
    assert ort_path.read_bytes()[4:8] == b"ORTM"
    assert (tmp_path / "r20.required_operators.config").is_file()
    x = _inputs(1)
    expected = make_session(fp32.path).run(None, {"input": x})[0]
    np.testing.assert_allclose(make_session(ort_path).run(None, {"input": x})[0], expected, atol=1e-4, rtol=1e-3)
    with pytest.raises(EdgepruneError, match="not a valid ONNX model"):
        to_ort_format(tmp_path / "r20.required_operators.config")


def test_cli_export_int8_ort_json(tmp_path):
    import edgeprune.cli.export  # noqa: F401  (registers the command if the CLI does not yet)
    from edgeprune.cli import main

    rng = np.random.default_rng(0)
    data = tmp_path / "calib.npz"
    np.savez(data, x=rng.integers(0, 255, (24, 3, 32, 32), dtype=np.uint8), y=rng.integers(0, 10, 24))
    out = tmp_path / "model.onnx"
    result = CliRunner().invoke(main, ["export", "resnet20-cifar", "-o", str(out), "--int8", "--calib", str(data),
                                       "--ort", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["onnx"]["max_abs_diff"] < 1e-4 and summary["int8"]["quantize_nodes"] > 0
    assert 0.0 <= summary["int8"]["accuracy"]["int8"] <= 1.0
    assert sorted(summary["ort"]) == [str(tmp_path / "model.int8.ort"), str(tmp_path / "model.ort")]

    missing = CliRunner().invoke(main, ["export", "resnet20-cifar", "-o", str(tmp_path / "x.onnx"), "--int8"])
    assert missing.exit_code == 2 and "--calib" in missing.output
    assert not (tmp_path / "x.onnx").exists()
