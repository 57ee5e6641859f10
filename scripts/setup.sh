#!/usr/bin/env bash
# Idempotent set-up: a virtual environment (.venv, or $WSVK_VENV) with wsvk installed
# in editable mode. A second run only checks that nothing changed. Source it or run it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${WSVK_VENV:-$root/.venv}
py=${PYTHON:-python3}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! "$py" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null; then
  echo "error: wsvk needs Python 3.10+ (found: $("$py" --version 2>&1))" >&2; exit 2
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "wsvk: creating the virtual environment $venv"
  if ! "$py" -m venv "$venv" 2>/dev/null; then
    rm -rf "$venv"  # Debian/Ubuntu ship venv separately
    as_root apt-get update -qq && as_root apt-get install -y -qq "python3-venv" >/dev/null
    "$py" -m venv "$venv"
  fi
fi

# Reinstall only when the project's requirements changed since the last successful install.
stamp="$venv/.wsvk-installed"
want=$(cat "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "wsvk: installing dependencies into $venv (torch is a large download the first time)"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q --progress-bar off -e "$root[test]"
  echo "$want" > "$stamp"
fi
