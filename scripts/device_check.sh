#!/usr/bin/env bash
# The prepared GPU checks, in parts that each fit one short run, most important first; every step
# has its own time cap (a step that hangs or fails leaves the others their time) and the
# benchmarks write their JSON as they go (a step cut short keeps what it measured):
#   part 1 (~8.5 min of caps): selftest; batched decode (B = 1..16, the released pair, a 10-chunk
#     text batched and one chunk at a time, torch CUDA's bs=B); the server under 1/4/16 clients;
#     a 200-row corpus job against a loop over generate() (timed on a 20-row sample).
#   part 2 (~4 min): the released pair single-stream at the default precision, kernel benchmarks
#     with the big shapes, the f16 accuracy tests (their figures printed).
#   part 3 (~7 min, at most 9 of caps; one sequence's step): `wsvk tune --full` on the small
#     presets in f32 (the candidates' table), then bench_step.py on the released pair at the
#     default precision with the untuned and the tuned plan (ms/step over a whole 10 s chunk and GPU
#     time by kind at its start, middle and end; torch CUDA eager), then the small presets in f32,
#     both plans, against torch CUDA eager and torch.compile + CUDA graphs (f16). Run it before and
#     after a change to the decode step.
#   part 4 (~8.7 min of caps; 8-bit weights): GEMV 8192^2 and the released layers' GEMVs in f32, f16
#     and q8 (GB/s of the bytes read); the released pair's step in f16 and q8 in one run (weight
#     bytes and ms per step); batched decode at B = 1 and 16 in f16 and in q8; the precision gate
#     on the released shapes, whole chunks.
# Writes log.txt plus a few JSON files per part.
# Usage: here `bash scripts/device_kit.sh`, then, on the GPU machine with the kit,
#   source .devicekit/prelude.sh && bash scripts/device_check.sh "$OUT" [1|2|3|4]
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
    export WSVK_CACHE_DIR=$out/tune-cache  # the tuner's choices come back with the results
    step 60 tune-small-f32 env WSVK_PRECISION=f32 "$py" -m wsvk tune --random-weights small --full \
      --json "$out/tune_small_f32.json"
    step 180 step-released "$py" scripts/bench_step.py --plans default,tuned --json "$out/step_released.json"
    step 300 step-small-f32 env WSVK_PRECISION=f32 "$py" scripts/bench_step.py --size small --s2a-size small \
      --plans default,tuned --compile --json "$out/step_small_f32.json"
    ;;
  4)
    step 60 gemv-q8 "$py" scripts/bench_ops.py --big --only linear --json "$out/gemv_q8.json"
    step 150 step-precisions "$py" scripts/bench_step.py --precision f16,q8 --json "$out/step_q8.json"
    step 80 batch-f16 env WSVK_PRECISION=f16 "$py" scripts/bench_e2e.py --batch 1,16 --size small --s2a-size medium \
      --steps 60 --skip-cpu --json "$out/batch_f16.json"
    step 80 batch-q8 env WSVK_PRECISION=q8 "$py" scripts/bench_e2e.py --batch 1,16 --size small --s2a-size medium \
      --steps 60 --skip-cpu --json "$out/batch_q8.json"
    step 150 gate "$py" scripts/bench_step.py --precision q8 --gate --steps 3 --chunk-seconds 1 --positions 0 \
      --json "$out/gate.json"
    ;;
  *) echo "device_check.sh: part must be 1, 2, 3 or 4, got '$part'" >&2; exit 2 ;;
esac
