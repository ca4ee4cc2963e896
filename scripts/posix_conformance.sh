#!/usr/bin/env bash
# Runs pjdfstest (the POSIX file system test suite) inside a fresh ckptfs mount and prints the share
# of its cases that pass. pjdfstest is not on PyPI or in Debian: build it from its source first and
# pass the directory (https://github.com/pjd/pjdfstest: autoreconf -ifs && ./configure && make pjdfstest).
# As root: the suite changes owners and switches users. Needs `prove` (Debian's perl).
#
#   scripts/posix_conformance.sh /path/to/pjdfstest [STORE_URL [mount options, e.g. --endpoint-url URL]]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
suite="$(cd "${1:?usage: $0 PJDFSTEST_DIR [STORE_URL and mount options]}" && pwd)"
shift
[ -x "$suite/pjdfstest" ] || { echo "no built pjdfstest in $suite (autoreconf -ifs && ./configure && make pjdfstest)"; exit 2; }
work="$(mktemp -d)"
mkdir "$work/mnt"
store="${1:-file://$work/lake}"
[ $# -eq 0 ] || shift
python3 -m ckptfs mount "$store" "$work/mnt" --allow-other --foreground --cache-dir "$work/cache" \
  --log-file "$work/daemon.log" "$@" &
daemon=$!
cleanup() {
  fusermount3 -u "$work/mnt" 2>/dev/null || true
  wait "$daemon" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 300); do mountpoint -q "$work/mnt" && break; kill -0 "$daemon" 2>/dev/null || break; sleep 0.1; done
if ! mountpoint -q "$work/mnt"; then
  echo "the mount did not come up:"; cat "$work/daemon.log" 2>/dev/null; exit 1
fi
(cd "$work/mnt" && prove -r "$suite/tests" > "$work/prove.log" 2>&1) || true
python3 - "$work/prove.log" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
total = int(re.search(r"Tests=(\d+)", text).group(1))
failed = sum(int(n) for n in re.findall(r"Failed: (\d+)\)", text))
for line in re.findall(r"^(\S+\.t)\s+\(Wstat.*Failed: (\d+)\)", text, re.M):
    print(f"  {line[0]}: {line[1]} failed")
print(f"pjdfstest: {total - failed} of {total} cases pass ({100 * (total - failed) / total:.2f}%)")
PY
