"""``edgeprune finetune`` and ``edgeprune eval``.

Under ``torchrun --nproc_per_node N -m edgeprune finetune ...`` fine-tuning runs data-parallel;
only rank 0 prints and writes the output.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, Callable

import click

from edgeprune.cli import main
from edgeprune.cli.options import (
    device_option,
    distill_config,
    distill_options,
    input_shape_option,
    output_options,
    pairs,
    preprocess_choice,
    preprocess_options,
)

DEFAULT_DATA = "mnist5k"  # edgeprune.models.default.DEFAULT_DATA, kept here so --help needs no torch

data_option = click.option(
    "--data", "data", default=DEFAULT_DATA, show_default=True, metavar="SOURCE",
    help="cifar10:DIR, cifar100:DIR, folder:DIR, PATH.npz, mnist5k or digits.",
)
limit_option = click.option("--limit", type=click.IntRange(1), default=None, help="Use at most N images.")


@main.command()
@click.argument("model")
@data_option
@input_shape_option
@preprocess_options
@output_options
@distill_options
@click.option("--teacher", metavar="MODEL", help="The model to distil from (e.g. the dense original); needed for "
                                                "unlabelled data.")
@click.option("--teacher-weights", type=click.Path(dir_okay=False), help="A state_dict for --teacher.")
@click.option("--epochs", type=click.IntRange(1), required=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=0.01, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True, help="Per process.")
@click.option("--augment", type=click.Choice(["none", "crop", "crop+flip"]), default="crop", show_default=True,
              help="Random 4-pixel-padded crop, plus horizontal flip (not for digits).")
@click.option("--seed", type=int, default=0, show_default=True, help="Shuffling and augmentation seed.")
@limit_option
@device_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Checkpoint, rewritten every epoch.")
def finetune(model: str, data: str, input_shape, teacher: str | None, teacher_weights: str | None, epochs: int,
             lr: float, batch_size: int, augment: str, seed: int, limit: int | None, device: str, output: str,
             label_output, output_kind, **kwargs) -> None:
    """Fine-tune MODEL on the training split of SOURCE; report top-1 (labelled data) and the
    fidelity to --teacher (distillation) on its held-out val split.

    With --teacher it distils from that model (cross-entropy is added where labels exist), so
    unlabelled data works too; without, it trains on the labels.
    """
    from edgeprune.calibration import load_data, make_loader
    from edgeprune.checkpoint import load_model, save_checkpoint
    from edgeprune.paths import check_writable
    from edgeprune.train import FinetuneConfig, finetune as run_finetune, is_main_process, resolve_device

    device = resolve_device(device)
    check_writable(output)
    choice, distill = preprocess_choice(kwargs), distill_config(kwargs)
    loaded = load_model(model, input_shape=input_shape)
    preprocess = choice.resolve(loaded.preprocess, data, loaded.input_shape)
    _, channels, *hw = loaded.input_shape
    common = dict(channels=channels, size=tuple(hw), preprocess=preprocess, seed=0)
    train_arrays = load_data(data, split="train", limit=limit, **common)
    val_arrays = load_data(data, split="val", **common)
    train = make_loader(train_arrays, batch_size, shuffle=True, augment=None if augment == "none" else augment, seed=seed)
    job = _objective(loaded, teacher, teacher_weights, distill, train_arrays, val_arrays, data, label_output,
                     pairs(output_kind, "--output-kind"))
    val = make_loader(val_arrays, 256, shuffle=False) if val_arrays.y is not None else None

    def checkpoint(tuned, epoch: int) -> None:
        save_checkpoint(tuned, output, spec=loaded.spec, input_shape=loaded.input_shape, kwargs=loaded.kwargs,
                        preprocess=preprocess,
                        metadata={**loaded.metadata, "finetuned": {"data": data, "epochs_done": epoch,
                                                                   "distilled_from": teacher if job.teacher else None}})

    with _ProgressBar(is_main_process()) as progress:
        result = run_finetune(loaded.model, train, val, FinetuneConfig(epochs=epochs, lr=lr, seed=seed, device=device),
                              checkpoint_fn=checkpoint, progress=progress, objective=job.objective,
                              validate=job.validate)
    if is_main_process():  # the epochs were logged as they finished
        last = result.history[-1]
        figures = ([f"val top-1 {100 * last.val_acc:.2f} %"] if last.val_acc is not None else []) + \
                  ([f"held-out cosine {last.figures['cosine_min']:.4f} (worst output)"] if last.figures else [])
        click.echo(f"saved {output} ({', '.join(figures + [f'{result.seconds:.0f} s'])}, "
                   f"{result.world_size} process(es))")


@dataclass
class _Objective:
    """What ``finetune`` minimises and how it checks the held-out images each epoch."""

    objective: Any
    validate: Callable[[Any], dict] | None = None
    teacher: Any = None


def _objective(loaded, teacher: str | None, teacher_weights: str | None, distill, train, val, data: str,
               label_output: str | None, kinds: dict[str, str]) -> _Objective:
    import torch

    from edgeprune.calibration import sample
    from edgeprune.checkpoint import load_model
    from edgeprune.errors import EdgepruneError
    from edgeprune.outputs import describe, output_names, pick_label_output
    from edgeprune.quality import compare, summary, torch_outputs
    from edgeprune.train import CrossEntropy, Distillation

    names = output_names(loaded.model, torch.zeros(loaded.input_shape))
    if teacher is None or distill is None:
        if train.y is None:
            raise EdgepruneError(f"{data} has no labels: fine-tune it by distillation from --teacher MODEL")
        return _Objective(CrossEntropy(pick_label_output(torch_outputs(loaded.model, train.x[:8]), names,
                                                         label_output, train.y, data)))
    dense = load_model(teacher, teacher_weights, input_shape=loaded.input_shape).model
    if output_names(dense, torch.zeros(loaded.input_shape)) != names:
        raise EdgepruneError(f"--teacher {teacher} has other outputs than {loaded.spec}")
    probe = torch_outputs(dense, sample(train, 128).x)
    labels = pick_label_output(probe, names, label_output, train.y, data) if train.y is not None else None
    infos = describe(probe, names, label_output=labels, kinds=kinds)
    held_out = sample(val, 256)
    reference = torch_outputs(dense, held_out.x)

    def validate(model) -> dict:
        return summary(compare(reference, torch_outputs(model, held_out.x), infos))

    return _Objective(Distillation(dense, infos, distill, labels), validate, dense)


@main.command("eval")
@click.argument("model")
@data_option
@input_shape_option
@preprocess_options
@click.option("--label-output", metavar="NAME", help="The output the labels belong to (several outputs).")
@click.option("--against", metavar="MODEL", help="Also compare MODEL's outputs with this one's (e.g. the dense original).")
@click.option("--split", type=click.Choice(["test", "val"]), default=None,
              help="Default: test where the source has one, else val (held out of its training images).")
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--conf", type=click.FloatRange(0, 1, max_open=True), default=0.001, show_default=True,
              help="A detector's mAP (yolo: / coco: data): the class score an anchor needs before NMS.")
@click.option("--iou", type=click.FloatRange(0, 1, min_open=True), default=0.7, show_default=True,
              help="A detector's mAP: NMS's IoU threshold.")
@limit_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def eval_command(model: str, data: str, input_shape, label_output: str | None, against: str | None, split: str | None,
                 batch_size: int, conf: float, iou: float, limit: int | None, as_json: bool, **kwargs) -> None:
    """Top-1 accuracy of MODEL on SOURCE (labelled data; a detector's mAP50 and mAP50-95 on boxes), and
    with --against its fidelity, output by output."""
    import torch

    from edgeprune.calibration import has_test_split, load_data
    from edgeprune.checkpoint import load_model
    from edgeprune.errors import EdgepruneError
    from edgeprune.outputs import describe, output_names, pick_label_output
    from edgeprune.quality import accuracy, compare, torch_outputs

    choice = preprocess_choice(kwargs)
    loaded = load_model(model, input_shape=input_shape)
    preprocess = choice.resolve(loaded.preprocess, data, loaded.input_shape)
    _, channels, *hw = loaded.input_shape
    split = split or ("test" if has_test_split(data, tuple(hw), preprocess) else "val")
    arrays = load_data(data, split=split, channels=channels, size=tuple(hw), limit=limit, preprocess=preprocess)
    names = output_names(loaded.model, torch.zeros(loaded.input_shape))
    outputs = torch_outputs(loaded.model, arrays.x, batch_size)
    report = {"model": model, "data": data, "split": split, "images": len(arrays)}
    labels = None
    if arrays.y is not None:
        labels = pick_label_output(outputs, names, label_output, arrays.y, data)
        report["top1"] = accuracy(outputs, labels, arrays.y)
    if arrays.boxes is not None:
        report.update(_box_map(outputs, names, arrays, conf, iou, data))
    if against:
        reference = torch_outputs(load_model(against, input_shape=loaded.input_shape).model, arrays.x, batch_size)
        report["fidelity"] = compare(reference, outputs, describe(reference, names, label_output=labels))
    if "top1" not in report and "map50_95" not in report and not against:
        raise EdgepruneError(f"{data} has no labels: give --against MODEL to compare outputs instead")
    if as_json:
        click.echo(json.dumps(report))
        return
    if "top1" in report:
        click.echo(f"top-1 {100 * report['top1']:.2f} % on {data} [{split}, {len(arrays)} images]")
    if "map50_95" in report:
        click.echo(f"mAP50 {report['map50']:.4f}, mAP50-95 {report['map50_95']:.4f} on {data} [{split}, "
                   f"{len(arrays)} images; --conf {conf:g}, --iou {iou:g}]")
    for r in report.get("fidelity", []):
        agree = f", top-1 agreement {r['top1_agreement']:.2%}" if "top1_agreement" in r else ""
        click.echo(f"{r['output']}: cosine {r['cosine']:.4f}, relative L2 error {r['rel_l2']:.4f}{agree} "
                   f"against {against} [{split}, {len(arrays)} images]")


def _box_map(outputs: list, names: list[str], arrays, conf: float, iou: float, data: str) -> dict[str, float]:
    """mAP of the model's detections output (the first N x (4 + K) x A) against the boxes."""
    from edgeprune.calibration.data import check_classes
    from edgeprune.metrics.detection import box_map
    from edgeprune.outputs import describe, pick_box_output

    output = outputs[pick_box_output(describe(outputs, names), data)]
    check_classes(data, output.shape[1] - 4, tuple(arrays.x.shape[2:]), arrays.preprocess)
    return box_map(output, list(arrays.boxes), conf, iou, size=(arrays.x.shape[3], arrays.x.shape[2]))


class _ProgressBar:
    """A click progress bar on stderr fed by finetune's ``progress(done, total)`` callback."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.bar = None

    def __enter__(self):
        return self.update if self.enabled else None

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = click.progressbar(length=total, label="fine-tuning", file=sys.stderr).__enter__()
        self.bar.update(done - self.bar.pos)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
