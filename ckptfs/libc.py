"""The C library calls ckptfs makes through ctypes, on one handle: punching holes in staging files,
syncfs of the cache dir, memmem for the chunker, memcpy for packs, and the heap setting below.

A ctypes call lets go of the GIL for its duration, which is why memmem and memcpy are here
(lake/chunker.py, lake/packs.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
from collections.abc import Iterator

log = logging.getLogger(__name__)
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
libc.memmem.restype = ctypes.c_void_p
libc.memmem.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
libc.memcpy.restype = ctypes.c_void_p
libc.memcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_MADV_DONTNEED = 4
_PAGE = os.sysconf("SC_PAGE_SIZE")
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# Above the largest chunk (lake/chunker.py MAX_SIZE, 4 MiB, plus a frame header), below a pack
# (32 MiB): chunk buffers reuse the heap, packs are mapped and unmapped.
HEAP_MMAP_THRESHOLD = 8 * 1024 * 1024
# Twice the mmap threshold, glibc's own rule while it moves the threshold itself: free memory at the
# top of a heap up to this much is kept for the next chunk rather than given back and faulted in again.
HEAP_TRIM_THRESHOLD = 2 * HEAP_MMAP_THRESHOLD
# Heaps that threads allocate from (glibc's default: 8 per core). Each keeps up to the trim threshold
# free at its top, so what the daemon can hold beyond its live memory is arenas x 16 MiB.
HEAP_ARENAS = 2


class _Buffer(ctypes.Structure):
    """CPython's Py_buffer, to get the address of any object with the buffer protocol."""
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_Buffer), ctypes.c_int]
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_Buffer)]
_PyBUF_SIMPLE, _PyBUF_WRITABLE = 0, 1
_resize_bytearray = ctypes.pythonapi.PyByteArray_Resize
_resize_bytearray.argtypes = [ctypes.py_object, ctypes.c_ssize_t]


@contextlib.contextmanager
def buffer_of(data: object, *, writable: bool = False) -> Iterator[tuple[int, int]]:
    """(address, length) of the bytes of any object with the buffer protocol (bytes, bytearray,
    memoryview, mmap), held for the duration: a bytearray cannot be resized meanwhile."""
    view = _Buffer()
    if _get_buffer(data, ctypes.byref(view), _PyBUF_WRITABLE if writable else _PyBUF_SIMPLE) != 0:
        raise BufferError("cannot read the buffer")
    try:
        yield view.buf or 0, view.len
    finally:
        _release_buffer(ctypes.byref(view))


def copy_into(target: bytearray, pieces: list) -> int:
    """Copy the pieces (anything with the buffer protocol) one after another into `target`, resized
    to hold exactly them, with the GIL released for each copy; returns the size. A bytearray reused
    for pack after pack keeps its memory (CPython shrinks one only below half its allocation), so
    its pages are not faulted in again, and `b"".join` held the GIL for the whole copy."""
    size = sum(len(piece) for piece in pieces)
    if _resize_bytearray(target, size) != 0:
        raise MemoryError(f"cannot resize a buffer to {size} bytes")
    with buffer_of(target, writable=True) as (base, _):
        position = 0
        for piece in pieces:
            with buffer_of(piece) as (address, length):
                if length:
                    libc.memcpy(base + position, address, length)
                position += length
    return size


def release_pages(buffers: list[bytearray]) -> None:
    """Give the whole pages of big buffers back to the system (madvise MADV_DONTNEED: they read as
    zeros after), with the GIL released: a buffer above the mmap threshold is unmapped when freed, and
    freeing it unmapped its pages holding the GIL (8 packs of 32 MiB: 16-20 ms here, during which
    neither the event loop nor any other thread ran). Freed after this, it unmaps nothing (~0.01 ms)."""
    for buffer in buffers:
        with buffer_of(buffer, writable=True) as (base, length):
            start = -(-base // _PAGE) * _PAGE
            end = (base + length) // _PAGE * _PAGE
            if end > start:
                libc.madvise(start, end - start, _MADV_DONTNEED)


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Free the blocks of [offset, offset + length) of a file; the size stays and the range reads as zeros."""
    if libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"punching a hole in a staging file: {os.strerror(code)}")


def syncfs(path: str) -> None:
    """Write back everything the file system holding `path` has in memory (syncfs(2)); a failure
    is logged, not raised (it runs at a clean close)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if libc.syncfs(fd) != 0:
            log.warning("syncfs of %s failed: %s", path, os.strerror(ctypes.get_errno()))
    finally:
        os.close(fd)


def set_heap_thresholds() -> bool:
    """Keep glibc from holding on to the memory of freed packs (called once, at daemon start).

    glibc serves an allocation above its mmap threshold with its own mapping, returned to the system
    when freed, and raises the threshold to the size of every such block freed, up to 32 MiB. Once a
    32 MiB pack has been freed, packs and chunks come from the heaps of the threads that allocate
    them (the PUT workers and trio's worker threads each get one), and a heap gives memory back only
    from its top: the daemon's RSS climbed with every save, 210 to 572 MiB over 120 saves of 24 MiB
    with a 3-save rotation, and a soak measured +14% to +30% after warm-up. Setting the threshold
    stops the raising: the same run stays at 41 to 114 MiB (docs/DESIGN.md, "Memory").

    A fixed mmap threshold also leaves the trim threshold at its 128 KiB default (glibc keeps it at
    twice the mmap threshold only while it moves that itself): every chunk buffer freed at a heap's
    top was given back and the next one faulted in again, page by page. Copying 1 MiB chunks cost
    0.31 CPU s per GiB that way and 0.05 with the trim threshold at 16 MiB; it is set with the other.

    Each heap keeps that much, and glibc gives every thread that allocates while the others hold
    theirs a heap of its own, up to 8 per core: trio's worker threads come and go, each new one may
    start another heap: in a soak a daemon's RSS crept from 175 to 218 MiB in 50 minutes, the last
    30 MiB of it 22 MiB of thread heaps. The heaps are capped at two: nearly all of the
    daemon's allocations are made holding the GIL, so threads do not queue for a heap.

    MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ or MALLOC_ARENA_MAX in the environment wins for its
    setting, as glibc documents; False where the C library is not glibc (mallopt is glibc's)."""
    if not hasattr(libc, "mallopt"):
        return False
    fixed = False
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        fixed = bool(libc.mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD))
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        libc.mallopt(_M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD)
    if "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(_M_ARENA_MAX, HEAP_ARENAS)
    return fixed
