"""Device targets: one JSON file per device class, loaded into a validated :class:`Target`.

The built-in files sit beside this module (``arm-cortex-a72.json``, ...). A file holding only
``{"alias_of": NAME, "comment": WHY}`` is an alias of a built-in target. A user's own target is
a JSON file with the same fields, passed by path wherever a target name is accepted.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from edgeprune.errors import EdgepruneError
from edgeprune.runtimes import RUNTIMES

log = logging.getLogger(__name__)

OPT_LEVELS = ("disable", "basic", "extended", "all")
ALIAS_KEYS = {"alias_of", "comment"}
OPTIONAL = {"runtime": "onnxruntime", "round_to_by_runtime": {}}


@dataclass(frozen=True)
class Target:
    """How a model is exported and run on one device class.

    ``threads``/``inter_op_threads`` are onnxruntime's intra-/inter-op thread counts (0 lets
    onnxruntime choose), ``round_to`` the channel multiple pruning keeps, ``graph_optimization``
    one of :data:`OPT_LEVELS`, ``input_shape`` ``None`` for the model's own shape. ``runtime`` is
    the runtime measured and planned for by default (see :mod:`edgeprune.runtimes`), and
    ``round_to_by_runtime`` a channel multiple for runtimes whose kernels block channels otherwise
    (both optional in a file).

    >>> load_target("arm-cortex-a72").round_to
    8
    """

    name: str
    description: str
    threads: int
    inter_op_threads: int
    round_to: int
    opset: int
    graph_optimization: str
    int8: bool
    input_shape: tuple[int, ...] | None
    memory_arena: bool
    runtime: str = "onnxruntime"
    round_to_by_runtime: dict[str, int] = field(default_factory=dict)

    def round_to_for(self, runtime: str) -> int:
        """The channel multiple to keep for ``runtime``: its own, else the target's.

        >>> load_target("x86-avx2").round_to_for("onnxruntime")
        8
        """
        return self.round_to_by_runtime.get(runtime, self.round_to)

    def host_threads(self) -> int:
        """The target's threads, capped to this machine's cores: more threads than cores time the
        contention between them, not the device. Says so once (a warning) when it caps them; 0
        (the runtime chooses) stays 0."""
        cores = os.cpu_count() or 1
        if self.threads <= cores:
            return self.threads
        if self.name not in _CAPPED:
            _CAPPED.add(self.name)
            log.warning("target %s's %d threads capped to the %d cores of this machine (on the device itself "
                        "they run as the target says; --threads N sets them)", self.name, self.threads, cores)
        return cores


_CAPPED: set[str] = set()  # targets whose threads were capped here already (one warning each)


def _int_in(low: int, high: int):
    def check(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

    return check, f"an integer in [{low}, {high}]"


def _shape_ok(value: Any) -> bool:
    positive = _int_in(1, 1 << 20)[0]
    return value is None or (isinstance(value, list) and 1 <= len(value) <= 8 and all(map(positive, value)))


# field -> (check, what the value must be); the order is the order of Target's fields.
_FIELDS: dict[str, tuple[Any, str]] = {
    "name": (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string"),
    "description": (lambda v: isinstance(v, str), "a string"),
    "threads": _int_in(0, 1024),
    "inter_op_threads": _int_in(0, 1024),
    "round_to": _int_in(1, 1024),
    "opset": _int_in(7, 99),
    "graph_optimization": (lambda v: v in OPT_LEVELS, "one of " + ", ".join(OPT_LEVELS)),
    "int8": (lambda v: isinstance(v, bool), "true or false"),
    "input_shape": (_shape_ok, "null or a list of 1-8 positive integers"),
    "memory_arena": (lambda v: isinstance(v, bool), "true or false"),
    "runtime": (lambda v: v in _runtime_names(), "a runtime name"),
    "round_to_by_runtime": (lambda v: isinstance(v, dict) and set(v) <= set(_runtime_names())
                            and all(map(_int_in(1, 1024)[0], v.values())),
                            "an object mapping runtime names to integers in [1, 1024]"),
}


def _runtime_names() -> list[str]:
    return ["onnxruntime", *RUNTIMES]


def _builtin_dir():
    return resources.files(__package__)


def _builtin_names() -> list[str]:
    return sorted(p.name[:-5] for p in _builtin_dir().iterdir() if p.name.endswith(".json"))


def _read_json(source: Any, label: str) -> dict:
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise EdgepruneError(f"cannot read target file {label}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgepruneError(f"target file {label} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EdgepruneError(f"target file {label} must hold a JSON object, not {type(data).__name__}")
    return data


def _validate(data: dict, label: str, default_name: str) -> Target:
    data = {"name": default_name, "description": "", **OPTIONAL, **data}
    unknown = sorted(set(data) - set(_FIELDS))
    missing = [key for key in _FIELDS if key not in data]
    if unknown or missing:
        problems = [f"unknown field(s) {', '.join(unknown)}"] if unknown else []
        problems += [f"missing field(s) {', '.join(missing)}"] if missing else []
        raise EdgepruneError(f"target file {label}: {'; '.join(problems)}")
    for key, (check, expected) in _FIELDS.items():
        if not check(data[key]):
            known = f" ({', '.join(_runtime_names())})" if "runtime" in key else ""
            raise EdgepruneError(f"target file {label}: '{key}' must be {expected}{known}, got {data[key]!r}")
    shape = data["input_shape"]
    return Target(**{**data, "input_shape": None if shape is None else tuple(shape)})


def _from_source(source: Any, label: str, default_name: str, follow_alias: bool) -> Target:
    data = _read_json(source, label)
    if "alias_of" not in data:
        return _validate(data, label, default_name)
    if not follow_alias or set(data) - ALIAS_KEYS or data["alias_of"] not in _builtin_names():
        raise EdgepruneError(
            f"target file {label}: an alias holds only 'alias_of' (a built-in target) and 'comment'"
        )
    return _load(data["alias_of"], follow_alias=False)


def _unknown(name: str) -> EdgepruneError:
    known = ", ".join(_builtin_names())
    return EdgepruneError(f"unknown target '{name}'; known targets: {known} (or a path to a target JSON file)")


def _load(name_or_path: str | Path, follow_alias: bool) -> Target:
    text = str(name_or_path)
    if text in _builtin_names():
        return _from_source(_builtin_dir() / f"{text}.json", f"{text}.json", text, follow_alias)
    path = Path(text).expanduser()
    if path.is_file() or text.endswith(".json") or "/" in text:
        if not path.is_file():
            raise EdgepruneError(f"target file {text} does not exist")
        return _from_source(path, text, path.stem, follow_alias)
    raise _unknown(text)


def load_target(name_or_path: str | Path) -> Target:
    """Load a built-in target by name (``arm`` is an alias) or a user's target JSON file.

    >>> load_target("arm").name
    'arm-cortex-a72'
    >>> load_target("x86-avx2").graph_optimization
    'all'
    """
    return _load(name_or_path, follow_alias=True)


def target_aliases() -> dict[str, str]:
    """Built-in alias names and the target each one stands for.

    >>> target_aliases()["arm"]
    'arm-cortex-a72'
    """
    aliases = {}
    for name in _builtin_names():
        data = _read_json(_builtin_dir() / f"{name}.json", f"{name}.json")
        if "alias_of" in data:
            aliases[name] = data["alias_of"]
    return aliases


def list_targets() -> list[Target]:
    """Every built-in target (aliases excluded; see :func:`target_aliases`), sorted by name.

    >>> [t.name for t in list_targets()][:2]
    ['arm-cortex-a53', 'arm-cortex-a72']
    """
    aliases = target_aliases()
    return [load_target(name) for name in _builtin_names() if name not in aliases]
