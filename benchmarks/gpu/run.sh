#!/usr/bin/env bash
# Run the GPU benchmarks in one go on a CUDA machine, from the repository root:
#   bash benchmarks/gpu/run.sh [tests] [optim] [forward05] [train05] [capacity] [forward8b] [train8b]
# (no arguments: all). Each stage prints its figures as they are measured; with $OUT set,
# every figure is also appended to $OUT/results.jsonl and each stage's log to $OUT/<stage>.txt.
set -uo pipefail
export PYTHONPATH="src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/lorahive-bench}"; export OUT; mkdir -p "$OUT"
stages=("$@"); [ ${#stages[@]} -eq 0 ] && stages=(tests optim forward05 train05 capacity forward8b train8b)
for s in "${stages[@]}"; do
  echo "=== $s" | tee -a "$OUT/$s.txt"
  case $s in
    tests) python3 -m pytest -q -m gpu tests/test_fused_gpu.py tests/test_optim.py tests/test_captured.py tests/test_captured_decode.py ;;
    optim) timeout 120 python3 benchmarks/gpu/optim.py --agents 8 64 ;;
    forward05) timeout 200 python3 benchmarks/gpu/forward.py --arch qwen2.5-0.5b --agents 1 8 64 256 ;;
    train05) timeout 420 python3 benchmarks/gpu/train.py --arch qwen2.5-0.5b --agents 1 8 64 256 --r5-agents 1 8 64 ;;
    capacity) timeout 180 python3 benchmarks/gpu/capacity.py --max 4096 ;;
    forward8b) timeout 230 python3 benchmarks/gpu/forward.py --arch llama-3.1-8b --agents 1 8 64 --reps 3 ;;
    train8b) timeout 240 python3 benchmarks/gpu/train.py --arch llama-3.1-8b --agents 1 8 64 --rows 16 ;;
  esac 2>&1 | grep -v "Warning\|warnings.warn" | tee -a "$OUT/$s.txt"
done
