"""``compress``: prune for a target, fine-tune, export, verify, quantise, profile, report.

Every output goes to a staging folder that is renamed into place only when the whole run worked.
"""
from __future__ import annotations

import logging
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from edgeprune.errors import EdgepruneError

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


@dataclass
class CompressOptions:
    """Choices of a compress run; ``None`` means "the target's setting" where a target has one."""

    target: str = "arm"
    criterion: str = "l2"
    flops_cut: float | None = 0.5
    ratio: float | None = None
    round_to: int | None = None
    calib: str | None = None
    finetune_epochs: int | None = None  # None: 3 epochs when labelled data is at hand, else none
    steps: int | None = None  # prune in T rounds with fine-tuning between (None: the criterion's default)
    recalibrate_bn: bool = True  # re-estimate BatchNorm statistics on calibration images after the cut
    lr: float = 0.01
    batch_size: int = 128
    int8: bool | None = None
    ort: bool = False
    runs: int = 50
    min_time: float = 2.0
    weights: str | None = None
    seed: int = 0
    latency_budget: float | None = None  # ms on the target: pruning then meets this instead of flops_cut / ratio
    speedup: float | None = None  # or: this speedup over the dense model
    lut: str | None = None  # a latency table measured elsewhere (default: this machine's cached one)

    @property
    def latency_driven(self) -> bool:
        return self.latency_budget is not None or self.speedup is not None


@dataclass
class _Data:
    spec: str | None
    train: Any = None
    evaluation: Any = None
    eval_split: str | None = None


def _stage(out_dir: Path) -> Path:
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "report.json").exists():
        raise EdgepruneError(f"{out_dir} exists and is not an earlier edgeprune output; choose another -o")
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def _publish(staging: Path, out_dir: Path) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)


def _load_data(spec: str | None, input_shape: tuple[int, ...], seed: int) -> _Data:
    if spec is None:
        return _Data(None)
    from edgeprune.calibration import has_test_split, load_data

    _, channels, height, width = input_shape
    kw = dict(channels=channels, size=(height, width), seed=seed)
    split = "test" if has_test_split(spec, (height, width)) else "val"
    return _Data(spec, load_data(spec, split="train", **kw), load_data(spec, split=split, **kw), split)


def _accuracy_torch(model, data: _Data) -> float | None:
    if data.evaluation is None or data.evaluation.y is None:
        return None
    from edgeprune.calibration import make_loader
    from edgeprune.train import evaluate

    return evaluate(model, make_loader(data.evaluation, 256, shuffle=False))


def _epochs(data: _Data, options: CompressOptions) -> int:
    labelled = data.train is not None and data.train.y is not None
    epochs = options.finetune_epochs if options.finetune_epochs is not None else (3 if labelled else 0)
    if epochs > 0 and not labelled:
        raise EdgepruneError("--finetune-epochs needs labelled data: give --calib SOURCE")
    return epochs


def _latency_planner(loaded, shape, target, options: CompressOptions, round_to: int, progress: Progress):
    """The planner that meets ``options``' latency budget.

    With this machine's table, missing points are measured first and the plan is confirmed by
    measuring here. With a table from a board (``--lut``), the board's own dense time is the
    start and the plan rests on the table's prediction.
    """
    from edgeprune.latency import Budget, LatencyPlanner, ModelTimer, complete, conv_shapes, open_table, settings_of
    from edgeprune.latency.table import model_key
    from edgeprune.profile import BenchConfig

    budget = Budget(options.latency_budget, options.speedup)
    settings = settings_of(target)
    table = open_table(target.name, settings, options.lut, board_settings=settings_of(target, host=False))
    shapes = list(conv_shapes(loaded.model, shape).values())
    common = dict(round_to=round_to, progress=progress)
    if not table.measured_here:
        complete(table, shapes)  # raises, saying how to measure them there, if points are missing
        dense_ms = table.model_ms(model_key(loaded.spec, shape))
        if dense_ms is None:
            raise EdgepruneError(f"latency table {options.lut} lacks the time of the whole dense {loaded.spec}: "
                                 "measure a spec from `edgeprune lut build --spec-only` on the board")
        progress(f"latency table from another machine ({table.data['machine'].get('cpu') or 'unknown CPU'}): "
                 "the plan rests on its prediction; measure the result there with `edgeprune bench`")
        return LatencyPlanner(table, budget, None, dense_ms=dense_ms, **common)
    missing = sum(len(layer["points"]) for layer in table.missing(shapes))
    if missing:
        progress(f"measuring the latency table: {missing} points ({settings['threads']} threads), kept in {table.path}")
    complete(table, shapes)
    config = BenchConfig.from_target(target, intra_threads=settings["threads"], min_runs=20, min_time=0.5)
    return LatencyPlanner(table, budget, ModelTimer(shape, config, target.opset), **common)


