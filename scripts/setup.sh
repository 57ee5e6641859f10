#!/usr/bin/env bash
# Idempotent set-up: a virtual environment (.venv, or $WSVK_VENV) holding exactly the versions in
# requirements.lock (hash-checked), then wsvk itself in editable mode. A second run only checks that
# neither pyproject.toml nor the lock changed. Source it or run it.
#
# torch: PyPI's Linux wheels pull ~4 GB of CUDA libraries wsvk never uses. On Linux x86-64 the set-up
# prefers PyTorch's CPU-only build of the locked version from download.pytorch.org when that index
# answers within a few seconds; otherwise (no route, no DNS, a firewall) it installs the lock as it is.
# WSVK_TORCH=cpu insists on the CPU build, WSVK_TORCH=pypi skips the probe.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${WSVK_VENV:-$root/.venv}
py=${PYTHON:-python3}
lock=$root/requirements.lock
torch_mode=${WSVK_TORCH:-auto}
cpu_index=https://download.pytorch.org/whl/cpu


case "$torch_mode" in auto|cpu|pypi) ;; *) echo "error: WSVK_TORCH must be auto, cpu or pypi (got '$torch_mode')" >&2; exit 2 ;; esac
if ! "$py" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "error: wsvk needs Python 3.11+ (found: $("$py" --version 2>&1))" >&2; exit 2
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "wsvk: creating the virtual environment $venv"
  if ! "$py" -m venv "$venv" 2>/dev/null; then
    rm -rf "$venv"  # Debian/Ubuntu ship venv separately
    "$root/scripts/apt_install.sh" python3-venv
    "$py" -m venv "$venv"
  fi
fi

# Reinstall only when the requirements, the lock or the torch choice changed since the last good install.
stamp="$venv/.wsvk-installed"
want=$(cat "$root/pyproject.toml" "$lock" <(echo "$torch_mode") | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
pip=("$venv/bin/python" -m pip install -q --progress-bar off --disable-pip-version-check)
torch_ver=$(sed -n 's/^torch==\([^ ;]*\).*/\1/p' "$lock")
audio_ver=$(sed -n 's/^torchaudio==\([^ ;]*\).*/\1/p' "$lock")

cpu_build=no
if [ "$torch_mode" != pypi ] && [ "$(uname -s)-$(uname -m)" = Linux-x86_64 ]; then
  if "$venv/bin/python" -c "import urllib.request as u; u.urlopen('$cpu_index/torch/', timeout=5)" 2>/dev/null; then
    echo "wsvk: installing PyTorch's CPU-only build (torch $torch_ver+cpu, torchaudio $audio_ver+cpu) from $cpu_index"
    "${pip[@]}" --no-deps --index-url "$cpu_index" "torch==$torch_ver+cpu" "torchaudio==$audio_ver+cpu" && cpu_build=yes
  fi
  if [ $cpu_build = no ]; then
    [ "$torch_mode" = cpu ] && { echo "error: WSVK_TORCH=cpu but $cpu_index could not be used" >&2; exit 1; }
    echo "wsvk: PyTorch's CPU index is not reachable; installing PyPI's torch build (with CUDA libraries, ~5 GB)"
  fi
fi

echo "wsvk: installing the locked dependencies into $venv (torch is a large download the first time)"
if [ $cpu_build = yes ]; then
  # the lock without the PyPI torch pair and the CUDA libraries only that build needs
  filtered="$venv/.wsvk-lock-cpu.txt"
  "$venv/bin/python" - "$lock" "$filtered" <<'PY'
import re, sys
skip = re.compile(r"^(torch|torchaudio|triton|nvidia-[\w-]+|cuda-[\w-]+)==")
blocks, keep = open(sys.argv[1]).read().split("\n"), []
drop = False
for line in blocks:
    if line and not line[0].isspace() and not line.startswith("#"):
        drop = bool(skip.match(line))
    if not drop:
        keep.append(line)
open(sys.argv[2], "w").write("\n".join(keep))
PY
  "${pip[@]}" --no-deps --require-hashes -r "$filtered"
else
  "${pip[@]}" --no-deps --require-hashes -r "$lock"
fi
# wsvk itself: editable, built with the locked hatchling (no download of a build backend)
"${pip[@]}" --no-deps --no-build-isolation -e "$root"
echo "$want" > "$stamp"
fi
