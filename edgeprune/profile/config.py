"""What a benchmark run fixes: onnxruntime session settings and how long to measure."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgeprune.errors import EdgepruneError
from edgeprune.targets.loader import OPT_LEVELS

if TYPE_CHECKING:
    from edgeprune.targets import Target


@dataclass(frozen=True)
class BenchConfig:
    """Settings shared by every model of one benchmark.

    ``intra_threads``/``inter_threads`` go to onnxruntime (0 lets it choose); each model gets
    ``warmup`` untimed runs after its first run, then is timed until it has at least ``min_runs``
    runs *and* ``min_time`` seconds of timed runs. ``input_shape`` replaces the first input's
    shape (it must agree with the model's fixed dimensions); other dynamic dimensions become 1.

    >>> BenchConfig(min_runs=50).updated(intra_threads=None, warmup=2).warmup
    2
    """

    intra_threads: int = 1
    inter_threads: int = 1
    graph_optimization: str = "all"
    memory_arena: bool = True
    warmup: int = 5
    min_runs: int = 20
    min_time: float = 1.0
    input_shape: tuple[int, ...] | None = None
    seed: int = 0
    pin_cores: bool = False  # each worker pinned to one core (the i-th model to the i-th core, wrapping)

    def __post_init__(self) -> None:
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", tuple(self.input_shape))
        problems = _problems(self)
        if problems:
            raise EdgepruneError(f"invalid benchmark setting: {'; '.join(problems)}")

    @classmethod
    def from_target(cls, target: Target, **overrides: Any) -> BenchConfig:
        """The target's session settings (its threads capped to this machine's cores, see
        :meth:`Target.host_threads`), then ``overrides`` (``None`` values are ignored).

        >>> from edgeprune.targets import load_target
        >>> BenchConfig.from_target(load_target("arm-cortex-a53"), min_runs=5).memory_arena
        False
        """
        threads = overrides.get("intra_threads")
        base = cls(
            intra_threads=target.host_threads() if threads is None else threads,
            inter_threads=target.inter_op_threads,
            graph_optimization=target.graph_optimization,
            memory_arena=target.memory_arena,
            input_shape=target.input_shape,
        )
        return base.updated(**overrides)

    def updated(self, **overrides: Any) -> BenchConfig:
        """A copy with ``overrides`` applied; ``None`` means "keep the current value".

        >>> BenchConfig().updated(min_time=0.5).min_time
        0.5
        """
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _problems(config: BenchConfig) -> list[str]:
    checks = [
        (_is_int(config.intra_threads, 0), f"intra_threads must be an integer >= 0, got {config.intra_threads!r}"),
        (_is_int(config.inter_threads, 0), f"inter_threads must be an integer >= 0, got {config.inter_threads!r}"),
        (config.graph_optimization in OPT_LEVELS,
         f"graph_optimization must be one of {', '.join(OPT_LEVELS)}, got {config.graph_optimization!r}"),
        (isinstance(config.memory_arena, bool), f"memory_arena must be true or false, got {config.memory_arena!r}"),
        (_is_int(config.warmup, 0), f"warmup must be an integer >= 0, got {config.warmup!r}"),
        (_is_int(config.min_runs, 1), f"min_runs must be an integer >= 1, got {config.min_runs!r}"),
        (isinstance(config.min_time, (int, float)) and config.min_time >= 0,
         f"min_time must be a number of seconds >= 0, got {config.min_time!r}"),
        (config.input_shape is None or (len(config.input_shape) > 0 and all(_is_int(d, 1) for d in config.input_shape)),
         f"input_shape must be positive integers, got {config.input_shape!r}"),
        (_is_int(config.seed, 0), f"seed must be an integer >= 0, got {config.seed!r}"),
        (isinstance(config.pin_cores, bool), f"pin_cores must be true or false, got {config.pin_cores!r}"),
    ]
    return [message for ok, message in checks if not ok]