def _prune_and_finetune(model, shape, data: _Data, options: CompressOptions, round_to: int, progress: Progress,
                        planner=None):
    """The criterion's recipe (one-shot, iterative or soft) on a copy of ``model``."""
    import copy

    from edgeprune.calibration import sample
    from edgeprune.recipes import RecipeConfig, RecipeData, recipe_name, run_recipe, split_holdout

    epochs = _epochs(data, options)
    train, holdout = data.train, None
    if options.criterion == "tcfp" and train is not None and train.y is not None:
        train, holdout = split_holdout(train, 256, options.seed)
    calib = sample(train, 640, seed=options.seed) if train is not None else None
    config = RecipeConfig(options.criterion, flops_cut=options.flops_cut if options.ratio is None else None,
                          ratio=options.ratio, round_to=round_to, epochs=epochs, steps=options.steps, lr=options.lr,
                          batch_size=options.batch_size, seed=options.seed, recalibrate_bn=options.recalibrate_bn,
                          planner=planner)
    goal = "to the latency budget, widths from the table" if planner else f"round to {round_to}"
    progress(f"pruning with {options.criterion} ({recipe_name(options.criterion, options.steps)}), {goal}"
             + (f", fine-tuning {epochs} epochs on {data.spec}" if epochs else ""))
    labelled = data.evaluation is not None and data.evaluation.y is not None
    return run_recipe(copy.deepcopy(model), shape, config, RecipeData(train, holdout, calib),
                      evaluate=(lambda m: _accuracy_torch(m, data)) if labelled else None)


def _export(model, shape, path: Path, target) -> dict:
    from edgeprune.export import export_onnx

    return export_onnx(model, shape, path, opset=target.opset).to_dict()


def _quantize(float_path: Path, data: _Data, seed: int) -> tuple[Path, float | None]:
    from edgeprune.calibration import sample
    from edgeprune.export import onnx_accuracy, quantize_int8

    calibration = sample(data.train, min(256, len(data.train.x)), seed=seed).x
    path = float_path.with_name(float_path.stem + "_int8.onnx")
    quantize_int8(float_path, path, calibration)
    labelled = data.evaluation is not None and data.evaluation.y is not None
    return path, (onnx_accuracy(path, data.evaluation.x, data.evaluation.y) if labelled else None)


