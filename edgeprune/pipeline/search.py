"""A quality floor: cut as deep as the floor allows, or to a speed target only if the floor holds.

A search that calls the stages: each *trial* is one plan (a MACs cut, or the options' latency
budget) followed by the whole recovery (:func:`~edgeprune.pipeline.stages.prune_and_recover`:
reconstruction, then distillation), after which the recovered model's fidelity is measured on
the held-out images and its speed against the dense model's in the runtime planned for. Every
trial is one point of the trade-off curve.

- With a speed target (``--speedup`` / ``--latency-budget``), a ``--flops-cut`` or a ``--ratio``:
  that plan is the first trial; if it meets the floor it is delivered (and two shallower targets
  of the same kind are measured for the curve). Else a speed target's most cut groups are tried
  one alignment step wider, each alone (delivered if it meets both the floor and the speed,
  measured); then targets of the same kind part of the way from dense to it are bisected and the
  run stops with one line: what was reached, and the fastest point measured that meets the floor.
- With a floor alone: cuts are bisected for the deepest one that meets the floor.

A trial's depth d is a uniform channel ratio (every group loses d of its channels, aligned; about
``1 - (1 - d)²`` of the MACs), which any model can take, unlike a MACs target that alignment may
not land; with ``--allocate sensitivity`` it is the MACs cut ``1 - (1 - d)²`` that the
allocation spreads.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from edgeprune.counter import count
from edgeprune.errors import EdgepruneError
from edgeprune.latency import ModelTimer
from edgeprune.pipeline import stages
from edgeprune.pipeline.options import Floor, SpeedTarget, floor_of
from edgeprune.pipeline.prepare import Job
from edgeprune.pipeline.stages import HeldOut
from edgeprune.plan import Plan, pick_units
from edgeprune.profile import BenchConfig
from edgeprune.progress import Progress
from edgeprune.profile.compare import estimates_of, measure_rounds
from edgeprune.profile.estimate import MET, MISSED, UNDECIDED, SpeedupEstimate

RESOLUTION = 0.05  # the bisection stops when the pass / fail bounds are this close (as a fraction of the way)
WIDEN_TRIALS = 2  # a speed target that misses the floor: its most cut groups tried one alignment step wider
CURVE_DEPTHS = (0.2, 0.3, 0.45)  # the points `--curve` adds to a run without a floor
DEEPEST = 0.9


@dataclass
class Point:
    """One trial: its plan, the recovered model's speed and fidelity, and the seconds it took."""

    plan: str
    macs_cut: float
    speedup: float
    dense_ms: float
    pruned_ms: float
    cosine_min: float
    top1: float | None
    meets: bool | None
    seconds: float
    chosen: bool = False
    map50_95: float | None = None  # a detector's, with boxes
    miou: float | None = None  # a segmenter's, with masks
    outputs: dict[str, float] = field(default_factory=dict)
    widths: dict[str, list[int]] = field(default_factory=dict)  # a planner's plan: each group's [dense, kept] units
    speedup_rounds: list[float] = field(default_factory=list)  # each side-by-side round's dense / pruned
    ci_low: float | None = None  # the speedup's 95 % interval over its rounds
    ci_high: float | None = None
    rounds: int = 0
    speed_verdict: str | None = None  # against the speed target: met, missed or undecided (None: no target)

    def describe(self) -> str:
        top1 = f", top-1 {self.top1:.1%}" if self.top1 is not None else ""
        top1 += f", mAP50-95 {self.map50_95:.4f}" if self.map50_95 is not None else ""
        top1 += f", mIoU {self.miou:.4f}" if self.miou is not None else ""
        spread = self.rounds > 1 and self.ci_low != self.ci_high  # rounds that agree exactly: no interval to show
        interval = f" [{self.ci_low:.2f}-{self.ci_high:.2f}x]" if spread else ""
        return f"{self.speedup:.2f}x{interval} ({self.plan}, {self.macs_cut:.0%} of MACs cut, worst cosine {self.cosine_min:.4f}{top1})"


