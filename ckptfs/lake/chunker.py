"""Content-defined chunking (FastCDC) of file contents, with cuts at the records of torch.save files.

The cut points are part of the lake format: a silent change of parameters would stop new versions from
deduplicating against every version already stored, so the parameters are fixed per profile and pinned
by golden tests. A lake records its profile in its descriptor and every mount of it cuts with that one.

Profile 1 is plain FastCDC. Profile 2 also cuts where a zip local file header starts ("PK\\x03\\x04"),
unless another one starts in the MIN_SIZE bytes before it. torch.save writes a zip with one record per
tensor, so every tensor of at least MIN_SIZE starts a chunk: a changed tensor no longer drags the end
of its neighbour into new chunks (docs/DESIGN.md, "Chunk size"). The rule looks only at the bytes
around the header, so it stays content-defined: an inserted or removed byte moves cuts only nearby.

Profile 3 also cuts where the data of every record starts (after the header's name and extra
field), whatever its size: a small tensor is then a small chunk of its own. torch.save names every
record after the file ("last/data/0"), so the same state dict saved under another name (what
Lightning does at every save) differed in every chunk that held a header; now only the small header
chunks differ and every tensor's chunks dedup.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyfastcdc

from ckptfs.libc import buffer_of, libc

# FastCDC parameters, chosen by scripts/measure_chunking.py: a mean chunk of ~1 MiB keeps S3 requests
# large enough for throughput while a changed tensor drags in little of its neighbours.
MIN_SIZE = 256 * 1024
AVG_SIZE = 1024 * 1024
MAX_SIZE = 4 * 1024 * 1024
PROFILES = (1, 2, 3)
PROFILE = 3  # what a new lake is created with
RECORD_MAGIC = b"PK\x03\x04"
RECORD_HEADER = 30  # a zip local file header's fixed part; name and extra field lengths at 26 and 28
# Bytes before a record boundary that decide whether it is one: cutting from an offset other than the
# start of the file needs this much of what precedes it (see Chunker.cut).
LOOKBACK = MIN_SIZE


Searchable = bytes | bytearray | mmap.mmap


@dataclass(frozen=True)
class Cut:
    offset: int
    length: int
    # The chunk's content id, when whoever cut it also hashed it (engine/uploader.py: the thread
    # that cuts a sealed file hashes each chunk while its bytes are at hand); not part of equality.
    identifier: bytes | None = field(default=None, compare=False)


class Chunker:
    """Cuts bytes into chunks under one profile. One instance per thread (pyfastcdc is not thread-safe)."""

    def __init__(self, profile: int = PROFILE) -> None:
        if profile not in PROFILES:
            raise ValueError(f"unknown chunking profile {profile}")
        self.profile = profile
        self._fastcdc = pyfastcdc.FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE)

    def cut(self, data: Searchable, skip: int = 0, end: int | None = None) -> Iterator[Cut]:
        """Yield the cuts of data[skip:end], with offsets into `data`; their lengths add up to end - skip.

        The `skip` bytes before the start (LOOKBACK of them suffice) let a cut from the middle of a
        file find the cuts that cutting the whole file finds, when the start is one of its cuts.
        `data` is bytes, a bytearray or an mmap: anything with find() and the buffer protocol.
        """
        end = len(data) if end is None else end
        if end <= skip:
            return
        segment_start = skip
        ends: list[int] = []
        if self.profile >= 2:  # one search for the headers serves both rules (it is a third of the cut's time)
            heads = list(_occurrences(data, RECORD_MAGIC, max(0, skip - LOOKBACK), end))
            ends = record_boundaries(data, skip, end, heads)
            if self.profile >= 3:
                ends = _with_payload_starts(data, ends, skip, end, heads)
        with memoryview(data) as view:
            for segment_end in [*ends, end]:
                with view[segment_start:segment_end] as segment:
                    for chunk in self._fastcdc.cut_buf(segment):
                        yield Cut(segment_start + chunk.offset, chunk.length)
                segment_start = segment_end


def record_boundaries(data: Searchable, skip: int, end: int, heads: list[int] | None = None) -> list[int]:
    """Offsets in (skip, end) where a zip record header starts, with no other one starting in the
    LOOKBACK bytes before it. Headers that do not fit before `end` are not seen. `heads`: where the
    header magic starts in [skip - LOOKBACK, end), if the caller has searched already."""
    if heads is None:
        heads = list(_occurrences(data, RECORD_MAGIC, max(0, skip - LOOKBACK), end))
    boundaries = []
    before = [found for found in heads if found < skip]
    previous = before[-1] if before else -1
    for found in heads[len(before):]:
        if found > skip and (previous == -1 or found - previous > LOOKBACK):
            boundaries.append(found)
        previous = found
    return boundaries


def payload_start(data: Searchable, header: int, end: int) -> int | None:
    """Where the data of the zip record whose header starts at `header` begins, if before `end`."""
    if header + RECORD_HEADER > end:
        return None
    name_length = int.from_bytes(data[header + 26:header + 28], "little")
    extra_length = int.from_bytes(data[header + 28:header + 30], "little")
    start = header + RECORD_HEADER + name_length + extra_length
    return start if start < end else None


def _with_payload_starts(data: Searchable, boundaries: list[int], skip: int, end: int, heads: list[int]) -> list[int]:
    """The boundaries and the payload start of every record header (`heads`: where one starts in
    [skip - LOOKBACK, end)), all in (skip, end). A payload starts at most 30 + 2 * 65535 bytes after
    its header, well within LOOKBACK: cutting from `skip` sees every header whose payload starts after it."""
    cuts = set(boundaries)
    for head in heads:
        start = payload_start(data, head, end)
        if start is not None and start > skip:
            cuts.add(start)
    return sorted(cuts)


# The search runs in libc's memmem through ctypes (ckptfs/libc.py), which lets go of the GIL for the
# call. bytes.find holds it: beside a thread searching with it, a loop of 1 MiB pwrites (the FUSE write path) took
# 2.2-2.5 s per GiB instead of 0.26 s, whatever the size of the pieces searched; beside memmem, 0.24 s.


def _occurrences(data: Searchable, needle: bytes, start: int, end: int) -> Iterator[int]:
    """Every offset in [start, end - len(needle)] where `needle` starts in `data`."""
    end = min(end, len(data))
    with buffer_of(data) as (base, _):
        position = start
        while end - position >= len(needle):
            hit = libc.memmem(base + position, end - position, needle, len(needle))
            if not hit:
                return
            yield hit - base
            position = hit - base + 1
