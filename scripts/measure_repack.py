#!/usr/bin/env python3
"""Choose GC's repack threshold: what each threshold stores and copies over a long run.

    python scripts/measure_repack.py [--saves 300] [--chunks 256] [--changed 0.1 0.3] [--keep 3]

A simulation of the lake's packs (no store): a checkpoint of --chunks chunks of 1 MiB is saved
--saves times; each save changes a random --changed share of its chunks (a fine-tune with frozen
layers, an embedding table updated sparsely, an optimizer state) and the new chunks go into packs of
32; retention keeps the last --keep versions; GC runs after every save and repacks every pack whose
live share is below the threshold (the copies go into new packs). Printed per threshold: the lake's
stored bytes against the live bytes (mean and end of run), and the bytes GC copied against the bytes
the saves wrote (write amplification). The same dead/live arithmetic as lake/gc.py, without the grace.
"""

from __future__ import annotations

import argparse
import random
import statistics

PACK = 32


def simulate(saves: int, chunks: int, changed: float, keep: int, threshold: float, seed: int = 1) -> dict:
    rng = random.Random(seed)
    version = list(range(chunks))  # chunk ids of the current checkpoint
    next_id = chunks
    where: dict[int, int] = {}  # chunk -> pack
    members: dict[int, set[int]] = {}  # pack -> chunks stored in it
    next_pack = 0

    def store(new: list[int]) -> None:
        nonlocal next_pack
        for first in range(0, len(new), PACK):
            members[next_pack] = set(new[first:first + PACK])
            for chunk in members[next_pack]:
                where[chunk] = next_pack
            next_pack += 1

    store(version)
    kept = [list(version)]
    written = copied = 0
    ratios = []
    for _ in range(saves):
        version = list(version)
        fresh = []
        for index in rng.sample(range(chunks), int(chunks * changed)):
            version[index] = next_id
            fresh.append(next_id)
            next_id += 1
        store(fresh)
        written += len(fresh)
        kept = (kept + [version])[-keep:]
        live = {chunk for kept_version in kept for chunk in kept_version}
        for pack in list(members):  # GC: drop dead packs, repack mostly dead ones
            alive = members[pack] & live
            if not alive:
                del members[pack]
            elif len(alive) < threshold * len(members[pack]):
                del members[pack]
                store(sorted(alive))
                copied += len(alive)
        stored = sum(len(chunks_in) for chunks_in in members.values())
        ratios.append(stored / len(live))
    return {"stored_over_live_mean": statistics.mean(ratios), "stored_over_live_end": ratios[-1],
            "copied_over_written": copied / written}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saves", type=int, default=300)
    parser.add_argument("--chunks", type=int, default=256)
    parser.add_argument("--changed", type=float, nargs="+", default=[0.05, 0.1, 0.3])
    parser.add_argument("--keep", type=int, default=3)
    args = parser.parse_args()
    print(f"{args.saves} saves of {args.chunks} chunks, keep-last {args.keep}, packs of {PACK} chunks")
    print("| changed per save | threshold | stored / live (mean) | stored / live (end) | copied / written |")
    print("|---|---|---|---|---|")
    for changed in args.changed:
        for threshold in (0.0, 0.25, 0.5, 0.75, 0.9):
            figures = simulate(args.saves, args.chunks, changed, args.keep, threshold)
            print(f"| {changed:.0%} | {threshold:.2f} | {figures['stored_over_live_mean']:.2f} | "
                  f"{figures['stored_over_live_end']:.2f} | {figures['copied_over_written']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
