"""``edgeprune finetune`` and ``edgeprune eval``.

Under ``torchrun --nproc_per_node N -m edgeprune finetune ...`` fine-tuning runs data-parallel;
only rank 0 prints and writes the output.
"""
from __future__ import annotations

import json
import sys

import click

from edgeprune.cli import main

DEFAULT_DATA = "mnist5k"  # edgeprune.models.default.DEFAULT_DATA, kept here so --help needs no torch

data_option = click.option(
    "--data", "data", default=DEFAULT_DATA, show_default=True, metavar="SOURCE",
    help="cifar10:DIR, cifar100:DIR, folder:DIR, PATH.npz, mnist5k or digits.",
)
limit_option = click.option("--limit", type=click.IntRange(1), default=None, help="Use at most N images.")


@main.command()
@click.argument("model")
@data_option
@click.option("--epochs", type=click.IntRange(1), required=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=0.01, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True, help="Per process.")
@click.option("--augment", type=click.Choice(["none", "crop", "crop+flip"]), default="crop", show_default=True,
              help="Random 4-pixel-padded crop, plus horizontal flip (not for digits).")
@click.option("--seed", type=int, default=0, show_default=True, help="Shuffling and augmentation seed.")
@limit_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Checkpoint, rewritten every epoch.")
def finetune(model: str, data: str, epochs: int, lr: float, batch_size: int, augment: str, seed: int,
             limit: int | None, output: str) -> None:
    """Fine-tune MODEL on the training split of SOURCE; report top-1 on its held-out val split."""
    from edgeprune.calibration import train_val_loaders
    from edgeprune.checkpoint import load_model, save_checkpoint
    from edgeprune.train import FinetuneConfig, finetune as run_finetune, is_main_process

    loaded = load_model(model)
    train, val = train_val_loaders(data, loaded.input_shape, batch_size=batch_size,
                                   augment=None if augment == "none" else augment, seed=seed, limit=limit)
    def checkpoint(tuned, epoch: int) -> None:
        save_checkpoint(tuned, output, spec=loaded.spec, input_shape=loaded.input_shape, kwargs=loaded.kwargs,
                        metadata={**loaded.metadata, "finetuned": {"data": data, "epochs_done": epoch}})

    with _ProgressBar(is_main_process()) as progress:
        result = run_finetune(loaded.model, train, val, FinetuneConfig(epochs=epochs, lr=lr, seed=seed),
                              checkpoint_fn=checkpoint, progress=progress)
    if is_main_process():  # the epochs were logged as they finished
        click.echo(f"saved {output} (val top-1 {100 * result.final_val_acc:.2f} %, "
                   f"{result.seconds:.0f} s, {result.world_size} process(es))")


@main.command("eval")
@click.argument("model")
@data_option
@click.option("--split", type=click.Choice(["test", "val"]), default=None,
              help="Default: test where the source has one, else val (held out of its training images).")
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@limit_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def eval_command(model: str, data: str, split: str | None, batch_size: int, limit: int | None, as_json: bool) -> None:
    """Top-1 accuracy of MODEL on SOURCE."""
    from edgeprune.calibration import has_test_split, load_data, make_loader
    from edgeprune.checkpoint import load_model
    from edgeprune.train import evaluate

    loaded = load_model(model)
    _, channels, *hw = loaded.input_shape
    split = split or ("test" if has_test_split(data, tuple(hw)) else "val")
    arrays = load_data(data, split=split, channels=channels, size=tuple(hw), limit=limit)
    top1 = evaluate(loaded.model, make_loader(arrays, batch_size, shuffle=False))
    report = {"model": model, "data": data, "split": split, "images": len(arrays), "top1": top1}
    click.echo(json.dumps(report) if as_json else f"top-1 {100 * top1:.2f} % on {data} [{split}, {len(arrays)} images]")


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
