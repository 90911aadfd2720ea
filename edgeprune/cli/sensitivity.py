"""``edgeprune sensitivity``: how much each coupled group alone can lose."""
from __future__ import annotations

import sys

import click

from edgeprune.cli import main
from edgeprune.cli.options import (
    FloatsType,
    device_option,
    emit_json,
    input_shape_option,
    model_argument,
    preprocess_choice,
    preprocess_options,
    weights_option,
)


class _Bar:
    """A click progress bar over the cuts measured, on stderr, opened on the first one."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, done: int, total: int, group: str) -> None:
        if self.bar is None:
            self.bar = click.progressbar(length=total, label="measuring sensitivity", file=sys.stderr,
                                         item_show_func=lambda name: name).__enter__()
        self.bar.update(1, group)
        if done == total:
            self.bar.__exit__(None, None, None)


@main.command()
@model_argument
@weights_option
@input_shape_option
@preprocess_options
@click.option("--criterion", "-c", default="l2", show_default=True, help="The order each group is cut in.")
@click.option("--calib", help="Images (labelled or not): BatchNorm re-estimation and the comparison "
                              "(default model: its bundled data).")
@click.option("--ratios", type=FloatsType(), default="0.1,0.3,0.5,0.7,0.9", show_default=True,
              help="Fractions of each group to remove, one at a time.")
@click.option("--round-to", type=click.IntRange(min=1), default=1, show_default=True, help="Channel alignment.")
@click.option("--images", type=click.IntRange(min=8), default=256, show_default=True,
              help="Held-out images compared, and as many calibration images for BatchNorm.")
@click.option("--label-output", metavar="NAME", help="The output the labels belong to (several outputs).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Also draw one curve per group (PNG).")
@click.option("--json", "as_json", is_flag=True, help="Print the curves as JSON instead of the table.")
@device_option
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the curves (JSON) for `prune`/`compress --allocate sensitivity --sensitivity FILE`.")
def sensitivity(model, weights, input_shape, criterion, calib, ratios, round_to, images, label_output, plot_path, as_json,
                output, device, **kwargs):
    """Cut each coupled group of MODEL alone to each ratio and compare its outputs with the dense model's.

    BatchNorm is re-estimated after each cut; the figure is the cosine of the worst output on
    held-out images (every output's is in the JSON; top-1 too where the data has labels).
    """
    from edgeprune import sensitivity as sens
    from edgeprune.checkpoint import load_model
    from edgeprune.paths import check_writable

    from edgeprune.train import resolve_device

    device = resolve_device(device)
    for path in (output, plot_path):
        if path:
            check_writable(path)
    choice = preprocess_choice(kwargs)
    found = measure(load_model(model, weights, input_shape), choice, criterion, calib, ratios, round_to, images,
                    label_output, None if as_json else _Bar(), device)
    if output:
        found.save(output)
    if plot_path:
        sens.plot(found, plot_path)
    if as_json:
        emit_json(found.to_dict())
        return
    click.echo(sens.table(found))
    click.echo(f"\n{len(found.curves)} groups, {sum(len(c.points) for c in found.curves)} cuts measured in "
               f"{found.seconds:.1f} s ({found.images['held_out']} held-out images)"
               + (f"; wrote {output}" if output else "") + (f", {plot_path}" if plot_path else ""))


def measure(loaded, choice, criterion: str, calib: str | None, ratios, round_to: int, images: int,
            label_output: str | None, progress=None, device: str = "cpu"):
    """Load the data of a loaded model, then :func:`edgeprune.sensitivity.analyse` it (held-out split compared)."""
    import torch

    from edgeprune.calibration import has_test_split, load_data, sample
    from edgeprune.errors import EdgepruneError
    from edgeprune.models.default import DEFAULT_DATA
    from edgeprune.outputs import describe, output_names, pick_label_output
    from edgeprune.quality import torch_outputs
    from edgeprune.sensitivity import analyse

    spec = calib or (DEFAULT_DATA if loaded.metadata.get("default") else None)
    if spec is None:
        raise EdgepruneError("sensitivity compares outputs on real images: give --calib SOURCE")
    preprocess = choice.resolve(loaded.preprocess, spec, loaded.input_shape)
    _, channels, *hw = loaded.input_shape
    common = dict(channels=channels, size=tuple(hw), preprocess=preprocess)
    split = "test" if has_test_split(spec, tuple(hw), preprocess) else "val"
    train = sample(load_data(spec, split="train", **common), max(images, 640))
    held_out = sample(load_data(spec, split=split, **common), images)
    names = output_names(loaded.model, torch.zeros(loaded.input_shape))
    dense = torch_outputs(loaded.model, held_out.x)
    labels = pick_label_output(dense, names, label_output, held_out.y, spec) if held_out.y is not None else None
    outputs = describe(dense, names, label_output=labels)
    return analyse(loaded.model, loaded.input_shape, criterion, sample(train, images).x, held_out.x, outputs=outputs,
                   labels=held_out.y, label_output=labels, ratios=ratios, round_to=round_to, criterion_data=train.x,
                   progress=progress, device=device)
