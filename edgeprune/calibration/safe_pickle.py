"""Read a pickle that may only hold NumPy arrays, lists, dicts, strings and numbers.

CIFAR's on-disk format is pickle, and unpickling an arbitrary file runs arbitrary code. This
unpickler resolves only the handful of globals that NumPy array pickles name and refuses every
other one, so a tampered file fails with a clear :class:`EdgepruneError` instead of running.
"""
from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.errors import EdgepruneError


def _numpy_global(module: str, name: str) -> Any | None:
    """The object ``module.name`` from NumPy's (renamed in 2.0) private core, or None."""
    for prefix in ("numpy._core", "numpy.core"):
        try:
            mod = __import__(f"{prefix}.{module}", fromlist=[name])
            return getattr(mod, name)
        except (ImportError, AttributeError):
            continue
    return None


def _allowed_globals() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how Python 3 writes bytes at protocol 2
    }
    for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer")):
        obj = _numpy_global(module, name)
        if obj is not None:
            for prefix in ("numpy._core", "numpy.core"):
                table[(f"{prefix}.{module}", name)] = obj
    return table


_ALLOWED = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, source: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        obj = _ALLOWED.get((module, name))
        if obj is None:
            raise EdgepruneError(
                f"{self._source}: refusing to load '{module}.{name}' from a pickle "
                "(a CIFAR file holds only NumPy arrays, lists and dicts)"
            )
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise EdgepruneError(f"{self._source}: refusing a pickle with persistent ids")


def load_restricted(path: Path) -> Any:
    """Unpickle ``path`` allowing NumPy arrays and plain containers only.

    >>> import tempfile, pickle, numpy as np
    >>> p = Path(tempfile.mkdtemp()) / "batch"
    >>> p.write_bytes(pickle.dumps({b"data": np.zeros((2, 3), np.uint8)}, protocol=2)) > 0
    True
    >>> load_restricted(p)[b"data"].shape
    (2, 3)
    """
    try:
        with open(path, "rb") as fh:
            return _RestrictedUnpickler(fh, path).load()
    except EdgepruneError:
        raise
    except OSError as exc:
        raise EdgepruneError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except Exception as exc:  # any decoding failure of a corrupt file
        raise EdgepruneError(f"{path} is not a readable CIFAR pickle ({type(exc).__name__}: {exc})") from exc
