"""``edgeprune compress``: the main job."""
from __future__ import annotations

import click

from edgeprune.cli import main
from edgeprune.cli.options import (
    device_option,
    distill_config,
    distill_options,
    emit_json,
    input_shape_option,
    model_argument,
    output_options,
    pairs,
    preprocess_choice,
    preprocess_options,
    runtime_option,
    weights_option,
)


@main.command()
@model_argument
@weights_option
@input_shape_option
@preprocess_options
@output_options
@distill_options
@click.option("--target", "-t", default="arm", show_default=True, help="Device profile (see `edgeprune targets`) or a JSON file.")
@click.option("--criterion", "-c", default="l2", show_default=True, help="Pruning criterion (see `edgeprune criteria`).")
@click.option("--flops-cut", type=float, help="Fraction of MACs to remove (default 0.5 without a latency budget).")
@click.option("--ratio", type=float, help="Uniform channel ratio instead of --flops-cut.")
@click.option("--latency-budget", type=click.FloatRange(min=0, min_open=True), metavar="MS",
              help="Prune to this latency on the target (ms, as measured here), widths chosen from the latency table.")
@click.option("--speedup", type=click.FloatRange(min=1, min_open=True), metavar="X",
              help="Prune to X times the dense model's speed, widths chosen from the latency table.")
@click.option("--min-cosine", type=float, metavar="F",
              help="Quality floor: the worst output's cosine to the dense model on held-out images, after recovery. "
                   "With a speed target: deliver both or stop saying the nearest point that meets it; alone: the "
                   "deepest cut that meets it.")
@click.option("--max-drop", type=float, metavar="P", help="Quality floor with labels: top-1 points lost against dense "
                                                            "(a detector with boxes: mAP50-95 points).")
@click.option("--curve", is_flag=True, help="Also measure speed against fidelity at several cuts (always with a floor).")
@click.option("--search-trials", type=click.IntRange(min=1), default=5, show_default=True,
              help="Recovered trials a floor's search may spend bisecting MACs cuts.")
@click.option("--lut", type=click.Path(dir_okay=False), help="A latency table measured on the board (`edgeprune lut`).")
@click.option("--round-to", type=click.IntRange(min=1), help="Channel alignment (default: the target's).")
@click.option("--allocate", type=click.Choice(["uniform", "sensitivity"]), default="uniform", show_default=True,
              help="Spread the MACs cut alike over the groups, or by each group's measured sensitivity.")
@click.option("--sensitivity", "sensitivity_file", type=click.Path(dir_okay=False),
              help="Curves from `edgeprune sensitivity -o FILE` for --allocate sensitivity (default: measured now).")
@click.option("--calib", help="Data for criteria, recovery, INT8 and the quality figures, labelled or not "
                               "(default model: its bundled data).")
@click.option("--finetune-epochs", type=click.IntRange(min=0),
              help="Fine-tune epochs (default: 3 when there is data, 30 for a detector; 10 in each trial of a quality floor).")
@click.option("--steps", type=click.IntRange(min=1), help="Prune in T rounds, fine-tuning between them (default: the criterion's; csctfp 4).")
@click.option("--lr", type=click.FloatRange(0, min_open=True),
              help="Fine-tune learning rate (default: 0.01; 0.003 in each trial of a quality floor).")
@click.option("--bn-recalibrate/--no-bn-recalibrate", default=True, show_default=True,
              help="Re-estimate BatchNorm statistics on the calibration images right after the cut and after fine-tuning.")
@click.option("--reconstruct/--no-reconstruct", default=None,
              help="Right after the cut, refit each layer by least squares so the pruned model reproduces the dense "
                   "model's outputs on calibration images (no labels needed); after fine-tuning, keep the better of "
                   "the reconstructed and the fine-tuned model on training images held out from recovery. "
                   "Default: on, except for a detector (it loses box precision).")
@click.option("--int8/--no-int8", default=None, help="Also quantise to INT8 (default: the target's setting).")
@click.option("--ort", is_flag=True, help="Also write the ORT-format file for onnxruntime mobile.")
@click.option("--bake-preprocess", is_flag=True,
              help="Also write pruned.pixels.onnx, with the preprocessing inside: it takes raw 0-255 RGB pixels.")
@click.option("--eval-images", type=click.IntRange(min=1), default=500, show_default=True,
              help="Held-out images the quality figures are measured on.")
@click.option("--conf", type=float, default=0.001, show_default=True,
              help="A detector's mAP (data with boxes): the class score an anchor needs before NMS (ultralytics' val "
                   "default).")
@click.option("--iou", type=float, default=0.7, show_default=True,
              help="A detector's mAP (data with boxes): NMS's IoU threshold (ultralytics' val default).")
