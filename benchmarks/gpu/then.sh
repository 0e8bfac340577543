#!/usr/bin/env bash
# Runs a command once a file exists: chains GPU jobs so the machine never idles between them.
#
#   setsid nohup bash benchmarks/gpu/then.sh /tmp/v1/compare.txt bash benchmarks/gpu/agents_one_gpu.sh S O 1024 > /tmp/then.log 2>&1 &
#
# (cl_variants.sh writes OUT/compare.txt when its last run ends.) Waiting on a file, not on `pgrep -f`, since a
# pattern also matches the waiting shell's own command line.
set -euo pipefail
file=$1; shift
until [ -e "$file" ]; do sleep 5; done
exec "$@"
