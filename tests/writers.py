"""Writers of one range of a file, in each way a training job writes: pwrite through a write-only or
a read-write descriptor, a shared mapping, and a shared mapping whose descriptor is closed before
the mapping is written (as numpy.memmap does). Used by the concurrent model test and by
scripts/stress_concurrent_writes.py."""

from __future__ import annotations

import mmap
import os
import threading

METHODS = ("pwrite", "pwrite-rdwr", "mmap", "mmap-after-close")


def write_range(path: str, method: str, start: int, data: bytes, size: int, barrier: threading.Barrier) -> None:
    """Write `data` at `start` of the file at `path` (at least `size` bytes long), starting together
    with the other writers at `barrier`."""
    fd = os.open(path, os.O_WRONLY if method == "pwrite" else os.O_RDWR)
    barrier.wait()
    if method.startswith("pwrite"):
        for offset in range(0, len(data), 65536):
            os.pwrite(fd, data[offset:offset + 65536], start + offset)
        os.close(fd)
        return
    mapped = mmap.mmap(fd, size)
    if method == "mmap-after-close":
        os.close(fd)
    mapped[start:start + len(data)] = data
    mapped.flush()
    mapped.close()
    if method == "mmap":
        os.close(fd)
