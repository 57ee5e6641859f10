#!/usr/bin/env bash
# One prepared run for the GPU test machine (see the device tool's README), most important first:
# selftest, batched decode (B = 1..16, the released pair, a 10-chunk text), the server under 1/4/16
# clients, a 200-row corpus job against a loop over generate(), end-to-end "small" in f32 with the torch CPU/CUDA baselines, kernel benchmarks with
# the big shapes, end-to-end "small" in f16, the f16 accuracy tests (their figures
# printed), and the released default sizes (T2S small + S2A medium) at the default precision.
# Each step has its own time cap, so one that hangs or fails leaves the others their time.
# Writes log.txt plus seven JSON files (the device tool brings back at most 8 files).
# Usage there:  source .devicekit/prelude.sh && bash scripts/device_check.sh "$OUT"
set -uo pipefail
out=${1:-${OUT:-/tmp/wsvk-device}}
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
step 75 selftest "$py" -m wsvk info --selftest
step 240 batch "$py" scripts/bench_e2e.py --batch 1,2,4,8,16 --size small --s2a-size medium --steps 100 --json "$out/batch.json"
step 120 serve "$py" scripts/bench_serve.py --clients 1,4,16 --requests 2 --json "$out/serve.json"
step 120 corpus "$py" scripts/bench_batch.py --rows 200 --json "$out/corpus.json"
step 150 e2e-small-f32 env WSVK_PRECISION=f32 "$py" scripts/bench_e2e.py --size small --steps 100 --json "$out/e2e_f32.json"
step 110 ops "$py" scripts/bench_ops.py --big --json "$out/ops.json"
step 60 e2e-small-f16 env WSVK_PRECISION=f16 "$py" scripts/bench_e2e.py --size small --steps 100 --skip-cpu --json "$out/e2e_f16.json"
step 45 precision "$py" -m pytest -q -rP tests/test_precision.py
step 90 e2e-released "$py" scripts/bench_e2e.py --size small --s2a-size medium --steps 100 --skip-cpu --json "$out/e2e_released.json"
