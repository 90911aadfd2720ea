"""The ORT format (.ort) that onnxruntime's mobile and minimal builds load."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgeprune.errors import EdgepruneError
from edgeprune.export._io import first_line, log, quiet_loggers, staged_output, stdout_to_log
from edgeprune.export.checks import load_onnx_checked
from edgeprune.export.runtime import make_session

CONFIG_SUFFIX = ".required_operators.config"


def to_ort_format(onnx_path: str | Path, out_path: str | Path | None = None, *,
                  target_platform: str | None = "arm") -> Path:
    """Convert ``onnx_path`` to ORT format (default: the same name with ``.ort``) and check that
    the result loads and runs in an onnxruntime session.

    This is onnxruntime's own converter (``onnxruntime.tools.convert_onnx_models_to_ort``) with
    fixed, portable optimisations: ``target_platform="arm"`` keeps x86-only layouts out and lets
    INT8 QDQ groups fuse into ARM's int8 kernels (use ``"amd64"`` or None for x86 targets). Beside
    the file it writes ``NAME.required_operators.config``, the operator list for a reduced
    onnxruntime build.

    >>> import tempfile, torch
    >>> from edgeprune.export import export_onnx
    >>> folder = tempfile.mkdtemp()
    >>> onnx_file = export_onnx(torch.nn.Conv2d(3, 4, 3), (1, 3, 8, 8), folder + "/conv.onnx").path
    >>> to_ort_format(onnx_file).name
    'conv.ort'
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    source = Path(onnx_path)
    load_onnx_checked(source)
    out = Path(out_path) if out_path is not None else source.with_suffix(".ort")
    with staged_output(out) as tmp:
        try:
            with stdout_to_log(), quiet_loggers("ort_format_model.utils"):
                convert_onnx_models_to_ort(source, output_dir=tmp.parent, target_platform=target_platform,
                                           optimization_styles=[OptimizationStyle.Fixed])
        except Exception as exc:
            raise EdgepruneError(f"cannot convert {source} to ORT format: {first_line(exc)}") from exc
        os.replace(tmp.parent / (source.stem + ".ort"), tmp)
        os.replace(tmp.parent / (source.stem + CONFIG_SUFFIX), tmp.parent / (out.stem + CONFIG_SUFFIX))
        _check_runs(tmp)
    log.info("wrote %s (%d bytes)", out, out.stat().st_size)
    return out


def _check_runs(path: Path) -> None:
    """Run one all-zero input (free dimensions set to 1) through the file."""
    session = make_session(path)
    feeds = {i.name: np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in i.shape], np.float32)
             for i in session.get_inputs()}
    try:
        outputs = session.run(None, feeds)
    except Exception as exc:
        raise EdgepruneError(f"the ORT format model {path.name} loads but does not run: {first_line(exc)}") from exc
    if not all(np.isfinite(o).all() for o in outputs):
        raise EdgepruneError(f"the ORT format model {path.name} gives non-finite outputs")
