"""Options shared by several commands, defined once."""
from __future__ import annotations

import json
from typing import Any, Callable

import click

model_argument = click.argument("model", required=False)
weights_option = click.option("--weights", type=click.Path(dir_okay=False),
                              help="A state_dict file to load (read with weights_only=True).")


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


class ShapeType(click.ParamType):
    """``1x3x48x48`` -> (1, 3, 48, 48)."""

    name = "NxCxHxW"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        try:
            shape = tuple(int(d) for d in str(value).lower().replace(",", "x").split("x"))
        except ValueError:
            self.fail(f"expected sizes like 1x3x224x224, got {value!r}", param, ctx)
        if len(shape) < 2 or min(shape) < 1:
            self.fail(f"expected positive sizes like 1x3x224x224, got {value!r}", param, ctx)
        return shape


class FloatsType(click.ParamType):
    """``0.485,0.456,0.406`` -> (0.485, 0.456, 0.406)."""

    name = "V[,V...]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[float, ...]:
        if isinstance(value, tuple):
            return value
        try:
            return tuple(float(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"expected numbers separated by commas, got {value!r}", param, ctx)


def pairs(values: tuple[str, ...], option: str, cast: Callable[[str], Any] = str) -> dict[str, Any]:
    """``("a=1", "b=2")`` -> ``{"a": cast("1"), "b": cast("2")}``; a bad pair is a usage error."""
    found = {}
    for pair in values:
        name, sep, value = pair.rpartition("=")
        try:
            found[name] = cast(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got '{pair}'", param_hint=option)
    return found


input_shape_option = click.option(
    "--input-shape", type=ShapeType(),
    help="The model's input, e.g. 1x3x48x48 (default: the model's or its checkpoint's; kept in checkpoints).")


device_option = click.option(
    "--device", default="auto", show_default=True, metavar="auto|cpu|cuda[:N]",
    help="Where to compute (training, reconstruction, measuring cuts): auto is CUDA when present; under torchrun, "
         "cuda is each rank's own GPU.")


def preprocess_options(command: Callable) -> Callable:
    """How images become inputs: the model's own preprocessing unless these change it."""
    options = [
        click.option("--mean", type=FloatsType(), help="Per-channel mean to subtract, on the --pixel-range scale "
                     "(default: the model's: its checkpoint, the zoo's training data, torchvision's weights)."),
        click.option("--std", type=FloatsType(), help="Per-channel std to divide by, on the --pixel-range scale."),
        click.option("--pixel-range", type=click.Choice(["0-1", "0-255"]),
                     help="Scale --mean/--std apply to: pixels / 255 (0-1) or raw 0-255 [default: 0-1]."),
        click.option("--channel-order", type=click.Choice(["rgb", "bgr"]), help="Channel order the model takes [rgb]."),
        click.option("--resize", type=click.IntRange(min=1), metavar="PIXELS",
                     help="Resize images' shorter side to this, then centre-crop to the input (default: resize to the input)."),
        click.option("--data-stats", is_flag=True, help="Normalise with the data's own per-channel mean and std instead."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def preprocess_choice(kwargs: dict[str, Any]) -> "PreprocessChoice":
    """Pop the preprocessing options from a command's keyword arguments."""
    from edgeprune.calibration.data import PreprocessChoice

    return PreprocessChoice(**{k: kwargs.pop(k) for k in ("mean", "std", "pixel_range", "channel_order", "resize",
                                                          "data_stats")})


def output_options(command: Callable) -> Callable:
    """Which output holds class scores, and what each output is."""
    options = [
        click.option("--label-output", metavar="NAME",
                     help="The output the labels belong to (needed when a labelled model has several outputs)."),
        click.option("--output-kind", multiple=True, metavar="NAME=KIND",
                     help="logits, probs or regression for an output (default: guessed; repeatable)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def distill_options(command: Callable) -> Callable:
    """Recovery by distillation from the dense model."""
    options = [
        click.option("--distill/--no-distill", default=True, show_default=True,
                     help="Fine-tune by matching the dense model's outputs (works without labels; with labels, "
                          "cross-entropy is added)."),
        click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=4.0, show_default=True,
                     help="Softmax temperature for class-score outputs."),
        click.option("--distill-weight", type=click.FloatRange(min=0), default=1.0, show_default=True,
                     help="Weight of the distillation term."),
        click.option("--label-weight", type=click.FloatRange(min=0), default=1.0, show_default=True,
                     help="Weight of the cross-entropy term (labelled data only)."),
        click.option("--output-weight", multiple=True, metavar="NAME=W",
                     help="Weight of one output in the distillation term (default 1 each; repeatable)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def distill_config(kwargs: dict[str, Any]) -> "DistillConfig | None":
    """Pop the distillation options; None with --no-distill."""
    from edgeprune.train.objectives import DistillConfig

    enabled = kwargs.pop("distill")
    config = DistillConfig(temperature=kwargs.pop("temperature"), distill_weight=kwargs.pop("distill_weight"),
                           label_weight=kwargs.pop("label_weight"),
                           output_weights=pairs(kwargs.pop("output_weight"), "--output-weight", float))
    return config if enabled else None


runtime_option = click.option(
    "--runtime", "runtimes", multiple=True, metavar="NAME",
    help="Also make, check, measure and ship the model for this runtime: executorch (XNNPACK), ncnn; repeatable, "
         "or 'all' (those installed here). The first one named is the one --speedup/--latency-budget plan for "
         "and whose alignment applies (default: the target's runtime).")


