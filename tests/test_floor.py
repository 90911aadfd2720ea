"""A quality floor: the deepest cut that meets it, or a speed target refused in one line with the
nearest point that meets it; the trade-off curve in the report. On the three-output detector of
tests/models/heads.py, recovered by reconstruction alone (no epochs) to stay fast."""
from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from edgeprune.cli import main

from conftest import assert_one_line_error
from test_own_model import HEADS, write_pixels

FAST = ["--target", "x86-avx2", "--round-to", "1", "--runs", "3", "--min-time", "0.05", "--max-bench-seconds", "0", "--finetune-epochs", "0",
        "--eval-images", "64", "--no-int8"]


def compress(*args: str):
    return CliRunner().invoke(main, ["compress", *args])


@pytest.fixture(scope="module")
def pixels(tmp_path_factory):
    return write_pixels(tmp_path_factory.mktemp("floor") / "pixels.npz")


def test_a_floor_alone_delivers_the_deepest_cut_that_meets_it(tmp_path, pixels):
    out = tmp_path / "out"
    result = compress(HEADS, "--calib", pixels, *FAST, "--min-cosine", "0.9", "--search-trials", "3", "-o", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    curve = report["curve"]
    assert len(curve) == 3 and report["search"]["trials"] == 3 and report["search"]["seconds"] > 0
    assert report["search"]["floor"] == {"min_cosine": 0.9, "max_drop": None, "metric": "top1"}
    [chosen] = [p for p in curve if p["chosen"]]
    assert chosen["meets"] and chosen["cosine_min"] >= 0.9
    assert chosen["macs_cut"] == max(p["macs_cut"] for p in curve if p["meets"])  # the deepest that meets it
    assert any(not p["meets"] for p in curve)  # the first trial (half the MACs) does not
    assert all(p["speedup"] > 0 and set(p["outputs"]) == {"scores", "boxes", "embedding"} for p in curve)
    assert all(len(p["speedup_rounds"]) == p["rounds"] == 3 and p["ci_low"] <= p["speedup"] <= p["ci_high"]
               for p in curve)  # --max-bench-seconds 0: the first rounds only (exact figures: the faked timers below)
    pruned = next(v for v in report["variants"] if v["name"] == "pruned")
    assert pruned["macs"] == pytest.approx(report["variants"][0]["macs"] * (1 - chosen["macs_cut"]), rel=1e-6)
    assert pruned["cosine_min"] >= 0.9 - 0.02  # the ONNX file on the same held-out images
    assert "## Trade-off curve" in (out / "report.md").read_text()
    assert "trade-off curve:" in result.stdout and "chosen" in result.stdout
    promise = report["promise"]  # the floor asked, against the delivered ONNX file's own figures
    assert promise["report"]["cosine_min"] == pruned["cosine_min"] and promise["speed_held"] is None
    assert promise["floor_held"] == (pruned["cosine_min"] >= 0.9) and promise["search"]["cosine_min"] == chosen["cosine_min"]
    assert "promise in onnxruntime: worst output cosine >= 0.9: " in result.stdout


def test_a_target_that_misses_the_floor_is_refused_with_the_nearest_point(tmp_path, pixels):
    result = compress(HEADS, "--calib", pixels, *FAST, "--ratio", "0.3", "--min-cosine", "0.9",
                      "--search-trials", "3", "-o", str(tmp_path / "out"))
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    *trials, last = result.stderr.strip().splitlines()
    assert all(line.startswith("[edgeprune] ") for line in trials)  # the search's progress, then one line
    assert last.startswith("edgeprune: error: worst output cosine >= 0.9 is not met: reached ")
    assert "the nearest point measured that meets it: " in last and "channel ratio 0.07" in last  # 0.15 misses
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    kept = tmp_path / "out.curve.json"  # the minutes of trials are not lost with the refusal
    assert last.endswith(f"the 4 points measured are in {kept}")  # the target's own trial and three shallower
    measured = json.loads(kept.read_text())
    assert len(measured["curve"]) == 4 and measured["search"]["floor"]["min_cosine"] == 0.9
    assert any(p["meets"] for p in measured["curve"]) and not any(p["chosen"] for p in measured["curve"])


@pytest.mark.parametrize("args, fragment", [
    (["--min-cosine", "1.5"], "--min-cosine must be in (-1, 1]"),
    (["--max-drop", "0.5"], "--max-drop is in top-1 points and needs labelled data"),
])
def test_floors_that_cannot_apply_fail_before_any_work(tmp_path, pixels, args, fragment):
    assert_one_line_error(compress(HEADS, "--calib", pixels, *FAST, *args, "-o", str(tmp_path / "out")), fragment)
    assert not (tmp_path / "out").exists()


def test_the_trials_of_a_search_share_one_sensitivity_measurement(tmp_path, pixels):
    out = tmp_path / "out"
    result = compress(HEADS, "--calib", pixels, *FAST, "--flops-cut", "0.5", "--allocate", "sensitivity",
                      "--min-cosine", "0.9", "--search-trials", "1", "-o", str(out))
    trials = [line for line in result.stderr.splitlines() if line.endswith("then recovery")]
    assert len(trials) >= 2, result.output
    assert result.stderr.count("measuring each group's sensitivity") == 1  # the dense model's curves, once
    assert result.stderr.count("widths from each group's sensitivity") == len(trials)


def test_a_plan_an_earlier_trial_recovered_is_not_recovered_again(tmp_path, pixels, monkeypatch):
    from edgeprune.allocation import SensitivityPlanner
    from edgeprune.pipeline import stages

    def staircase(job, progress):  # a planner whose every target lands on the same plan, as speed targets can
        return SensitivityPlanner(stages.sensitivity_curves(job, progress), 0.5, job.round_to)

    monkeypatch.setattr(stages, "sensitivity_planner", staircase)
    result = compress(HEADS, "--calib", pixels, *FAST, "--flops-cut", "0.5", "--allocate", "sensitivity",
                      "--min-cosine", "0.9999", "--search-trials", "2", "-o", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    trials = [line for line in result.stderr.splitlines() if line.endswith("then recovery")]
    assert len(trials) == 3  # the target, then two bisected shallower ones
    assert result.stderr.count("reconstructing the layers") == 1  # one recovery: the other two are its plan
    assert result.stderr.count("the plan of an earlier trial (MACs cut 50%), not recovered again") == 2
    assert [line.split(":")[0] for line in trials] == [f"[edgeprune] trial {n}" for n in (1, 2, 3)]
    [point] = json.loads((tmp_path / "out.curve.json").read_text())["curve"]
    assert point["widths"] and all(kept <= dense for dense, kept in point["widths"].values())  # which plan it was
    assert any(kept < dense for dense, kept in point["widths"].values())


def test_a_floors_trials_recover_longer_and_gentler_unless_told():
    """10 epochs at lr 0.003 in a floor's trials (3 at 0.01 kept the face net's box output below its
    reconstructed cut); a plain run keeps 3 at 0.01; what the user gives wins."""
    from types import SimpleNamespace

    from edgeprune.pipeline import CompressOptions
    from edgeprune.pipeline.prepare import finetune_epochs, finetune_lr

    unlabelled = SimpleNamespace(labelled=False, boxed=False, train=object(), spec="images:crops/")
    plain, floor = CompressOptions(), CompressOptions(min_cosine=0.99)
    assert (finetune_epochs(unlabelled, plain), finetune_lr(plain)) == (3, 0.01)
    assert (finetune_epochs(unlabelled, floor), finetune_lr(floor)) == (10, 0.003)
    told = CompressOptions(min_cosine=0.99, finetune_epochs=2, lr=0.05)
    assert (finetune_epochs(unlabelled, told), finetune_lr(told)) == (2, 0.05)


def test_a_speed_target_that_misses_the_floor_tries_its_most_cut_groups_one_step_wider():
    """The face net's 2x plan cut conv2 to 32 (2.27x, cosine 0.978) where 48 measured about 2x:
    the most cut groups are tried one alignment step wider, and one that meets the floor at the
    speed asked is delivered; one that is too slow is not."""
    from types import SimpleNamespace

    from edgeprune.pipeline.search import Floor, Point, SpeedTarget, _widened

    class Trials:
        def __init__(self, speeds):
            self.job = SimpleNamespace(round_to=16)
            self.target = SpeedTarget(speedup=2.0)
            self.floor, self.speeds, self.asked = Floor(min_cosine=0.99), speeds, []

        def run(self, widths):
            label, plan = widths
            self.asked.append(plan)
            speed, cosine = self.speeds[label.split(", ")[-1]]
            return Point(label, 0.5, speed, 1.0, 1 / speed, cosine, None, cosine >= 0.99, 1.0, widths=plan,
                         speed_verdict="met" if speed >= 2.0 else "missed")  # as its rounds' interval decided

    target = Point("speedup 2x", 0.63, 2.27, 1.0, 0.44, 0.978, None, False, 1.0,
                   widths={"conv1": [32, 16], "conv2": [64, 32], "conv3": [64, 48], "conv4": [128, 128]})
    trials = Trials({"conv1 widened to 32": (1.2, 0.999), "conv2 widened to 48": (2.05, 0.991)})
    chosen = _widened(trials, target)
    assert [plan["conv1"] for plan in trials.asked] == [[32, 32], [32, 16]]  # the two most cut, one at a time
    assert [plan["conv2"] for plan in trials.asked] == [[64, 32], [64, 48]]
    assert chosen.plan == "speedup 2x, conv2 widened to 48" and chosen.speedup == 2.05
    slow = Trials({"conv1 widened to 32": (1.2, 0.999), "conv2 widened to 48": (1.9, 0.991)})
    assert _widened(slow, target) is None  # meets the floor, but not the speed asked: the bisection goes on
    unaligned = Point("speedup 2x", 0.55, 1.88, 1.0, 0.53, 0.983, None, False, 1.0,
                      widths={"conv1": [32, 16], "conv2": [64, 44]})  # the latency planner's grid is finer
    trials = Trials({"conv1 widened to 32": (1.1, 0.989), "conv2 widened to 48": (2.0, 0.991)})
    assert _widened(trials, unaligned).plan == "speedup 2x, conv2 widened to 48"  # the next aligned width, not 60


def test_the_promise_is_judged_on_the_interval_of_the_reports_own_rounds():
    """The face net's chosen point measured 2.02x in the search; the report's own rounds of the
    delivered files decide: all below 2x is not kept, all above is kept, spanning 2x is not
    decidable here (and one low median alone does not refuse it)."""
    from edgeprune.pipeline.search import Floor, Point, Search, SpeedTarget
    from edgeprune.report import promise_lines

    chosen = Point("speedup 2x", 0.39, 2.02, 0.50, 0.2475, 0.9942, None, True, 391.0, chosen=True,
                   speedup_rounds=[1.95, 2.02, 2.10], ci_low=1.83, ci_high=2.23, rounds=3, speed_verdict="undecided")
    found = Search(object(), [chosen], Floor(min_cosine=0.99), "onnxruntime", 1108.0, SpeedTarget(speedup=2.0))

    def delivered(ratios, cosine=0.9942):
        rounds = [[0.5, 0.5 / r] for r in ratios]
        return {"dense_ms": 0.5, "pruned_ms": statistics.median(p for _, p in rounds), "rounds_ms": rounds,
                "cosine_min": cosine, "top1": None, "dense_top1": None}

    slow = found.promise(delivered([1.90, 1.91, 1.92, 1.89]))
    assert slow["search"]["speedup"] == 2.02 and slow["search"]["ci_low"] == 1.83 and slow["search"]["rounds"] == 3
    assert slow["report"]["speedup"] == pytest.approx(1.905, abs=1e-3) and slow["report"]["rounds"] == 4
    assert slow["report"]["ci_low"] < 1.905 < slow["report"]["ci_high"] < 2.0
    assert slow["floor_held"] and slow["speed_held"] is False and slow["speed_verdict"] == "missed" and not slow["held"]
    [line] = promise_lines({"promise": slow})
    assert line.startswith("promise in onnxruntime: 2x the dense model's speed, worst output cosine >= 0.99: "
                           "the speed not kept in this report's own measurement (its whole 95 % interval is below")
    assert "The search measured 2.02x [1.83-2.23] (3 rounds)" in line and "this report 1.91x [1.8" in line
    kept = found.promise(delivered([2.10, 2.12, 2.11]))
    assert kept["held"] and "2x the dense model's speed, worst output cosine >= 0.99: kept." in promise_lines({"promise": kept})[0]
    close = found.promise(delivered([1.90, 2.15, 1.95]))  # median 1.95x, interval spans 2x
    assert close["speed_verdict"] == "undecided" and close["speed_held"] is None and close["held"]
    assert "the floor kept; the speed not decidable here" in promise_lines({"promise": close})[0]
    worse = found.promise(delivered([2.10, 2.12, 2.11], cosine=0.989))
    assert not worse["floor_held"] and worse["speed_held"] and not worse["held"]
    budget = Search(object(), [chosen], Floor(min_cosine=0.99), "onnxruntime", 1.0, SpeedTarget(latency_budget=0.25))
    assert budget.promise(delivered([1.90, 1.91, 1.92]))["speed_held"] is False  # pruned 0.26-0.263 ms, all above


class FakeTimer:
    """Side-by-side rounds of given dense / pruned ratios, each round costing ``seconds`` of a fake clock."""

    def __init__(self, ratios, seconds=1.0):
        self.ratios, self.seconds, self.now, self.asked, self.rounds = iter(ratios), seconds, 0.0, 0, 3

    def rounds_of(self, models, rounds=None):
        self.asked += rounds or self.rounds
        self.now += self.seconds * (rounds or self.rounds)
        return [[1.0, 1.0 / next(self.ratios)] for _ in range(rounds or self.rounds)]

    def clock(self):
        return self.now


def test_a_clear_speed_result_stops_after_the_first_rounds():
    """Three rounds whose interval lies all above (or all below) 2x decide the target: no more
    rounds, however much time is left."""
    from edgeprune.pipeline.search import SpeedTarget, speed_rounds

    said = []
    for ratios, verdict in (([2.5, 2.45, 2.55], "met"), ([1.5, 1.52, 1.48], "missed")):
        timer = FakeTimer(ratios + [2.0] * 20)
        rounds = speed_rounds(timer, ["dense", "pruned"], SpeedTarget(speedup=2.0), said.append, 60, timer.clock)
        assert len(rounds) == 3 and SpeedTarget(speedup=2.0).verdict(rounds) == verdict
    assert said == []


def test_a_close_call_is_measured_until_its_interval_decides():
    """Rounds whose median clears 2x (2.2x) but whose interval spans it are measured longer, one
    round at a time, until the interval lies below 2x; the verdict is the interval's, not the median's."""
    from edgeprune.pipeline.search import SpeedTarget, speed_rounds

    target, said = SpeedTarget(speedup=2.0), []
    timer = FakeTimer([2.3, 2.2, 1.6] + [1.8] * 20)
    rounds = speed_rounds(timer, ["dense", "pruned"], target, said.append, 60, timer.clock)
    assert statistics.median(d / p for d, p in rounds[:3]) > 2.0  # one median would have said met
    assert 3 < len(rounds) < 23 and timer.asked == len(rounds)
    assert target.verdict(rounds) == "missed"
    assert said[0].endswith("spans 2x the dense model's speed: measuring longer") and len(said) == 1
    budget = SpeedTarget(latency_budget=0.5)  # a budget: each round's budget / pruned ms against 1
    assert budget.verdict([[1.0, 0.40], [1.0, 0.42], [1.0, 0.41]]) == "met"
    assert budget.verdict([[1.0, 0.40], [1.0, 0.60], [1.0, 0.45]]) == "undecided"


def test_a_call_still_close_at_the_time_cap_is_not_decidable_here():
    """Rounds that keep falling on both sides of 2x stop at --max-bench-seconds and say so."""
    from edgeprune.pipeline.search import SpeedTarget, speed_rounds

    said = []
    timer = FakeTimer([2.2, 1.8] * 50, seconds=2.0)
    rounds = speed_rounds(timer, ["dense", "pruned"], SpeedTarget(speedup=2.0), said.append, 20, timer.clock)
    assert len(rounds) == 10 and SpeedTarget(speedup=2.0).verdict(rounds) == "undecided"  # 10 rounds of 2 s
    assert said[-1].endswith("against 2x the dense model's speed: not decidable here in 20 s")
    untargeted = FakeTimer([1.5, 1.51, 1.49] + [1.5] * 10)  # no target: rounds until +-3 %
    assert len(speed_rounds(untargeted, ["dense", "pruned"], None, said.append, 60, untargeted.clock)) == 3
    noisy = FakeTimer([1.8, 1.2] * 50)
    assert len(speed_rounds(noisy, ["dense", "pruned"], None, said.append, 5, noisy.clock)) == 5


# End to end with a speed target or a top-1 floor. The speed comes from a faked timer (and a board's
# table that predicts the same): each model's time is its convolutions' MACs, so every figure below
# is exact and the runs take no timing.
NS_PER_MAC = 1e-6  # milliseconds per multiply-accumulate, in the table and the faked timer alike


def conv_macs(model) -> int:
    macs, handles = [], []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(
                lambda mod, _i, out: macs.append(mod.weight.numel() * out.shape[-1] * out.shape[-2])))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, 16, 16))
    finally:
        for h in handles:
            h.remove()
    return sum(macs)


