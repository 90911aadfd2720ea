"""``edgeprune bench`` and ``edgeprune targets``: they work without torch installed."""
from __future__ import annotations

import os
import sys
from dataclasses import asdict

import click

from edgeprune.cli import main
from edgeprune.cli.options import emit_json
from edgeprune.errors import EdgepruneError


def _parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(d) for d in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise EdgepruneError(f"--input-shape must look like 1x3x224x224, got {text!r}") from None


def _bench_config(target: str | None, input_shape: str | None, **overrides):
    from edgeprune.profile import BenchConfig
    from edgeprune.targets import load_target

    base = BenchConfig.from_target(load_target(target)) if target else BenchConfig()
    return base.updated(input_shape=_parse_shape(input_shape), **overrides)


def _given(**options):
    """The options given (not None), so that the callee's defaults stand for the others."""
    return {name: value for name, value in options.items() if value is not None}


def _check_folder(output: str | None) -> None:
    if output and not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        raise EdgepruneError(f"cannot write results to {output}: its folder does not exist")


class _LazyBar:
    """A click progress bar on stderr, opened on the first update: errors found before any
    work starts (bad file, bad shape) then print alone."""

    STEPS = 1000

    def __init__(self) -> None:
        self.bar = None
        self.done = 0

    def __enter__(self) -> _LazyBar:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc_info)

    def __call__(self, stage: str, fraction: float) -> None:
        if self.bar is None:
            self.bar = click.progressbar(length=self.STEPS, label="benchmarking", file=sys.stderr)
            self.bar.__enter__()
        step = int(fraction * self.STEPS) if stage == "timing" else 0
        self.bar.update(max(0, step - self.done))
        self.done = max(self.done, step)


@main.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-t", "--target", help="Target name or target JSON file (see `edgeprune targets`).")
@click.option("--threads", type=click.IntRange(min=0), help="Intra-op threads (0: onnxruntime decides).")
@click.option("--runs", type=click.IntRange(min=1), help="Minimum timed runs per model.")
@click.option("--min-time", type=click.FloatRange(min=0), help="Minimum seconds of timed runs per model.")
@click.option("--warmup", type=click.IntRange(min=0), help="Untimed warm-up runs after the first run.")
@click.option("--input-shape", help="Shape of the first input, e.g. 1x3x224x224.")
@click.option("--runtime", "runtimes", multiple=True, metavar="NAME",
              help="Time each model's file for this runtime instead (X.pte, X.ncnn.param beside X.onnx, as "
                   "`export`/`compress --runtime` write them): onnxruntime, executorch, ncnn; repeatable, or 'all'.")
@click.option("--max-bench-seconds", type=click.FloatRange(min=0),
              help="Side-by-side rounds (fresh processes each) go on until every speedup's 95 %% interval is within "
                   "+-3 %%, at most this long (3 rounds at least; default 8).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Also write the JSON results here.")
def bench(models, target, threads, runs, min_time, warmup, input_shape, runtimes, max_bench_seconds, as_json,
          output) -> None:
    """Time MODELS side by side (ONNX files in onnxruntime, or files of another runtime), each in a fresh
    process, in rounds until each speedup's interval is known; ratios are against the first model (per
    runtime with --runtime)."""
    from edgeprune.profile import compare_models, format_table, save_json, to_json

    _check_folder(output)
    config = _bench_config(target, input_shape, intra_threads=threads, min_runs=runs, min_time=min_time, warmup=warmup)
    groups = _runtime_groups(models, runtimes) if runtimes else {"": list(models)}
    found = {}
    for runtime, files in groups.items():
        with _LazyBar() as bar:
            found[runtime] = compare_models(files, config, progress=bar, **_given(max_seconds=max_bench_seconds))
        if found[runtime].load_note:
            click.echo(f"warning: {found[runtime].load_note}", err=True)
    profiles = [p for group in found.values() for p in group.profiles]
    estimates = [e for group in found.values() for e in group.estimates]
    if output:
        save_json(profiles, output, estimates)  # a temporary file, then a rename
    tables = [(f"{runtime}:\n" if runtime else "") + format_table(group.profiles, group.estimates)
              for runtime, group in found.items()]
    click.echo(to_json(profiles, estimates) if as_json else "\n\n".join(tables))


def _runtime_groups(models: tuple[str, ...], names: tuple[str, ...]) -> dict[str, list[str]]:
    """Per runtime asked for, the file of each model for it, found beside the model's ONNX file."""
    from edgeprune.runtimes import runtime_names

    return {runtime: [_file_for(model, runtime) for model in models] for runtime in runtime_names(names)}


def _file_for(model: str, runtime: str) -> str:
    from edgeprune.runtimes import get_runtime

    if runtime == "onnxruntime" and model.endswith(".onnx"):
        return model
    base = model[:-len(".onnx")] if model.endswith(".onnx") else model
    path = base + (".onnx" if runtime == "onnxruntime" else get_runtime(runtime).suffix)
    if not os.path.isfile(path):
        raise EdgepruneError(f"no {runtime} file {path} beside {model}: make it with "
                             f"`edgeprune export --runtime {runtime}` (or `compress --runtime {runtime}`)")
    return path


def _target_row(t) -> list[str]:
    shape = "x".join(map(str, t.input_shape)) if t.input_shape else "model"
    return [t.name, str(t.threads), str(t.inter_op_threads), str(t.round_to), str(t.opset),
            t.graph_optimization, "yes" if t.int8 else "no", "on" if t.memory_arena else "off", shape,
            t.runtime + "".join(f", {r} round_to {n}" for r, n in t.round_to_by_runtime.items())]


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the targets as JSON.")
def targets(as_json: bool) -> None:
    """List the built-in device targets (use a name, or your own JSON file, with --target)."""
    from edgeprune.targets import list_targets, target_aliases

    found, aliases = list_targets(), target_aliases()
    if as_json:
        emit_json({"targets": [asdict(t) for t in found], "aliases": aliases})
        return
    rows = [["name", "threads", "inter", "round_to", "opset", "opt", "int8", "arena", "input", "runtime"]]
    rows += [_target_row(t) for t in found]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    click.echo("")
    for t in found:
        click.echo(f"{t.name}: {t.description}")
    for alias, name in aliases.items():
        click.echo(f"{alias}: alias of {name}")
