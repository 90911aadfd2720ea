"""``edgeprune export``: ONNX with a numerical check, optionally INT8 and ORT format."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeprune.cli import main
from edgeprune.cli.options import (
    emit_json,
    input_shape_option,
    model_argument,
    preprocess_choice,
    preprocess_options,
    runtime_option,
    weights_option,
)


@main.command()
@model_argument
@weights_option
@input_shape_option
@preprocess_options
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="ONNX file to write.")
@click.option("--bake-preprocess", is_flag=True,
              help="Put the model's preprocessing inside the graph: the ONNX input is then raw 0-255 RGB pixels.")
@click.option("--label-output", metavar="NAME", help="With --int8 on labelled data: the output the labels belong to.")
@click.option("--dynamic-batch", is_flag=True, help="Leave the batch dimension free (checked with batches of 1 and 3).")
@click.option("--opset", type=click.IntRange(min=7), help="ONNX opset [default: the exporter's, 20 with torch 2.15].")
@click.option("--no-simplify", is_flag=True, help="Keep the exporter's graph (skip onnxsim).")
@click.option("--atol", type=click.FloatRange(min=0), default=1e-4, show_default=True, help="Absolute tolerance of the onnxruntime-vs-PyTorch check.")
@click.option("--rtol", type=click.FloatRange(min=0), default=1e-3, show_default=True, help="Relative tolerance of that check.")
@click.option("--exporter", type=click.Choice(["auto", "dynamo", "torchscript"]), default="auto", show_default=True,
              help="auto: dynamo, falling back to TorchScript if it fails.")
@click.option("--int8", is_flag=True, help="Also write OUT.int8.onnx (static INT8, QDQ); needs --calib.")
@click.option("--calib", metavar="SOURCE", help="The model's own images (cifar10:DIR, folder:DIR, X.npz, mnist5k): every "
              "file is checked against PyTorch on them instead of on noise, and --int8 calibrates on them.")
@click.option("--calib-limit", type=click.IntRange(min=1), default=256, show_default=True, help="Calibration images to use.")
@click.option("--calib-method", type=click.Choice(["minmax", "entropy", "percentile", "distribution"]), default="minmax", show_default=True)
@click.option("--per-tensor", is_flag=True, help="One weight scale per tensor instead of per output channel.")
@click.option("--eval-limit", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Labelled held-out images for the float vs INT8 accuracy (0: skip).")
@click.option("--ort", "ort_format", is_flag=True, help="Also write the ORT format (.ort) of each ONNX file, for onnxruntime mobile.")
@runtime_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of tables.")
def export(model, weights, input_shape, output, bake_preprocess, label_output, dynamic_batch, opset, no_simplify, atol,
           rtol, exporter, int8, calib, calib_limit, calib_method, per_tensor, eval_limit, ort_format, runtimes, as_json,
           **kwargs):
    """Export MODEL (default: the built-in model) to ONNX and check onnxruntime against PyTorch.

    A model with several outputs gets one named ONNX output per tensor it returns.
    """
    if int8 and not calib:
        raise click.UsageError("--int8 needs --calib SOURCE")
    if int8 and bake_preprocess:
        raise click.UsageError("--bake-preprocess takes raw pixels, --int8 calibrates on preprocessed inputs: "
                               "export one of them at a time")
    from edgeprune.checkpoint import load_model
    from edgeprune.export import export_onnx, to_ort_format, with_preprocessing
    from edgeprune.export.checks import CHECK_IMAGES
    from edgeprune.paths import check_writable
    from edgeprune.runtimes import resolve_runtimes

    check_writable(output)
    chosen = resolve_runtimes(runtimes)
    choice = preprocess_choice(kwargs)
    loaded = load_model(model, weights, input_shape)
    preprocess = choice.resolve(loaded.preprocess, calib, loaded.input_shape)
    net = with_preprocessing(loaded.model, preprocess, loaded.input_shape[1]) if bake_preprocess else loaded.model
    images = _calibration_images(calib, loaded.input_shape, preprocess, calib_limit) if calib else None
    checked = None if images is None else images[:CHECK_IMAGES]  # every file is checked on these
    if checked is not None and bake_preprocess:
        checked = net.pixels_of(checked)
    result = export_onnx(net, loaded.input_shape, output, opset=opset, dynamic_batch=dynamic_batch,
                         simplify=not no_simplify, atol=atol, rtol=rtol, exporter=exporter, check_inputs=checked)
    summary: dict[str, Any] = {"model": loaded.spec, "onnx": result.to_dict(), "preprocess": preprocess.to_dict(),
                               "input": "raw 0-255 RGB pixels" if bake_preprocess else "preprocessed"}
    if int8:
        summary["int8"] = _int8(result, loaded.input_shape, calib, images, preprocess, label_output, calib_method,
                                not per_tensor, eval_limit)
    if ort_format:
        summary["ort"] = [str(to_ort_format(p)) for p in [result.path, summary.get("int8", {}).get("path")] if p]
    if chosen:
        summary["runtimes"] = _runtime_files(chosen, net, loaded.input_shape, Path(output), atol, rtol,
                                             images if int8 else None, checked)
    if as_json:
        emit_json(summary)
        return
    _print_summary(summary, atol, rtol)
    for name, r in summary.get("runtimes", {}).items():
        click.echo(f"{name}: wrote {', '.join(r['files'])}; checked against PyTorch: max abs {r['max_abs']:.3g}, "
                   f"max rel {r['max_rel']:.3g}")
        quantised = r.get("int8")
        if quantised:
            click.echo(f"{name}: no INT8 file: {quantised['error']}" if "error" in quantised else
                       f"{name}: wrote {quantised['file']} (INT8); against float PyTorch on calibration images: "
                       f"worst output cosine {quantised['cosine']:.4f}, max abs difference {quantised['max_abs']:.3g}")


def _runtime_files(runtimes: list[Any], net: Any, input_shape: tuple[int, ...], onnx_path: Path, atol: float,
                   rtol: float, calibration: Any = None, checked: Any = None) -> dict[str, Any]:
    """Each runtime's file beside the ONNX one (OUT.pte, OUT.ncnn.param/.bin), checked against PyTorch
    (on ``checked`` images when given); with ``calibration`` images, also OUT.int8.pte where the
    runtime has INT8 (its distance recorded)."""
    from edgeprune.runtimes import export_checked

    found = {}
    for runtime in runtimes:
        exported, diff = export_checked(runtime, net, input_shape, onnx_path.with_suffix(runtime.suffix), atol=atol,
                                        rtol=rtol, check_inputs=checked)
        found[runtime.name] = {"files": [str(p) for p in exported.files], "max_abs": diff.max_abs, "max_rel": diff.max_rel}
        if calibration is not None and runtime.int8_missing:
            found[runtime.name]["int8"] = {"error": runtime.int8_missing}
        elif calibration is not None:
            quantised, distance = export_checked(runtime, net, input_shape,
                                                 onnx_path.with_suffix(".int8" + runtime.suffix), calibration)
            found[runtime.name]["int8"] = {"file": str(quantised.path), "max_abs": distance.max_abs,
                                           "cosine": quantised.int8_cosine, "scores_cosine": quantised.int8_scores_cosine}
    return found


def _calibration_images(calib: str, input_shape: tuple[int, ...], preprocess: Any, limit: int) -> Any:
    """Images from ``calib``'s train split, preprocessed as the model expects (the INT8 calibration set)."""
    from edgeprune.calibration import load_data
    from edgeprune.errors import EdgepruneError

    if len(input_shape) != 4:
        raise EdgepruneError(f"--calib needs an image model (N x C x H x W input), this one takes {tuple(input_shape)}")
    return load_data(calib, split="train", limit=limit, channels=input_shape[1], size=tuple(input_shape[2:]),
                     preprocess=preprocess).x


