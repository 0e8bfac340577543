#!/usr/bin/env bash
# The full-size standard continual-learning stream (configs/cl-stream.yaml) on one GPU, every method.
#
#   bash benchmarks/gpu/cl_full.sh SETUP OUT [METHOD ...]      (default methods: hive seq-lora replay multitask)
#
# SETUP is a folder holding what ../shared/tools/carry-model.sh writes (model.part-*, model.sha256, data/),
# and optionally wheels in SETUP/whl/ for packages the machine lacks (pydantic, gguf). Nothing is downloaded.
# The methods run at the same time, one process each on the one GPU, so each one's wall time is measured
# under the same load; every run writes OUT/<method>/ (the run directory) and OUT/<method>.log, and
# OUT/<method>.time holds its wall seconds once it has finished. When all have finished, OUT/compare.txt
# holds `lorahive compare` of the runs and OUT/hive/report.html the compared report.
# Run it detached when one call is too short: `setsid nohup bash benchmarks/gpu/cl_full.sh S O > O.log 2>&1 &`.
set -euo pipefail
setup=$(cd "$1" && pwd); out=$2; shift 2
methods=("$@"); [ ${#methods[@]} -eq 0 ] && methods=(hive seq-lora replay multitask)
mkdir -p "$out"; out=$(cd "$out" && pwd)
source "$(dirname "$0")/setup_env.sh"
for m in "${methods[@]}"; do
  (
    start=$(date +%s)
    lh run configs/cl-stream.yaml --out "$out/$m" --force stream.method="$m" suite.root="$setup/data/cl/standard" > "$out/$m.log" 2>&1
    echo $(( $(date +%s) - start )) > "$out/$m.time"
  ) &
done
wait
runs=(); for m in "${methods[@]}"; do runs+=("$out/$m"); done
lh compare "${runs[@]}" > "$out/compare.txt" 2>&1 || true
lh report "${runs[@]}" >> "$out/compare.txt" 2>&1 || true
cat "$out/compare.txt"; for m in "${methods[@]}"; do echo "$m wall $(cat "$out/$m.time") s"; done
