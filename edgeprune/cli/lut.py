"""``edgeprune lut``: build, or measure on a board, the latency table a latency budget uses."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edgeprune.cli import main
from edgeprune.cli.options import emit_json, input_shape_option, model_argument, weights_option


class _Bar:
    """A click progress bar over the points measured, on stderr."""

    def __init__(self, label: str = "measuring") -> None:
        self.bar, self.label = None, label

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr).__enter__()
        self.bar.update(1)
        if done == total:
            self.bar.__exit__(None, None, None)


@main.group()
def lut() -> None:
    """Latency tables: each convolution of a model timed over a grid of channel counts."""


@lut.command("build")
@model_argument
@weights_option
@input_shape_option
@click.option("--target", "-t", default="arm", show_default=True, help="Device profile or a target JSON file.")
@click.option("--runtime", "runtimes", multiple=True, metavar="NAME",
              help="Time the convolutions in this runtime: onnxruntime, executorch, ncnn; repeatable, or 'all' "
                   "(default: the target's runtime). Each runtime has its own table.")
@click.option("--threads", type=click.IntRange(min=1), help="Threads (default: the target's, at most this host's cores).")
@click.option("--spec-only", type=click.Path(dir_okay=False), metavar="SPEC",
              help="Write what to measure to SPEC instead of measuring here (for `edgeprune lut measure` on the board; "
                   "onnxruntime only).")
@click.option("--lut", "table_path", type=click.Path(dir_okay=False),
              help="Complete this table file instead of this machine's cached one (one runtime).")
@click.option("--json", "as_json", is_flag=True, help='Print {"tables": [a summary per runtime]} as JSON.')
def build(model, weights, input_shape, target, runtimes, threads, spec_only, table_path, as_json):
    """Measure the latency table MODEL needs on TARGET's settings, on this machine (cached for later runs)."""
    from edgeprune.checkpoint import load_model
    from edgeprune.errors import EdgepruneError
    from edgeprune.latency import conv_shapes
    from edgeprune.runtimes import runtime_names
    from edgeprune.targets import load_target

    target = load_target(target)
    chosen = runtime_names(runtimes or (target.runtime,))
    if (spec_only or table_path) and len(chosen) > 1:
        raise EdgepruneError("--spec-only and --lut take one runtime")
    if spec_only and chosen != ["onnxruntime"]:
        raise EdgepruneError("a board measures onnxruntime tables only (measure.py); for "
                             f"{chosen[0]}, run `edgeprune lut build --runtime {chosen[0]}` on the board")
    loaded = load_model(model, weights, input_shape)
    shape = tuple(input_shape or target.input_shape or loaded.input_shape)
    shapes = list(conv_shapes(loaded.model, shape).values())
    summaries, hints = [], []
    for runtime in chosen:
        summary, hint = (_write_spec(loaded, shape, shapes, target, threads, spec_only, table_path) if spec_only else
                         _measure_here(loaded, shapes, target, runtime, threads, table_path, quiet=as_json))
        summaries.append(summary)
        hints.append(hint)
    if as_json:
        emit_json({"tables": summaries})
    else:
        click.echo("\n".join(hints))


def _summary(loaded, target, settings: dict, shapes: list, spec: dict) -> dict:
    return {"model": loaded.spec, "target": target.name, "runtime": settings.get("runtime", "onnxruntime"),
            "settings": settings, "layer_shapes": len({s.key for s in shapes}),
            "points_missing": sum(len(layer["points"]) for layer in spec["layers"])}


def _measure_here(loaded, shapes: list, target, runtime: str, threads: int | None, table_path: str | None,
                  quiet: bool) -> tuple[dict, str]:
    from edgeprune.latency import complete, open_table, settings_of

    settings = settings_of(target, threads, runtime=runtime)
    existing = table_path if table_path and Path(table_path).exists() else None
    table = open_table(target.name, settings, existing, board_settings=settings_of(target, threads, False, runtime))
    if table_path:
        table.path = Path(table_path)
    summary = _summary(loaded, target, settings, shapes, table.spec(shapes))
    summary["points_measured"] = complete(table, shapes, None if quiet else _Bar(f"measuring ({runtime})"))
    if table.path is not None and not table.path.exists():
        table.save()
    summary["table"] = str(table.path)
    hint = (f"{runtime}: {summary['points_measured']} points measured; table {table.path} covers {loaded.spec} "
            f"on {target.name}")
    return summary, hint


