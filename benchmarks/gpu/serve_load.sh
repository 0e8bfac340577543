#!/usr/bin/env bash
# The serve load benchmark (benchmarks/serve_load.py) on one GPU: the embedded SmolLM2-135M and a random-weight
# model of Qwen2.5-0.5B's shapes (--arch qwen2-0.5b), the decode batch's KV cache on and off, beside plain
# `transformers` generation one request at a time.
#
#   bash benchmarks/gpu/serve_load.sh SETUP OUT
#
# SETUP is as for cl_full.sh (what ../shared/tools/carry-model.sh writes), with in SETUP/whl/ the wheels of what the
# server and its client import and the machine lacks (the project's .whl/ folder: fastapi, starlette, uvicorn,
# openai and their needs, listed in docs/serving.md). Nothing is downloaded. The loads run one after another, each
# alone on the GPU; OUT/NAME.log holds each one's output. The load: CLIENTS (default 16) concurrent clients over
# AGENTS (8), REQUESTS (4) requests each of TOKENS (64) tokens, the clients stopped after LOAD_SECONDS (120); PLAIN
# (16) of the requests are replayed by plain generation. Prints each load's p50/p99 latency, tokens/s, median decode
# step, and the plain-generation line. Meant to fit one 10-minute device call.
set -euo pipefail
setup=$(cd "$1" && pwd); out=$2
mkdir -p "$out"; out=$(cd "$out" && pwd)
# a copy of the code: the device tool uploads the working tree again at every call (see cl_variants.sh)
rm -rf "$out/tree" && mkdir -p "$out/tree" && cp -r src benchmarks "$out/tree/" && cd "$out/tree"
source benchmarks/gpu/setup_env.sh
if ! python3 -c "import fastapi, uvicorn, openai" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$setup/site" "$setup"/whl/*.whl
fi
python3 -c "import torch, transformers, fastapi, uvicorn, openai; print('torch', torch.__version__, 'transformers', transformers.__version__, 'fastapi', fastapi.__version__, 'uvicorn', uvicorn.__version__, 'openai', openai.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
load=(--clients "${CLIENTS:-16}" --agents "${AGENTS:-8}" --requests "${REQUESTS:-4}" --max-tokens "${TOKENS:-64}" --seconds "${LOAD_SECONDS:-120}" --feedback-every 0)
plain=(--plain "${PLAIN:-16}")
load() {
  local name=$1; shift
  echo "== $name: python3 benchmarks/serve_load.py $*" > "$out/$name.log"
  python3 benchmarks/serve_load.py "$@" >> "$out/$name.log" 2>&1 || echo "(exit $?)" >> "$out/$name.log"
  grep -E "^(== |serve|  latency|  decode|plain|\(exit|Traceback|[A-Za-z]*Error)" "$out/$name.log" || tail -5 "$out/$name.log"
}
load embedded "${load[@]}" "${plain[@]}"
load embedded-no-cache "${load[@]}" --plain 0 --no-kv-cache
load qwen2-0.5b --arch qwen2-0.5b "${load[@]}" "${plain[@]}"
load qwen2-0.5b-no-cache --arch qwen2-0.5b "${load[@]}" --plain 0 --no-kv-cache
load qwen2-0.5b-feedback --arch qwen2-0.5b "${load[@]}" --feedback-every 2 --plain 0