def faked_timer(inverted: bool = False):
    """A ``ModelTimer`` whose rounds agree exactly: a model's time is its MACs (``inverted``: a
    runtime where every MAC cut costs time instead, as unaligned widths can)."""

    class Timer:
        dense_macs: int | None = None

        def __init__(self, *_args, **_kwargs) -> None:
            self.asked = 0

        def ms(self, model) -> float:
            macs = conv_macs(model)
            Timer.dense_macs = Timer.dense_macs or macs  # the first model timed is the dense one
            return NS_PER_MAC * (2 * Timer.dense_macs - macs if inverted else macs)

        def rounds_of(self, models, rounds=None):
            times = [self.ms(m) for m in models]
            return [list(times) for _ in range(rounds or 3)]

        def __call__(self, models):
            return self.rounds_of(models, 1)[0]

        def close(self) -> None:
            pass

    return Timer


def _heads():
    from edgeprune.checkpoint import load_model

    return load_model(HEADS)


@pytest.fixture(scope="module")
def board_table(tmp_path_factory):
    """A board's table for the detector (what ``lut build --spec-only`` asks a board to measure),
    filled by MACs: the latency planner rests on its prediction and measures nothing here."""
    from edgeprune.latency import LatencyTable, conv_shapes, settings_of
    from edgeprune.latency.table import model_key
    from edgeprune.targets import load_target

    loaded = _heads()
    shape = tuple(loaded.input_shape)
    spec = LatencyTable.empty(settings_of(load_target("x86-avx2"), host=False)).spec(
        list(conv_shapes(loaded.model, shape).values()), {model_key(loaded.spec, shape): "dense.onnx"})
    entries = {}
    for layer in spec["layers"]:
        kh, kw = layer["kernel"]
        out_hw = (layer["in_hw"][0] // layer["stride"][0]) * (layer["in_hw"][1] // layer["stride"][1])
        entries[layer["key"]] = {f"{cin},{cout}": NS_PER_MAC * (1 if layer["depthwise"] else cin) * cout * kh * kw * out_hw
                                 for cin, cout in layer["points"]}
    dense_ms = NS_PER_MAC * conv_macs(loaded.model)
    table = {"format": "edgeprune.lut/1", "machine": {"machine": "aarch64", "cpu": "Cortex-A72 (a board)", "cpus": 4},
             "settings": spec["settings"], "overhead_ms": 0.0, "runs": 1, "min_time": 0.0, "entries": entries,
             "models": {m["key"]: dense_ms for m in spec["models"]}}
    path = tmp_path_factory.mktemp("board") / "table.json"
    path.write_text(json.dumps(table))
    return str(path), dense_ms


QUICK = [*FAST, "--no-reconstruct"]  # the trials' recovery: BatchNorm re-estimation alone
SPEED = [*QUICK[:2], "--round-to", "4", *QUICK[4:]]  # the table's widths are multiples of 4


@pytest.fixture(scope="module")
def few_pixels(tmp_path_factory):
    return write_pixels(tmp_path_factory.mktemp("few") / "pixels.npz", 128)


def test_a_speed_target_that_meets_the_floor_is_delivered_with_two_partial_targets(tmp_path, few_pixels, board_table,
                                                                                     monkeypatch):
    from edgeprune.pipeline import search, stages

    table, dense_ms = board_table
    timer = faked_timer()
    for module in (search, stages):  # the floor's trials and the latency plan's confirmation
        monkeypatch.setattr(module, "ModelTimer", timer)
    out = tmp_path / "out"
    result = compress(HEADS, "--calib", few_pixels, *SPEED, "--speedup", "1.6", "--lut", table, "--min-cosine", "0.5",
                      "-o", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    curve = report["curve"]
    assert [p["plan"] for p in curve] == ["speedup 1.15x", "speedup 1.3x", "speedup 1.6x"]  # 1/4, 1/2 of the way
    assert [p["plan"] for p in curve if p["chosen"]] == ["speedup 1.6x"]
    assert report["search"]["target"] == {"speedup": 1.6, "latency_budget": None}
    for point, asked in zip(curve, (1.15, 1.3, 1.6)):
        assert point["dense_ms"] == pytest.approx(dense_ms)  # the faked timer's, hence the speedups below
        assert point["speedup"] == pytest.approx(dense_ms / point["pruned_ms"])
        assert point["speedup_rounds"] == [pytest.approx(point["speedup"], abs=1e-4)] * 3
        assert asked * 0.9 <= point["speedup"]  # the plan predicted by the table, which the timer agrees with
    assert curve[0]["speedup"] < curve[1]["speedup"] < curve[2]["speedup"]
    assert report["promise"]["asked"] == "1.6x the dense model's speed, worst output cosine >= 0.5"


@pytest.fixture(scope="module")
def labelled_pixels(tmp_path_factory):
    """Pixels labelled with the dense detector's own class: its top-1 is 100 %."""
    dense = _heads()
    x = np.random.default_rng(0).integers(0, 256, (200, 3, 16, 16), dtype=np.uint8)  # write_pixels(n=200)
    with torch.no_grad():
        scores = dense.model((torch.from_numpy(x).float() / 255 - 0.5) / 0.25)["scores"]
    return write_pixels(tmp_path_factory.mktemp("labelled") / "labelled.npz", 200, labels=scores.argmax(1).numpy())


def test_a_speed_target_refused_names_the_fastest_point_that_meets_a_top1_floor(tmp_path, labelled_pixels,
                                                                               board_table, monkeypatch):
    """A latency budget with a top-1 floor (in points against the dense model's top-1, here 100 %)
    that its plan misses: refused in one line. Deeper cuts measured slower here (a faked runtime):
    the nearest point named is the fastest one that meets the floor, not the one with most MACs
    cut; the bisected budgets lie between the dense model's time and the target's."""
    from edgeprune.pipeline import search, stages

    table, dense_ms = board_table
    timer = faked_timer(inverted=True)
    for module in (search, stages):  # the floor's trials and the latency plan's confirmation
        monkeypatch.setattr(module, "ModelTimer", timer)
    budget = round(0.4 * dense_ms, 4)
    result = compress(HEADS, "--calib", labelled_pixels, *SPEED, "--label-output", "scores", "--latency-budget",
                      str(budget), "--lut", table, "--max-drop", "60", "--search-trials", "1", "-o", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("edgeprune: error: top-1 within 60 points of dense is not met: reached ")
    measured = json.loads((tmp_path / "out.curve.json").read_text())
    curve = measured["curve"]
    assert measured["search"]["floor"] == {"min_cosine": None, "max_drop": 60.0, "metric": "top1"}
    assert all(p["meets"] == (100 * (1 - p["top1"]) <= 60) for p in curve), curve
    meeting = [p for p in curve if p["meets"]]
    fastest = max(meeting, key=lambda p: p["speedup"])
    assert fastest is not max(meeting, key=lambda p: p["macs_cut"])  # the case tells the two measures apart
    assert f"the nearest point measured that meets it: {fastest['speedup']:.2f}x ({fastest['plan']}," in last
    halfway = f"latency budget {budget + 0.5 * (dense_ms - budget):g} ms"
    assert halfway in [p["plan"] for p in curve] and f"{halfway}, then recovery" in result.stderr
