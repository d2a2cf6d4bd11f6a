#!/usr/bin/env bash
# One device call: GPU tests, the training benchmark and the heatmap benchmark on the paper model.
# Prepare here first:  ../shared/device/fetch-wheels.sh  (fills .whl/), then run on the device
# machine with carry [".whl"]:  bash pipelines/gpu_check.sh
# Writes logs under $OUT (or ./gpu-check-out) and prints the tables last.
set -uo pipefail
out=${OUT:-gpu-check-out}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -m pytest -q -m gpu tests/ 2>&1 | tee "$out/gpu-tests.log"
python3 pipelines/bench_train.py --config configs/haloae-paper.yaml --steps 30 2>&1 | tee "$out/bench-train.md"
# the 70k x 70k synthetic slide takes minutes to write: keep it for a rerun in the same lease
slide=/tmp/bench-70k.tiff
[ -f "$slide" ] || python3 -m wsi_haloae.cli make-slide "$slide" --size 70000x70000 --no-progress
python3 pipelines/bench_heatmap.py --slide "$slide" --config configs/haloae-paper.yaml \
  --backbone-weights random --compile 2>&1 | tee "$out/bench-heatmap.md"
echo; cat "$out/bench-train.md" "$out/bench-heatmap.md" | grep '^|'
