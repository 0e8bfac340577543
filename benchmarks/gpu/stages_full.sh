#!/usr/bin/env bash
# The stages recipe (recipes/stages/recipe.py) at full size on one GPU, for docs/stages.md.
#
#   bash benchmarks/gpu/stages_full.sh SETUP OUT
#
# SETUP is as for cl_variants.sh, with the knowledge data in SETUP/data/knowledge/. The recipe reads its data
# relative to itself (../shared/data beside the repository), so the copy of the code under OUT/tree gets an
# OUT/shared/data link to SETUP/data. OUT/stages/ is the recipe's output, OUT/stages.log its printout. Each of the
# recipe's processes gets THREADS (default 4) CPU threads: unbounded, three of them loaded 16 cores to 50.
set -euo pipefail
setup=$(cd "$1" && pwd); out=$2
mkdir -p "$out"; out=$(cd "$out" && pwd)
rm -rf "$out/tree" && mkdir -p "$out/tree" "$out/shared" && cp -r src configs benchmarks recipes "$out/tree/" && cd "$out/tree"
ln -sfn "$setup/data" "$out/shared/data"
source benchmarks/gpu/setup_env.sh
start=$(date +%s)
OMP_NUM_THREADS=${THREADS:-4} python3 recipes/stages/recipe.py --size full --jobs 3 --out "$out/stages" > "$out/stages.log" 2>&1
echo $(( $(date +%s) - start )) > "$out/stages.time"
