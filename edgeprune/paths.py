"""Checks on the paths a command will write, made before any work."""
from __future__ import annotations

import tempfile
from pathlib import Path

from edgeprune.errors import EdgepruneError


def check_writable(path: str | Path) -> None:
    """``path`` (a file or folder to create) can be written: a temporary file can be made in its
    nearest existing parent folder (a real try: permission bits say nothing to root). Nothing is left.

    >>> check_writable("/proc/x/y.pt")
    Traceback (most recent call last):
    ...
    edgeprune.errors.EdgepruneError: cannot write /proc/x/y.pt: /proc is not a writable folder (No such file or directory)
    """
    path = Path(path)
    if path.is_dir() and path.suffix in (".pt", ".onnx", ".json"):
        raise EdgepruneError(f"cannot write {path}: it is a folder")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise EdgepruneError(f"cannot write {path}: {parent} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise EdgepruneError(f"cannot write {path}: {parent} is not a writable folder ({exc.strerror or exc})") from None
