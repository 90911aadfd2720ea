"""Output files that appear whole or not at all, and one-line reasons for errors."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from edgeprune.errors import EdgepruneError

log = logging.getLogger("edgeprune.export")


@contextlib.contextmanager
def staged_output(path: str | Path) -> Iterator[Path]:
    """Yield a path in a hidden folder beside ``path``; on success move everything written there
    into ``path``'s folder (``path`` itself last), on failure delete it all.

    Side files (``NAME.onnx.data``, ``NAME.required_operators.config``) move with the main file,
    so a reader never sees a main file whose companions are missing.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with staged_output(folder / "model.onnx") as tmp:
    ...     _ = tmp.write_bytes(b"x")
    >>> sorted(p.name for p in folder.iterdir())
    ['model.onnx']
    """
    path = Path(path)
    if path.is_dir():
        raise EdgepruneError(f"{path} is a folder: give the name of the file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield stage / path.name
        written = sorted(stage.iterdir(), key=lambda p: p.name == path.name)
        for item in written:
            os.replace(item, path.parent / item.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def stdout_to_log(level: int = logging.DEBUG) -> Iterator[None]:
    """Send what a library prints on stdout (onnxsim, onnxruntime's tools) to the log instead."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        for line in buffer.getvalue().splitlines():
            if line.strip():
                log.log(level, "%s", line.rstrip())


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Hold the loggers ``names`` at WARNING or above for a while, unless edgeprune logs debug
    (the exporter's optimiser and onnxruntime's tools log every pass at INFO)."""
    others = [logging.getLogger(name) for name in names]
    levels = [other.level for other in others]
    if not log.isEnabledFor(logging.DEBUG):
        for other in others:
            other.setLevel(max(other.level, logging.WARNING))
    try:
        yield
    finally:
        for other, level in zip(others, levels):
            other.setLevel(level)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of the message of the exception's root cause (wrappers such as
    torch.onnx's "Failed to export the model" say less than what they wrap), without terminal
    colour codes and shortened, or the type name when the message is empty.

    >>> first_line(ValueError("\\nbad shape\\nmore detail"))
    'bad shape'
    """
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def file_size(path: Path) -> int:
    """Bytes of ``path`` plus its external-data file ``path.data`` when there is one."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)
