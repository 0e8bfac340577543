#!/usr/bin/env bash
# The mechanisms' ablation on the full-size standard stream (docs/mechanisms.md): all on, each one off, all off,
# and the baselines it is judged against, for one seed, side by side on one GPU.
#
#   bash benchmarks/gpu/mechanisms_ablation.sh SETUP OUT SEED [EXTRA_OVERRIDE,...]
#
# Runs OUT/seed$SEED/{on,off,no-screening,no-inertia,no-replay,no-consolidation,no-bandwidth,no-context-modes,replay,
# multitask} through benchmarks/gpu/cl_variants.sh (SETUP as there); "on" is configs/cl-stream.yaml as it is (the
# library's defaults plus context modes), "off" has all six off. EXTRA_OVERRIDE (comma-separated key=value) is added to
# every hive variant, e.g. agent.anchor=1.0; COMMON (same form, an environment variable) to every run, baselines too,
# e.g. COMMON=deterministic=true; EXTRA_RUNS (space-separated NAME[@CONFIG]:OVERRIDES, as cl_variants.sh takes them) adds
# variants to the same batch; BASELINES=0 leaves the two baselines out (when their figures for the seed stand). Replay runs at step 5e-4 and multitask at the default 1e-3, the better step of each
# (docs/mechanisms.md, third and fourth batches). Ten processes share the GPU (nine took about 12 min on one H200).
set -euo pipefail
setup=$1; out=$2; seed=$3; extra=${4:-}
b="seed=$seed"; [ -n "${COMMON:-}" ] && b="$b,$COMMON"
s=$b; [ -n "$extra" ] && s="$s,$extra"
m=mechanisms
off="$m.screening.enabled=false,$m.inertia.enabled=false,$m.replay.enabled=false,$m.consolidation.enabled=false,$m.bandwidth.enabled=false,$m.context_modes.enabled=false"
baselines=("replay:$b,stream.method=replay,stream.baseline_step=0.0005" "multitask:$b,stream.method=multitask")
[ "${BASELINES:-1}" = 0 ] && baselines=()  # the baselines' code unchanged since a seed's figures: leave them out
exec bash "$(dirname "$0")/cl_variants.sh" "$setup" "$out/seed$seed" \
  "on:$s" "off:$s,$off" \
  "no-screening:$s,$m.screening.enabled=false" "no-inertia:$s,$m.inertia.enabled=false" \
  "no-replay:$s,$m.replay.enabled=false" "no-consolidation:$s,$m.consolidation.enabled=false" \
  "no-bandwidth:$s,$m.bandwidth.enabled=false" "no-context-modes:$s,$m.context_modes.enabled=false" \
  ${baselines[@]+"${baselines[@]}"} ${EXTRA_RUNS:-}
