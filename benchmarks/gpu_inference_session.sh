#!/usr/bin/env bash
# One device call for the inference scan (run from the repository root on the GPU machine, with
# .work/segbench carried: site-packages and SimpleITK for Python 3.12, and a BraTS case, as tar.xz): GPU tests of the scan backends, the scan alone (cuda vs
# triton, SegMamba's four stage shapes at batch 8, bf16), SegMamba's layer (scan backends x side streams),
# and whole cases against nnU-Net's stock predictor (benchmarks/segment.py). Logs and JSON go to $OUT.
#
#   bash benchmarks/gpu_inference_session.sh
#
# Steps: tests, norms (benchmarks/fused_kernels.py), convs (benchmarks/conv3d_kernels.py), cutlass (benchmarks/conv3d_cutlass.py), scan (triton and both cuda kernels; SCAN_VARIANTS adds cuda rows under other settings), ncu,
# profile (profile_gpu.py, SegMamba), concurrent (two forward passes on two streams), layer, segment (SEGMENT_ARGS adds options), streamsoff (segment.py with BRATSMAMBA_LAYER_STREAMS=0), convsoff (with BRATSMAMBA_CONV3D=0), fallback
# (SegMamba with the Mamba-layer ops in PyTorch, scan backend cuda vs torch: what a GPU without Triton uses),
# cudnn (SegMamba with cuDNN's autotuner limited to 10 algorithms, PyTorch's default, and trying all; and 16
# tiles per forward pass instead of 8), batch (segment --batch of COPIES links of the case, sequential vs
# pipelined).
# Settings (environment): CASE (default: the carried case), STEPS ("tests scan layer segment"), MODELS ("segmamba umambabot"),
# CONFIGS (segment.py --configs), REPEATS (3), SCAN_VARIANTS (e.g. "BRATSMAMBA_SCAN_CUDA_MIN_BLOCKS=2 BRATSMAMBA_SCAN_CUDA_CHUNKS=32").
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-gpu_inference_out}
S=${DEVSTAGE:-/tmp/devstage}
mkdir -p "$OUT" "$S/site"
T0=$(date +%s)
stamp() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*"; }
if [ ! -d "$S/site/nnunetv2" ]; then
  for t in .work/segbench/site.tar.xz .work/segbench/simpleitk-*.tar.xz; do tar xJf "$t" -C "$S/site"; done
  mkdir -p "$S/case" && tar xJf .work/segbench/case.tar.xz -C "$S/case"
