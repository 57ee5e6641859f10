#!/usr/bin/env bash
# Make sure wgpu sees at least one Vulkan/Metal/D3D12 adapter; on a machine with none,
# install Mesa's software Vulkan driver (lavapipe) so the GPU tests have an adapter.
set -euo pipefail
py=${1:?usage: ensure_vulkan.sh PYTHON}
has_adapter() {
  XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp} "$py" - <<'PY' 2>/dev/null
import sys, wgpu
ok = [a for a in wgpu.gpu.enumerate_adapters_sync() if a.info["backend_type"] != "OpenGL"]
sys.exit(0 if ok else 1)
PY
}
if ! has_adapter; then
  echo "wsvk: no Vulkan adapter found; installing mesa-vulkan-drivers (lavapipe)"
  "$(dirname "${BASH_SOURCE[0]}")/apt_install.sh" mesa-vulkan-drivers
  has_adapter || { echo "error: still no Vulkan adapter after installing mesa-vulkan-drivers" >&2; exit 1; }
fi
