#!/usr/bin/env python3
"""Mount time, daemon memory and `ls` against the size of the lake, on the S3 model.

For each size N: a lake of N files with --versions versions each, as --mounts ranks would leave it
(each save, each rank publishes its files in segments of --events-per-segment events), written
straight into moto_server. Then, through the S3 model (tests/s3model.py: moto behind a proxy that
adds AWS's published first-byte latency and per-connection bandwidth, and counts requests):
1. a fresh mount reading the whole log (no snapshot): time to ready, requests, daemon memory;
2. `ls -l` of one directory of min(N, 10,000) entries on that mount (kernel caches cold);
3. `ckptfs snapshot` on it: time, snapshot size;
4. a fresh mount (new cache dir) starting from the snapshot, and 5. a remount on an existing cache
   dir: time to ready, requests, memory.
Times are wall-clock seconds on this machine, which also runs moto and the proxy: the request
counts and the ratios are the store-independent part.

    python scripts/bench_lake_size.py --sizes 1000 10000 100000
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ckptfs.lake import Lake, events, namespace, snapshot  # noqa: E402
from ckptfs.lake.events import record  # noqa: E402
from ckptfs.store import open_store  # noqa: E402
from tests.helpers import Mount  # noqa: E402
from tests.s3model import S3Model, use_test_credentials  # noqa: E402

use_test_credentials()

DIRECTORY_ENTRIES = 10_000


def build_lake(store_url: str, endpoint: str, files: int, versions: int, mounts: int, per_segment: int,
               snapshot_here: bool = False) -> int:
    """Write the lake's descriptor, mount registry and log segments; returns the segment count."""
    lake = Lake(open_store(store_url, endpoint_url=endpoint))
    lake.open()
    names = [f"rank{rank:03d}" for rank in range(mounts)]
    start = time.time_ns() - 3 * 3600 * 10**9  # hours ago: older than any snapshot horizon
    jobs = []
    for version in range(versions):
        for rank, mount in enumerate(names):
            mine = [index for index in range(rank, files, mounts)]
            for first in range(0, len(mine), per_segment):
                batch = mine[first:first + per_segment]
                when = start + (version * files + batch[0]) * 1000
                raw = [record("put", f"d{index // DIRECTORY_ENTRIES}/file-{index:06d}.pt".encode(), when + offset,
                              manifest=f"{(index * 131 + version) % (1 << 128):032x}", size=1 << 20, mode=0o644,
                              mtime_ns=when + offset, uid=0, gid=0, node=f"{mount}.{index:x}")
                       for offset, index in enumerate(batch)]
                jobs.append((mount, raw, when + len(batch)))
    seqs: dict[str, int] = {}
    ordered = []
    for mount, raw, published in jobs:
        seqs[mount] = seqs.get(mount, -1) + 1
        ordered.append((mount, seqs[mount], raw, published))
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda job: lake.store.put(namespace.segment_key(job[0], job[1]),
                                                 namespace.encode_segment(job[0], job[1], job[2], job[3])), ordered))
        list(pool.map(lake.register_mount, names))
    if snapshot_here:  # what a mount's `ckptfs snapshot` writes, without reading the log through the model
        parsed = sorted((events.parse(raw, mount=mount, seq=seq, position=position, published_ns=published,
                                      late_ns=lake.late_ns)
                         for mount, seq, batch, published in ordered for position, raw in enumerate(batch)),
                        key=lambda change: change.order)
        tree = namespace.Namespace()
        for change in parsed:
            tree.apply(change)
        lake.put_snapshot(snapshot.Snapshot(time.time_ns() - 3600 * 10**9, dict(seqs), tree), "builder")
    return len(ordered)


def memory_kib(pid: int) -> tuple[int, int]:
    """(resident, peak resident) KiB of a process."""
    fields = {}
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def mount_and_measure(model: S3Model, url: str, work: str, cache: str, label: str) -> tuple[Mount, dict]:
    mountpoint = os.path.join(work, "mnt")
    mount = Mount(url, mountpoint, os.path.join(work, cache), os.path.join(work, f"{cache}.log"),
                  extra=["--endpoint-url", model.endpoint, "--refresh", "0"])
    model.reset_counts()
    started = time.monotonic()
    mount.start(timeout=3600)
    seconds = time.monotonic() - started
    status = mount.status()
    rss, peak = memory_kib(status["pid"])
    counts = model.counts()
    row = {"what": label, "seconds": round(seconds, 2), "requests": counts, "cost_usd": round(model.cost(counts), 5),
           "rss_mib": round(rss / 1024, 1), "peak_rss_mib": round(peak / 1024, 1),
           "segments_read": status.get("start_segments_read"), "snapshot": status.get("start_snapshot"),
           "read_lake_s": status.get("start_read_s")}
    return mount, row


