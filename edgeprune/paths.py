"""Checks on the paths a command will write, made before any work."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def replaced_on_success(path: str | Path) -> Iterator[Path]:
    """A temporary name beside ``path`` (same suffix, so writers that read it still work), renamed
    onto ``path`` when the block ends; removed if it fails. Readers never see a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def folder_replaced_on_success(path: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``path``, put in ``path``'s place when the block ends (a folder
    already there is removed only then); removed if it fails. Readers never see a half-written folder.

    >>> folder = Path(tempfile.mkdtemp()) / "set"
    >>> with folder_replaced_on_success(folder) as tmp:
    ...     _ = (tmp / "a.txt").write_text("a")
    >>> sorted(p.name for p in folder.iterdir())
    ['a.txt']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through :func:`replaced_on_success`."""
    with replaced_on_success(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)