@runtime_option
@device_option
@click.option("--runs", type=click.IntRange(min=1), default=50, show_default=True, help="Timed runs per model, at least.")
@click.option("--min-time", type=float, default=2.0, show_default=True, help="Seconds of timed runs per model, at least.")
@click.option("--max-bench-seconds", type=click.FloatRange(min=0), default=20.0, show_default=True,
              help="Side-by-side rounds go on until every speedup's 95 %% interval is within +-3 %%, at most this long.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of the table.")
@click.option("-o", "--output", default="edgeprune-out", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the checkpoint, ONNX files and reports.")
def compress(model, weights, input_shape, target, criterion, flops_cut, ratio, latency_budget, speedup, min_cosine, max_drop,
             curve, search_trials, lut, round_to,
             allocate, sensitivity_file,
             calib, finetune_epochs, steps, lr, bn_recalibrate, reconstruct, int8, ort, bake_preprocess, eval_images, conf, iou, runtimes, runs,
             min_time, max_bench_seconds, device, as_json, output, label_output, output_kind, **kwargs):
    """Prune MODEL for a target, recover it, export, verify, quantise and measure it against the dense model.

    With no MODEL it runs on the built-in default (ResNet-20 trained on the bundled MNIST-5k).
    Any model works, with any outputs: unlabelled images recover it by distillation from the
    dense model, and the report compares every output of every variant with the dense model's.
    """
    from edgeprune.errors import EdgepruneError
    from edgeprune.pipeline import CompressOptions, compress as run
    from edgeprune.report import (budget_verdict, curve_lines, format_table, promise_lines, runtime_lines,
                                  shipped_files)

    latency = latency_budget is not None or speedup is not None
    if latency and (flops_cut is not None or ratio is not None):
        raise EdgepruneError("a latency budget decides how much to cut: drop --flops-cut / --ratio")
    if lut and not latency:
        raise EdgepruneError("--lut is used with --latency-budget or --speedup")
    floor = min_cosine is not None or max_drop is not None
    default_cut = None if floor else 0.5  # a floor alone searches the deepest cut that meets it
    flops_cut = None if latency or ratio is not None else (default_cut if flops_cut is None else flops_cut)
    options = CompressOptions(target=target, criterion=criterion, flops_cut=flops_cut, ratio=ratio, round_to=round_to,
                              latency_budget=latency_budget, speedup=speedup, lut=lut,
                              calib=calib, finetune_epochs=finetune_epochs, steps=steps, lr=lr,
                              recalibrate_bn=bn_recalibrate, reconstruct=reconstruct, int8=int8, ort=ort, runs=runs, min_time=min_time,
                              max_bench_seconds=max_bench_seconds,
                              weights=weights, input_shape=input_shape, preprocess=preprocess_choice(kwargs),
                              distill=distill_config(kwargs), label_output=label_output,
                              output_kinds=pairs(output_kind, "--output-kind"), bake_preprocess=bake_preprocess,
                              eval_images=eval_images, conf=conf, iou=iou, allocate=allocate, sensitivity=sensitivity_file,
                              runtimes=tuple(runtimes), min_cosine=min_cosine, max_drop=max_drop, curve=curve,
                              search_trials=search_trials, device=device)
    report = run(model, output, options, progress=lambda m: click.echo(f"[edgeprune] {m}", err=True))
    if not report:  # a torchrun rank other than 0: it helped recover; rank 0 writes and prints
        return
    if as_json:
        emit_json(report)
        return
    click.echo(f"\n{report['model']} for {report['target']['name']}: {report['pruning']['macs_cut']:.1%} of MACs removed")
    click.echo(format_table(report))
    plan = report["pruning"].get("plan", {})
    if "budget_ms" in plan:
        confirmed = f"measured {plan['measured_ms']:.3f} ms while planning" if plan["confirmed"] else "not confirmed here"
        final = plan["final"]["pruned_ms"]
        runtime = plan["runtime"]
        where = "in the table above" if runtime == "onnxruntime" else f"in {runtime}'s table below"
        verdict = budget_verdict(plan["final"])
        click.echo(f"\nlatency budget {plan['budget_ms']:.3f} ms in {runtime}: table predicted {plan['predicted_ms']:.3f} ms, "
                   + confirmed + (f", {final:.3f} ms {where}" if final is not None else "")
                   + (f"; {verdict}" if verdict else ""))
    if report.get("runtimes"):
        click.echo("\n" + "\n".join(runtime_lines(report["runtimes"])))
    if report.get("curve"):
        click.echo("\n" + "\n".join(curve_lines(report)))
    if report.get("promise"):
        click.echo("\n" + "\n".join(promise_lines(report)))
    click.echo(f"\nwrote {output}/: {', '.join(shipped_files(report))}")