def list_directory(mount: Mount) -> tuple[float, int]:
    started = time.monotonic()
    directory = mount.path("d0")
    names = os.listdir(directory)
    for name in names:
        os.lstat(os.path.join(directory, name))
    return time.monotonic() - started, len(names)


def measure_whole_log(model: S3Model, url: str, work: str, files: int, segments: int, rows: list) -> None:
    """A fresh mount reading every segment, then `ckptfs snapshot` on it."""
    mount, row = mount_and_measure(model, url, work, "cache-full", "fresh mount, whole log")
    ls_seconds, row["ls_entries"] = list_directory(mount)
    row["ls_seconds"] = round(ls_seconds, 2)
    rows.append({"files": files, "segments": segments, **row})
    print(json.dumps(rows[-1]))
    started = time.monotonic()
    done = json.loads(subprocess.run([sys.executable, "-m", "ckptfs", "snapshot", "--json", mount.mountpoint],
                                     check=True, capture_output=True, text=True).stdout)
    print(f"snapshot {done['written']}: {done['entries']} entries, written in {time.monotonic() - started:.1f} s")
    mount.unmount()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--versions", type=int, default=3)
    parser.add_argument("--mounts", type=int, default=64, help="ranks that wrote the lake")
    parser.add_argument("--events-per-segment", type=int, default=10)
    parser.add_argument("--no-whole-log", action="store_true",
                        help="skip the mount from the whole log; the snapshot is written with the lake")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    model = S3Model()
    rows = []
    try:
        print(f"S3 model: {model.proxy.delay_seconds * 1000:.0f} ms to first byte, "
              f"{model.proxy.bandwidth / 1e6:.0f} MB/s per connection; moto_server on this machine")
        for files in args.sizes:
            work = tempfile.mkdtemp(prefix="ckptfs-lakesize-")
            url = f"s3://{model.bucket()}/ckpt"
            started = time.monotonic()
            segments = build_lake(url, model.direct, files, args.versions, args.mounts, args.events_per_segment,
                                  snapshot_here=args.no_whole_log)
            print(f"\n{files} files x {args.versions} versions by {args.mounts} ranks: {segments} segments "
                  f"(built in {time.monotonic() - started:.0f} s)")
            if not args.no_whole_log:
                measure_whole_log(model, url, work, files, segments, rows)
            written = Lake(open_store(url, endpoint_url=model.direct)).snapshots()[-1][3]
            size = open_store(url, endpoint_url=model.direct).size(written)
            mount, row = mount_and_measure(model, url, work, "cache-snap", "fresh mount, from snapshot")
            ls_seconds, row["ls_entries"] = list_directory(mount)
            row["ls_seconds"] = round(ls_seconds, 2)
            rows.append({"files": files, "segments": segments, "snapshot_mb": round(size / 1e6, 1), **row})
            print(json.dumps(rows[-1]))
            mount.unmount()
            mount, row = mount_and_measure(model, url, work, "cache-snap", "remount, existing cache, from snapshot")
            rows.append({"files": files, "segments": segments, **row})
            print(json.dumps(rows[-1]))
            mount.unmount()
            shutil.rmtree(work, ignore_errors=True)
        print("\n| files | segments | mount | seconds | GET | LIST | requests $ | RSS MiB (peak) | ls -l s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for row in rows:
            counts = row["requests"]
            print(f"| {row['files']} | {row['segments']} | {row['what']} | {row['seconds']} | {counts.get('GET', 0)} | "
                  f"{counts.get('LIST', 0)} | {row['cost_usd']} | {row['rss_mib']} ({row['peak_rss_mib']}) | "
                  f"{row.get('ls_seconds', '')} |")
        if args.json:
            with open(args.json, "w") as file:
                json.dump(rows, file, indent=2)
    finally:
        model.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
