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

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = click.progressbar(length=total, label="measuring", file=sys.stderr).__enter__()
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
@click.option("--threads", type=click.IntRange(min=1), help="onnxruntime threads (default: the target's, at most this host's cores).")
@click.option("--spec-only", type=click.Path(dir_okay=False), metavar="SPEC",
              help="Write what to measure to SPEC instead of measuring here (for `edgeprune lut measure` on the board).")
@click.option("--lut", "table_path", type=click.Path(dir_okay=False),
              help="Complete this table file instead of this machine's cached one.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def build(model, weights, input_shape, target, threads, spec_only, table_path, as_json):
    """Measure the latency table MODEL needs on TARGET's settings, on this machine (cached for later runs)."""
    from edgeprune.checkpoint import load_model
    from edgeprune.latency import LatencyTable, complete, conv_shapes, open_table, settings_of
    from edgeprune.latency.measure import write_json_atomic
    from edgeprune.targets import load_target

    target = load_target(target)
    loaded = load_model(model, weights, input_shape)
    shape = tuple(input_shape or target.input_shape or loaded.input_shape)
    shapes = list(conv_shapes(loaded.model, shape).values())
    settings = settings_of(target, threads, host=not spec_only)  # a board runs the target's own thread count
    existing = table_path if table_path and Path(table_path).exists() else None
    if spec_only and not existing:
        table = LatencyTable.empty(settings)
    else:
        table = open_table(target.name, settings, existing, board_settings=settings_of(target, threads, host=False))
    if table_path:
        table.path = Path(table_path)
    models = {}
    if spec_only:  # the board also times the whole dense model, which the plan starts from
        from edgeprune.export import export_onnx
        from edgeprune.latency.table import model_key

        dense_file = Path(spec_only).with_suffix(".dense.onnx")
        export_onnx(loaded.model, shape, dense_file, opset=target.opset)
        models = {model_key(loaded.spec, shape): dense_file.name}
    spec = table.spec(shapes, models)
    points = sum(len(layer["points"]) for layer in spec["layers"])
    summary = {"model": loaded.spec, "target": target.name, "settings": settings, "layer_shapes": len({s.key for s in shapes}),
               "points_missing": points}
    if spec_only:
        write_json_atomic(spec, spec_only)
        summary.update(spec=spec_only, dense_onnx=str(dense_file))
        measure_py = Path(__file__).resolve().parents[1] / "latency" / "measure.py"
        hint = (f"wrote {spec_only} ({points} points) and {dense_file.name}. Copy both and measure.py to the board "
                f"(onnxruntime and NumPy only), there:\n"
                f"  python measure.py {Path(spec_only).name} -o table.json   # measure.py is {measure_py}\n"
                f"then here: edgeprune compress {loaded.spec} --target {target.name} --speedup X --lut table.json")
    else:
        summary["points_measured"] = complete(table, shapes, None if as_json else _Bar())
        if table.path is not None and not table.path.exists():
            table.save()
        summary["table"] = str(table.path)
        hint = f"{summary['points_measured']} points measured; table {table.path} covers {loaded.spec} on {target.name}"
    if as_json:
        emit_json(summary)
    else:
        click.echo(hint)


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