def compress(model: str | None, out_dir: str | Path, options: CompressOptions | None = None,
             progress: Progress | None = None) -> dict[str, Any]:
    """Run the whole pipeline on ``model`` (``None``: the built-in default); returns the report.

    >>> report = compress("resnet20-cifar", "/tmp/ep-doc", CompressOptions(target="x86-avx2", runs=5, min_time=0.1))  # doctest: +SKIP
    """
    from edgeprune import api
    from edgeprune.checkpoint import load_model, save_checkpoint
    from edgeprune.counter import compare_layers
    from edgeprune.models.default import DEFAULT_DATA
    from edgeprune.report import write_report
    from edgeprune.targets import load_target

    options = options or CompressOptions()
    progress = progress or (lambda message: log.info(message))
    target = load_target(options.target)
    from edgeprune.plan import PlanConfig

    # Bad choices fail before any output, data loading or progress line.
    criterion = api.create_criterion(options.criterion)
    if options.latency_driven:
        from edgeprune.latency import Budget
        from edgeprune.recipes import check_one_shot

        Budget(options.latency_budget, options.speedup)
        check_one_shot(options.criterion, options.steps)
    else:
        PlanConfig(options.ratio, options.flops_cut if options.ratio is None else None,
                   round_to=options.round_to or target.round_to).validate()
    out_dir = Path(out_dir)
    staging = _stage(out_dir)
    started = time.perf_counter()
    try:
        loaded = load_model(model, options.weights)
        shape = tuple(target.input_shape or loaded.input_shape)
        if shape != tuple(loaded.input_shape):
            _check_input_shape(loaded, shape, target.name)
        round_to = options.round_to or target.round_to
        planner = _latency_planner(loaded, shape, target, options, round_to, progress) if options.latency_driven else None
        data_spec = options.calib or (DEFAULT_DATA if loaded.metadata.get("default") else None)
        progress(f"loading data {data_spec}" if data_spec else "no data: pruning data-free, no accuracy")
        data = _load_data(data_spec, shape, options.seed)
        if criterion.needs_data and data.train is None:
            raise EdgepruneError(f"criterion '{options.criterion}' needs data: give --calib SOURCE")
        dense_accuracy = _accuracy_torch(loaded.model, data)
        try:
            result = _prune_and_finetune(loaded.model, shape, data, options, round_to, progress, planner)
        finally:
            if planner is not None and planner.measure is not None:
                planner.measure.close()  # the ONNX files it exported while planning
        pruned_accuracy = _accuracy_torch(result.model, data)
        save_checkpoint(result.model, staging / "pruned.pt", spec=loaded.spec, input_shape=shape, kwargs=loaded.kwargs,
                        metadata={"pruned": result.summary(), "target": target.name})
        progress("exporting to ONNX, simplifying, checking against PyTorch")
        exports = {"dense": _export(loaded.model, shape, staging / "dense.onnx", target),
                   "pruned": _export(result.model, shape, staging / "pruned.onnx", target)}
        variants = [{"name": "dense", "onnx": "dense.onnx", "accuracy": dense_accuracy, **result.before.to_dict()},
                    {"name": "pruned", "onnx": "pruned.onnx", "accuracy": pruned_accuracy, **result.after.to_dict()}]
        if options.int8 if options.int8 is not None else target.int8:
            if data.train is None:
                raise EdgepruneError(f"INT8 for target {target.name} needs calibration data: give --calib SOURCE or --no-int8")
            progress("quantising to INT8 (static, QDQ) with calibration data")
            for base in list(variants):
                path, accuracy = _quantize(staging / base["onnx"], data, options.seed)
                variants.append({**base, "name": base["name"] + "-int8", "onnx": path.name, "accuracy": accuracy})
        if options.ort:
            from edgeprune.export import to_ort_format

            to_ort_format(staging / "pruned.onnx")
        _profile(variants, staging, target, options, progress)
        summary = result.summary()
        if "plan" in summary:
            summary["plan"]["final"] = {"dense_ms": variants[0]["p50_ms"], "pruned_ms": variants[1]["p50_ms"]}
        report = {
            "model": loaded.spec, "target": asdict(target), "options": asdict(options),
            "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
            "bench_settings": variants[0].pop("settings"), "variants": variants, "export": exports,
            "pruning": {**summary, "layers": compare_layers(loaded.model, result.model, shape),
                        "eval_data": {"source": data.spec, "split": data.eval_split}},
            "warnings": result.warnings, "seconds_total": round(time.perf_counter() - started, 2),
        }
        for v in variants[1:]:
            v.pop("settings", None)
        write_report(report, staging)
        _publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def _check_input_shape(loaded, shape: tuple[int, ...], target_name: str) -> None:
    """One clear error, not a traceback from deep inside, when the target's input shape does not fit."""
    import torch

    try:
        with torch.no_grad():
            loaded.model(torch.zeros(shape))
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        given, own = "x".join(map(str, shape)), "x".join(map(str, loaded.input_shape))
        raise EdgepruneError(f"target {target_name}'s input shape {given} does not fit {loaded.spec} "
                             f"(input {own}): {reason[:200]}") from None


def _profile(variants: list[dict], folder: Path, target, options: CompressOptions, progress: Progress) -> None:
    from edgeprune.profile import BenchConfig, profile_models

    threads = min(target.threads, os.cpu_count() or 1)
    config = BenchConfig.from_target(target, intra_threads=threads, min_runs=options.runs, min_time=options.min_time)
    progress(f"measuring latency and memory in onnxruntime ({threads} threads, models interleaved, fresh processes)")
    profiles = profile_models([folder / v["onnx"] for v in variants], config)
    dense = profiles[0]
    for v, p in zip(variants, profiles):
        v.update(size_bytes=p.size_bytes, p50_ms=p.p50_ms, p90_ms=p.p90_ms, p99_ms=p.p99_ms, mean_ms=p.mean_ms,
                 std_ms=p.std_ms, runs=p.runs, peak_memory_bytes=p.peak_memory_bytes, session_ms=p.session_ms,
                 first_run_ms=p.first_run_ms, speedup=dense.p50_ms / p.p50_ms,
                 macs_ratio=variants[0]["macs"] / v["macs"], settings=asdict(p.settings))