def _int8(exported: Any, input_shape: tuple[int, ...], calib: str, images: Any, preprocess: Any,
          label_output: str | None, method: str, per_channel: bool, eval_limit: int) -> dict[str, Any]:
    """Quantise with ``images`` (from ``calib``'s train split); compare INT8 with float, output by
    output, on held-out images (and their accuracies, when labelled)."""
    from edgeprune.calibration import has_test_split, load_data
    from edgeprune.export import quantize_int8
    from edgeprune.outputs import describe, pick_label_output
    from edgeprune.export.runtime import onnx_outputs
    from edgeprune.quality import accuracy, compare

    size = tuple(input_shape[2:])
    common = dict(channels=input_shape[1], size=size, preprocess=preprocess)
    onnx_path = Path(exported.path)
    out = onnx_path.with_name(f"{onnx_path.stem}.int8.onnx")
    info = quantize_int8(onnx_path, out, images, per_channel=per_channel, method=method).to_dict()
    if eval_limit:
        split = "test" if has_test_split(calib, size, preprocess) else "val"
        held_out = load_data(calib, split=split, limit=eval_limit, **common)
        dense, quantised = onnx_outputs(onnx_path, held_out.x), onnx_outputs(out, held_out.x)
        names = exported.output_names
        labels = None
        if held_out.y is not None:
            labels = pick_label_output(dense, names, label_output, held_out.y, calib)
        info["fidelity"] = {"split": split, "images": len(held_out),
                            "outputs": compare(dense, quantised, describe(dense, names, label_output=labels))}
        if labels is not None:
            info["accuracy"] = {"split": split, "images": len(held_out), "float": accuracy(dense, labels, held_out.y),
                                "int8": accuracy(quantised, labels, held_out.y)}
    return info


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _print_summary(s: dict[str, Any], atol: float, rtol: float) -> None:
    r = s["onnx"]
    ops = sorted(set(r["ops_before"]) | set(r["ops_after"]), key=lambda op: -r["ops_before"].get(op, 0))
    width = max([len(op) for op in ops] + [10])
    click.echo(f"{'op':<{width}}  {'before':>10}  {'after':>10}")
    for op in ops:
        click.echo(f"{op:<{width}}  {r['ops_before'].get(op, 0):>10}  {r['ops_after'].get(op, 0):>10}")
    click.echo(f"{'nodes':<{width}}  {r['nodes_before']:>10}  {r['nodes_after']:>10}")
    click.echo(f"{'size':<{width}}  {_size(r['size_before_bytes']):>10}  {_size(r['size_bytes']):>10}")
    click.echo(f"check      max abs diff {r['max_abs_diff']:.3g}, {r['max_rel_diff']:.3g} of the output's scale"
               f"   (atol {atol:g}, rtol {rtol:g}; on {r['checked_on']})")
    click.echo(f"exporter   {r['exporter']}, opset {r['opset']}, input {r['input_names'][0]} {r['input_shape']}"
               f"{'' if r['simplified'] else ', not simplified'}")
    click.echo(f"wrote      {r['path']}")
    if "int8" in s:
        _print_int8(s["int8"])
    if "ort" in s:
        click.echo(f"ort        {', '.join(s['ort'])}")