def _write_spec(loaded, shape: tuple[int, ...], shapes: list, target, threads: int | None, spec_only: str,
                table_path: str | None) -> tuple[dict, str]:
    """What a board must measure (onnxruntime's settings as the target gives them), and the dense
    model it also times, which the plan starts from."""
    from edgeprune.export import export_onnx
    from edgeprune.latency import LatencyTable, open_table, settings_of
    from edgeprune.latency.measure import write_json_atomic
    from edgeprune.latency.table import model_key

    settings = settings_of(target, threads, host=False)  # a board runs the target's own thread count
    existing = table_path if table_path and Path(table_path).exists() else None
    table = open_table(target.name, settings, existing, board_settings=settings) if existing else LatencyTable.empty(settings)
    dense_file = Path(spec_only).with_suffix(".dense.onnx")
    export_onnx(loaded.model, shape, dense_file, opset=target.opset)
    spec = table.spec(shapes, {model_key(loaded.spec, shape): dense_file.name})
    write_json_atomic(spec, spec_only)
    summary = {**_summary(loaded, target, settings, shapes, spec), "spec": spec_only, "dense_onnx": str(dense_file)}
    measure_py = Path(__file__).resolve().parents[1] / "latency" / "measure.py"
    hint = (f"wrote {spec_only} ({summary['points_missing']} points) and {dense_file.name}. Copy both and measure.py to "
            f"the board (onnxruntime and NumPy only), there:\n"
            f"  python measure.py {Path(spec_only).name} -o table.json   # measure.py is {measure_py}\n"
            f"then here: edgeprune compress {loaded.spec} --target {target.name} --speedup X --lut table.json")
    return summary, hint


@lut.command("align")
@click.option("--target", "-t", default="arm", show_default=True, help="Device profile or a target JSON file.")
@click.option("--runtime", "runtimes", multiple=True, metavar="NAME",
              help="onnxruntime, executorch, ncnn; repeatable, or 'all' (default: the target's runtime).")
@click.option("--threads", type=click.IntRange(min=1), help="Threads (default: the target's, at most this host's cores).")
@click.option("--json", "as_json", is_flag=True, help='Print {"alignments": [...]} as JSON.')
def align(target, runtimes, threads, as_json):
    """Find the channel multiple each runtime's kernels prefer on this machine, from a small probe table (cached).

    Put it in a target file as "round_to_by_runtime": {"ncnn": N}, or pass --round-to N to compress.
    """
    from edgeprune.latency import settings_of
    from edgeprune.latency.alignment import preferred_alignment, probe_table
    from edgeprune.runtimes import runtime_names
    from edgeprune.targets import load_target

    target = load_target(target)
    found = []
    for runtime in runtime_names(runtimes or (target.runtime,)):
        table = probe_table(settings_of(target, threads, runtime=runtime), None if as_json else _Bar(f"probing ({runtime})"))
        found.append(preferred_alignment(table))
    if as_json:
        emit_json({"target": target.name, "alignments": [a.to_dict() for a in found]})
        return
    for a in found:
        scores = ", ".join(f"{m}: {s:.2f}" for m, s in a.score.items())
        click.echo(f"{a.runtime}: round_to {a.preferred} (target {target.name} uses {target.round_to_for(a.runtime)}); "
                   f"relative throughput of the widths each multiple allows: {scores}")


@lut.command("measure")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The table JSON to write.")
@click.option("--runs", type=click.IntRange(min=1), default=10, show_default=True, help="Timed runs per point, at least.")
@click.option("--min-time", type=click.FloatRange(min=0), default=0.02, show_default=True, help="Seconds of timed runs per point.")
def measure(spec, output, runs, min_time):
    """Measure SPEC (from `lut build --spec-only`) here; needs only onnxruntime and NumPy."""
    from edgeprune.errors import EdgepruneError
    from edgeprune.latency.measure import check_spec, measure_spec, write_json_atomic

    try:
        spec_data = check_spec(json.loads(Path(spec).read_text()))
    except OSError as exc:
        raise EdgepruneError(f"cannot read {spec}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise EdgepruneError(f"{spec}: {exc}") from None
    try:
        table = measure_spec(spec_data, runs, min_time, _Bar(), str(Path(spec).resolve().parent))
    except (OSError, ValueError) as exc:
        raise EdgepruneError(f"{spec}: {exc}") from None
    write_json_atomic(table, output)
    click.echo(f"wrote {output}: {sum(len(r) for r in table['entries'].values())} points")
