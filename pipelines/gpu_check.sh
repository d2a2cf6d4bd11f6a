#!/usr/bin/env bash
# The GPU checks in as few device calls as the 600 s per-call limit allows:
#   bash pipelines/gpu_check.sh tests train mvtec   # ~6 min: GPU tests, training images/s, MVTec brick
#   bash pipelines/gpu_check.sh heatmap             # ~8 min: 70k x 70k synthetic slide, heatmap tiles/s
# (no argument runs every step). Prepare here first: ../shared/device/fetch-wheels.sh (fills .whl/),
# then run on the device machine with carry [".whl"]. Each step has its own time limit, so a slow
# one cannot eat the others' time; logs and tables go under $OUT (or ./gpu-check-out), and the
# tables are printed last. Record them in docs/benchmarks.md with the date and this command.
set -uo pipefail
out=${OUT:-gpu-check-out}
mkdir -p "$out"
steps=${*:-tests train mvtec heatmap}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
run() { step=$1; limit=$2; shift 2; echo "== $step (limit ${limit}s): $*"; timeout "$limit" "$@" 2>&1 | tee "$out/$step.log"; }

for step in $steps; do
  case $step in
    tests) run gpu-tests 120 python3 -m pytest -q -m gpu tests/ ;;
    # the paper config, bf16 on and off, two epochs of 150 steps each (the second is timed)
    train) run bench-train 240 python3 pipelines/bench_train.py --config configs/haloae-paper.yaml --steps 150 ;;
    # a category of the offline MVTec-format benchmark with the paper config (random backbone:
    # ImageNet weights cannot be fetched there); it measures the GPU path, not the paper's AUROC
    mvtec)
      run mvtec-data 60 python3 pipelines/make_offline_mvtec.py /tmp/offline-mvtec --categories brick \
        --n-train 200 --n-test-good 40 --n-test-defect 10 --no-progress
      run mvtec 180 python3 pipelines/mvtec_benchmark.py /tmp/offline-mvtec --categories brick \
        --config configs/haloae-paper.yaml --epochs 10 --backbone-weights random --out "$out/mvtec" --no-progress ;;
    # writing the 70k x 70k slide takes minutes: it is kept in /tmp for a rerun in the same lease
    heatmap)
      slide=/tmp/bench-70k.tiff
      [ -f "$slide" ] || run make-slide 300 python3 -m wsi_haloae.cli make-slide "$slide" --size 70000x70000 --no-progress
      run bench-heatmap 280 python3 pipelines/bench_heatmap.py --slide "$slide" --config configs/haloae-paper.yaml \
        --backbone-weights random --compile ;;
    *) echo "unknown step $step (tests, train, mvtec, heatmap)"; exit 2 ;;
  esac
done
echo; cat "$out"/*.log | grep '^|'
