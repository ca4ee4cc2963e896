#!/usr/bin/env python3
"""Garbage collection's cost, and what it does to a save running at the same time.

    python scripts/bench_gc.py [--chunks 10000 1000000] [--size-mib 256] [--repeat 3] [--skip-synthetic]

1. **Bounded and linear.** A synthetic lake in a local directory with N chunks in 32-chunk packs
   (~1 MiB chunks: 1M chunks is the metadata of ~1 TiB of unique data; pack objects are stubs, since
   GC never reads a pack), 1,000 chunks per manifest, 5 versions per path, a keep-last 4 policy
   (80% of the versions kept, so GC reads 80% of the manifests; 20% collectable). `ckptfs gc` runs
   twice a grace apart (the lake's gc_grace_s is 2 s): the first run marks, the second deletes.
   Each run's wall time and peak RSS (its own process, from wait4) are printed, with microseconds
   per chunk.
2. **Saves during a GC.** On the S3 model (tests/s3model.py: moto behind a proxy with S3's first-byte
   latency and per-connection bandwidth), a mount saves a `--size-mib` state dict, alternating runs
   without GC and runs with `ckptfs gc` looping on the same lake (which holds 40 superseded versions
   for it to mark and delete), and prints the save stall (torch.save) and the time until the save
   is durable (published in the lake), medians of `--repeat`, and their ratios within this run.
Figures, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from ckptfs.cli import progress_of  # noqa: E402
from ckptfs.lake import Lake  # noqa: E402
from ckptfs.lake.manifest import Manifest, encode_path  # noqa: E402
from ckptfs.lake.packs import Location, pack_key  # noqa: E402
from ckptfs.lake.retention import Policy  # noqa: E402
from ckptfs.store.localdir import LocalDirStore  # noqa: E402

MIB = 1 << 20
CHUNKS_PER_PACK = 32
CHUNKS_PER_MANIFEST = 1000
VERSIONS_PER_PATH = 5


def build_synthetic(root: str, chunks: int) -> dict:
    store = LocalDirStore(root)
    lake = Lake(store)
    lake.open(settings={"gc_grace_s": 2, "max_clock_skew_s": 0, "late_publish_s": 0, "fold_s": 0})
    packs = [os.urandom(16) for _ in range((chunks + CHUNKS_PER_PACK - 1) // CHUNKS_PER_PACK)]
    for pack in packs:
        store.put(pack_key(pack), b"stub")
    versions = max(VERSIONS_PER_PATH, chunks // CHUNKS_PER_MANIFEST)
    events, seq, mount, now = [], 0, "b" * 16, time.time_ns() - 10**12
    for version in range(versions):
        first = version * chunks // versions
        last = (version + 1) * chunks // versions
        identifiers = [os.urandom(16) for _ in range(last - first)]
        locations = [Location(packs[index // CHUNKS_PER_PACK], (index % CHUNKS_PER_PACK) * MIB, MIB + 32)
                     for index in range(first, last)]
        path = f"run/file-{version // VERSIONS_PER_PATH}.pt".encode()
        manifest_id = lake.put_manifest(Manifest(path=path, size=len(identifiers) * MIB, mode=0o644,
                                                 mtime_ns=now + version, mount=mount, time_ns=now + version,
                                                 chunks=[(identifier, MIB) for identifier in identifiers],
                                                 locations=locations))
        events.append({"op": "put", "path": encode_path(path), "time_ns": now + version, "manifest": manifest_id,
                       "size": len(identifiers) * MIB, "mode": 0o644, "mtime_ns": now + version})
        if len(events) == 100 or version == versions - 1:
            lake.append_log(mount, seq, events, now + version)
            seq, events = seq + 1, []
    lake.register_mount(mount)
    lake.set_retention(b"", Policy(keep_last=VERSIONS_PER_PATH - 1))
    old = time.time() - 3600
    for directory, _, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(directory, name), (old, old))
    return {"chunks": chunks, "packs": len(packs), "manifests": versions}


def run_gc(url: str) -> tuple[float, float, dict]:
    """Wall seconds, peak RSS MiB of the gc process alone, its report."""
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "ckptfs", "gc", url, "--json"], stdout=subprocess.PIPE)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"gc exited {process.returncode}")
    return time.monotonic() - started, usage.ru_maxrss / 1024, json.loads(out)


def synthetic(sizes: list[int]) -> None:
    print("| chunks | packs | manifests | run | seconds | peak RSS MiB | µs per chunk | marked | deleted |")
    print("|---|---|---|---|---|---|---|---|---|")
    for chunks in sizes:
        root = tempfile.mkdtemp(prefix="ckptfs-gc-bench-")
        try:
            built = build_synthetic(root, chunks)
            for run in ("mark", "sweep"):
                seconds, rss, report = run_gc(f"file://{root}")
                print(f"| {chunks:,} | {built['packs']:,} | {built['manifests']:,} | {run} | {seconds:.1f} | "
                      f"{rss:.0f} | {seconds / chunks * 1e6:.1f} | {report['marked']['objects']:,} | "
                      f"{report['deleted']['objects']:,} |", flush=True)
                time.sleep(2.5)  # the grace
        finally:
            shutil.rmtree(root)


def saves_during_gc(size_mib: int, repeat: int) -> None:
    import torch

    from tests.helpers import Mount
    from tests.s3model import S3Model

    model = S3Model()
    root = tempfile.mkdtemp(prefix="ckptfs-gc-save-")
    mountpoint, mount = os.path.join(root, "mnt"), None
    try:
        url = f"s3://{model.bucket()}/lake"
        mount = Mount(url, mountpoint, os.path.join(root, "cache"), os.path.join(root, "daemon.log"),
                      extra=["--endpoint-url", model.endpoint, "--lake-setting", "gc_grace_s=2",
                             "--lake-setting", "max_clock_skew_s=0"]).start()
        time.sleep(0.5)

        def durable(path: str) -> None:
            barrier = json.loads(os.getxattr(path, "user.ckptfs.barrier"))["upto"]
            while progress_of(mountpoint, after=barrier)["outbox_head"] <= barrier:
                pass

        for _ in range(40):  # superseded versions for GC to mark and delete
            torch.save({"w": torch.randn(256, 1024)}, os.path.join(mountpoint, "old.pt"))
        durable(os.path.join(mountpoint, "old.pt"))
        subprocess.run([sys.executable, "-m", "ckptfs", "retention", "set", mountpoint, "--keep-last", "1"],
                       check=True, capture_output=True)
        figures: dict[str, dict[str, list[float]]] = {"without gc": {"stall": [], "durable": []},
                                                      "during gc": {"stall": [], "durable": []}}
        gc_runs = [0]
        for trial in range(repeat * 2):
            kind = "during gc" if trial % 2 else "without gc"
            stop = threading.Event()

            def loop(stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    subprocess.run([sys.executable, "-m", "ckptfs", "gc", url, "--endpoint-url", model.endpoint],
                                   capture_output=True)
                    gc_runs[0] += 1

            runner = threading.Thread(target=loop)
            if kind == "during gc":
                runner.start()
                time.sleep(1.0)  # GC is under way before the save starts
            state = {f"t{index}": torch.randn(size_mib * MIB // 4 // 16) for index in range(16)}
            path = os.path.join(mountpoint, f"ckpt-{trial}.pt")
            started = time.monotonic()
            torch.save(state, path)
            stalled = time.monotonic() - started
            durable(path)
            figures[kind]["stall"].append(stalled)
            figures[kind]["durable"].append(time.monotonic() - started)
            stop.set()
            if runner.is_alive():
                runner.join()
        print(f"\nsaves of {size_mib} MiB on the S3 model, {repeat} each, interleaved; {gc_runs[0]} gc runs "
              "during the saves")
        print("| | save stall s (min/median/max) | time to durable s (min/median/max) |")
        print("|---|---|---|")
        for kind, values in figures.items():
            print(f"| {kind} | " + " | ".join(
                f"{min(v):.2f} / {statistics.median(v):.2f} / {max(v):.2f}"
                for v in (values["stall"], values["durable"])) + " |")
        for figure in ("stall", "durable"):
            ratio = statistics.median(figures["during gc"][figure]) / statistics.median(figures["without gc"][figure])
            print(f"{figure} during gc / without: {ratio:.2f}x")
    finally:
        if mount is not None:
            mount.unmount()
        model.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--skip-saves", action="store_true")
    args = parser.parse_args()
    if not args.skip_synthetic:
        synthetic(args.chunks)
    if not args.skip_saves:
        saves_during_gc(args.size_mib, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
