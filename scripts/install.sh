#!/usr/bin/env bash
# Installs what ckptfs needs on a Debian machine, idempotently: system packages for FUSE, then the
# Python package with its runtime and test dependencies. Safe to run again; does nothing it need not.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

need_apt=()
for pkg in fuse3 libfuse3-dev pkg-config attr; do  # attr: getfattr, which the README uses
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "ckptfs install: apt packages ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# torch is pinned to the CPU build that lies on this machine; installing it first keeps pip from
# resolving a CUDA build for anything that depends on torch.
extras="${CKPTFS_EXTRAS:-test,bench}"
stamp="$here/.install-stamp-$extras"
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ] || ! "$PYTHON" -c "import ckptfs, pyfuse3" 2>/dev/null; then
  echo "ckptfs install: pip packages (extras: $extras)"
  "$PYTHON" -m pip install -q --disable-pip-version-check "torch==2.13.0"
  "$PYTHON" -m pip install -q --disable-pip-version-check -e "$here[$extras]"
  touch "$stamp"
fi
# Under pyenv, console scripts installed by `python -m pip` get their shims only on a rehash.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi

# mount(8) and /etc/fstab find a file system's helper as /sbin/mount.fuse.<type> (ckptfs/mount_helper.py).
helper="$("$PYTHON" -c 'import sys, os; print(os.path.join(os.path.dirname(sys.executable), "mount.fuse.ckptfs"))')"
if [ "$(id -u)" -eq 0 ] && [ -x "$helper" ] && [ "$(readlink /sbin/mount.fuse.ckptfs 2>/dev/null)" != "$helper" ]; then
  ln -sf "$helper" /sbin/mount.fuse.ckptfs
  echo "ckptfs install: /sbin/mount.fuse.ckptfs -> $helper"
fi
