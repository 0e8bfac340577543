#!/usr/bin/env bash
# Issue [3/10]'s mechanisms in the ablation (docs/mechanisms.md): configs/cl-stream.yaml as it is (context modes on),
# each of vertical resonance, consensus, the entropy budget and topology switched on alone, and all five on, for one
# seed, side by side on one GPU (the "each one off" rows, context modes' among them, are mechanisms_ablation.sh's).
#
#   COMMON=deterministic=true bash benchmarks/gpu/mechanisms2_ablation.sh SETUP OUT SEED
#
# Runs OUT/seed$SEED/{on,vertical-resonance,consensus,entropy-budget,topology,all-five} through
# benchmarks/gpu/cl_variants.sh (SETUP as there); COMMON (comma-separated key=value) is added to every run. Six
# processes share the GPU.
set -euo pipefail
setup=$1; out=$2; seed=$3
s="seed=$seed"; [ -n "${COMMON:-}" ] && s="$s,$COMMON"
m=mechanisms
all="$m.vertical_resonance.enabled=true,$m.consensus.enabled=true,$m.entropy_budget.enabled=true,$m.context_modes.enabled=true,$m.topology.enabled=true"
exec bash "$(dirname "$0")/cl_variants.sh" "$setup" "$out/seed$seed" \
  "on:$s" "vertical-resonance:$s,$m.vertical_resonance.enabled=true" "consensus:$s,$m.consensus.enabled=true" \
  "entropy-budget:$s,$m.entropy_budget.enabled=true" \
  "topology:$s,$m.topology.enabled=true" "all-five:$s,$all"
