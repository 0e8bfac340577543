#!/usr/bin/env bash
# Sequential knowledge implants at full size (configs/implant.yaml: 1,000 CounterFact edits, hive vs lora vs
# unedited) on one GPU, for issue 19.
#
#   bash benchmarks/gpu/implant_full.sh SETUP OUT [KEY=VALUE ...]
#   METHODS="hive lora" bash benchmarks/gpu/implant_full.sh SETUP OUT protect=nullspace
#
# SETUP is as for cl_variants.sh (what ../shared/tools/carry-model.sh writes, plus wheels in SETUP/whl/), with the
# CounterFact file in SETUP/data/knowledge/counterfact-edit-1k.json. Extra KEY=VALUE arguments override config
# fields (e.g. writer=curriculum, edits=100). Each of METHODS (default "hive lora unedited") runs as its own process,
# all at the same time (the edits are sequential within a method, not across them), with THREADS CPU threads
# (default 4): OUT/implant-METHOD/ gets results.json, table.md and scores.png; OUT/implant-METHOD.log the figures as
# each checkpoint is scored (and the progress bar's edits per second); OUT/implant-METHOD.time the wall seconds.
# Each method's state is saved every save_every edits (50) under OUT/implant-METHOD/state/; RESUME=1 continues
# from there (bring OUT/implant-METHOD/ back between sessions to go on with a 1,000-edit run on another machine).
set -euo pipefail
setup=$(cd "$1" && pwd); out=$2; shift 2
mkdir -p "$out"; out=$(cd "$out" && pwd)
# a copy of the code: the device tool uploads the working tree again at every call
rm -rf "$out/tree" && mkdir -p "$out/tree" && cp -r src configs benchmarks "$out/tree/" && cd "$out/tree"
source benchmarks/gpu/setup_env.sh
sets=(); for kv in "$@"; do sets+=(--set "$kv"); done
read -r -a methods <<< "${METHODS:-hive lora unedited}"
for m in "${methods[@]}"; do
  (
    start=$(date +%s)
    OMP_NUM_THREADS=${THREADS:-4} lh implant "$setup/data/knowledge/counterfact-edit-1k.json" --config configs/implant.yaml \
      --method "$m" --out "$out/implant-$m" --force ${RESUME:+--resume} ${sets[@]+"${sets[@]}"} > "$out/implant-$m.log" 2>&1 || echo $? > "$out/implant-$m.failed"
    echo $(( $(date +%s) - start )) > "$out/implant-$m.time"
  ) &
done
wait
for m in "${methods[@]}"; do echo "== $m ($(cat "$out/implant-$m.time") s)"; cat "$out/implant-$m/table.md" 2>/dev/null || tail -5 "$out/implant-$m.log"; done
