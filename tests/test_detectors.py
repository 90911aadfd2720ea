"""Detectors as users ship them: a YOLO-like net of our own (tests/models/yolo_like.py), channel
splits pruned rather than pinned, heads that keep their shape, attention never corrupted."""
from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

import numpy as np

from edgeprune.api import prune
from edgeprune.calibration import load_data
from edgeprune.checkpoint import load_model, save_checkpoint
from edgeprune.errors import EdgepruneError
from edgeprune.export import load_onnx_checked, quantize_int8
from edgeprune.export.onnx_export import export_onnx
from edgeprune.graph import build_graph
from edgeprune.outputs import flatten
from edgeprune.export.runtime import onnx_outputs
from edgeprune.quality import scores_cosine, torch_outputs
from edgeprune.runtimes import RUNTIMES, check_runtime
from edgeprune.surgery import zero_channels
from models.yolo_like import OneLevel, YoloLike, norms_from, yolo_like

SPEC = "tests/models/yolo_like.py:yolo_like"
SHAPE = YoloLike.input_shape


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return flatten(model.eval()(x))


def _assert_equal_to_zero_masked(result, dense: nn.Module, x: torch.Tensor) -> None:
    reference = zero_channels(copy.deepcopy(dense), result.graph, result.plan.keep)
    for got, want in zip(_outputs(result.model, x), _outputs(reference, x)):
        assert float((got - want).norm() / want.norm()) <= 1e-5


@pytest.fixture(scope="module")
def pruned():
    """The YOLO-like net cut by 30 % and 50 % of its MACs (built once for the module's tests)."""
    dense = yolo_like()
    return dense, {cut: prune(dense, SHAPE, criterion="l2", flops_cut=cut) for cut in (0.3, 0.5)}


@pytest.mark.parametrize("cut", [0.3, 0.5])
def test_yolo_like_reaches_the_cut_and_equals_the_zero_masked_model(pruned, cut):
    dense, results = pruned
    result = results[cut]
    assert abs(result.plan.macs_cut - cut) < 0.02  # reached, not lost to pinned channels
    _assert_equal_to_zero_masked(result, dense, torch.rand((2,) + SHAPE[1:], generator=torch.Generator().manual_seed(3)))
    model = result.model
    c2f = model.model[2]
    assert c2f.cv1.conv.out_channels == 2 * c2f.m[0].cv1.conv.in_channels  # chunk(2): both halves lost the same
    split = model.model[6]
    assert split.c < 64 and split.cv1.conv.out_channels == 2 * split.c  # split((self.c, self.c)): c followed
    head = model.model[-1]
    assert torch.equal(head.dfl.conv.weight, dense.model[-1].dfl.conv.weight)  # does not train: never pruned
    assert [o.shape for o in _outputs(model, torch.zeros(SHAPE))] == [o.shape for o in _outputs(dense, torch.zeros(SHAPE))]


def test_attention_that_reuses_the_input_width_is_kept_whole_with_a_warning(pruned):
    dense, results = pruned
    attn = results[0.5].model.model[10].m[0].attn
    original = dense.model[10].m[0].attn
    assert attn.qkv.conv.weight.shape == original.qkv.conv.weight.shape
    assert attn.proj.conv.weight.shape == original.proj.conv.weight.shape
    assert any("cutting it breaks the forward" in w and "view(B, C, H, W)" in w for w in results[0.5].warnings)


def test_the_shrink_check_leaves_the_model_as_it_was():
    from edgeprune.surgery.check import checked_graph

    model = yolo_like()
    before = {name: (t, t.clone()) for name, t in list(model.named_parameters()) + list(model.named_buffers())}
    attributes = {name: dict(vars(m)) for name, m in model.named_modules()}
    graph = checked_graph(model, SHAPE)
    assert any(g.frozen.all() and g.n_units > 1 for g in graph.groups)  # it did cut and trace a shrunk model
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        assert t is before[name][0] and torch.equal(t, before[name][1])
    assert {name: dict(vars(m)) for name, m in model.named_modules()} == attributes


