#!/usr/bin/env bash
# The spec's experiments 1–11 (recipes/experiments/, docs/results.md) at full size on one GPU, several at once.
#
#   bash benchmarks/gpu/experiments_full.sh SETUP OUT [NAME ...]        (default: all eleven)
#   SIZE=small bash benchmarks/gpu/experiments_full.sh SETUP OUT exp05_screening     # a smoke test of the script
#
# NAME is a recipe's file name without .py (exp01_two_layer … exp11_vertical). SETUP is as for cl_variants.sh (what
# ../shared/tools/carry-model.sh writes, plus wheels in SETUP/whl/); the recipes read the package's own demo slice,
# nothing else. Each recipe runs `--size ${SIZE:-full} --seeds ${SEEDS:-0 1 2}` as its own process with THREADS
# (default 1) CPU threads, all at the same time; OUT/NAME/ gets its summary.md, metrics.json and figures,
# OUT/NAME.log its output, OUT/NAME.time its wall seconds, OUT/NAME.failed its exit status when it failed. When all
# have ended, OUT/done lists the recipes and their wall seconds. Measured on one H200 (2026-12-03, SEEDS=0): 401–1,338 s
# each with all eleven at once, 2–12 GB of GPU memory each (81 GiB together by nvidia-smi, 18 minutes in) — beside six stream runs
# (~11 GB each) two of those ran out of memory at start-up. Runs for a while: start it detached,
# `setsid nohup bash benchmarks/gpu/experiments_full.sh S O > O.log 2>&1 &`.
set -euo pipefail
setup=$(cd "$1" && pwd); out=$2; shift 2
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(exp01_two_layer exp02_swarm exp03_stability exp04_temporal exp05_screening exp06_consolidation
  exp07_resonance exp08_growth exp09_entropy exp10_bandwidth exp11_vertical)
mkdir -p "$out"; out=$(cd "$out" && pwd)
# a copy of the code: the device tool uploads the working tree again at every call
rm -rf "$out/tree" && mkdir -p "$out/tree" && cp -r src configs benchmarks recipes "$out/tree/" && cd "$out/tree"
source benchmarks/gpu/setup_env.sh
read -r -a seeds <<< "${SEEDS:-0 1 2}"
for name in "${names[@]}"; do
  [ -f "recipes/experiments/$name.py" ] || { echo "no recipe recipes/experiments/$name.py" >&2; exit 2; }
done
for name in "${names[@]}"; do
  (
    start=$(date +%s)
    OMP_NUM_THREADS=${THREADS:-1} python3 "recipes/experiments/$name.py" --size "${SIZE:-full}" --seeds "${seeds[@]}" \
      --out "$out/$name" > "$out/$name.log" 2>&1 || echo $? > "$out/$name.failed"
    echo $(( $(date +%s) - start )) > "$out/$name.time"
  ) &
done
wait
for name in "${names[@]}"; do echo "$name $(cat "$out/$name.time") s${name:+$( [ -f "$out/$name.failed" ] && echo " FAILED (exit $(cat "$out/$name.failed"))")}"; done | tee "$out/done"