@dataclass
class Search:
    """What the search delivers (``result``: the chosen trial's recovered model) and what it cost."""

    result: Any
    curve: list[Point]
    floor: Floor
    runtime: str
    seconds: float
    target: SpeedTarget | None = None

    def report(self) -> dict[str, Any]:
        """The report's ``curve`` (every point) and ``search`` (the floor, the speed target, the
        trials, their cost)."""
        return {"curve": [asdict(p) for p in self.curve],
                "search": {"floor": asdict(self.floor) if self.floor.given else None, "runtime": self.runtime,
                           "target": asdict(self.target) if self.target is not None else None,
                           "trials": len(self.curve), "seconds": round(self.seconds, 1)}}

    def promise(self, delivered: dict[str, Any]) -> dict[str, Any] | None:
        """The floor and speed asked, against what the search measured of the chosen point and
        what the report measured of the delivered files (``delivered``: dense_ms, pruned_ms,
        rounds_ms (the report's side-by-side rounds, [dense ms, pruned ms] each), cosine_min, top1,
        dense_top1 in the runtime planned for). The speed is judged on the report's interval: kept
        when all of it meets the target, not kept when none of it does, else not decidable here (a
        half-millisecond model's speedup moves by a tenth or more between rounds on a busy host)."""
        chosen = next((p for p in self.curve if p.chosen), None)
        if chosen is None or not self.floor.given:
            return None
        rounds = delivered.get("rounds_ms") or []
        floor_held = self.floor.holds(delivered, delivered.get(f"dense_{self.floor.metric}"))
        verdict = self.target.verdict(rounds) if self.target is not None and rounds else None
        speed_held = {MET: True, MISSED: False}.get(verdict)
        asked = ([self.target.describe()] if self.target is not None else []) + [self.floor.describe()]
        here = _speedup(rounds).fields() if rounds else {"speedup": None}
        return {"floor": asdict(self.floor), "target": asdict(self.target) if self.target is not None else None,
                "asked": ", ".join(asked), "runtime": self.runtime,
                "search": {"speedup": round(chosen.speedup, 4), "ci_low": chosen.ci_low, "ci_high": chosen.ci_high,
                           "rounds": chosen.rounds, "speedup_rounds": chosen.speedup_rounds,
                           "speed_verdict": chosen.speed_verdict,
                           "pruned_ms": chosen.pruned_ms, "cosine_min": chosen.cosine_min, "top1": chosen.top1,
                           "map50_95": chosen.map50_95, "miou": chosen.miou},
                "report": {**here, "pruned_ms": delivered.get("pruned_ms"),
                           "cosine_min": delivered["cosine_min"], "top1": delivered.get("top1"),
                           "map50_95": delivered.get("map50_95"), "miou": delivered.get("miou")},
                "floor_held": floor_held, "speed_verdict": verdict, "speed_held": speed_held,
                "held": floor_held and speed_held is not False}


class FloorNotMet(EdgepruneError):
    """The floor cannot be met where the options ask; ``found`` holds every trial measured (its
    ``result`` is None), so that the minutes of measuring are not lost with the refusal."""

    def __init__(self, message: str, found: Search) -> None:
        super().__init__(message)
        self.found = found


class _Repeated(Exception):
    """The planner chose a plan an earlier trial recovered (``key``): its point stands for this one."""

    def __init__(self, key: tuple) -> None:
        super().__init__("a plan measured before")
        self.key = key


class _Distinct:
    """A planner that stops a trial whose plan an earlier trial already recovered. Speed targets
    map onto a staircase of plans: on the face net three bisected targets (1.25x, 1.125x, 1.0625x)
    gave one plan, and each cost a whole recovery."""

    def __init__(self, planner: Any, known: dict[tuple, Point]) -> None:
        self.planner, self.known, self.key = planner, known, None

    def __call__(self, graph: Any, scores: Any) -> Any:
        plan = self.planner(graph, scores)
        self.key = tuple(sorted((g, tuple(units.tolist())) for g, units in plan.removed.items() if len(units)))
        if self.key in self.known:
            raise _Repeated(self.key)
        return plan


class _Widths:
    """A planner for given widths (group name -> [dense, kept] units), each group cut in its
    criterion's order."""

    def __init__(self, widths: dict[str, list[int]], round_to: int) -> None:
        self.widths, self.round_to = widths, round_to

    def __call__(self, graph: Any, scores: Any) -> Any:
        groups = {g.name: g for g in graph.prunable_groups() if g.index in scores}
        removed = {groups[name].index: pick_units(groups[name], scores[groups[name].index], dense - kept, self.round_to)
                   for name, (dense, kept) in self.widths.items() if name in groups and kept < dense}
        keep = graph.keep_mask(removed)
        return Plan(removed, keep, count(graph), count(graph, keep), None,
                    {"widths": {name: list(width) for name, width in self.widths.items()}})


