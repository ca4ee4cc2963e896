#!/usr/bin/env python3
"""Warm reads: a checkpoint whose chunks are all in the local chunk cache, against the local disk.

A state dict of --size-mib is saved with torch.save to the local disk and through a mount on an
embedded lake; a second mount (its own cache dir) reads it once, which fills its chunk cache. Then,
interleaved --runs times with the page cache dropped before each: `torch.load` and a plain
sequential read (1 MiB reads) from that mount and from the local disk. Prints each figure, the
medians and the ratios to the local disk, all from this one run. Root is needed to drop caches.

    python scripts/bench_warm_read.py --size-mib 1024 --runs 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from tests.helpers import Mount  # noqa: E402


def drop_page_cache() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as file:
        file.write("3\n")


def sequential_read(path: str) -> float:
    drop_page_cache()
    started = time.monotonic()
    with open(path, "rb", buffering=0) as file:
        while file.read(1 << 20):
            pass
    return time.monotonic() - started


def load(path: str) -> float:
    drop_page_cache()
    started = time.monotonic()
    torch.load(path, weights_only=True)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="ckptfs-warm-")
    lake = f"file://{work}/lake"
    writer = Mount(lake, f"{work}/w", f"{work}/cw", f"{work}/w.log")
    reader = Mount(lake, f"{work}/r", f"{work}/cr", f"{work}/r.log")
    try:
        tensors = max(1, args.size_mib // 64)
        generator = torch.Generator().manual_seed(0)
        state = {f"layer{i}": torch.randn(16 * 1024 * 1024, generator=generator) for i in range(tensors)}
        local = f"{work}/local.pt"
        torch.save(state, local)
        writer.start()
        torch.save(state, writer.path("model.pt"))
        writer.sync()
        writer.unmount()
        del state
        reader.start()
        load(reader.path("model.pt"))  # cold: fills the chunk cache from the lake
        figures: dict[str, list[float]] = {"load ckptfs": [], "load local": [], "read ckptfs": [], "read local": []}
        for _ in range(args.runs):
            figures["load ckptfs"].append(load(reader.path("model.pt")))
            figures["load local"].append(load(local))
            figures["read ckptfs"].append(sequential_read(reader.path("model.pt")))
            figures["read local"].append(sequential_read(local))
        size = os.path.getsize(local)
        print(f"{size / 2**20:.0f} MiB state dict, {args.runs} interleaved runs, page cache dropped before each")
        for name, values in figures.items():
            print(f"  {name:12s} " + " ".join(f"{value:.2f}" for value in values)
                  + f"  median {statistics.median(values):.2f} s ({size / statistics.median(values) / 1e6:.0f} MB/s)")
        for kind in ("load", "read"):
            ratio = statistics.median(figures[f"{kind} local"]) / statistics.median(figures[f"{kind} ckptfs"])
            print(f"{kind}: ckptfs warm at {ratio:.2f}x the local disk's speed (target >= 0.8)")
    finally:
        for mount in (reader, writer):
            mount.kill()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
