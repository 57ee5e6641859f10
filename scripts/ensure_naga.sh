#!/usr/bin/env bash
# tests/test_shader_targets.py writes every shader as Metal, D3D12 and GL get it, with naga (wgpu's
# shader translator) compiled to WebAssembly: npm's naga-wasm, run by Node.js (18 or later). Install
# Node where it is missing (Debian's nodejs and npm) and the package from tests/naga's lock (its
# hash pinned), unless WSVK_NO_NAGA=1.
set -euo pipefail
[ "${WSVK_NO_NAGA:-0}" = 1 ] && exit 0
here=$(dirname "${BASH_SOURCE[0]}")
dir=$(cd "$here/../tests/naga" && pwd)
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "wsvk: installing Node.js for the shader translation test"
  "$here/apt_install.sh" nodejs npm
fi
# npm ci leaves node_modules/.package-lock.json: newer than the lock means installed from it
[ "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ] && exit 0
(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
