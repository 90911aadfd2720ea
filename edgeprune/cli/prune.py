"""``edgeprune prune``, ``info`` and ``zoo``."""
from __future__ import annotations

import click

from edgeprune.cli import main
from edgeprune.cli.options import (
    emit_json,
    input_shape_option,
    model_argument,
    pairs,
    preprocess_choice,
    preprocess_options,
    weights_option,
)


@main.command()
@model_argument
@weights_option
@input_shape_option
@preprocess_options
@click.option("--criterion", "-c", default="l2", show_default=True, help="Criterion name (see `edgeprune criteria`).")
@click.option("--ratio", "-r", type=float, help="Fraction of each group's channels to remove, in [0, 1).")
@click.option("--flops-cut", type=float, help="Fraction of MACs to remove (searched to within 1 point).")
@click.option("--round-to", type=click.IntRange(min=1), default=1, show_default=True, help="Keep a multiple of K channels per group.")
@click.option("--global", "global_ranking", is_flag=True, help="Rank channels across groups instead of a uniform ratio.")
@click.option("--allocate", type=click.Choice(["uniform", "global", "sensitivity"]), default="uniform", show_default=True,
              help="How the cut is spread: one ratio for all, a global ranking, or each group's measured "
                   "sensitivity (with --flops-cut; see `edgeprune sensitivity`).")
@click.option("--sensitivity", "sensitivity_file", type=click.Path(dir_okay=False),
              help="Curves from `edgeprune sensitivity -o FILE` (default: measured now).")
@click.option("--max-group-ratio", type=float, default=0.9, show_default=True, help="Cap per group with --global.")
@click.option("--layer-ratio", multiple=True, metavar="LAYER=R", help="Ratio for the group holding LAYER (repeatable).")
@click.option("--steps", type=click.IntRange(min=1), default=1, show_default=True,
              help="Reach the target in T rounds, rescoring the remaining filters each round.")
@click.option("--calib", help="Data source for data-driven criteria (cifar10:DIR, folder:DIR, X.npz, mnist5k).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of tables.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Pruned checkpoint to write (.pt).")
def prune(model, weights, input_shape, criterion, ratio, flops_cut, round_to, global_ranking, allocate, sensitivity_file,
          max_group_ratio, layer_ratio, steps, calib, as_json, output, **kwargs):
    """Remove whole filters from MODEL (default: the built-in model) and save the result.

    The checkpoint keeps the input shape and the preprocessing, so later commands need neither.
    """
    from edgeprune import api
    from edgeprune.checkpoint import load_model
    from edgeprune.errors import EdgepruneError
    from edgeprune.paths import check_writable

    check_writable(output)
    choice = preprocess_choice(kwargs)
    if allocate == "sensitivity" and (flops_cut is None or ratio is not None or steps > 1 or layer_ratio):
        raise EdgepruneError("--allocate sensitivity spreads a MACs cut: give --flops-cut alone, in one step")
    loaded = load_model(model, weights, input_shape)
    preprocess = choice.resolve(loaded.preprocess, calib, loaded.input_shape)
    data = api.criterion_data(criterion, calib, loaded, preprocess)
    planner = None
    if allocate == "sensitivity":
        planner = _sensitivity_planner(sensitivity_file, loaded, choice, criterion, calib, flops_cut, round_to,
                                       max_group_ratio)
    options = dict(criterion=criterion, ratio=ratio, flops_cut=flops_cut, round_to=round_to,
                   layer_ratios=pairs(layer_ratio, "--layer-ratio", float),
                   global_ranking=global_ranking or allocate == "global",
                   max_group_ratio=max_group_ratio, data=data, inplace=True)
    if planner is not None:
        options["planner"] = planner
    if steps > 1:
        result = api.prune_iteratively(loaded, steps=steps, **options)
    else:
        result = api.prune(loaded, **options)
    result.save(output, preprocess=preprocess)
    summary = {**result.summary(), "output": str(output), "model": loaded.spec}
    if as_json:
        emit_json(summary)
        return
    _print_summary(summary)


def _sensitivity_planner(path: str | None, loaded, choice, criterion: str, calib: str | None, flops_cut: float,
                         round_to: int, max_group_ratio: float):
    from edgeprune.allocation import SensitivityPlanner
    from edgeprune.cli.sensitivity import measure
    from edgeprune.sensitivity import Sensitivity

    if path is not None:
        curves = Sensitivity.load(path)
    else:
        click.echo("[edgeprune] measuring each group's sensitivity (edgeprune sensitivity -o FILE keeps it)", err=True)
        curves = measure(loaded, choice, criterion, calib, (0.1, 0.3, 0.5, 0.7, 0.9), round_to, 256, None)
    return SensitivityPlanner(curves, flops_cut, round_to, max_group_ratio)


