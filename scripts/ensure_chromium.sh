#!/usr/bin/env bash
# The browser test drives Debian's Chromium headless: install it where it is missing (as
# ensure_vulkan.sh installs lavapipe), unless WSVK_NO_BROWSER=1.
set -euo pipefail
[ "${WSVK_NO_BROWSER:-0}" = 1 ] && exit 0
command -v chromium >/dev/null 2>&1 && exit 0
echo "wsvk: installing Debian's chromium for the web page test"
"$(dirname "${BASH_SOURCE[0]}")/apt_install.sh" chromium
command -v chromium >/dev/null 2>&1 || { echo "error: chromium is still missing after apt-get install chromium" >&2; exit 1; }
