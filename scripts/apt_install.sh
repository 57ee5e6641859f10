#!/usr/bin/env bash
# Install Debian packages for the test set-up (lavapipe, chromium). A fresh machine often has
# apt busy for its first minutes (unattended upgrades, another set-up): wait for dpkg's lock
# instead of failing at once, and retry an index update that lost the race for its own lock.
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: apt_install.sh PACKAGE..." >&2; exit 2; }
if [ "$(id -u)" = 0 ]; then sudo=""; else sudo=sudo; fi
wait_lock=(-o DPkg::Lock::Timeout=600)
for try in 1 2 3 4 5 6; do
  $sudo apt-get "${wait_lock[@]}" update -qq && break
  [ "$try" = 6 ] && { echo "error: apt-get update failed 6 times" >&2; exit 1; }
  echo "wsvk: apt-get update failed (apt busy?); retrying in 20 s" >&2
  sleep 20
done
DEBIAN_FRONTEND=noninteractive $sudo apt-get "${wait_lock[@]}" install -y -qq "$@" >/dev/null