class _Trials:
    """Runs trials on copies of the job and remembers each point and its result."""

    def __init__(self, job: Job, progress: Progress, floor: Floor) -> None:
        self.job, self.progress, self.floor = job, progress, floor
        self.target = SpeedTarget.of(job.options)
        self.held_out = HeldOut(job, job.options.eval_images)
        self.dense_score = self.held_out.figures(job.loaded.model).get(floor.metric)  # what --max-drop counts from
        config = BenchConfig.from_target(job.target, intra_threads=job.target.host_threads(), min_runs=20,
                                         min_time=0.5)
        self.timer = ModelTimer(job.shape, config, job.target.opset, job.runtime)
        self.points: list[tuple[Point, Any]] = []
        self.by_plan: dict[tuple, Point] = {}
        self.tried = 0  # trials asked for, a plan met before included

    def run(self, depth: float | None = None, toward: tuple[Point, float] | None = None,
            widths: tuple[str, dict[str, list[int]]] | None = None) -> Point | None:
        """One trial: the cut of ``depth`` (see the module's docstring); or, with ``toward`` (the
        target's point, f), the options' own kind of target taken the fraction f of the way from
        dense to it; or, with ``widths`` (a label, and each group's [dense, kept] units), that plan;
        or, with none, the options' own target."""
        start = time.perf_counter()
        options = self.job.options
        if depth is not None:
            allocated = options.allocate == "sensitivity"
            options = replace(options, flops_cut=1 - (1 - depth) ** 2 if allocated else None,
                              ratio=None if allocated else depth, latency_budget=None, speedup=None)
        elif toward is not None:
            options = _part_of_the_way(options, *toward)
        job = replace(self.job, options=options)
        label = self._label(options) if widths is None else widths[0]
        self.tried += 1
        number = self.tried
        self.progress(f"trial {number}: {label}, then recovery")
        def inner(message: str) -> None:
            self.progress(f"trial {number}: {message}")

        planner = _Widths(widths[1], job.round_to) if widths is not None else stages.planner_for(job, inner)
        distinct = _Distinct(planner, self.by_plan) if planner is not None else None
        try:
            result = stages.prune_and_recover(job, inner, distinct)
        except _Repeated as repeated:
            point = self.by_plan[repeated.key]
            self.progress(f"trial {number}: the plan of an earlier trial ({point.plan}), not recovered again: "
                          f"{point.describe()}")
            return point
        except EdgepruneError as exc:
            if depth is None and toward is None and widths is None:
                raise
            self.progress(f"trial {number}: {exc}")
            return None
        finally:
            stages.close_planner(planner)
        point = self.measure(label, result, time.perf_counter() - start, say=inner)
        self.points.append((point, result))
        if distinct is not None:
            self.by_plan[distinct.key] = point
        verdict = "" if point.meets is None else (" meets the floor" if point.meets else " misses the floor")
        self.progress(f"trial {number}: {point.describe()}{verdict} ({point.seconds:.0f} s)")
        return point

    def depth(self, point: Point) -> float:
        """How far a point went: its measured speedup for a speed target, else its MACs cut."""
        return point.speedup if self.target is not None else point.macs_cut

    def measure(self, label: str, result: Any, seconds: float, chosen: bool = False,
                say: Progress | None = None) -> Point:
        """The recovered model's point: fidelity on the held-out images, and its speed against the
        dense model's, side by side (:func:`speed_rounds`: rounds until the speedup's interval
        decides the speed target, or is within +-3 % without one)."""
        figures = self.held_out.figures(result.model)
        rounds = speed_rounds(self.timer, [self.job.loaded.model, result.model], self.target,
                              say or (lambda message: self.progress(f"{label}: {message}")),
                              self.job.options.max_bench_seconds)
        dense_ms, pruned_ms = (statistics.median(times) for times in zip(*rounds))
        estimate = _speedup(rounds)
        meets = self.floor.holds(figures, self.dense_score) if self.floor.given else None
        return Point(label, result.macs_cut, estimate.speedup, dense_ms, pruned_ms, figures["cosine_min"],
                     figures.get("top1"), meets, seconds, chosen, figures.get("map50_95"), figures.get("miou"),
                     outputs={row["output"]: row["cosine"] for row in figures["outputs"]},
                     widths=dict(result.plan.get("widths", {})),
                     speedup_rounds=[round(dense / pruned, 4) for dense, pruned in rounds],
                     ci_low=round(estimate.ci_low, 4), ci_high=round(estimate.ci_high, 4), rounds=estimate.rounds,
                     speed_verdict=self.target.verdict(rounds) if self.target is not None else None)

    @staticmethod
    def _label(options: Any) -> str:
        if options.speedup is not None:
            return f"speedup {options.speedup:g}x"
        if options.latency_budget is not None:
            return f"latency budget {options.latency_budget:g} ms"
        if options.ratio is not None:
            return f"channel ratio {options.ratio:.2f}"
        return f"MACs cut {options.flops_cut:.0%}"

    def result_of(self, point: Point) -> Any:
        return next(result for p, result in self.points if p is point)

    def close(self) -> None:
        self.timer.close()


