#!/usr/bin/env bash
# The single-process run on one GPU before and after a change, side by side: same config, same seed, two trees.
#
#   bash benchmarks/gpu/single_gpu_ab.sh SETUP OUT BEFORE_TREE AFTER_TREE [KEY=VALUE ...]
#
# Each TREE is a copy of the repository's src/ and configs/ (e.g. `git archive COMMIT src configs | tar x -C DIR`).
# Both run `lorahive run configs/demo.yaml` (the shipped demo slice, embedded model) with the overrides, at the same
# time on the one GPU; then benchmarks/gpu/ab_compare.py prints whether the two runs took the same decisions and
# reached the same numbers, and their seconds per tick. SETUP is as for cl_variants.sh.
set -euo pipefail
setup=$(cd "$1" && pwd); out=$2; before=$(cd "$3" && pwd); after=$(cd "$4" && pwd); shift 4
mkdir -p "$out"; out=$(cd "$out" && pwd); here=$(cd "$(dirname "$0")" && pwd)
source "$here/setup_env.sh"
for side in before after; do
  tree=$before; [ $side = after ] && tree=$after
  (cd "$tree" && PYTHONPATH="$setup/site:$setup/pkg:$tree/src" OMP_NUM_THREADS=4 python3 -c "from lorahive.cli.main import app; app()" run configs/demo.yaml \
     --out "$out/$side" --force "$@" > "$out/$side.log" 2>&1) &
done
wait
python3 "$here/ab_compare.py" "$out/before" "$out/after"
