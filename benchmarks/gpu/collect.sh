#!/usr/bin/env bash
# Collect the small results of runs on the GPU machine while they go on, so that a machine taken back mid-run
# still returns what was measured so far (the run directories write metrics.json as they go).
#
#   bash benchmarks/gpu/collect.sh SECONDS DIR [DIR ...]
#
# Every 30 s for SECONDS: the metrics, configs, summaries, figures, logs and wall times under each DIR (not the
# ledgers, checkpoints or the copied code tree) into $OUT/results.tgz, replaced atomically, and one line of progress
# (the last tick of each stream run, how many runs have finished, the GPU memory its processes hold: how many more would fit). Give it as the command of the device calls that
# follow the launch, in the same batch as the launch, e.g. `bash benchmarks/gpu/collect.sh 590 /tmp/v1 /tmp/x0`.
set -u
secs=$1; shift
end=$(( $(date +%s) + secs ))
here=$(pwd)
while [ "$(date +%s)" -lt "$end" ]; do
  sleep 30
  find "$@" -path '*/tree' -prune -o -type f \( -name '*.time' -o -name '*.json' -o -name '*.txt' -o -name '*.log' \
      -o -name '*.md' -o -name '*.png' -o -name config.yaml -o -name '*.failed' -o -name done \) -size -5M -print 2>/dev/null \
    | tar czf "$OUT/results.tmp" -T - 2>/dev/null && mv "$OUT/results.tmp" "$OUT/results.tgz"
  line="$(date +%T)"
  for d in "$@"; do
    for run in "$d"/*/; do
      [ -f "$run/ledger.sqlite" ] || continue
      t=$(python3 -c "import sqlite3,sys;print(sqlite3.connect(sys.argv[1]).execute('select max(tick) from scores').fetchone()[0])" "$run/ledger.sqlite" 2>/dev/null)
      line="$line $(basename "$run")=$t"
    done
    line="$line | $(basename "$d"): $(ls "$d"/*.time 2>/dev/null | wc -l) done"
  done
  mem=$(nvidia-smi --query-compute-apps=used_memory --format=csv,noheader,nounits 2>/dev/null | sort -n | awk '{n++; s+=$1; m=$1} END {if (n) printf "gpu %d procs %.1f GiB max %.1f GiB", n, s/1024, m/1024}')
  echo "$line${mem:+ | $mem}"
  cd "$here" || exit 1
done
