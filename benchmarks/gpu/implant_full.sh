#!/usr/bin/env bash
# Sequential knowledge implants at full size (configs/implant.yaml: 1,000 CounterFact edits, hive vs lora vs
# unedited) on one GPU, for issue 19.
#
#   bash benchmarks/gpu/implant_full.sh SETUP OUT [KEY=VALUE ...]
#
# SETUP is as for cl_variants.sh (what ../shared/tools/carry-model.sh writes, plus wheels in SETUP/whl/), with the
# CounterFact file in SETUP/data/knowledge/counterfact-edit-1k.json. Extra KEY=VALUE arguments override config
# fields (e.g. writer=curriculum, edits=100). OUT/implant/ gets results.json, table.md and scores.png;
# OUT/implant.log the figures as each checkpoint is scored; OUT/implant.time the wall seconds.
set -euo pipefail
setup=$(cd "$1" && pwd); out=$2; shift 2
mkdir -p "$out"; out=$(cd "$out" && pwd)
# a copy of the code: the device tool uploads the working tree again at every call
rm -rf "$out/tree" && mkdir -p "$out/tree" && cp -r src configs benchmarks "$out/tree/" && cd "$out/tree"
source benchmarks/gpu/setup_env.sh
sets=(); for kv in "$@"; do sets+=(--set "$kv"); done
start=$(date +%s)
OMP_NUM_THREADS=${THREADS:-4} lh implant "$setup/data/knowledge/counterfact-edit-1k.json" --config configs/implant.yaml \
  --out "$out/implant" --force ${sets[@]+"${sets[@]}"} 2>&1 | tee "$out/implant.log"
echo $(( $(date +%s) - start )) | tee "$out/implant.time"
cat "$out/implant/table.md"
