#!/usr/bin/env bash
# Progress of the GPU runs under OUT (cl_variants.sh): last tick in each ledger, errors in the logs, GPU and load.
#   bash benchmarks/gpu/poll.sh OUT
for d in "$1"/*/; do n=$(basename "$d"); t=$(python3 -c "import sqlite3;print(sqlite3.connect('$d/ledger.sqlite').execute('select max(tick) from scores').fetchone()[0])" 2>/dev/null); echo "$n tick=$t"; done
grep -l -i "error\|traceback" "$1"/*.log 2>/dev/null | while read f; do echo "== $f"; tail -5 "$f"; done
ls "$1"/*.time 2>/dev/null
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; uptime
