"""The stages of ``compress`` after :mod:`~edgeprune.pipeline.prepare`, each one job, in order:

prune and recover -> export -> quantise -> quality -> profile -> report.

A *variant* is one row of the report (dense, pruned, and their INT8 versions): a dict that each
stage adds its figures to.
"""
from __future__ import annotations

import copy
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgeprune.allocation import SensitivityPlanner
from edgeprune.calibration import sample
from edgeprune.checkpoint import save_checkpoint
from edgeprune.counter import compare_layers
from edgeprune.criteria import criterion_entry
from edgeprune.errors import EdgepruneError
from edgeprune.export import export_onnx as export, quantize_int8, to_ort_format, with_preprocessing
from edgeprune.export.checks import CHECK_IMAGES
from edgeprune.export.runtime import onnx_outputs
from edgeprune.latency import Budget, LatencyPlanner, ModelTimer, complete, settings_of
from edgeprune.metrics.detection import box_map
from edgeprune.metrics.segmentation import mean_iou
from edgeprune.pipeline.options import SpeedTarget
from edgeprune.pipeline.prepare import Job
from edgeprune.profile import BenchConfig, SpeedupEstimate, compare_models
from edgeprune.progress import Progress
from edgeprune.quality import accuracy, compare, summary, torch_outputs
from edgeprune.recipes import RecipeConfig, RecipeData, Watch, prunes_softly, recipe_name, run_recipe, split_holdout
from edgeprune.runtimes import export_checked, resolve_runtimes
from edgeprune.runtimes.base import runtime_outputs
from edgeprune.sensitivity import Sensitivity, analyse
from edgeprune.train.reconstruct import ReconstructConfig

FIDELITY_EACH_EPOCH = 256  # held-out images the per-epoch fidelity is measured on
KEEP_BETTER_IMAGES = 256  # training images (at most a quarter) kept from recovery to judge the cut against
# the fine-tuned model


def planner_for(job: Job, progress: Progress) -> Any:
    """The planner the options ask for: a latency budget's, a sensitivity allocation's, or None (the
    options' MACs cut or ratio). Close it with :func:`close_planner` once the cut is made."""
    if job.options.latency_driven:
        return latency_planner(job, progress)
    if job.options.allocate == "sensitivity":
        return sensitivity_planner(job, progress)
    return None


def close_planner(planner: Any) -> None:
    """Remove what a planner made while planning (a latency planner's exported ONNX files)."""
    if getattr(planner, "measure", None) is not None:
        planner.measure.close()


def latency_planner(job: Job, progress: Progress) -> Any:
    """The planner that meets the options' latency budget, from the table :func:`open_latency_table` opened.

    With this machine's table, missing points are measured first and the plan is confirmed by
    measuring here. With a table from a board (``--lut``), the board's own dense time is the
    start and the plan rests on the table's prediction.
    """
    options, target, table = job.options, job.target, job.latency.table
    budget = Budget(options.latency_budget, options.speedup)
    common = dict(round_to=job.round_to, progress=progress,
                  sensitivity=sensitivity_curves(job, progress) if options.allocate == "sensitivity" else None)
    if not table.measured_here:
        progress(f"latency table from another machine ({table.data['machine'].get('cpu') or 'unknown CPU'}): "
                 "the plan rests on its prediction; measure the result there with `edgeprune bench`")
        return LatencyPlanner(table, budget, None, dense_ms=job.latency.board_dense_ms, **common)
    settings = settings_of(target, runtime=job.runtime)
    missing = sum(len(layer["points"]) for layer in table.missing(job.latency.shapes))
    if missing:
        progress(f"measuring the {job.runtime} latency table: {missing} points ({settings['threads']} threads), "
                 f"kept in {table.path}")
    complete(table, job.latency.shapes)
    config = BenchConfig.from_target(target, intra_threads=settings["threads"], min_runs=20, min_time=0.5)
    timer = ModelTimer(job.shape, config, target.opset, job.runtime, max_seconds=job.options.max_bench_seconds)
    return LatencyPlanner(table, budget, timer, **common)


def sensitivity_planner(job: Job, progress: Progress) -> Any:
    """Each group's cut to the MACs target from its sensitivity (:func:`sensitivity_curves`)."""
    return SensitivityPlanner(sensitivity_curves(job, progress), job.options.flops_cut, job.round_to)


