#!/usr/bin/env bash
# The ckptfs demo, from a fresh Debian machine: installs what is missing, mounts an embedded lake,
# runs a small training loop that saves checkpoints, shows the versions and the dedup/upload figures,
# and unmounts cleanly. Everything lives in one temporary directory, removed at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install.sh

# The interpreter that install.sh installed into (a venv of its own on a PEP 668 system Python).
python="$(cat .ckptfs-python)"
ckptfs() { "$python" -m ckptfs "$@"; }

work="$(mktemp -d /tmp/ckptfs-demo.XXXXXX)"
export CKPTFS_HOME="$work/home"
mountpoint="$work/ckpt"
mkdir -p "$mountpoint"
cleanup() {
  # On an early exit: unmount without draining; `ckptfs unmount` waits for the daemon to exit.
  if grep -q " $mountpoint " /proc/mounts; then ckptfs unmount --no-drain "$mountpoint" || fusermount3 -u "$mountpoint"; fi
  rm -rf "$work"
}
trap cleanup EXIT

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold="" plain=""; fi  # no escapes into a file
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }

step "ckptfs mount $mountpoint   (embedded lake in $CKPTFS_HOME/lake)"
# The demo saves every few hundred milliseconds; a real run's checkpoints are minutes apart and the
# lake's default fold_s (10 s) would fold these into one (docs/SEMANTICS.md, "Retention"): show them all.
ckptfs mount "$mountpoint" --lake-setting fold_s=0

step "training: torch.save to $mountpoint/run1 every 10 steps"
"$python" scripts/demo_train.py "$mountpoint"

step "ls $mountpoint/run1"
ls -l "$mountpoint/run1"
step "ls $mountpoint/.versions/run1/last.ckpt/   (every overwrite kept)"
ls -l "$mountpoint/.versions/run1/last.ckpt/"

step "torch.load of the oldest last.ckpt version"
oldest="$(ls "$mountpoint/.versions/run1/last.ckpt/" | head -n 1)"
"$python" -c "import torch,sys; print('step', torch.load(sys.argv[1], weights_only=True)['step'])" \
  "$mountpoint/.versions/run1/last.ckpt/$oldest"

step "ckptfs sync $mountpoint   (barrier: wait until committed in the lake)"
ckptfs sync "$mountpoint"
step "ckptfs status $mountpoint"
ckptfs status "$mountpoint"
echo "lake on disk: $(du -sh "$CKPTFS_HOME/lake" | cut -f1) for $(du -sh --apparent-size "$mountpoint/run1" | cut -f1) of checkpoints"

step "ckptfs unmount $mountpoint"
ckptfs unmount "$mountpoint"
