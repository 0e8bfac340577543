#!/usr/bin/env bash
# Variants of the full-size standard stream (configs/cl-stream.yaml) side by side on one GPU: ablations, seeds.
#
#   bash benchmarks/gpu/cl_variants.sh SETUP OUT NAME[@CONFIG]:KEY=VALUE,KEY=VALUE ... [NAME ...]
#
# Each NAME:overrides runs `lorahive run configs/cl-stream.yaml` with those overrides (a bare NAME runs the
# config as it is; NAME@CONFIG runs CONFIG instead, for what an override cannot say, e.g. another level stack),
# one process each, all at the same time on the one GPU; OUT/NAME/ is the run directory,
# OUT/NAME.log its output, OUT/NAME.time its wall seconds, OUT/NAME.events.json and OUT/NAME.inspect.txt the ledger in
# brief (benchmarks/gpu/run_events.py, `lorahive inspect`). SETUP is as for cl_full.sh (what
# ../shared/tools/carry-model.sh writes, plus wheels in SETUP/whl/). When all have finished, OUT/compare.txt
# holds `lorahive compare` of every run and OUT/compare-seeds.md the same runs over seeds (`--by-seed`). Each process gets THREADS (default 2) CPU threads, so a dozen fit the host's cores. Example (docs/mechanisms.md runs these):
#
#   bash benchmarks/gpu/cl_variants.sh S O all-on all-off:mechanisms.screening.enabled=false,... \
#        replay:stream.method=replay multitask:stream.method=multitask
set -euo pipefail
setup=$(cd "$1" && pwd); out=$2; shift 2
mkdir -p "$out"; out=$(cd "$out" && pwd)
# the runs read a copy of the code: the device tool uploads the working tree again at every call, and a
# process importing a module while that happens fails (ImportError: cannot import name ... unknown location)
rm -rf "$out/tree" && mkdir -p "$out/tree" && cp -r src configs benchmarks "$out/tree/" && cd "$out/tree"
source benchmarks/gpu/setup_env.sh
names=()
for spec in "$@"; do
  head=${spec%%:*}; over=(); [ "$spec" != "$head" ] && IFS=',' read -r -a over <<< "${spec#*:}"
  name=${head%%@*}; config=configs/cl-stream.yaml; [ "$head" != "$name" ] && config=${head#*@}
  names+=("$name")
  (
    start=$(date +%s)
    OMP_NUM_THREADS=${THREADS:-2} lh run "$config" --out "$out/$name" --force suite.root="$setup/data/cl/standard" "${over[@]}" > "$out/$name.log" 2>&1
    wall=$(( $(date +%s) - start ))
    # the ledger in brief, small enough to bring back with the metrics; then the wall time, which marks the run done
    python3 benchmarks/gpu/run_events.py "$out/$name" > "$out/$name.events.json" 2>&1 || true
    lh inspect "$out/$name" > "$out/$name.inspect.txt" 2>&1 || true
    echo "$wall" > "$out/$name.time"
  ) &
done
wait
runs=(); for n in "${names[@]}"; do runs+=("$out/$n"); done
lh compare --by-seed --markdown "${runs[@]}" > "$out/compare-seeds.md" 2>&1 || true  # runs differing only in seed: mean ± sd
lh compare "${runs[@]}" > "$out/compare.txt" 2>&1 || true
cat "$out/compare.txt" "$out/compare-seeds.md"; for n in "${names[@]}"; do echo "$n wall $(cat "$out/$n.time" 2>/dev/null || echo '?') s"; done
