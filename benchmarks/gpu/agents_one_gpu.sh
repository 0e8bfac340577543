#!/usr/bin/env bash
# One GPU's side of the multi-GPU measurement (docs/scaling.md): time per tick and agents per second of the
# standard stream (configs/cl-stream.yaml) at several agent counts, one run at a time, alone on the GPU.
#
#   bash benchmarks/gpu/agents_one_gpu.sh SETUP OUT [AGENTS ...]      (default: 8 64 256 1024)
#
# Each count runs `lorahive run configs/cl-stream.yaml agents=N` with TICKS_PER_STAGE (default 1: 5 ticks) ticks a stage,
# SUPPORT (default 2) support and query examples per agent and task, 4 held-out examples per type, no retention or
# influence measurement, and the agents' rows in learning passes of at most ROWS (default 512) rows
# (`agent.rows_per_pass`: the same steps, the activations of one pass at a time). SETUP is as for
# cl_variants.sh. OUT/aN/ is each run, OUT/aN.log its output; OUT/agents.txt gets one line per count: seconds per
# tick over ticks 2.., agents per second (agents / seconds per tick), wall seconds and the GPU's peak memory.
set -euo pipefail
setup=$(cd "$1" && pwd); out=$2; shift 2
counts=("$@"); [ ${#counts[@]} -eq 0 ] && counts=(8 64 256 1024)
mkdir -p "$out"; out=$(cd "$out" && pwd)
rm -rf "$out/tree" && mkdir -p "$out/tree" && cp -r src configs benchmarks "$out/tree/" && cd "$out/tree"
source benchmarks/gpu/setup_env.sh
tps=${TICKS_PER_STAGE:-1}; support=${SUPPORT:-2}; rows=${ROWS:-512}
for n in "${counts[@]}"; do
  start=$(date +%s)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$out/a$n.mem" &
  smi=$!
  lh run configs/cl-stream.yaml --out "$out/a$n" --force suite.root="$setup/data/cl/standard" agents="$n" \
    stream.ticks_per_stage="$tps" suite.support="$support" suite.query="$support" suite.eval_query=4 \
    observe.retention_tokens=0 observe.influence_examples=0 agent.rows_per_pass="$rows" checkpoint_every=1000 > "$out/a$n.log" 2>&1 || echo "a$n failed: see $out/a$n.log"
  kill $smi 2>/dev/null || true
  wall=$(( $(date +%s) - start ))
  python3 - "$out/a$n" "$n" "$wall" "$out/a$n.mem" >> "$out/agents.txt" <<'EOF'
import json, sqlite3, sys
run, n, wall, mem = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
db = sqlite3.connect(f"{run}/ledger.sqlite")
ticks = [sum(json.loads(d).values()) for (d,) in db.execute("SELECT detail FROM events WHERE kind = 'tick_seconds' ORDER BY tick")]
peak = max((int(x) for x in open(mem).read().split() if x.isdigit()), default=0)
per = sum(ticks[1:]) / max(len(ticks) - 1, 1) if ticks else float("nan")
print(f"agents {n}: {per:.2f} s per tick (ticks 2..{len(ticks)}), {n / per:.1f} agents/s, wall {wall} s, GPU peak {peak} MiB")
EOF
  tail -1 "$out/agents.txt"
done
