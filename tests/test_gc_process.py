"""`ckptfs gc` as its users run it, killed with SIGKILL in the middle of its sweep and run again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from ckptfs.lake import Lake
from ckptfs.lake.check import check_lake
from ckptfs.lake.manifest import Manifest, encode_path
from ckptfs.lake.packs import Location, pack_key
from ckptfs.lake.retention import Policy
from ckptfs.store.localdir import LocalDirStore

PACKS = 3000


def _lake_with_garbage(root: str) -> None:
    """A lake of PACKS old packs of which all but one are named only by versions keep-last 1 drops."""
    store = LocalDirStore(root)
    lake = Lake(store)
    lake.open(settings={"gc_grace_s": 2, "max_clock_skew_s": 0, "late_publish_s": 0, "fold_s": 0})
    events, now = [], time.time_ns() - 10**12
    for index in range(PACKS):
        pack = os.urandom(16)
        chunk = os.urandom(16)
        blob = b"x" * 64
        store.put(pack_key(pack), blob)
        manifest = Manifest(path=b"model.pt", size=1, mode=0o644, mtime_ns=now + index, mount="b" * 16,
                            time_ns=now + index, chunks=[(chunk, 1)], locations=[Location(pack, 0, 33)])
        events.append({"op": "put", "path": encode_path(b"model.pt"), "time_ns": now + index,
                       "manifest": lake.put_manifest(manifest), "size": 1, "mode": 0o644, "mtime_ns": now + index})
    for seq, first in enumerate(range(0, PACKS, 500)):
        lake.append_log("b" * 16, seq, events[first:first + 500], now + first + 499)
    lake.register_mount("b" * 16)
    lake.set_retention(b"", Policy(keep_last=1))
    old = time.time() - 3600
    for directory, _, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(directory, name), (old, old))


def _count(root: str, prefix: str) -> int:
    return sum(len(files) for _, _, files in os.walk(os.path.join(root, prefix)))


def test_gc_killed_mid_sweep_and_run_again(tmp_path):
    root = str(tmp_path / "lake")
    _lake_with_garbage(root)
    gc = [sys.executable, "-m", "ckptfs", "gc", f"file://{root}", "--json"]
    first = json.loads(subprocess.run(gc, capture_output=True, text=True, check=True).stdout)
    assert first["marked"]["objects"] == 2 * (PACKS - 1)
    time.sleep(2.5)  # the grace
    process = subprocess.Popen(gc, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while _count(root, "packs") == PACKS and process.poll() is None:
        time.sleep(0.001)  # manifests go first: the first pack deleted means the sweep is under way
    process.send_signal(signal.SIGKILL)
    process.wait()
    left = _count(root, "packs")
    assert 1 < left < PACKS, "the kill landed in the sweep"
    report = check_lake(Lake(LocalDirStore(root)))  # the packs hold stubs: presence, not data
    assert report.ok, report.problems  # nothing kept names a missing pack
    holder = json.load(open(os.path.join(root, "gc", "lock")))
    assert holder["pid"] == process.pid  # its lock is still there, naming the process that is gone
    # the next run on this machine sees that and takes the lock at once, without --break-lock
    again = json.loads(subprocess.run(gc, capture_output=True, text=True, check=True).stdout)
    assert again["deleted"]["objects"] == left - 1  # the interrupted sweep's tombstones go at once
    assert _count(root, "packs") == 1
    assert check_lake(Lake(LocalDirStore(root))).ok
