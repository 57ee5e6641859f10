#!/usr/bin/env bash
# One prepared run for the GPU test machine (see the device tool's README): selftest, kernel
# benchmarks with the big shapes, end-to-end "small" in f32 and f16, the f16 tests, and
# the released default sizes (T2S small + S2A medium) at the default precision.
# Usage there:  source .devicekit/prelude.sh && bash scripts/device_check.sh "$OUT"
set -uo pipefail
out=${1:-${OUT:-/tmp/wsvk-device}}
mkdir -p "$out"
export WSVK_BACKEND=wgpu PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  "$py" -m wsvk info --selftest
} 2>&1 | tee "$out/selftest.txt"
"$py" scripts/bench_ops.py --big --json "$out/ops.json" 2>&1 | tee "$out/ops.txt"
WSVK_PRECISION=f32 "$py" scripts/bench_e2e.py --size small --steps 100 --json "$out/e2e_f32.json" 2>&1 | tee "$out/e2e_f32.txt"
WSVK_PRECISION=f16 "$py" scripts/bench_e2e.py --size small --steps 100 --skip-cpu --json "$out/e2e_f16.json" 2>&1 | tee "$out/e2e_f16.txt"
"$py" -m pytest -q tests/test_precision.py 2>&1 | tail -5 | tee "$out/precision.txt"
# what a user of the released models gets: T2S small + S2A medium, default precision (auto)
"$py" scripts/bench_e2e.py --size small --s2a-size medium --steps 100 --skip-cpu --json "$out/e2e_released.json" 2>&1 | tee "$out/e2e_released.txt"
