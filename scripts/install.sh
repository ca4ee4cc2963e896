#!/usr/bin/env bash
# Installs what ckptfs needs on a Debian machine, idempotently: system packages for FUSE, then the
# Python package with its runtime and test dependencies. Safe to run again; does nothing it need not.
# A Python that refuses `pip install` outside a venv (PEP 668: Debian 12 and 13's /usr/bin/python3)
# gets a venv of its own ($CKPTFS_VENV, default ~/.local/share/ckptfs/venv). The interpreter used is
# written to .ckptfs-python, which scripts/test.sh and scripts/demo.sh run.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
# A minimal image (debootstrap, a container's) has no Python at all: Debian's comes first.
command -v "$PYTHON" >/dev/null 2>&1 || "$here/scripts/apt_install.sh" python3

managed=0
if [ -z "${VIRTUAL_ENV:-}" ] && "$PYTHON" -c 'import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)'; then
  managed=1
fi

packages=(fuse3 libfuse3-dev pkg-config gcc attr)  # pyfuse3 builds from source; attr: getfattr, for the README
[ "$managed" -eq 1 ] && packages+=(python3-venv python3-dev)  # Debian splits venv and headers out
"$here/scripts/apt_install.sh" "${packages[@]}"

if [ "$managed" -eq 1 ]; then
  venv="${CKPTFS_VENV:-$HOME/.local/share/ckptfs/venv}"
  if [ ! -x "$venv/bin/python" ]; then
    echo "ckptfs install: $PYTHON is managed by the system (PEP 668): a venv in $venv"
    "$PYTHON" -m venv "$venv"
  fi
  PYTHON="$venv/bin/python"
fi

# pyfuse3 rebuilt with the GIL let go of around its byte work (the read of each request from
# /dev/fuse, a write's copy, a read's reply, a write's answer): docs/DESIGN.md, "pyfuse3 without
# the GIL". Once, and
# before the package, whose dependency on pyfuse3 it then satisfies (no released build compiled first).
if [ "${CKPTFS_STOCK_PYFUSE3:-0}" != 1 ]; then
  "$PYTHON" "$here/scripts/build_pyfuse3_nogil.py" --into "$PYTHON" --if-needed
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
echo "$PYTHON" > "$here/.ckptfs-python"
if [ "$managed" -eq 1 ]; then  # put ckptfs on PATH
  bin="/usr/local/bin"; [ "$(id -u)" -eq 0 ] || bin="$HOME/.local/bin"
  mkdir -p "$bin"
  for tool in ckptfs mount.fuse.ckptfs; do ln -sf "$(dirname "$PYTHON")/$tool" "$bin/$tool"; done
  echo "ckptfs install: ckptfs is installed in $(dirname "$(dirname "$PYTHON")"), on PATH as $bin/ckptfs"
fi
# Under pyenv, console scripts installed by `python -m pip` get their shims only on a rehash.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi

# mount(8) and /etc/fstab find a file system's helper as /sbin/mount.fuse.<type> (ckptfs/mount_helper.py).
helper="$("$PYTHON" -c 'import sys, os; print(os.path.join(os.path.dirname(sys.executable), "mount.fuse.ckptfs"))')"
if [ "$(id -u)" -eq 0 ] && [ -x "$helper" ] && [ "$(readlink /sbin/mount.fuse.ckptfs 2>/dev/null)" != "$helper" ]; then
  ln -sf "$helper" /sbin/mount.fuse.ckptfs
  echo "ckptfs install: /sbin/mount.fuse.ckptfs -> $helper"
fi
