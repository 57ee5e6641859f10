#!/usr/bin/env bash
# The README's test command: set-up (idempotent), a Vulkan adapter (lavapipe if none), Chromium for the
# web page test, naga-wasm for the shader translation test, pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
venv=${WSVK_VENV:-$root/.venv}
"$root/scripts/ensure_vulkan.sh" "$venv/bin/python"
"$root/scripts/ensure_chromium.sh"
"$root/scripts/ensure_naga.sh"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
cd "$root"
"$venv/bin/python" -m wsvk deps  # one clear line when an installed package does not load
exec "$venv/bin/python" -m pytest "$@"
