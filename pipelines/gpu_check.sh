#!/usr/bin/env bash
# The GPU checks in two device calls, each well inside the 600 s per-call limit:
#   bash pipelines/gpu_check.sh prepare tests model train   # call 1, ~6 min: GPU tests, model only, training
#   bash pipelines/gpu_check.sh heatmap cohort              # call 2, ~7 min: 70k x 70k slide end to end, cohort
# `prepare` starts writing the 70k slide (~100k JPEG tiles, minutes of CPU) in its own process
# session, so it runs on beside call 1 and after it (the machine keeps it until given back); call 2
# waits for it if need be. (No argument runs every step, ~14 min: too long for one call.) Prepare here first:
#   ../shared/device/fetch-wheels.sh openslide-bin openslide-python zarr ome-zarr tiffslide imagecodecs \
#       dask distributed shapely        # fills .whl/ (the device has no internet)
# then run on the device machine with carry [".whl"], timeout_s 590 (docs/benchmarks.md has the
# exact calls). Each step has its own time limit, so a slow one cannot eat the others' time; logs
# and tables go under $OUT (or ./gpu-check-out), and the tables are printed last. Record them in
# docs/benchmarks.md with the date, the GPU and this command.
set -uo pipefail
out=${OUT:-gpu-check-out}
mkdir -p "$out"
steps=${*:-prepare tests model train heatmap cohort}
slide=/tmp/bench-70k.tiff
make_slide=(python3 -m wsi_haloae.cli make-slide "$slide" --size 70000x70000 --tissue full --no-progress)
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$out/gpu.txt"
run() { step=$1; limit=$2; shift 2; echo "== $step (limit ${limit}s): $*"; timeout "$limit" "$@" 2>&1 | tee "$out/$step.log"; }

for step in $steps; do
  case $step in
    prepare) [ -f "$slide" ] || pgrep -f "make-slide $slide" >/dev/null || \
        setsid -f "${make_slide[@]}" > /tmp/make-slide.log 2>&1 < /dev/null ;;
    # GPU tests: nvJPEG against libjpeg-turbo on the same bytes, the engine on CUDA
    tests) run gpu-tests 100 python3 -m pytest -q -m gpu tests/test_jpeg_tiles.py tests/test_infer.py ;;
    # model only: attention kernel x eager / CUDA graph / compile, bf16 floor, host-sync check
    model) BATCH=256 run bench-model 200 python3 pipelines/bench_gpu.py model ;;
    # the paper config, bf16 on and off, two epochs of 100 steps each (the second is timed)
    train) run bench-train 200 python3 pipelines/bench_train.py --config configs/haloae-paper.yaml --steps 100 ;;
    # 70k x 70k all-tissue slide (74,529 tiles of 256 px at level 0): JPEG tiles decoded on the GPU
    # (tile_reader auto), end to end and per stage; the slide is kept in /tmp for a rerun in the same lease
    heatmap)
      # the slide appears under its name only once complete: wait for prepare's writer, else write it
      writing() { pgrep -f "make-slide $slide" >/dev/null; }
      for _ in $(seq 150); do { [ -f "$slide" ] || ! writing; } && break; sleep 1; done
      if [ ! -f "$slide" ] && ! writing; then run make-slide 250 "${make_slide[@]}"; fi
      if [ -f "$slide" ]; then
        run bench-heatmap 240 python3 pipelines/bench_heatmap.py --slide "$slide" --config configs/haloae-paper.yaml \
          --backbone-weights random --cuda-graphs --baseline-tiles 16
      else
        echo "the 70k slide is still being written (/tmp/make-slide.log): run the heatmap step again in this lease"
      fi ;;
    # a cohort sized for two GPUs: 4 slides of 12,288 px, dask with 1 then 2 workers on the one GPU
    cohort) run bench-cohort 150 python3 pipelines/bench_gpu.py cohort ;;
    # optional (not in the default two calls): a category of the offline MVTec-format benchmark with
    # the paper config (random backbone); it measures the GPU training path, not the paper's AUROC
    mvtec)
      run mvtec-data 60 python3 pipelines/make_offline_mvtec.py /tmp/offline-mvtec --categories brick \
        --n-train 200 --n-test-good 40 --n-test-defect 10 --no-progress
      run mvtec 180 python3 pipelines/mvtec_benchmark.py /tmp/offline-mvtec --categories brick \
        --config configs/haloae-paper.yaml --epochs 10 --backbone-weights random --out "$out/mvtec" --no-progress ;;
    *) echo "unknown step $step (tests, model, train, heatmap, cohort, mvtec)"; exit 2 ;;
  esac
done
echo; cat "$out"/*.log | grep '^|'
