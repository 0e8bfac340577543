#!/usr/bin/env bash
# One GPU session as a batch of device calls, each call's command one step below. The lent machine goes back after
# 30 s idle, so send the calls together, one after another, and keep local work out of the gaps between them.
#
#   prepare here:  make venv && bash ../shared/tools/carry-model.sh && mkdir -p .carry/data/knowledge \
#                  && cp ../shared/data/knowledge/counterfact-edit-1k.json .carry/data/knowledge/   (+ the wheels in .whl/)
#   call 1, carry [.carry/model.part-aa, .carry/model.sha256, .carry/data, .whl]:  bash benchmarks/gpu/batch.sh setup
#   call 2, carry [.carry/model.part-ab]:  bash benchmarks/gpu/batch.sh tests      (GPU tests, forward figures: $OUT/fwd.txt;
#            WIDE="64" measures K = 64 only after K = 1 and 8, default "64 256"; BIG=1 adds the 8B architecture: $OUT/fwd8b.txt)
#   optional calls:  bash benchmarks/gpu/batch.sh profile   (kernel tables of the live and captured forward: $OUT/profile.txt)
#                    LAYOUT=lean bash benchmarks/gpu/batch.sh capacity   (agents resident and trainable: $OUT/capacity.txt)
#   call 3:  bash benchmarks/gpu/batch.sh launch NAME SCRIPT [ARG ...]; bash benchmarks/gpu/collect.sh 450 /tmp/NAME
#            e.g. `launch abl mechanisms_ablation.sh 0` runs `benchmarks/gpu/mechanisms_ablation.sh /tmp/setup /tmp/abl 0`
#            detached from a copy of the tree (the tree is uploaded again at every call); its runs are under
#            /tmp/abl/seed0, so collect that: `collect.sh 450 /tmp/abl/seed0`
#   calls 4…:  bash benchmarks/gpu/collect.sh 590 /tmp/NAME       (results.tgz comes back with each call)
#
# SETUP on the machine is /tmp/setup (what carry-model.sh writes, the wheels in /tmp/setup/whl), as the scripts here expect.
set -uo pipefail
step=${1:?setup | tests | profile | capacity | launch NAME SCRIPT [ARG ...]}; shift
case $step in
  setup)
    mkdir -p /tmp/setup/whl && cp -r .carry/model.part-aa .carry/model.sha256 .carry/data /tmp/setup/ && cp .whl/*.whl /tmp/setup/whl/
    nvidia-smi --query-gpu=name,memory.used --format=csv
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" ;;
  tests)
    cp .carry/model.part-ab /tmp/setup/ || exit 1
    setup=/tmp/setup; source benchmarks/gpu/setup_env.sh
    timeout 150 python3 -m pytest -q -m gpu tests/test_captured.py tests/test_captured_decode.py tests/test_fused_gpu.py 2>&1 | tail -n 12 | cut -c1-300
    timeout 200 python3 benchmarks/gpu/forward.py --agents 1 8 --fleet 8 --reps 5 2>&1 | grep -v "Warning\|warnings.warn" | tee "$OUT/fwd.txt" | cut -c1-400
    timeout 200 python3 benchmarks/gpu/forward.py --agents ${WIDE:-64 256} --reps 5 2>&1 | grep -v "Warning\|warnings.warn" | tee -a "$OUT/fwd.txt" | cut -c1-400
    if [ -n "${BIG:-}" ]; then  # the 8B architecture (issue [5/10]: R1 >= 0.93 live), a fleet of 8
      timeout 300 python3 benchmarks/gpu/forward.py --arch llama-3.1-8b --agents 1 8 --fleet 8 --reps 3 2>&1 | grep -v "Warning\|warnings.warn" | tee "$OUT/fwd8b.txt" | cut -c1-400
    fi ;;
  profile)  # the kernels of the live and the captured forward, dense fleet of 8 (after `tests`, which sets up the model)
    setup=/tmp/setup; source benchmarks/gpu/setup_env.sh
    timeout 240 python3 benchmarks/gpu/profile_forward.py --agents 8 --fleet 8 ${SHAPES:+--shapes} 2>&1 | grep -v "Warning\|warnings.warn" | tee "$OUT/profile.txt" | cut -c1-250 ;;
  capacity)  # agents resident and trainable (issue [5/10]: >= 4,096), in LAYOUT (default lean; resident, paged, lean-bf16)
    setup=/tmp/setup; source benchmarks/gpu/setup_env.sh
    timeout 420 python3 benchmarks/gpu/capacity.py --max 4096 --memory "${LAYOUT:-lean}" 2>&1 | grep -v "Warning\|warnings.warn" | tee "$OUT/capacity.txt" | cut -c1-300 ;;
  launch)
    name=${1:?launch NAME SCRIPT [ARG ...]}; script=${2:?launch NAME SCRIPT [ARG ...]}; shift 2
    rm -rf "/tmp/lh-$name" && cp -r . "/tmp/lh-$name" && cd "/tmp/lh-$name" || exit 1
    setsid nohup bash "benchmarks/gpu/$script" /tmp/setup "/tmp/$name" "$@" > "/tmp/$name.log" 2>&1 < /dev/null &
    sleep 5; tail -n 3 "/tmp/$name.log" ;;
  *) echo "unknown step $step: setup | tests | profile | capacity | launch NAME SCRIPT [ARG ...]" >&2; exit 2 ;;
esac
