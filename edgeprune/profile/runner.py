"""Measure several models fairly: one fresh worker process each, timed in interleaved rounds.

All workers start at once; sessions are then created one at a time, and in each round every
model does a batch of timed runs (the starting model rotates), so drift on the machine hits all
models alike. Rounds go on until every model has ``min_runs`` runs and ``min_time`` seconds of
timed runs. Only one worker computes at any moment.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from edgeprune.errors import EdgepruneError
from edgeprune.profile.config import BenchConfig
from edgeprune.profile.model_info import ModelInfo, inspect_model
from edgeprune.profile.results import ModelProfile, RunSettings

log = logging.getLogger(__name__)

TimingProgress = Callable[[str, float], None]
"""Called as ``progress(stage, fraction_done)``; stages: "starting", "sessions", "timing"."""

ROUND_SECONDS = 0.05  # aim of one model's batch of timed runs in a round
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class _Worker:
    """The parent's handle on one worker process (JSON lines over its stdin/stdout)."""

    def __init__(self, model: ModelInfo, python: Sequence[str]) -> None:
        self.model = model
        self.stderr = tempfile.TemporaryFile()
        pythonpath = os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": pythonpath}
        self.proc = subprocess.Popen(
            [*python, "-m", "edgeprune.profile.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.stderr, env=env, text=True, bufsize=1,
        )
        self.times: list[float] = []
        self.cpu: list[float] = []
        self.start: dict = {}

    def receive(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            tail = self._stderr_tail()
            raise EdgepruneError(f"{self.model.path}: the benchmark worker died (exit code {code}): {tail}")
        reply = json.loads(line)
        if "error" in reply:
            hint = " (dynamic input dimensions were set to 1: give an input shape)" if self.model.guessed else ""
            raise EdgepruneError(f"{self.model.path}: {reply['error']}{hint}")
        return reply

    def request(self, **msg) -> dict:
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # receive() reports the dead worker
        return self.receive()

    def _stderr_tail(self) -> str:
        self.stderr.seek(0)
        lines = self.stderr.read().decode("utf-8", "replace").strip().splitlines()
        return lines[-1] if lines else "no error output"

    def timed_enough(self, config: BenchConfig) -> float:
        """How far this model is towards its stopping rule, 0..1."""
        by_runs = len(self.times) / config.min_runs
        by_time = sum(self.times) / 1000 / config.min_time if config.min_time > 0 else 1.0
        return min(1.0, by_runs, by_time)

    def batch_size(self) -> int:
        recent = self.times[-20:] or self.start["warmup_ms"] or [self.start["first_run_ms"]]
        return int(min(1000, max(1, ROUND_SECONDS * 1000 / max(float(np.median(recent)), 1e-3))))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.stderr):
            stream.close()


def _init_message(model: ModelInfo, config: BenchConfig, index: int) -> dict:
    return {"pin": index if config.pin_cores else None,"cmd": "init", "model": model.path, "intra": config.intra_threads, "inter": config.inter_threads,
            "opt": config.graph_optimization, "arena": config.memory_arena, "shapes": model.inputs,
            "seed": config.seed, "warmup": config.warmup, "runtime": model.runtime}


def _time_rounds(workers: list[_Worker], config: BenchConfig, progress: TimingProgress) -> None:
    round_no = 0
    while True:
        done = min(w.timed_enough(config) for w in workers)
        progress("timing", done)
        if done >= 1.0:
            return
        shift = round_no % len(workers)
        for worker in workers[shift:] + workers[:shift]:
            batch = worker.request(cmd="run", n=worker.batch_size())
            worker.times += batch["times_ms"]
            worker.cpu += batch["cpu_ms"]
        round_no += 1


def _summary(worker: _Worker, memory: dict, config: BenchConfig) -> ModelProfile:
    times = np.asarray(worker.times)
    p50, p90, p99 = (float(v) for v in np.percentile(times, [50, 90, 99]))
    start = worker.start
    settings = RunSettings(
        config.intra_threads, config.inter_threads, config.graph_optimization, config.memory_arena,
        start["execution_mode"], start["onnxruntime_version"], start["provider"], worker.model.inputs,
        config.seed, config.warmup, config.min_runs, config.min_time,
    )
    return ModelProfile(
        path=worker.model.path, size_bytes=worker.model.size_bytes, p50_ms=p50, p90_ms=p90, p99_ms=p99,
        mean_ms=float(times.mean()), std_ms=float(times.std(ddof=1)) if len(times) > 1 else 0.0,
        min_ms=float(times.min()), runs=len(times), first_run_ms=start["first_run_ms"],
        session_ms=start["session_ms"], peak_memory_bytes=memory["peak_above_baseline"],
        baseline_rss_bytes=memory["baseline_rss"], memory_method=memory["memory_method"], settings=settings,
        warmup_ms=start["warmup_ms"], times_ms=worker.times, external_data=list(worker.model.external_data),
        cpu_p50_ms=float(np.median(worker.cpu)),
    )


def profile_models(
    paths: Sequence[str | Path],
    config: BenchConfig | None = None,
    progress: TimingProgress | None = None,
    *,
    python: Sequence[str] | None = None,
) -> list[ModelProfile]:
    """Benchmark ONNX models side by side with onnxruntime, each in its own fresh process.

    Every model is checked first (a bad file or input shape raises
    :class:`~edgeprune.errors.EdgepruneError` before any worker starts). ``python`` is the
    command that runs the workers (default: this interpreter), e.g. an emulator prefix.

    >>> import os, tempfile, onnx
    >>> from onnx import helper, TensorProto
    >>> x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    >>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x],
    ...                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    >>> path = os.path.join(tempfile.mkdtemp(), "relu.onnx")
    >>> onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    >>> [p] = profile_models([path], BenchConfig(warmup=1, min_runs=5, min_time=0))
    >>> p.runs >= 5 and p.p50_ms <= p.p99_ms
    True
    """
    config = config or BenchConfig()
    progress = progress or (lambda stage, fraction: None)
    if not paths:
        raise EdgepruneError("no models to benchmark")
    models = [inspect_model(path, config.input_shape) for path in paths]
    with ExitStack() as stack:
        workers = []
        for model in models:
            workers.append(_Worker(model, python or [sys.executable]))
            stack.callback(workers[-1].close)
        progress("starting", 0.0)
        for worker in workers:
            worker.receive()  # "ready": imports done, so sessions are created without contention
        for index, worker in enumerate(workers):
            log.debug("creating session for %s", worker.model.path)
            worker.start = worker.request(**_init_message(worker.model, config, index))
            progress("sessions", (index + 1) / len(workers))
        _time_rounds(workers, config, progress)
        memory = [worker.request(cmd="stop") for worker in workers]
    return [_summary(worker, mem, config) for worker, mem in zip(workers, memory)]
