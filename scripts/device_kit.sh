#!/usr/bin/env bash
# The kit for the GPU test machine (.devicekit/, git-ignored): the shared prepare.sh (the Vulkan
# loader, the Python wheels that machine lacks), less the wheels scripts/device_check.sh never
# imports (Ray's alone is ~76 MiB) so that the kit stays small enough to copy.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
prepare=${WSVK_DEVICE_PREPARE:-$root/../shared/device/prepare.sh}
[ -f "$prepare" ] || { echo "error: $prepare not found (set WSVK_DEVICE_PREPARE)" >&2; exit 2; }
bash "$prepare"
rm -f .devicekit/whl/ray-*.whl  # the corpus job's --ray only; device_check runs it without
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
kit=$(du -sb .devicekit | cut -f1)
total=$(( (tree + kit) / 1048576 ))
echo "wsvk: device kit ready: $((kit / 1048576)) MiB, with the working tree $total MiB (a run carries at most 64)"
[ "$total" -lt 64 ] || { echo "error: over the 64 MiB a run may carry: drop more wheels from .devicekit/whl" >&2; exit 1; }