def test_pruned_yolo_like_reloads_from_its_checkpoint_with_its_split_sizes(pruned, tmp_path):
    _, results = pruned
    model = results[0.5].model
    path = save_checkpoint(model, tmp_path / "yolo.pt", spec=SPEC, input_shape=SHAPE)
    loaded = load_model(str(path))
    assert loaded.model.model[6].c == model.model[6].c
    x = torch.rand((2,) + SHAPE[1:])
    for got, want in zip(_outputs(loaded.model, x), _outputs(model, x)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("cut", [0.3, 0.5])
def test_pruned_yolo_like_exports_to_onnx(pruned, cut, tmp_path):
    # boxes in pixels (hundreds): the check holds them to their own scale's float32 noise
    result = export_onnx(pruned[1][cut].model, SHAPE, tmp_path / "yolo.onnx")
    assert result.max_abs_diff < 1e-2 and len(result.output_names) == 4  # decoded + three raw maps


@pytest.mark.parametrize("runtime", [name for name, r in RUNTIMES.items() if r.missing() is None])
def test_pruned_yolo_like_runs_in_each_runtime(pruned, runtime, tmp_path):
    model = pruned[1][0.5].model.eval()
    target = RUNTIMES[runtime]
    exported = target.export(model, torch.rand(SHAPE), tmp_path / f"yolo{target.suffix}")
    assert check_runtime(model, exported).ok


# ---- INT8 that keeps the scores: the decode stays float --------------------------------------

@pytest.fixture(scope="module")
def digits():
    """Real images, 64x64 RGB mnist5k digits: 64 to set the norms on (a trained net's match its data)
    and calibrate on, 16 held out."""
    return {split: load_data("mnist5k", split=split, channels=3, size=SHAPE[2:], limit=limit).x
            for split, limit in (("train", 64), ("val", 16))}


@pytest.fixture(scope="module")
def yolo_onnx(digits, tmp_path_factory):
    model = norms_from(yolo_like(), torch.from_numpy(digits["train"]))
    path = tmp_path_factory.mktemp("yolo") / "yolo.onnx"
    return export_onnx(model, SHAPE, path, check_inputs=digits["train"][:4]).path


def test_onnxruntime_int8_keeps_a_detectors_scores(yolo_onnx, digits):
    # boxes in pixels and scores in [0, 1] quantised together after the final Concat: every score 0
    quantised = quantize_int8(yolo_onnx, yolo_onnx.with_name("yolo.int8.onnx"), digits["train"][:32])
    assert quantised.float_nodes > 0 and quantised.scores_cosine >= 0.99  # judged on calibration images
    held_out = digits["val"]
    assert scores_cosine(onnx_outputs(yolo_onnx, held_out), onnx_outputs(quantised.path, held_out)) >= 0.99
    graph = load_onnx_checked(quantised.path).graph
    producer = {tensor: node for node in graph.node for tensor in node.output}
    final = producer[graph.output[0].name]
    assert final.op_type == "Concat" and all(producer[t].op_type != "DequantizeLinear" for t in final.input)


def test_an_int8_file_whose_scores_collapse_is_refused(yolo_onnx, digits):
    out = yolo_onnx.with_name("collapsed.int8.onnx")
    with pytest.raises(EdgepruneError, match=r"its worst output has cosine 0\.000 \(output0\.scores\)"):
        quantize_int8(yolo_onnx, out, digits["train"][:32], float_decode=False)  # the boxes alone look fine
    assert not out.exists()


@pytest.mark.skipif(RUNTIMES["executorch"].missing() is not None, reason="executorch is not installed")
def test_executorch_int8_keeps_a_detectors_scores(digits):
    # the PT2E-quantised graph run in PyTorch: the numbers its .pte gives, without the slow lowering
    from edgeprune.runtimes.executorch_xnnpack import ExecuTorchRuntime

    model = norms_from(OneLevel(), torch.from_numpy(digits["train"]))
    quantised = ExecuTorchRuntime()._quantised(model, torch.zeros(SHAPE), digits["train"][:8])
    held_out = digits["val"]
    with torch.no_grad():  # the exported graph takes batch 1
        rows = [[t.numpy() for t in flatten(quantised(torch.from_numpy(image[None])))] for image in held_out]
    assert scores_cosine(torch_outputs(model, held_out), [np.concatenate(column) for column in zip(*rows)]) >= 0.99
    final = next(node for node in quantised.graph.nodes if node.op == "output").args[0][0]  # the decoded output
    assert final.target == torch.ops.aten.cat.default  # computed in float: no quantize / dequantize after it
    assert not any("quantize" in str(node.target) for node in final.all_input_nodes)


# ---- the rules behind it, on small nets -----------------------------------------------------

class Halves(nn.Module):
    """chunk(2) of a conv's output, one half through a conv, both concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(8, 3, 1)

    def forward(self, x):
        left, right = self.a(x).chunk(2, 1)
        return self.c(torch.cat([left, torch.relu(self.b(right))], 1))


def test_chunk_pieces_are_pruned_and_lose_equal_numbers():
    dense = Halves().eval()
    group = build_graph(dense, (1, 3, 8, 8)).group_of_module("a")
    assert group.n_prunable == 8 and group.blocks is not None
    result = prune(dense, (1, 3, 8, 8), criterion="random", ratio=0.5)
    assert result.model.a.out_channels == 4 and result.model.b.in_channels == 2
    _assert_equal_to_zero_masked(result, dense, torch.randn(2, 3, 8, 8))


class LiteralSplit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 3, 1)

    def forward(self, x):
        left, right = self.a(x).split([3, 5], 1)  # numbers in the code: they cannot follow pruning
        return self.c(torch.cat([right, left], 1))


def test_split_sizes_written_as_numbers_pin_the_channels_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        result = prune(LiteralSplit().eval(), (1, 3, 8, 8), ratio=0.5)
    assert result.model.a.out_channels == 8
    assert any("split sizes [3, 5]" in w and "not each one int attribute" in w for w in result.warnings)


class Frozen(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1)
        self.b.requires_grad_(False)
        self.c = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def test_parameters_that_do_not_train_are_never_pruned():
    result = prune(Frozen().eval(), (1, 3, 8, 8), criterion="random", ratio=0.5)
    assert result.model.b.weight.shape == (8, 8, 1, 1)
    assert result.after.macs == result.before.macs


class UpConv(nn.Module):
    """A decoder step: a transposed conv upsamples, a conv follows (U-Nets, YOLO-seg's proto head)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.b = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.b(torch.relu(self.up(torch.relu(self.a(x)))))


def test_transposed_convolutions_are_pruned_on_both_sides():
    dense = UpConv().eval()
    result = prune(dense, (1, 3, 8, 8), criterion="random", ratio=0.5)
    assert (result.model.up.in_channels, result.model.up.out_channels) == (4, 3)
    assert result.after.macs < result.before.macs and result.warnings == []
    _assert_equal_to_zero_masked(result, dense, torch.randn(2, 3, 8, 8))
