#!/bin/bash
# One device session for the Triton selective scan (run from the repository root on the GPU machine,
# with .device carried): builds mamba-ssm in the background, runs the GPU tests, sweeps the Triton launch
# configurations, then compares with mamba_ssm's kernel. Logs go to $OUT (or ./gpu_scan_out).
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-gpu_scan_out}; mkdir -p "$OUT"
T0=$(date +%s); el() { echo "[+$(( $(date +%s) - T0 ))s] $*"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,memory.used --format=csv | tee "$OUT/gpu.txt"
if python3 -c 'import torch, selective_scan_cuda' 2>/dev/null; then echo "mamba-ssm already installed" >"$OUT/build.log"; else
( MAX_JOBS=${MAX_JOBS:-12} timeout 330 bash .device/device-build-mamba-ssm.sh >"$OUT/build.log" 2>&1; echo "build rc=$?" >>"$OUT/build.log" ) & fi
el "GPU tests (triton vs float64)"
timeout ${TESTS_S:-170} python3 -m pytest -q -s -m gpu -p no:cacheprovider Testing/test_ssm_triton.py -k "float64" 2>&1 | tee "$OUT/tests_triton.txt"
el "sweep"
timeout ${SWEEP_S:-170} python3 benchmarks/scan_gpu.py --sweep --json "$OUT/sweep.json" ${SWEEP_ARGS:-} 2>&1 | tee "$OUT/sweep.txt"
el "waiting for the mamba-ssm build"
wait; tail -3 "$OUT/build.log"
if python3 -c 'import torch, selective_scan_cuda' 2>/dev/null; then
  el "GPU tests against mamba_ssm"
  timeout 90 python3 -m pytest -q -s -m gpu -p no:cacheprovider Testing/test_ssm_triton.py -k "mamba" 2>&1 | tee "$OUT/tests_mamba.txt"
fi
el "table"
timeout ${TABLE_S:-150} python3 benchmarks/scan_gpu.py --table --configs "$OUT/sweep.json" ${TABLE_ARGS:-} 2>&1 | tee "$OUT/table.txt"
el "done"