def _print_summary(s: dict) -> None:
    allocation = s.get("plan", {}).get("allocation")
    how = (f"ratio {s['ratio']:.3f}" if s.get("ratio") is not None else
           f"{allocation} allocation (predicted loss {s['plan']['predicted_loss']:.4f})" if allocation else
           f"{s.get('steps', 1)} rounds")
    click.echo(f"model      {s['model']}   criterion {s['criterion']}   {how}")
    click.echo(f"MACs       {s['macs_before'] / 1e6:10.2f} M -> {s['macs_after'] / 1e6:10.2f} M   (-{s['macs_cut']:.1%})")
    click.echo(f"params     {s['params_before'] / 1e6:10.3f} M -> {s['params_after'] / 1e6:10.3f} M"
               f"   (-{1 - s['params_after'] / s['params_before']:.1%})")
    click.echo(f"groups     {s['groups_pruned']} pruned   time {s['seconds_total']:.2f} s")
    click.echo(f"wrote      {s['output']}")


@main.command()
@model_argument
@weights_option
@input_shape_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of a table.")
def info(model, weights, input_shape, as_json):
    """Per-layer channels and MACs of MODEL, its outputs, totals and preprocessing."""
    import torch

    from edgeprune.checkpoint import load_model
    from edgeprune.counter import count, per_layer
    from edgeprune.outputs import output_names
    from edgeprune.surgery.check import checked_graph

    loaded = load_model(model, weights, input_shape)
    graph = checked_graph(loaded.model, loaded.input_shape)
    totals, rows = count(graph), per_layer(graph)
    groups = [{"name": g.name, "units": g.n_units, "prunable": g.n_prunable} for g in graph.groups if g.n_units > 1]
    outputs = output_names(loaded.model, torch.zeros(loaded.input_shape))
    preprocess = loaded.preprocess.to_dict() if loaded.preprocess else None
    if as_json:
        emit_json({"model": loaded.spec, "input_shape": list(loaded.input_shape), **totals.to_dict(),
                   "layers": rows, "groups": groups, "outputs": outputs, "preprocess": preprocess,
                   "warnings": graph.warnings})
        return
    width = max([len(r["layer"]) for r in rows] + [5])
    click.echo(f"{'layer':<{width}}  {'in':>6}  {'out':>6}  {'MACs (M)':>10}")
    for r in rows:
        click.echo(f"{r['layer']:<{width}}  {r['in']:>6}  {r['out']:>6}  {r['macs'] / 1e6:>10.3f}")
    click.echo(f"{loaded.spec}: {totals.macs / 1e6:.2f} M MACs, {totals.params / 1e6:.3f} M params, "
               f"{sum(1 for g in groups if g['prunable'] > 1)} prunable groups, input {tuple(loaded.input_shape)}, "
               f"outputs {', '.join(outputs)}")
    click.echo("preprocessing: " + (loaded.preprocess.describe() if loaded.preprocess else
                                    "not known (images are scaled to 0-1; give --mean/--std where data is used)"))


@main.command()
@click.option("--json", "as_json", is_flag=True)
def zoo(as_json):
    """Models known by name (plus torchvision:NAME and FILE.py:factory)."""
    from edgeprune.models import list_models

    entries = [{"name": e.name, "input_shape": list(e.input_shape), "description": e.description} for e in list_models()]
    if as_json:
        emit_json(entries)
        return
    for e in entries:
        click.echo(f"{e['name']:<20} {e['description']}")
    click.echo("torchvision:NAME     any torchvision classification model, pretrained (torchvision:NAME?weights=none: random)")
    click.echo("FILE.py:factory      your own model: factory() returns an nn.Module")


@main.command()
@click.option("--json", "as_json", is_flag=True)
def criteria(as_json):
    """Pruning criteria known by name."""
    from edgeprune.criteria import create_criterion, list_criteria

    rows = [{"name": n, "needs_data": create_criterion(n).needs_data} for n in list_criteria()]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        click.echo(f"{r['name']:<10} {'needs --calib data' if r['needs_data'] else 'data-free'}")
