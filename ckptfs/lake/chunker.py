"""Content-defined chunking (FastCDC) of file contents.

The cut points are part of the lake format: a silent change of parameters would stop new versions from
deduplicating against every version already stored, so the parameters are fixed per format version and
pinned by golden tests. Never change them without bumping the chunking profile in the lake descriptor.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyfastcdc

# Profile 1, chosen by scripts/measure_chunking.py (docs/DESIGN.md, "Chunk size"): a mean chunk of
# ~1.2 MiB keeps S3 requests large enough for throughput, while a changed 4 MiB tensor drags in little
# of its neighbours (13% new bytes for a 10% change, against 21% at a 2.4 MiB mean).
MIN_SIZE = 256 * 1024
AVG_SIZE = 1024 * 1024
MAX_SIZE = 4 * 1024 * 1024
PROFILE = 1


@dataclass(frozen=True)
class Cut:
    offset: int
    length: int


class Chunker:
    """Cuts bytes into content-defined chunks. One instance per thread (pyfastcdc is not thread-safe)."""

    def __init__(self, min_size: int = MIN_SIZE, avg_size: int = AVG_SIZE, max_size: int = MAX_SIZE) -> None:
        self._fastcdc = pyfastcdc.FastCDC(avg_size, min_size=min_size, max_size=max_size)

    def cut(self, data: bytes | bytearray | memoryview) -> Iterator[Cut]:
        """Yield the cut points of `data`; the lengths add up to len(data); no chunk for empty data."""
        if len(data) == 0:
            return
        for chunk in self._fastcdc.cut_buf(data):
            yield Cut(chunk.offset, chunk.length)
