#!/usr/bin/env bash
# The README's main command: set-up (idempotent), then synth.py with the given arguments.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh" >&2
venv=${WSVK_VENV:-$root/.venv}
if [ "${WSVK_BACKEND:-auto}" = wgpu ]; then "$root/scripts/ensure_vulkan.sh" "$venv/bin/python" >&2; fi
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
exec "$venv/bin/python" "$root/synth.py" "$@"