def _speedup(rounds: list[list[float]]) -> SpeedupEstimate:
    """dense / pruned over side-by-side rounds ([dense ms, pruned ms] each), with its interval."""
    return estimates_of(rounds)[0]


def speed_rounds(timer: Any, models: list[Any], target: SpeedTarget | None, progress: Progress,
                 max_seconds: float, clock: Any = time.monotonic) -> list[list[float]]:
    """Side-by-side rounds of the dense and a pruned model ([dense ms, pruned ms] each): the
    timer's first ones, then one at a time until the speedup's interval is clear of the target
    (within +-3 % without one), or ``max_seconds`` are spent: then the target is not decidable
    here. The face net's conv1-16 plan measured 1.47x to 2.02x in different rounds against 2x asked."""
    said: list[str] = []

    def decided(rounds: list[list[float]]) -> bool:
        estimate = _speedup(rounds)
        if target is None:
            return estimate.precise()
        if target.verdict(rounds) != UNDECIDED:
            return True
        if not said:
            said.append(f"{estimate.text()} spans {target.describe()}: measuring longer")
            progress(said[-1])
        return False

    rounds, done = measure_rounds(lambda index: timer.rounds_of(models, 1)[0], decided, max_seconds=max_seconds,
                                  clock=clock)
    if not done and target is not None:
        estimate = _speedup(rounds)
        progress(f"{estimate.text()} against {target.describe()}: not decidable here in {max_seconds:g} s")
    return rounds


def search(job: Job, progress: Progress) -> Search:
    """The floor's search (see the module's docstring); raises, in one line, when a target is given
    and the floor cannot be met there."""
    floor = floor_of(job)
    start = time.perf_counter()
    trials = _Trials(job, progress, floor)
    try:
        progress(f"searching for {'the deepest cut' if not _has_target(job) else 'the target'} that keeps "
                 f"{floor.describe()}, recovering every trial ({job.runtime} speed measured)")
        chosen = _with_target(trials) if _has_target(job) else _deepest(trials)
        if chosen is None and not trials.points:
            raise EdgepruneError("no MACs cut could be made to search the floor; try a smaller --round-to")
        if chosen is None:
            shallowest = min((p for p, _ in trials.points), key=lambda p: p.macs_cut)
            raise EdgepruneError(f"{floor.describe()} is not met by any cut measured; the shallowest, "
                                 f"{shallowest.describe()}, misses it: lower the floor")
    except EdgepruneError as exc:
        if not trials.points:
            raise
        curve = sorted((p for p, _ in trials.points), key=lambda p: p.macs_cut)
        raise FloorNotMet(str(exc), Search(None, curve, floor, job.runtime, time.perf_counter() - start,
                                           trials.target)) from None
    finally:
        trials.close()
    chosen.chosen = True
    curve = sorted((p for p, _ in trials.points), key=lambda p: p.macs_cut)
    found = Search(trials.result_of(chosen), curve, floor, job.runtime, time.perf_counter() - start,
                   trials.target)
    progress(f"search: {len(curve)} trials in {found.seconds:.0f} s; chosen {chosen.describe()}")
    return found


