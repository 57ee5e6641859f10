#!/usr/bin/env bash
# The prepared runs for the GPU test machine (see the device tool's README). A lease is 15 minutes
# of device time, start-up included, and one command runs at most 10, so the checks come in two
# parts, each one call, most important first, with step caps that sum well inside a call:
#   part 1 (~8.5 min of caps): selftest; batched decode (B = 1..16, the released pair, a 10-chunk
#     text batched and one chunk at a time, torch CUDA's bs=B); the server under 1/4/16 clients;
#     a 200-row corpus job against a loop over generate() (timed on a 20-row sample).
#   part 2 (~4 min): the released pair single-stream at the default precision, kernel benchmarks
#     with the big shapes, the f16 accuracy tests (their figures printed).
#   part 3 (~6 min, at most 8.5 of caps; issue #17, one sequence's step): bench_step.py on the
#     released pair at the default precision (ms/step over a whole 10 s chunk and GPU time by
#     kind at its start, middle and end; torch CUDA eager), then the small presets in f32 against
#     torch CUDA eager and torch.compile + CUDA graphs (f16), then GEMV 8192^2's bandwidth. A #17
#     session runs it before its changes and after them (with start-up, one lease may hold only one run).
# Each step has its own time cap, so one that hangs or fails leaves the others their time, and the
# benchmarks write their JSON as they go (a step cut short keeps what it measured).
# Writes log.txt plus up to three JSON files per part (the device tool brings back at most 8).
# Usage: here `bash scripts/device_kit.sh`, then a run carrying .devicekit with the command
#   source .devicekit/prelude.sh && bash scripts/device_check.sh "$OUT" [1|2|3]
set -uo pipefail
out=${1:-${OUT:-/tmp/wsvk-device}}
part=${2:-1}
mkdir -p "$out"
export WSVK_BACKEND=wgpu PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
log=$out/log.txt
step() {  # step SECONDS NAME COMMAND...: run with a cap, log its output, its time and exit code
  local cap=$1 name=$2; shift 2
  echo "=== $name ($(date +%T), cap ${cap}s)" | tee -a "$log"
  local t0=$SECONDS
  timeout -k 5 "$cap" "$@" 2>&1 | tee -a "$log"
  echo "=== $name: rc=${PIPESTATUS[0]} in $((SECONDS - t0))s" | tee -a "$log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$log"
case $part in
  1)
    step 45 selftest "$py" -m wsvk info --selftest
    step 230 batch "$py" scripts/bench_e2e.py --batch 1,2,4,8,16 --size small --s2a-size medium --steps 100 \
      --json "$out/batch.json"
    step 110 serve "$py" scripts/bench_serve.py --clients 1,4,16 --requests 1 --json "$out/serve.json"
    step 130 corpus "$py" scripts/bench_batch.py --rows 200 --loop-rows 20 --slots 16 --json "$out/corpus.json"
    ;;
  2)
    step 80 e2e-released "$py" scripts/bench_e2e.py --size small --s2a-size medium --steps 100 --skip-cpu \
      --json "$out/e2e_released.json"
    step 100 ops "$py" scripts/bench_ops.py --big --json "$out/ops.json"
    step 45 precision "$py" -m pytest -q -rP tests/test_precision.py
    ;;
  3)
    step 150 step-released "$py" scripts/bench_step.py --json "$out/step_released.json"
    step 300 step-small-f32 env WSVK_PRECISION=f32 "$py" scripts/bench_step.py --size small --s2a-size small \
      --compile --json "$out/step_small_f32.json"
    step 60 gemv "$py" scripts/bench_ops.py --big --only 8192 --json "$out/gemv.json"
    ;;
  *) echo "device_check.sh: part must be 1, 2 or 3, got '$part'" >&2; exit 2 ;;
esac
