"""One model's benchmark process: ``python -m edgeprune.profile.worker``.

Imports only the standard library, NumPy, onnxruntime and light edgeprune modules. It speaks JSON lines: one request on
stdin, one reply on stdout. It announces ``{"ready": ...}`` after its imports, then answers

- ``{"cmd": "init", "model", "intra", "inter", "opt", "arena", "shapes", "seed", "warmup", "pin"}``:
  pins itself to one core when ``pin`` is a number, creates the session and random inputs, does
  the first run and the warm-up runs;
- ``{"cmd": "run", "n": N}``: N timed runs, their wall times and the process's CPU times in ms;
- ``{"cmd": "stop"}``: peak memory, then exits (end of stdin also ends it).

Any failure is answered ``{"error": "one line"}``. Native libraries that print to stdout cannot
corrupt the protocol: stdout is moved to stderr and the replies go to a private copy of it.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort

from edgeprune.profile.messages import one_line
from edgeprune.runtimes import get_runtime

_OPT = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_FLOATS = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
_INTS = {f"tensor({t})": getattr(np, t) for t in ("int8", "uint8", "int16", "uint16", "int32", "int64")}


def _status_kib(field: str) -> int | None:
    """A ``VmRSS``/``VmHWM`` value of /proc/self/status in KiB, or None off Linux."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class _Memory:
    """Peak RSS above the RSS just before the session is created.

    Linux: the high-water mark is reset (``/proc/self/clear_refs`` 5) so import peaks don't count;
    otherwise VmHWM, else ``ru_maxrss`` (which only grows, so baseline = its value at start).
    """

    def __init__(self) -> None:
        self.method = "VmHWM"
        try:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")
            self.method = "VmHWM (reset)"
        except OSError:
            pass
        self.baseline = self._current()
        if self.baseline is None:
            self.method, self.baseline = "ru_maxrss", self._maxrss()

    @staticmethod
    def _maxrss() -> int:
        import resource

        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    @staticmethod
    def _current() -> int | None:
        kib = _status_kib("VmRSS")
        return None if kib is None else kib * 1024

    def peak(self) -> int:
        if self.method == "ru_maxrss":
            return self._maxrss()
        return _status_kib("VmHWM") * 1024

    def report(self) -> dict:
        return {"peak_above_baseline": max(0, self.peak() - self.baseline),
                "baseline_rss": self.baseline, "memory_method": self.method}


def _random_input(rng: np.random.Generator, type_name: str, shape: list[int]) -> np.ndarray:
    if type_name in _FLOATS:
        return rng.standard_normal(shape).astype(_FLOATS[type_name])
    if type_name in _INTS:
        return rng.integers(0, 10, size=shape).astype(_INTS[type_name])
    if type_name == "tensor(bool)":
        return rng.random(shape) < 0.5
    raise ValueError(f"cannot make random data for an input of type {type_name}")


def _session_options(msg: dict) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = msg["intra"]
    options.inter_op_num_threads = msg["inter"]
    options.graph_optimization_level = _OPT[msg["opt"]]
    options.enable_cpu_mem_arena = msg["arena"]
    parallel = msg["inter"] > 1
    options.execution_mode = ort.ExecutionMode.ORT_PARALLEL if parallel else ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return options


def _timed_ms(call) -> float:
    start = time.perf_counter_ns()
    call()
    return (time.perf_counter_ns() - start) / 1e6


def _wall_and_cpu_ms(call) -> tuple[float, float]:
    """One run's wall time and this process's CPU time (all its threads; time spent descheduled
    does not count), in ms."""
    cpu, wall = time.process_time_ns(), time.perf_counter_ns()
    call()
    return (time.perf_counter_ns() - wall) / 1e6, (time.process_time_ns() - cpu) / 1e6


def _pin(index: int | None) -> list[int] | None:
    """Pin this process to one of the cores it may use (the ``index``-th, wrapping), where the OS
    allows it; returns the cores it now runs on."""
    if index is None or not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[index % len(cores)]})
    return sorted(os.sched_getaffinity(0))


class Worker:
    """The state of one worker: its session, inputs and memory baseline."""

    def __init__(self) -> None:
        self.call = None  # one inference on the fixed inputs
        self.memory: _Memory | None = None

    def init(self, msg: dict) -> dict:
        runtime = None
        if msg.get("runtime", "onnxruntime") != "onnxruntime":
            runtime = get_runtime(msg["runtime"])
            runtime.preload()
        pinned = _pin(msg.get("pin"))
        self.memory = _Memory()
        start = time.perf_counter_ns()
        rng = np.random.default_rng(msg["seed"])
        if runtime is None:
            options = _session_options(msg)
            session = ort.InferenceSession(msg["model"], options, providers=["CPUExecutionProvider"])
            feeds = {i.name: _random_input(rng, i.type, msg["shapes"][i.name]) for i in session.get_inputs()}
            self.call = lambda: session.run(None, feeds)
            parallel = options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
            about = {"onnxruntime_version": ort.__version__, "provider": session.get_providers()[0],
                     "execution_mode": "parallel" if parallel else "sequential"}
        else:  # another runtime's file, described by its sidecar (edgeprune.runtimes)
            session = runtime.open(msg["model"], msg["intra"])
            inputs = [_random_input(rng, "tensor(float)", shape) for shape in msg["shapes"].values()]
            self.call = lambda: session.run(inputs)
            about = {"onnxruntime_version": session.version, "provider": msg["runtime"], "execution_mode": "sequential"}
        session_ms = (time.perf_counter_ns() - start) / 1e6
        first = _timed_ms(self.call)
        return {"session_ms": session_ms, "first_run_ms": first,
                "warmup_ms": [_timed_ms(self.call) for _ in range(msg["warmup"])], "pinned": pinned, **about}

    def run(self, msg: dict) -> dict:
        wall, cpu = zip(*(_wall_and_cpu_ms(self.call) for _ in range(msg["n"])))
        return {"times_ms": list(wall), "cpu_ms": list(cpu)}

    def stop(self, msg: dict) -> dict:
        return self.memory.report()


def main() -> None:
    """Serve requests on stdin until ``stop`` or end of input."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    worker = Worker()
    replies.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            reply = {"init": worker.init, "run": worker.run, "stop": worker.stop}[msg["cmd"]](msg)
        except Exception as exc:  # every failure goes back to the parent as one line
            reply = {"error": one_line(exc)}
        replies.write(json.dumps(reply) + "\n")
        if msg["cmd"] == "stop":
            break


if __name__ == "__main__":
    main()
