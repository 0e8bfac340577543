#!/usr/bin/env bash
# The standard CL table at full size on one GPU (recipes/experiments/cl_table.py): the three O-LoRA orders of the
# 4-task stream and the 5-task stream, hive / seq-lora / replay / multitask, every seed.
#
#   bash benchmarks/gpu/cl_table.sh SETUP OUT [SEED ...]        (default seeds 0 1 2)
#   OVERRIDES=stream.ticks_per_stage=1,suite.eval_query=8 bash benchmarks/gpu/cl_table.sh SETUP OUT 0   # a smoke test
#
# SETUP is as for cl_full.sh. The recipe writes every run's whole config (OUT/configs/NAME.yaml); the runs of one
# seed (4 streams × 4 methods) go to benchmarks/gpu/cl_variants.sh as NAME@CONFIG, AT_ONCE (default 8) at a time on
# the one GPU (sixteen stream runs at ~11 GB each do not fit an H200's 139 GB), THREADS (default 1) CPU threads each;
# the seeds follow one another. Run directories: OUT/runs/NAME. Last, the
# recipe's --collect writes the table: OUT/table/summary.md, metrics.json, cl_table.png. Runs for hours: start it
# detached, `setsid nohup bash benchmarks/gpu/cl_table.sh S O > O.log 2>&1 &`, and read OUT/runs/*.log.
set -euo pipefail
setup=$(cd "$1" && pwd); out=$2; shift 2
seeds=("$@"); [ ${#seeds[@]} -eq 0 ] && seeds=(0 1 2)
mkdir -p "$out"; out=$(cd "$out" && pwd)
cd "$(dirname "$0")/../.."
source benchmarks/gpu/setup_env.sh
python3 recipes/experiments/cl_table.py --size full --seeds "${seeds[@]}" --plan "$out/configs" > "$out/plan.txt"
for s in "${seeds[@]}"; do
  mapfile -t batch < <(grep -- "-s$s@" "$out/plan.txt" | sed "s|\$|${OVERRIDES:+:$OVERRIDES}|")
  n=${AT_ONCE:-8}  # runs on the GPU at once: each stream run holds up to ~11 GB at its stage-end evaluation (2026-12-03)
  for ((i = 0; i < ${#batch[@]}; i += n)); do
    THREADS=${THREADS:-1} bash benchmarks/gpu/cl_variants.sh "$setup" "$out/runs" "${batch[@]:i:n}"
  done
done
python3 recipes/experiments/cl_table.py --size full --collect "$out/runs" --out "$out/table"