fi
CASE=${CASE:-$(ls -d "$S"/case/*/ | head -1)}
export PYTHONPATH=$S/site:$PWD
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,memory.used --format=csv,noheader
steps=" ${STEPS:-tests scan layer segment} "
if [[ $steps == *" tests "* ]]; then
  stamp "GPU tests"
  timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider Testing/test_ssm_cuda_scan.py Testing/test_ssm_scan.py \
    Testing/test_ssm_ops_streams.py Testing/test_ssm_triton.py Testing/test_nets_fused.py Testing/test_device_preprocessing.py \
    Testing/test_ssm_ops_causal_conv1d.py Testing/test_ssm_layers.py Testing/test_conv3d_kernels.py \
    2>&1 | tee "$OUT/tests.log" | tail -15
fi
if [[ $steps == *" scan "* ]]; then
  stamp "scan alone"
  timeout 150 python3 benchmarks/scan.py --device cuda --batch 8 --dtype bf16 --backends triton \
    --cuda-kernels rows lanes --no-backward --reference no --baseline triton --json "$OUT/scan.json" 2>&1 \
    | tee "$OUT/scan.log" | tail -20
  for v in ${SCAN_VARIANTS:-}; do   # settings of the cuda backend, each VAR=VALUE[,VAR=VALUE...]
    stamp "scan alone, cuda backend, ${v//,/ }"
    env ${v//,/ } timeout 100 python3 benchmarks/scan.py --device cuda \
      --batch 8 --dtype bf16 --backends cuda --no-backward --reference no 2>&1 | tee -a "$OUT/scan.log" | grep -E "^ *[0-3] |stage"
  done
fi
if [[ $steps == *" ncu "* ]]; then   # Nsight Compute on the scans at stage 0 (each backend called twice)
  stamp "ncu, stage 0 scans"
  timeout 240 ncu --kernel-name regex:"scan_rows|scan_fwd|_fwd_chunk" --section SpeedOfLight --section Occupancy \
    --section WarpStateStats --section SchedulerStats --section LaunchStats --section ComputeWorkloadAnalysis \
    python3 benchmarks/scan.py --device cuda --batch 8 --dtype bf16 --backends cuda triton --no-backward \
    --reference no --stages 0 --repeats 1 > "$OUT/ncu.log" 2>&1
  grep -E "scan_fwd|_fwd_chunk|Duration|Achieved Occupancy|Issue Slots Busy|No Eligible|Active Warps Per|Eligible Warps|Warp Cycles Per Issued|Registers Per|Compute \(SM\) Th|Memory Th|Executed Ipc A" "$OUT/ncu.log" | head -120
fi
if [[ $steps == *" norms "* ]]; then   # nets.fused's norm and concatenation kernels (NORM_SWEEP: statistics settings)
  stamp "fused kernels: instance norms, concatenation"
  timeout 200 python3 benchmarks/fused_kernels.py ${NORM_SWEEP:+--sweep $NORM_SWEEP} 2>&1 | tee "$OUT/norms.log" | tail -12
fi
if [[ $steps == *" convs "* ]]; then   # our convolutions against cuDNN
  stamp "conv3d_kernels vs cuDNN"
  timeout 200 python3 benchmarks/conv3d_kernels.py --json "$OUT/convs.json" 2>&1 | tee "$OUT/convs.log" | tail -8
fi
if [[ $steps == *" cutlass "* ]]; then   # CUTLASS sm90 convolutions vs cuDNN (libraries prebuilt in CUTLASS_BUILD)
  stamp "CUTLASS convolutions"
  timeout 300 python3 benchmarks/conv3d_cutlass.py --build-dir "${CUTLASS_BUILD:-.work/cutlass/build}" \
    ${CUTLASS_ROOT:+--cutlass-root $CUTLASS_ROOT} --json "$OUT/cutlass.json" 2>&1 | tee "$OUT/cutlass.log" | tail -16
fi
if [[ $steps == *" profile "* ]]; then   # where an 8-tile SegMamba forward pass spends its GPU time
  stamp "profile, SegMamba, bf16 autocast, channels_last, fused"
  timeout 200 python3 benchmarks/profile_gpu.py --model segmamba --variants autocast_cl_fused --parts profile \
    --json "$OUT/profile.json" 2>&1 | tee "$OUT/profile.log" | tail -60
fi
if [[ $steps == *" concurrent "* ]]; then   # two forward passes on two streams at once vs one after the other
  stamp "concurrent forward passes"
  timeout 200 python3 benchmarks/concurrent_forward.py --models ${MODELS:-segmamba umambabot} --batch 8 \
    --json "$OUT/concurrent.json" 2>&1 | tee "$OUT/concurrent.log" | tail -4
fi
if [[ $steps == *" layer "* ]]; then
  stamp "SegMamba layer"
  timeout 150 python3 benchmarks/mamba_layer_gpu.py --stages 0,1 --scan-backends cuda triton --json "$OUT/layer.json" \
    2>&1 | tee "$OUT/layer.log" | grep -v "^ " | tail -30
fi
if [[ $steps == *" segment "* ]]; then
  stamp "whole case $CASE"
  timeout 330 python3 benchmarks/segment.py --case "$CASE" --models ${MODELS:-segmamba umambabot} \
    --configs ${CONFIGS:-bf16:channels_last::::triton bf16:channels_last::::cuda} --repeats ${REPEATS:-3} --warmup 1 \
    ${SEGMENT_ARGS:-} --json "$OUT/segment.json" 2>&1 | tee "$OUT/segment.log" | tail -30
fi
if [[ $steps == *" streamsoff "* ]]; then   # the same without side streams for the tri-orientated scans
  stamp "whole case, BRATSMAMBA_LAYER_STREAMS=0"
  BRATSMAMBA_LAYER_STREAMS=0 timeout 200 python3 benchmarks/segment.py --case "$CASE" --models ${MODELS:-segmamba umambabot} \
    --no-stock --repeats ${REPEATS:-3} --warmup 1 --json "$OUT/segment_streams_off.json" 2>&1 \
    | tee "$OUT/segment_streams_off.log" | grep -E "^\[|ours :"
fi
if [[ $steps == *" convsoff "* ]]; then   # the same with cuDNN for every convolution (nets/fused/conv3d_kernels.py off)
  stamp "whole case, BRATSMAMBA_CONV3D=0"
  BRATSMAMBA_CONV3D=0 timeout 200 python3 benchmarks/segment.py --case "$CASE" --models ${MODELS:-segmamba umambabot} \
    --no-stock --repeats ${REPEATS:-3} --warmup 1 --json "$OUT/segment_convs_off.json" 2>&1 \
    | tee "$OUT/segment_convs_off.log" | grep -E "^\[|ours :"
fi
if [[ $steps == *" fallback "* ]]; then   # the scans a GPU without Triton can use: cuda (NVRTC) vs torch
  stamp "whole case, Mamba-layer ops in PyTorch (BRATSMAMBA_LAYER_KERNELS=torch), scan cuda vs torch"
  BRATSMAMBA_LAYER_KERNELS=torch timeout 300 python3 benchmarks/segment.py --case "$CASE" --models segmamba --no-stock \
    --configs bf16:channels_last::::cuda bf16:channels_last::::torch --repeats 2 --warmup 1 \
    --json "$OUT/segment_fallback.json" 2>&1 | tee "$OUT/segment_fallback.log" | grep -E "^\[|ours :|FAILED"
fi
if [[ $steps == *" cudnn "* ]]; then   # cuDNN's autotuner trying all algorithms instead of PyTorch's default 10
  for lim in 10 0; do
    stamp "whole case, SegMamba, torch.backends.cudnn.benchmark_limit=$lim"
    timeout 150 python3 benchmarks/segment.py --case "$CASE" --models segmamba --no-stock --repeats ${REPEATS:-3} \
      --warmup 1 --cudnn-benchmark-limit $lim --configs bf16:channels_last $([ $lim = 10 ] && echo bf16:channels_last::16) \
      --json "$OUT/segment_cudnn_$lim.json" 2>&1 | tee "$OUT/segment_cudnn_$lim.log" | grep -E "^\[|ours :|FAILED"
  done
fi
if [[ $steps == *" batch "* ]]; then   # segment --batch throughput: sequential vs pipelined (benchmarks/batch.py)
  for m in ${MODELS:-segmamba umambabot}; do
    stamp "batch of ${COPIES:-6} cases, $m"
    timeout 200 python3 benchmarks/batch.py --case "$CASE" --copies ${COPIES:-6} --model $m \
      --json "$OUT/batch_$m.json" 2>&1 | tee "$OUT/batch_$m.log" | tail -3
  done
fi
stamp "done"
