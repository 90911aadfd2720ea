"""The command line: a thin layer over the Python API.

Each command module adds its commands to :data:`main`. Command bodies parse, call the library and
print; heavy imports (torch) happen inside the bodies so ``edgeprune bench`` works without torch.
"""
from __future__ import annotations

import logging
import sys

import click

from edgeprune.errors import EdgepruneError

EXIT_BAD_INPUT = 2


class _Group(click.Group):
    """Turns every :class:`EdgepruneError`, and any file the system refuses to read or write, into
    one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgepruneError as exc:
            click.echo(f"edgeprune: error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except OSError as exc:  # a folder that cannot be created, a full disk, a file without permission
            where = f" ({exc.filename})" if exc.filename else ""
            click.echo(f"edgeprune: error: {exc.strerror or exc}{where}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            click.echo("edgeprune: interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.version_option(package_name="edgeprune")
def main(verbose: int, quiet: bool) -> None:
    """edgeprune: prune a CNN, export it to ONNX and prove it is faster on the target."""
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose + 1, 2)]
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr)


def _register_commands() -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"edgeprune.cli.{name}")


# One module per command family; each decorates its functions with @main.command().
COMMAND_MODULES: list[str] = ["prune", "compress", "export", "train", "bench", "lut", "sensitivity"]
_register_commands()
