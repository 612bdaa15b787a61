#!/usr/bin/env bash
# One measured call on the lent GPU machine (after `train_session.sh stage ... && prep`, which install the
# wheels into .devstage/site and write the held-out cases): GPU tests, the forward-variant sweep and the
# whole-case segmentation benchmark against nnU-Net's stock predictor on GPU 0, and the selective-scan
# benchmark (every backend, torch-backend settings swept) on GPU 1 at the same time. Logs and JSON go to $OUT.
#
#   bash benchmarks/gpu_bench_session.sh build    # start the mamba-ssm build in the background (setsid)
#   bash benchmarks/gpu_bench_session.sh bench    # the measurements (about 6 minutes)
#
# Settings (environment): CASE (a BraTS case folder), FORWARD_S (170), SEGMENT_S (200), SCAN_S (240),
# TORCH_SWEEP (settings for benchmarks/scan.py --torch-sweep), SCAN_GPU (1), BENCH_GPU (0).
set -uo pipefail
export PYTHONUNBUFFERED=1
ROOT=$PWD
S=${DEVSTAGE:-/tmp/devstage}  # outside the checkout: the device keeps no ignored folder of it between calls
OUT=${OUT:-$S/out}
mkdir -p "$OUT"
export PYTHONPATH=$S/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}
T0=$(date +%s)
stamp() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*"; }

do_build() {
  if python3 -c 'import torch, selective_scan_cuda' 2>/dev/null; then echo "mamba-ssm already built"; return 0; fi
  setsid nohup bash -c "MAX_JOBS=${MAX_JOBS:-12} bash .device/device-build-mamba-ssm.sh > '$S/build.log' 2>&1; \
    python3 -c 'import torch, selective_scan_cuda' >> '$S/build.log' 2>&1 && echo BUILD_OK >> '$S/build.log'" \
    > /dev/null 2>&1 < /dev/null &
  stamp "mamba-ssm build started in the background (log: $S/build.log)"
}

do_bench() {
  nvidia-smi --query-gpu=index,name,clocks.sm,clocks.max.sm,memory.used --format=csv
  if grep -q BUILD_OK "$S/build.log" 2>/dev/null; then stamp "mamba-ssm built"; else
    stamp "mamba-ssm not (yet) built: $(tail -2 "$S/build.log" 2>/dev/null | tr '\n' ' ')"; fi
  local case=${CASE:-$(ls -d "$S"/heldout/*/ 2>/dev/null | head -1)}
  [ -d "$case" ] || { echo "bench: no case folder (CASE=$case)"; return 2; }
  (
    export CUDA_VISIBLE_DEVICES=${SCAN_GPU:-1}
    stamp "GPU tests (GPU $CUDA_VISIBLE_DEVICES)"
    timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider Testing/test_ssm_scan.py Testing/test_ssm_triton.py \
      Testing/test_ssm_torch_schedules.py > "$OUT/gpu_tests.log" 2>&1
    stamp "GPU tests: $(tail -1 "$OUT/gpu_tests.log")"
    timeout ${SCAN_S:-240} python3 benchmarks/scan.py --device cuda --json "$OUT/scan.json" \
      ${TORCH_SWEEP:+--torch-sweep $TORCH_SWEEP} > "$OUT/scan.log" 2>&1
    stamp "scan benchmark rc=$?"
  ) &
  local side=$!
  export CUDA_VISIBLE_DEVICES=${BENCH_GPU:-0}
  stamp "forward variants (GPU $CUDA_VISIBLE_DEVICES)"
  timeout -s INT ${FORWARD_S:-170} python3 benchmarks/forward_gpu.py --budget-s $(( ${FORWARD_S:-170} - 15 )) \
    --json "$OUT/forward.json" > "$OUT/forward.log" 2>&1
  grep -v '^{' "$OUT/forward.log" | tail -40
  stamp "segment benchmark on $case"
  timeout -s INT ${SEGMENT_S:-200} python3 benchmarks/segment.py --case "$case" --configs bf16:channels_last \
    --best-from "$OUT/forward.json" --repeats 3 --warmup 1 --json "$OUT/segment.json" > "$OUT/segment.log" 2>&1
  tail -40 "$OUT/segment.log"
  wait $side
  cat "$OUT/scan.log" | tail -40
  stamp "bench done"
}

cmd=${1:-}
case "$cmd" in
  build) do_build ;;
  bench) do_bench ;;
  *) sed -n 2,11p "$0"; exit 2 ;;
esac