def sensitivity_curves(job: Job, progress: Progress) -> Any:
    """The given curves, or each group's sensitivity measured now on training images (BatchNorm
    re-estimated on 256 of them, outputs compared on 256 others; the held-out split that the
    report's figures come from is not used to choose), once per job: a floor's trials share them."""
    options = job.options
    key = ("sensitivity", options.criterion, job.round_to)
    if options.sensitivity is not None:
        curves = Sensitivity.load(options.sensitivity)
    elif key in job.measured:  # an earlier trial of a floor's search measured them on the same dense model
        curves = job.measured[key]
    else:
        if job.data.train is None:
            raise EdgepruneError("--allocate sensitivity measures each group on real images: give --calib SOURCE")
        progress("measuring each group's sensitivity (`edgeprune sensitivity -o FILE` keeps it for later runs)")
        calib = sample(job.data.train, 256, seed=options.seed)
        compared = sample(job.data.train, 256, seed=options.seed + 1)
        curves = analyse(job.loaded.model, job.shape, options.criterion, calib.x, compared.x, outputs=job.outputs,
                         round_to=job.round_to, criterion_data=sample(job.data.train, 640, seed=options.seed).x)
        progress(f"sensitivity of {len(curves.curves)} groups measured in {curves.seconds:.0f} s")
        job.measured[key] = curves
    return curves


def _reconstruct_config(job: Job) -> Any:
    """How the run reconstructs right after a cut (None: it re-estimates BatchNorm instead). Not for a
    detector unless asked: the least-squares refit kept its boxes found but not placed (digits
    detector, 50 % of MACs, 30 epochs after it: mAP50 0.78 but mAP50-95 0.36, against 0.67 without)."""
    wanted = job.options.reconstruct if job.options.reconstruct is not None else not job.detector
    if not (wanted and job.outputs):
        return None
    return ReconstructConfig(seed=job.options.seed, device=job.device)


# --- prune and recover --------------------------------------------------------------------------

class HeldOut:
    """Quality of a PyTorch model against the dense one on held-out images, during the run."""

    def __init__(self, job: Job, limit: int) -> None:
        self.job = job
        self.arrays = sample(job.data.evaluation, limit, seed=job.options.seed)
        self.dense = torch_outputs(job.loaded.model, self.arrays.x)

    def figures(self, model: Any) -> dict[str, Any]:
        outputs = torch_outputs(model, self.arrays.x)
        rows = compare(self.dense, outputs, self.job.outputs)
        found: dict[str, Any] = {**summary(rows), "outputs": rows, **label_figures(self.job, outputs, self.arrays)}
        if self.arrays.y is not None and self.job.label_output is not None:
            found["top1"] = accuracy(outputs, self.job.label_output, self.arrays.y)
        return found

    def brief(self, model: Any) -> dict[str, float]:
        return {k: v for k, v in self.figures(model).items() if k != "outputs" and v is not None}


def label_figures(job: Job, outputs: list, arrays: Any) -> dict[str, float]:
    """A detector's mAP50 and mAP50-95 against the images' boxes, after NMS (the options' --conf and
    --iou); a segmenter's mIoU against their masks; nothing without either."""
    found: dict[str, float] = {}
    if arrays.boxes is not None and job.box_output is not None:
        found.update(box_map(outputs[job.box_output], list(arrays.boxes), job.options.conf, job.options.iou,
                             size=(job.shape[-1], job.shape[-2])))
    if arrays.masks is not None and job.mask_output is not None:
        found["miou"] = mean_iou(outputs[job.mask_output], arrays.masks)
    return found


HELD_OUT_FIGURES = (("cosine_min", "cosine {:.4f}"), ("rel_l2_max", "rel. L2 error {:.4f}"),
                    ("top1_agreement_min", "top-1 agreement {:.1%}"), ("box_iou_min", "box IoU {:.4f}"),
                    ("top1", "top-1 {:.1%}"), ("map50_95", "mAP50-95 {:.4f}"), ("miou", "mIoU {:.4f}"))


def _epoch_line(epochs: int, progress: Progress):
    def report(record: Any) -> None:
        parts = ", ".join(f"{name} {value:.4f}" for name, value in record.parts.items())
        held = ", ".join(text.format(record.figures[key]) for key, text in HELD_OUT_FIGURES if key in record.figures)
        progress(f"epoch {record.epoch}/{epochs}: loss {record.loss:.4f} ({parts})"
                 + (f"; held-out (worst output): {held}" if held else ""))
    return report