def _part_of_the_way(options: Any, target: Point, fraction: float) -> Any:
    """The options' target taken ``fraction`` of the way from the dense model to it."""
    if options.speedup is not None:
        return replace(options, speedup=1 + fraction * (options.speedup - 1))
    if options.latency_budget is not None:
        slack = max(target.dense_ms - options.latency_budget, 0.0)
        return replace(options, latency_budget=options.latency_budget + (1 - fraction) * slack)
    if options.ratio is not None:
        return replace(options, ratio=fraction * options.ratio)
    return replace(options, flops_cut=fraction * options.flops_cut)


def _has_target(job: Job) -> bool:
    return job.options.latency_driven or job.options.flops_cut is not None or job.options.ratio is not None


def _with_target(trials: _Trials) -> Point:
    """The options' own plan, if it meets the floor; else a one-line refusal naming the fastest point
    measured that does."""
    target = trials.run()
    if target.meets:
        for fraction in (0.5, 0.25):  # two shallower points of the same kind, for the curve
            trials.run(toward=(target, fraction))
        return target
    widened = _widened(trials, target)
    if widened is not None:
        return widened
    _bisect(trials, lambda f: trials.run(toward=(target, f)), start=0.5)
    nearest = max((p for p, _ in trials.points if p.meets), key=trials.depth, default=None)
    if nearest is None:
        raise EdgepruneError(f"{trials.floor.describe()} is not met at {target.describe()}, nor at any shallower cut "
                             "measured: lower the floor")
    raise EdgepruneError(f"{trials.floor.describe()} is not met: reached {target.describe()}; the nearest point "
                         f"measured that meets it: {nearest.describe()}")


def _widened(trials: _Trials, target: Point) -> Point | None:
    """A speed target's plan that missed the floor, with one of its most cut groups widened by one
    alignment step (at most :data:`WIDEN_TRIALS` of them): delivered if it meets the floor at the
    speed asked, measured. Speed comes in steps: on the face net the 2x plan cut conv2 to 32
    channels (2.27x, 0.978) where 48 measured about 2x (0.986), and the bisected targets in between
    gave other plans."""
    if trials.target is None or not target.widths:
        return None
    cut = sorted((kept / dense, name) for name, (dense, kept) in target.widths.items() if kept < dense)
    found = []
    for _, name in cut[:WIDEN_TRIALS]:
        dense, kept = target.widths[name]
        wider = min(dense, (kept // trials.job.round_to + 1) * trials.job.round_to)  # the next aligned width
        widths = {**target.widths, name: [dense, wider]}
        point = trials.run(widths=(f"{target.plan}, {name} widened to {wider}", widths))
        if point is not None and point.meets and point.speed_verdict == MET:
            found.append(point)
    return max(found, key=lambda p: p.speedup, default=None)


def _deepest(trials: _Trials) -> Point | None:
    """The deepest uniform channel ratio in (0, 0.9) that meets the floor; the first trial at 0.3
    (about half the MACs)."""
    return _bisect(trials, lambda f: trials.run(f * DEEPEST), start=0.3 / DEEPEST)


def _bisect(trials: _Trials, run: Any, start: float) -> Point | None:
    """Bisect f in (0, 1) (0: dense, 1: the deepest asked) with ``run(f) -> Point`` for the deepest
    point that meets the floor: the fastest measured for a speed target, else the largest MACs cut
    (None if none measured meets it)."""
    low, high, f = 0.0, 1.0, start
    best = None
    for _ in range(trials.job.options.search_trials):
        point = run(f)
        if point is not None and point.meets:
            best = point if best is None or trials.depth(point) > trials.depth(best) else best
            low = f
        else:
            high = f
        if high - low < RESOLUTION:
            break
        f = (low + high) / 2
    return best


def curve_only(job: Job, progress: Progress, result: Any) -> Search:
    """``--curve`` without a floor: the run's own result, plus a few MACs cuts, measured alike."""
    floor = Floor()
    start = time.perf_counter()
    trials = _Trials(job, progress, floor)
    try:
        own = trials.measure(trials._label(job.options), result, 0.0, chosen=True)  # its recovery was the run's own
        trials.points.append((own, result))
        for depth in CURVE_DEPTHS:
            if abs(1 - (1 - depth) ** 2 - result.macs_cut) > 0.1:
                trials.run(depth)
    finally:
        trials.close()
    curve = sorted((p for p, _ in trials.points), key=lambda p: p.macs_cut)
    return Search(result, curve, floor, job.runtime, time.perf_counter() - start)
