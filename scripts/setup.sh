#!/usr/bin/env bash
# Create .venv (if missing) and install edgeprune with its test extras into it. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e ".[test]"
# Runtimes beside onnxruntime (edgeprune/runtimes). ExecuTorch's metadata asks for much its runtime
# does not use (coremltools, pandas, ...), so it goes in without dependencies, after what it needs,
# and last: pip lists a package's unmet requirements ("ERROR: pip's dependency resolver ...") when
# a later install touches that package's dependencies, never for a --no-deps install itself.
.venv/bin/python -m pip install -q ncnn pnnx
.venv/bin/python -m pip install -q flatbuffers ruamel.yaml tabulate
# MTCNN's pretrained face nets (the README's worked example and a sensitivity test); its metadata pins
# an old torch, so it goes in without dependencies (it imports torchvision, requests and tqdm).
.venv/bin/python -m pip install -q --no-deps facenet-pytorch
.venv/bin/python -m pip install -q --no-deps executorch "torchao>=0.18,<0.19"
