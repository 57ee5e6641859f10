#!/usr/bin/env bash
# The Node.js packages the tests use, each from its lock (integrity hashes pinned): npm's naga-wasm
# (naga, wgpu's shader translator, as WebAssembly: tests/test_shader_targets.py writes every shader
# as Metal, D3D12 and GL get it) in tests/naga, and OpenAI's official Node SDK in tests/openai_node
# (tests/test_serve.py drives the server with it). Installs Node.js (18 or later) where it is
# missing (Debian's nodejs and npm), unless WSVK_NO_NAGA=1.
set -euo pipefail
[ "${WSVK_NO_NAGA:-0}" = 1 ] && exit 0
here=$(dirname "${BASH_SOURCE[0]}")
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "wsvk: installing Node.js for the shader translation and Node SDK tests"
  "$here/apt_install.sh" nodejs npm
fi
for name in naga openai_node; do
  dir=$(cd "$here/../tests/$name" && pwd)
  # npm ci leaves node_modules/.package-lock.json: newer than the lock means installed from it
  [ "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ] && continue
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
done