def prune_and_recover(job: Job, progress: Progress, planner: Any = None) -> Any:
    """The criterion's recipe on a copy of the model: cut, reconstruct (or re-estimate BatchNorm), fine-tune
    or distil; with reconstruction, the better of the cut and the fine-tuned model on training images held out
    from recovery (256, at most a quarter of them) is kept."""
    options, data = job.options, job.data
    reconstruct = _reconstruct_config(job)
    judged_on = min(KEEP_BETTER_IMAGES, len(data.train) // 4) if data.train is not None else 0
    keep_better = reconstruct is not None and job.epochs > 0 and not prunes_softly(options.criterion) and judged_on >= 64
    train, holdout = data.train, None
    if criterion_entry(options.criterion).holdout and data.labelled:
        train, holdout = split_holdout(train, 256, options.seed)
    elif keep_better:
        train, holdout = split_holdout(train, judged_on, options.seed)
    calib = sample(train, 640, seed=options.seed) if train is not None else None
    config = RecipeConfig(options.criterion, flops_cut=options.flops_cut if options.ratio is None else None,
                          ratio=options.ratio, round_to=job.round_to, epochs=job.epochs, steps=options.steps,
                          lr=job.lr, batch_size=options.batch_size, seed=options.seed,
                          recalibrate_bn=options.recalibrate_bn, planner=planner, distill=options.distill,
                          reconstruct=reconstruct,
                          device=job.device, keep_better=keep_better)
    held_out = HeldOut(job, options.eval_images) if data.evaluation is not None and job.outputs else None
    watch = Watch(progress=progress)
    if held_out is not None:
        small = HeldOut(job, FIDELITY_EACH_EPOCH)
        watch = Watch(validate=small.brief, on_epoch=_epoch_line(job.epochs, progress), progress=progress)
    recipe_data = RecipeData(train, holdout, calib, teacher=job.loaded.model, outputs=job.outputs,
                             label_output=job.label_output, watch=watch)
    goal = ("widths from each group's sensitivity" if options.allocate == "sensitivity" else
            "to the latency budget, widths from the table" if planner else f"round to {job.round_to}")
    how = "distilling from the dense model" if options.distill is not None and job.outputs else "cross-entropy"
    if data.boxed:
        how = ("distilling from the dense model, plus the detection loss on the boxes" if how.startswith("distilling")
               else "the detection loss on the boxes")
    if reconstruct is None and options.reconstruct is None and job.detector:
        goal += ", no reconstruction (a detector's boxes lose more to it than they gain: --reconstruct to force)"
    progress(f"pruning with {options.criterion} ({recipe_name(options.criterion, options.steps)}), {goal}"
             + (f", fine-tuning {job.epochs} epochs on {data.spec} ({how})" if job.epochs else ""))
    return run_recipe(copy.deepcopy(job.loaded.model), job.shape, config, recipe_data,
                      evaluate=held_out.figures if held_out is not None else None)


# --- export -------------------------------------------------------------------------------------

def export_models(job: Job, result: Any, staging: Path, progress: Progress) -> tuple[list[dict], dict]:
    """The checkpoint and the ONNX files of the dense and pruned models (checked against PyTorch)."""
    save_checkpoint(result.model, staging / "pruned.pt", spec=job.loaded.spec, input_shape=job.shape,
                    kwargs=job.loaded.kwargs, preprocess=job.preprocess,
                    metadata={"pruned": result.summary(), "target": job.target.name})
    inputs = check_inputs(job)
    progress("exporting to ONNX, simplifying, checking against PyTorch"
             + (f" on {len(inputs)} of the model's own inputs" if inputs is not None else ""))
    exports = {"dense": export_onnx(job.loaded.model, job.shape, staging / "dense.onnx", job.target, inputs),
               "pruned": export_onnx(result.model, job.shape, staging / "pruned.onnx", job.target, inputs)}
    if job.options.bake_preprocess:
        exports["pruned_pixels"] = bake_preprocessing(job, result.model, staging, inputs)
    variants = [{"name": "dense", "onnx": "dense.onnx", **result.before.to_dict()},
                {"name": "pruned", "onnx": "pruned.onnx", **result.after.to_dict()}]
    if job.options.ort:
        to_ort_format(staging / "pruned.onnx")
    return variants, exports


def check_inputs(job: Job) -> Any:
    """The model's own inputs the exported files are checked on (None without data: noise then).
    Noise can drive a model whose BatchNorm statistics come from real images far outside its range."""
    if job.data.train is None:
        return None

    return sample(job.data.train, CHECK_IMAGES, seed=job.options.seed).x


def export_onnx(model: Any, shape: tuple[int, ...], path: Path, target: Any, inputs: Any = None) -> dict:
    """Export, simplify and check one model (on ``inputs`` when given); the report names the file,
    not the staging folder."""
    return {**export(model, shape, path, opset=target.opset, check_inputs=inputs).to_dict(), "path": path.name}


def bake_preprocessing(job: Job, model: Any, staging: Path, inputs: Any = None) -> dict:
    """``pruned.pixels.onnx``: the pruned model behind its preprocessing, fed raw 0-255 RGB pixels."""
    baked = with_preprocessing(model, job.preprocess, job.shape[1])
    pixels = None if inputs is None else baked.pixels_of(inputs)
    return export_onnx(baked, job.shape, staging / "pruned.pixels.onnx", job.target, pixels)


def quantize(job: Job, variants: list[dict], staging: Path, progress: Progress) -> None:
    """Static INT8 (QDQ) copies of every variant, calibrated on training images."""
    if not job.int8:
        return

    progress("quantising to INT8 (static, QDQ) with calibration data")
    calibration = sample(job.data.train, min(256, len(job.data.train.x)), seed=job.options.seed).x
    for base in list(variants):
        path = staging / (Path(base["onnx"]).stem + "_int8.onnx")
        try:
            quantised = quantize_int8(staging / base["onnx"], path, calibration)
        except EdgepruneError as exc:  # a broken INT8 file: the float files and the work before stand
            progress(f"INT8: {exc}; the float files ship")
            base["int8_error"] = str(exc)
            continue
        variants.append({**base, "name": base["name"] + "-int8", "onnx": path.name,
                         "int8_check_cosine": quantised.cosine_min, "int8_scores_cosine": quantised.scores_cosine})


# --- quality, latency ---------------------------------------------------------------------------

def measure_quality(job: Job, variants: list[dict], staging: Path, progress: Progress) -> None:
    """Each shipped ONNX file against the dense one, output by output, on held-out images."""
    if job.data.evaluation is None or not job.outputs:
        return

    held_out, dense = _reference(job, staging)
    progress(f"comparing every variant's outputs with the dense model's on {len(held_out)} held-out images "
             f"({job.data.spec} [{job.data.eval_split}])")
    for variant in variants:
        outputs = dense if variant is variants[0] else onnx_outputs(staging / variant["onnx"], held_out.x)
        variant.update(_against_dense(job, outputs))


def _reference(job: Job, staging: Path) -> tuple[Any, list]:
    """The held-out images and the dense ONNX model's outputs on them, made once per run."""
    if job.data.reference is None:
        held_out = sample(job.data.evaluation, job.options.eval_images, seed=job.options.seed)
        job.data.reference = (held_out, onnx_outputs(staging / "dense.onnx", held_out.x))
    return job.data.reference


def _against_dense(job: Job, outputs: list) -> dict[str, Any]:
    """A variant's outputs on the held-out images against the dense model's: per output, the worst
    output, and top-1 accuracy when the images are labelled (a detector's mAP when they have boxes)."""
    held_out, dense = job.data.reference
    fidelity = compare(dense, outputs, job.outputs)
    labelled = held_out.y is not None and job.label_output is not None
    return {"fidelity": fidelity, **summary(fidelity), **label_figures(job, outputs, held_out),
            "accuracy": accuracy(outputs, job.label_output, held_out.y) if labelled else None}


def profile(job: Job, variants: list[dict], staging: Path, progress: Progress) -> dict:
    """Latency and memory of every variant in onnxruntime under the target's settings; returns the
    settings and the host's load before timing (``busy_cores``)."""
    options, target = job.options, job.target
    threads = target.host_threads()
    config = BenchConfig.from_target(target, intra_threads=threads, min_runs=options.runs, min_time=options.min_time)
    progress(f"measuring latency and memory in onnxruntime ({threads} threads, models interleaved, fresh processes, "
             f"rounds until each speedup is known within +-3 % or {options.max_bench_seconds:g} s)")
    found = compare_models([staging / v["onnx"] for v in variants], config, max_seconds=options.max_bench_seconds)
    if found.load_note:
        progress(found.load_note)
    for index, (v, p) in enumerate(zip(variants, found.profiles)):
        v.update(size_bytes=p.size_bytes, p50_ms=p.p50_ms, p90_ms=p.p90_ms, p99_ms=p.p99_ms, mean_ms=p.mean_ms,
                 std_ms=p.std_ms, runs=p.runs, peak_memory_bytes=p.peak_memory_bytes, session_ms=p.session_ms,
                 first_run_ms=p.first_run_ms, **found.speed_fields(index),
                 macs_ratio=variants[0]["macs"] / v["macs"])
    return {**asdict(found.profiles[0].settings), "busy_cores": found.busy_cores}


def runtime_files(job: Job, result: Any, staging: Path, progress: Progress) -> dict[str, dict]:
    """Dense and pruned for each runtime asked for (dense.pte, pruned.ncnn.param, ...), each checked
    against PyTorch, then timed side by side by the same protocol as the ONNX files."""
    found: dict[str, dict] = {}
    threads = job.target.host_threads()
    config = BenchConfig(intra_threads=threads, min_runs=job.options.runs, min_time=job.options.min_time)
    for runtime in resolve_runtimes(job.options.other_runtimes(job.target)):
        progress(f"{runtime.name}: exporting, checking against PyTorch and measuring dense and pruned")
        try:
            found[runtime.name] = _runtime_pair(runtime, job, result, staging, config)
        except EdgepruneError as exc:  # the ONNX files stand; say why this runtime has none
            progress(f"{runtime.name}: skipped: {exc}")
            found[runtime.name] = {"error": str(exc)}
    return found


def runtime_quality(job: Job, runtimes: dict[str, dict], staging: Path, progress: Progress) -> None:
    """Each runtime's pruned file (and INT8 ones) against the dense ONNX model, output by output, on
    the held-out images the ONNX variants were compared on."""
    files = {name: [found["pruned"], *found.get("int8", {}).values()] for name, found in runtimes.items()
             if "error" not in found}
    if not files or job.data.evaluation is None or not job.outputs:
        return

    held_out, _ = _reference(job, staging)
    progress(f"comparing each runtime's files with the dense model on {len(held_out)} held-out images")
    for made in (m for group in files.values() for m in group if "file" in m):
        made.update(_against_dense(job, runtime_outputs(staging / made["file"], held_out.x)))


def _runtime_pair(runtime: Any, job: Job, result: Any, staging: Path, config: Any) -> dict[str, Any]:
    """Dense and pruned files (and their INT8 versions where the job quantises and the runtime can),
    each compared with PyTorch, timed side by side; speedups against dense float."""
    models = {"dense": job.loaded.model, "pruned": result.model}
    inputs = check_inputs(job)
    made = {name: _runtime_file(runtime, model, job.shape, staging / f"{name}{runtime.suffix}", inputs=inputs)
            for name, model in models.items()}
    found: dict[str, Any] = {}
    if job.int8 and runtime.int8_missing:
        found["int8"] = {"error": runtime.int8_missing}
    elif job.int8:
        calibration = sample(job.data.train, min(256, len(job.data.train.x)), seed=job.options.seed).x
        try:
            made.update({f"{name}_int8": _runtime_file(runtime, model, job.shape,
                                                       staging / f"{name}_int8{runtime.suffix}", calibration)
                         for name, model in models.items()})
        except EdgepruneError as exc:  # a broken INT8 file: the float files stand
            for written in (f for name in models for f in staging.glob(f"{name}_int8.*")):
                written.unlink()
            found["int8"] = {"error": str(exc)}
    timed = compare_models([staging / m["file"] for m in made.values()], config,
                           max_seconds=job.options.max_bench_seconds)
    times = {name: p.p50_ms for name, p in zip(made, timed.profiles)}
    speeds = {name: timed.speed_fields(index) for index, name in enumerate(made)}
    if "pruned_int8" in made:
        found["int8"] = {name: {**made.pop(f"{name}_int8"), "p50_ms": times[f"{name}_int8"], **speeds[f"{name}_int8"]}
                         for name in models}
    return {**made, **found, "threads": config.intra_threads, "dense_p50_ms": times["dense"],
            "pruned_p50_ms": times["pruned"], "dense_round_ms": speeds["dense"]["round_ms"], **speeds["pruned"],
            "version": runtime.version(), "busy_cores": timed.busy_cores}


def _runtime_file(runtime: Any, model: Any, shape: tuple[int, ...], path: Path, calibration: Any = None,
                  inputs: Any = None) -> dict[str, Any]:
    """One runtime file, compared with PyTorch (see :func:`~edgeprune.runtimes.export_checked`)."""
    exported, diff = export_checked(runtime, model, shape, path, calibration, check_inputs=inputs)
    found = {"file": exported.path.name, "files": [p.name for p in exported.files], "max_abs": diff.max_abs,
             "max_rel": None if calibration is not None else diff.max_rel, "checked_on": exported.checked_on}
    return found if calibration is None else {**found, "int8_check_cosine": exported.int8_cosine,
                                              "int8_scores_cosine": exported.int8_scores_cosine}


# --- report -------------------------------------------------------------------------------------

def _final_times(runtime: str, variants: list[dict], runtimes: dict[str, dict]) -> dict[str, float | None]:
    """Dense and pruned p50 in the runtime the plan was made for (None where it could not run)."""
    if runtime == "onnxruntime":
        return {"dense_ms": variants[0]["p50_ms"], "pruned_ms": variants[1]["p50_ms"]}
    found = runtimes.get(runtime, {})
    return {"dense_ms": found.get("dense_p50_ms"), "pruned_ms": found.get("pruned_p50_ms")}


def _final_rounds(runtime: str, variants: list[dict], runtimes: dict[str, dict]) -> list[list[float]]:
    """The side-by-side rounds of dense and pruned in the runtime the plan was made for ([dense ms,
    pruned ms] each; none where it could not run)."""
    if runtime == "onnxruntime":
        dense, pruned = variants[0]["round_ms"], variants[1]["round_ms"]
    else:
        found = runtimes.get(runtime, {})
        dense, pruned = found.get("dense_round_ms", []), found.get("round_ms", [])
    return [[d, p] for d, p in zip(dense, pruned)]


def _final_verdict(job: Job, rounds: list[list[float]]) -> dict[str, Any]:
    """The speedup the report measured of the shipped files, with its interval, and whether it
    meets the speed asked (met / missed / undecided: see :meth:`SpeedTarget.verdict`)."""
    target = SpeedTarget.of(job.options)
    if target is None or len(rounds) < 1:
        return {}
    estimate = SpeedupEstimate.of([d / p for d, p in rounds])
    return {**estimate.fields(), "asked": target.describe(), "speed_verdict": target.verdict(rounds)}


def delivered(job: Job, variants: list[dict], runtimes: dict[str, dict] | None = None) -> dict[str, Any]:
    """What the report measured of the delivered files in the runtime planned for: dense and pruned
    p50 ms and their side-by-side rounds, the pruned file's worst cosine and top-1 (a detector's
    mAP50-95) on the held-out images (onnxruntime's where that runtime could not run them), and the
    dense model's."""
    pruned = (runtimes or {}).get(job.runtime, {}).get("pruned", {})
    quality = pruned if pruned.get("cosine_min") is not None else variants[1]
    return {**_final_times(job.runtime, variants, runtimes or {}),
            "rounds_ms": _final_rounds(job.runtime, variants, runtimes or {}), "cosine_min": quality["cosine_min"],
            "top1": quality.get("accuracy"), "dense_top1": variants[0].get("accuracy"),
            "map50_95": quality.get("map50_95"), "dense_map50_95": variants[0].get("map50_95"),
            "miou": quality.get("miou"), "dense_miou": variants[0].get("miou")}


def build_report(job: Job, result: Any, variants: list[dict], exports: dict, settings: dict,
                 seconds: float, runtimes: dict[str, dict] | None = None) -> dict[str, Any]:
    summary = result.summary()
    if "plan" in summary:
        summary["plan"]["runtime"] = job.runtime
        summary["plan"]["final"] = {**_final_times(job.runtime, variants, runtimes or {}),
                                    **_final_verdict(job, _final_rounds(job.runtime, variants, runtimes or {}))}
    data = job.data
    return {
        "model": job.loaded.spec, "target": asdict(job.target), "options": asdict(job.options),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "inputs": {"shape": list(job.shape), "preprocess": job.preprocess.to_dict(),
                   "preprocess_text": job.preprocess.describe(),
                   "outputs": [o.to_dict() for o in job.outputs] if job.outputs else
                   [{"name": name} for name in job.output_names],
                   "label_output": job.output_names[job.label_output] if job.label_output is not None else None},
        "bench_settings": settings, "variants": variants, "export": exports,
        "pruning": {**summary, "round_to": job.round_to, "layers": compare_layers(job.loaded.model, result.model, job.shape),
                    "eval_data": {"source": data.spec, "split": data.eval_split,
                                  "images": data.quality_images,
                                  "labelled": data.evaluation is not None and data.evaluation.y is not None}},
        "warnings": result.warnings, "seconds_total": round(seconds, 2), "runtimes": runtimes or {},
    }
