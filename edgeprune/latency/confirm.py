"""Whole-model measurement for the planner: export (to ONNX, or another runtime's file), then time
side by side in that runtime."""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from torch import nn

from edgeprune.export import export_onnx
from edgeprune.profile import BenchConfig, profile_models
from edgeprune.profile.compare import MAX_SECONDS, estimates_of, measure_rounds
from edgeprune.profile.estimate import MIN_ROUNDS
from edgeprune.runtimes import get_runtime

ROUNDS = MIN_ROUNDS  # side-by-side measurements a model's time is the median of, at least


class ModelTimer:
    """``timer(models) -> [p50 ms, ...]``: each model exported (simplified, like the shipped file)
    and measured in its own fresh process, interleaved with the others. A model timed before, with
    the same tensor shapes, is not exported again: the timer keeps a reference, so no other model
    can take its id, and a model pruned in place since has other shapes. Each model's time is the
    median of side-by-side rounds (the models' order reversed every other round): ``rounds`` of
    them, and more until every speedup against the first model is known within +-3 % or
    ``max_seconds`` are spent. One round of two models of half a millisecond put their ratio
    anywhere between 1.43 and 1.66 on an idle machine."""

    def __init__(self, input_shape: tuple[int, ...], config: BenchConfig, opset: int | None = None,
                 runtime: str = "onnxruntime", rounds: int = ROUNDS, max_seconds: float = MAX_SECONDS) -> None:
        self.input_shape, self.config, self.opset, self.runtime = tuple(input_shape), config, opset, runtime
        self.rounds, self.max_seconds = rounds, max_seconds
        self._measured = 0  # rounds measured so far: odd ones run the models in reverse order
        self._folder = tempfile.TemporaryDirectory(prefix="edgeprune-timer-")
        self._exported: dict[tuple, tuple[nn.Module, Path]] = {}

    def _path(self, model: nn.Module) -> Path:
        key = (id(model), tuple(tuple(t.shape) for t in model.state_dict().values()))
        if key not in self._exported:
            path = Path(self._folder.name) / f"model{len(self._exported)}.onnx"
            if self.runtime == "onnxruntime":
                export_onnx(model, self.input_shape, path, opset=self.opset, verify=False)
            else:
                import torch

                chosen = get_runtime(self.runtime)
                path = chosen.export(model, torch.randn(self.input_shape), path.with_suffix(chosen.suffix)).path
            self._exported[key] = (model, path)
        return self._exported[key][1]

    def __call__(self, models: list[nn.Module]) -> list[float]:
        if len(models) == 1:
            return [statistics.median(r[0] for r in self.rounds_of(models))]
        rounds, _ = measure_rounds(lambda index: self.rounds_of(models, 1)[0],
                                   lambda found: all(e.precise() for e in estimates_of(found)),
                                   max_seconds=self.max_seconds, min_rounds=self.rounds)
        return [statistics.median(times) for times in zip(*rounds)]

    def rounds_of(self, models: list[nn.Module], rounds: int | None = None) -> list[list[float]]:
        """Each round's p50 ms of every model (``rounds`` lists, default the timer's, the models in order)."""
        paths = [self._path(m) for m in models]
        return [self._round(paths) for _ in range(rounds or self.rounds)]

    def _round(self, paths: list[Path]) -> list[float]:
        order = list(range(len(paths)))[::-1 if self._measured % 2 else 1]
        self._measured += 1
        times = [p.p50_ms for p in profile_models([paths[i] for i in order], self.config)]
        return [times[order.index(i)] for i in range(len(paths))]

    def close(self) -> None:
        self._exported.clear()
        self._folder.cleanup()
