"""Options shared by several commands, defined once."""
from __future__ import annotations

import json
from typing import Any

import click

model_argument = click.argument("model", required=False)
weights_option = click.option("--weights", type=click.Path(dir_okay=False),
                              help="A state_dict file to load (read with weights_only=True).")


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))