def _print_int8(q: dict[str, Any]) -> None:
    granularity = "per-channel" if q["per_channel"] else "per-tensor"
    click.echo(f"int8       {q['path']}  {_size(q['size_bytes'])} ({q['size_bytes'] / q['float_size_bytes'] - 1:+.0%}),"
               f" {q['quantize_nodes']} QuantizeLinear, {q['calibration_images']} calibration images"
               f" ({q['method']}, {granularity})")
    if q.get("cosine_min") is not None:
        click.echo(f"int8 check worst output cosine {q['cosine_min']:.4f} to float on calibration images")
    if q.get("float_nodes"):
        scores = "" if q.get("scores_cosine") is None else f"; its class scores' cosine {q['scores_cosine']:.4f} to float"
        click.echo(f"int8 float the decode of the detections output ({q['float_nodes']} nodes){scores}")
    for r in q.get("fidelity", {}).get("outputs", []):
        click.echo(f"fidelity   {r['output']}: cosine {r['cosine']:.4f}, relative L2 error {r['rel_l2']:.4f} against float"
                   f" ({q['fidelity']['images']} {q['fidelity']['split']} images)")
    if "accuracy" in q:
        a = q["accuracy"]
        click.echo(f"accuracy   float {a['float']:.4f} -> int8 {a['int8']:.4f} ({a['int8'] - a['float']:+.4f},"
                   f" {a['images']} {a['split']} images)")
