"""``compress``: prune for a target, recover, export, verify, quantise, measure quality and latency, report.

The stages, in order, each a function with one job (:mod:`~edgeprune.pipeline.prepare`,
:mod:`~edgeprune.pipeline.stages`): prepare (every check, before any work) -> prune and recover
-> export -> quantise -> quality -> profile -> report. With a quality floor, prune and recover
is a search over trials of it (:mod:`~edgeprune.pipeline.search`). Every output goes to a
staging folder that is renamed into place only when the whole run worked.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from edgeprune.errors import EdgepruneError
from edgeprune.latency.measure import write_json_atomic
from edgeprune.pipeline import search, stages
from edgeprune.pipeline.options import CompressOptions
from edgeprune.paths import check_writable
from edgeprune.pipeline.prepare import check_choices, prepare
from edgeprune.progress import Progress
from edgeprune.report import write_report
from edgeprune.train import is_main_process

log = logging.getLogger(__name__)

__all__ = ["CompressOptions", "compress"]


def compress(model: str | None, out_dir: str | Path, options: CompressOptions | None = None,
             progress: Progress | None = None) -> dict[str, Any]:
    """Run the whole pipeline on ``model`` (``None``: the built-in default); returns the report.

    >>> report = compress("resnet20-cifar", "/tmp/ep-doc", CompressOptions(target="x86-avx2", runs=5, min_time=0.1))  # doctest: +SKIP
    """
    options = options or CompressOptions()
    progress = progress or (lambda message: log.info(message))
    target = check_choices(options)

    if not is_main_process():  # another torchrun rank: recover alongside rank 0, which writes everything
        _prune_and_recover(prepare(model, options, target, lambda message: None), lambda message: None)
        return {}
    out_dir = Path(out_dir)
    staging = _stage(out_dir)
    started = time.perf_counter()
    try:
        job = prepare(model, options, target, progress)
        found = _search(job, progress, out_dir) if options.floor_given else None
        result = found.result if found is not None else _prune_and_recover(job, progress)
        if found is None and options.curve:
            found = search.curve_only(job, progress, result)
        variants, exports = stages.export_models(job, result, staging, progress)
        stages.quantize(job, variants, staging, progress)
        stages.measure_quality(job, variants, staging, progress)
        settings = stages.profile(job, variants, staging, progress)
        runtimes = stages.runtime_files(job, result, staging, progress)
        stages.runtime_quality(job, runtimes, staging, progress)
        report = stages.build_report(job, result, variants, exports, settings, time.perf_counter() - started, runtimes)
        if found is not None:
            report.update(found.report())
            report["promise"] = found.promise(stages.delivered(job, variants, runtimes))
        write_report(report, staging)
        _publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def _search(job: Any, progress: Progress, out_dir: Path) -> search.Search:
    """The floor's search; refused, it leaves the points it measured beside the output folder
    (``OUT.curve.json``, the report's ``curve`` and ``search``) and says where."""
    try:
        return search.search(job, progress)
    except search.FloorNotMet as refused:
        kept = out_dir.parent / f"{out_dir.name}.curve.json"
        write_json_atomic(refused.found.report(), str(kept))
        raise EdgepruneError(f"{refused}; the {len(refused.found.curve)} points measured are in {kept}") from None


def _prune_and_recover(job: Any, progress: Progress) -> Any:
    planner = stages.planner_for(job, progress)
    try:
        return stages.prune_and_recover(job, progress, planner)
    finally:
        stages.close_planner(planner)


def _stage(out_dir: Path) -> Path:
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / "report.json").exists())):
        raise EdgepruneError(f"{out_dir} exists and is not an earlier edgeprune output; choose another -o")
    check_writable(out_dir)
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
    except OSError as exc:
        raise EdgepruneError(f"cannot write {out_dir}: {exc.strerror or exc}") from None
    return staging


def _publish(staging: Path, out_dir: Path) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)
