"""The daemon's heap gives freed packs back to the system and keeps freed chunk buffers for the next
chunk (ckptfs/libc.py set_heap_thresholds)."""

import subprocess
import sys

PROBE = """
import sys
from ckptfs.libc import set_heap_thresholds
if sys.argv[1] == "fixed":
    assert set_heap_thresholds()

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096

pins = []
pack = bytearray(32 << 20)  # a pack, freed: glibc raises its threshold to 32 MiB unless it is fixed
del pack
before = rss()
for _ in range(4):
    big = bytearray(16 << 20)  # a 16 MiB buffer, then a small block allocated after it that stays
    pins.append(bytearray(100_000))
    del big
print((rss() - before) >> 20)
"""


FAULTS = """
import ctypes, resource, sys
if sys.argv[1] == "fixed":
    from ckptfs.libc import set_heap_thresholds
    assert set_heap_thresholds()
else:  # the mmap threshold alone: the trim threshold stays at 128 KiB (no other import: a hole
    ctypes.CDLL(None).mallopt(-3, 8 << 20)  # an import's garbage leaves in the heap takes the chunk)

source = memoryview(bytes(range(256)) * 4096)  # 1 MiB
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(64):
    chunk = bytes(source)  # a chunk's copy, freed at the top of the heap
    del chunk
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(program: str, mode: str) -> int:
    env = {"PATH": "/usr/bin:/bin"}  # no MALLOC_*_THRESHOLD_ from the caller's environment
    return int(subprocess.run([sys.executable, "-c", program, mode], env=env, check=True, capture_output=True,
                              text=True).stdout)


def _retained_mib(mode: str) -> int:
    return _probe(PROBE, mode)


def test_a_buffer_freed_after_a_pack_goes_back_to_the_system():
    # The probe shows the retention it guards against (16 MiB pinned below a small block) and that
    # the fixed threshold removes it; if glibc changes its default the first assertion says so.
    assert _retained_mib("default") >= 16
    assert _retained_mib("fixed") <= 1


def test_a_chunk_buffer_freed_at_the_top_of_the_heap_is_kept_for_the_next():
    # 64 copies of 1 MiB (256 pages each): with only the mmap threshold fixed, each freed copy was
    # trimmed off the heap and the next faulted in again, page by page.
    pages = 256
    assert _probe(FAULTS, "mmap-only") >= 32 * pages
    assert _probe(FAULTS, "fixed") <= 2 * pages


HEAPS = """
import ctypes, os, sys, tempfile, threading
from ckptfs.libc import libc, set_heap_thresholds
assert set_heap_thresholds()

all_hold = threading.Barrier(8)

def worker():
    held = [b"x" * (1 << 20) for _ in range(4)]  # chunk buffers, all threads at once
    all_hold.wait()
    del held

threads = [threading.Thread(target=worker) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
with tempfile.NamedTemporaryFile() as report:
    stream = libc.fopen(report.name.encode(), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    print(open(report.name).read().count("<heap nr="))
"""


def _heaps(arena_max: str | None) -> int:
    env = {"PATH": "/usr/bin:/bin"}
    if arena_max is not None:
        env["MALLOC_ARENA_MAX"] = arena_max  # wins over the daemon's own setting
    return int(subprocess.run([sys.executable, "-c", HEAPS], env=env, check=True, capture_output=True,
                              text=True).stdout)


def test_threads_that_allocate_at_once_share_two_heaps():
    # Each heap keeps up to the trim threshold (16 MiB) free at its top, and glibc gives a thread that
    # allocates while the others hold theirs a heap of its own (up to 8 per core): the daemon's worker
    # threads come and go and the heaps, each keeping its 16 MiB, crept up over a soak.
    assert _heaps("64") >= 8  # the main thread's heap and one per worker thread
    assert _heaps(None) <= 2


RELEASE = """
from ckptfs.libc import copy_into, release_pages, set_heap_thresholds
assert set_heap_thresholds()

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096

packs = [bytearray() for _ in range(2)]
for pack in packs:
    copy_into(pack, [b"x" * (1 << 20)] * 32)  # a 32 MiB pack, every page touched
before = rss()
release_pages(packs)
after = rss()
# the whole pages in them read as zeros now (the first and last may be partly outside the buffer)
assert all(len(pack) == 32 << 20 and pack.count(0) >= len(pack) - 2 * 4096 for pack in packs)
print((before - after) >> 20)
"""


def test_pack_buffers_give_their_pages_back_before_they_are_freed():
    # What the uploader does with its pack buffers once no upload runs (engine/chunks.py), in a
    # thread, with the GIL released: the pages go, so freeing the buffers after unmaps nothing.
    assert _probe(RELEASE, "fixed") >= 60
