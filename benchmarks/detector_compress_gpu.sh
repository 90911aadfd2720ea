#!/usr/bin/env bash
# The detector table (benchmarks/detector_compress.py) on a lent GPU machine with many cores: recovery
# on CUDA (compress's --device auto), the four configurations side by side, each timed with one
# thread (benchmarks/targets/x86-1thread.json) in onnxruntime and ncnn; their report.json files are copied to OUT_DIR. ExecuTorch is left out there:
# its wheel needs this repository's torch (2.14), and that machine has its own (2.11).
# Wheels for that machine's Python (3.12) in .whl/: pycocotools, mlxtend, onnxsim, ncnn, pnnx, click, tqdm, portalocker.
#   bash benchmarks/detector_compress_gpu.sh OUT_DIR [SECONDS_PER_CONFIG]
set -u
out=${1:?output folder}
limit=${2:-420}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=$PWD:/tmp/site OMP_NUM_THREADS=3
python3 -c "import click, onnxsim, ncnn, pnnx, pycocotools, mlxtend, skimage, sklearn, matplotlib" || exit 3
python3 benchmarks/detector_compress.py --write-data || exit 4
note="lent machine: $(nproc) cores, $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); 4 configurations side by side"
for config in cut30 cut50 speed1.5 speed2; do
    timeout "$limit" python3 benchmarks/detector_compress.py --configs "$config" --runtime ncnn \
        --out /tmp/detector_runs --json "$out/$config.json" --note "$note" > "$out/$config.log" 2>&1 &
done
wait
for report in /tmp/detector_runs/*/report.json; do cp "$report" "$out/$(basename "$(dirname "$report")").report.json"; done
tail -n 3 "$out"/*.log
