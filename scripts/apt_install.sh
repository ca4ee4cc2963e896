#!/usr/bin/env bash
# Installs the Debian packages named (or .deb files given) that are not installed yet. Another apt
# run holding the lock (unattended-upgrades at boot) is waited for, up to 10 minutes, rather than
# failed on. Package lists are fetched only when apt does not know a package (a fresh image has none).
set -euo pipefail
# With --no-install-recommends first, only what the packages depend on.
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
extra=()
if [ "${1:-}" = "--no-install-recommends" ]; then extra+=("$1"); shift; fi
need=()
for pkg in "$@"; do
  name="$pkg"; [ -f "$pkg" ] && name="$(dpkg-deb -f "$pkg" Package)"
  dpkg-query -W -f='${Status}' "$name" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
echo "ckptfs install: apt packages ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt=($SUDO apt-get -o DPkg::Lock::Timeout=600 -qq)
if ! "${apt[@]}" install -y "${extra[@]}" "${need[@]}" >/dev/null 2>&1; then
  "${apt[@]}" update
  "${apt[@]}" install -y "${extra[@]}" "${need[@]}" >/dev/null
fi
