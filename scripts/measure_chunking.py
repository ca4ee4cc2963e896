#!/usr/bin/env python3
"""Measure how chunk-size parameters trade dedup against object count on torch.save output.

Saves a 160 MiB state dict (40 x 4 MiB fp32 tensors), then a second one where every tenth tensor
changed and the pickled step counter grew a digit, and prints for each FastCDC parameter set, then for
each ckptfs chunking profile, the new bytes the second save adds and the mean chunk size. This is the
measurement behind the chunking profiles.
"""

import io

import pyfastcdc
import torch
import xxhash

from ckptfs.lake.chunker import PROFILES, Chunker


def saved(sd: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(sd, buffer)
    return buffer.getvalue()


def chunks(data: bytes, minimum: int, average: int, maximum: int) -> list[tuple[bytes, int]]:
    cutter = pyfastcdc.FastCDC(average, min_size=minimum, max_size=maximum)
    return [(xxhash.xxh3_128_digest(c.data), c.length) for c in cutter.cut_buf(data)]


def main() -> None:
    generator = torch.Generator().manual_seed(2)
    sd = {f"layer{i}.weight": torch.randn(1024 * 1024, generator=generator) for i in range(40)}
    changed = dict(sd)
    for key in list(sd)[::10]:
        changed[key] = torch.randn(1024 * 1024, generator=generator)
    first = saved({"step": 1000, **sd})
    second = saved({"step": 10000, "note": "x" * 17, **changed})
    print(f"logical size {len(second) / 2**20:.1f} MiB; truly changed: 10% of tensor bytes")
    print(f"{'min':>6} {'avg':>6} {'max':>6} {'mean chunk':>11} {'chunks':>7} {'new bytes':>10}")
    for minimum, average, maximum in [(128, 512, 2048), (256, 768, 4096), (256, 1024, 4096),
                                      (512, 1024, 4096), (512, 2048, 8192), (1024, 4096, 16384)]:
        kib = 1024
        known = {identifier for identifier, _ in chunks(first, minimum * kib, average * kib, maximum * kib)}
        second_chunks = chunks(second, minimum * kib, average * kib, maximum * kib)
        new = sum(length for identifier, length in second_chunks if identifier not in known)
        mean = len(second) / len(second_chunks)
        print(f"{minimum:>5}K {average:>5}K {maximum:>5}K {mean / 2**20:>9.2f}Mi {len(second_chunks):>7} "
              f"{new / len(second):>9.1%}")
    for profile in PROFILES:
        known = {xxhash.xxh3_128_digest(first[c.offset:c.offset + c.length]) for c in Chunker(profile).cut(first)}
        second_cuts = list(Chunker(profile).cut(second))
        new = sum(c.length for c in second_cuts
                  if xxhash.xxh3_128_digest(second[c.offset:c.offset + c.length]) not in known)
        print(f"ckptfs chunking profile {profile}: mean chunk {len(second) / len(second_cuts) / 2**20:.2f} MiB, "
              f"{len(second_cuts)} chunks, {new / len(second):.1%} new bytes")


if __name__ == "__main__":
    main()
