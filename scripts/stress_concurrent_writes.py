#!/usr/bin/env python3
"""Several writers at once on one file of a mounted ckptfs, each in its own range, compared after
every trial: threads with pwrite (write-only or read-write descriptors) beside shared mappings (one
closes its descriptor before it writes into the mapping, as numpy.memmap does).

The page that two neighbouring ranges share is where the kernel's page cache and the daemon can
disagree; the figures in fs/operations.py (direct_io beside mappings, READs racing WRITEs) come from
this script:

    python scripts/stress_concurrent_writes.py /ckpt --trials 200 --seed 1
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.writers import METHODS, write_range  # noqa: E402


def trial(path: str, rng: random.Random) -> list[int]:
    """One trial; returns the offsets of the 4 KiB pages that differ from what was written."""
    initial = rng.randbytes(rng.randint(0, 300_000))
    with open(path, "wb") as file:
        file.write(initial)
    writers = [(rng.choice(METHODS), rng.randint(1, 200_000)) for _ in range(rng.randint(2, 4))]
    size = sum(length for _, length in writers)
    expected = initial
    if len(expected) < size:
        os.truncate(path, size)
        expected += bytes(size - len(expected))
    chunks = [rng.randbytes(length) for _, length in writers]
    starts = [sum(length for _, length in writers[:index]) for index in range(len(writers))]
    barrier = threading.Barrier(len(writers))
    threads = [threading.Thread(target=write_range, args=(path, method, start, data, size, barrier))
               for (method, _), start, data in zip(writers, starts, chunks, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = b"".join(chunks) + expected[size:]
    with open(path, "rb") as file:
        seen = file.read()
    return [offset for offset in range(0, max(len(seen), len(expected)), 4096)
            if seen[offset:offset + 4096] != expected[offset:offset + 4096]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="a directory on a ckptfs mount (or any file system, to compare)")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    bad = 0
    for number in range(args.trials):
        wrong = trial(os.path.join(args.directory, f"stress-{number % 3}"), rng)
        if wrong:
            bad += 1
            print(f"trial {number}: {len(wrong)} wrong page(s) at {wrong[:5]}")
    for number in range(3):
        try:
            os.unlink(os.path.join(args.directory, f"stress-{number}"))
        except FileNotFoundError:
            pass
    print(f"{bad} of {args.trials} trials lost data")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
