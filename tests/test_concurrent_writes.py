"""Every byte written through any path reads back and is committed exactly, with the kernel sending
requests concurrently: writable shared mappings (numpy.memmap, mmap from two processes), pwrite from
threads into a sealed file (copy-on-write), posix_fallocate and copy_file_range."""

import errno
import mmap
import multiprocessing
import os
import shutil
import threading

import numpy as np
import pytest

from ckptfs.libc import punch_hole
from tests.helpers import read

MiB = 1 << 20


def versions_of(mount, name) -> list[str]:
    return sorted(os.listdir(mount.path(".versions", name)))


def assert_nothing_left_open(mount):
    status = mount.status_when_closed()
    assert status["dirty_files"] == 0, status
    assert status["dirty_bytes"] == 0, status


def assert_committed_and_rebuilt(mount, mounter, expected: dict[str, bytes]):
    """After sync, a fresh mount (empty cache dir, rebuilt from the lake) reads the same bytes."""
    mount.sync()
    for name in expected:
        assert os.getxattr(mount.path(name), "user.ckptfs.state").startswith(b"committed"), name
    fresh = mounter(mount.store_url, cache="rebuilt-cache", name="rebuilt")
    for name, data in expected.items():
        assert read(fresh.path(name)) == data, name
    fresh.unmount()


def test_numpy_memmap_new_file_and_update_in_place(mount, mounter):
    count = 4 << 20  # 16 MiB of float32
    values = np.arange(count, dtype=np.float32)
    mapped = np.memmap(mount.path("x.npy"), dtype=np.float32, mode="w+", shape=(count,))
    mapped[:] = values
    mapped.flush()
    del mapped
    assert np.array_equal(np.fromfile(mount.path("x.npy"), dtype=np.float32), values)
    # numpy writes the last byte and closes its descriptor (a version of zeros), then the mapping's
    # write-back arrives on the handle the mapping keeps: a second version, sealed at its release.
    assert len(versions_of(mount, "x.npy")) == 2

    mapped = np.memmap(mount.path("x.npy"), dtype=np.float32, mode="r+", shape=(count,))
    mapped[::3] = -1
    mapped.flush()
    del mapped
    values[::3] = -1
    assert np.array_equal(np.fromfile(mount.path("x.npy"), dtype=np.float32), values)
    assert len(versions_of(mount, "x.npy")) == 3
    assert_nothing_left_open(mount)
    assert_committed_and_rebuilt(mount, mounter, {"x.npy": values.tobytes()})
    mount.assert_clean_log()


def test_msync_makes_mapped_writes_visible_to_other_descriptors_before_unmap(mount):
    size = 8 * MiB
    with open(mount.path("m"), "wb") as file:
        file.truncate(size)
    with open(mount.path("m"), "r+b") as file, mmap.mmap(file.fileno(), size) as mapped:
        for offset in range(0, size, MiB):
            mapped[offset:offset + MiB] = bytes([offset // MiB + 1]) * MiB
        mapped.flush()
        assert read(mount.path("m")) == b"".join(bytes([i + 1]) * MiB for i in range(8))
    assert read(mount.path("m")) == b"".join(bytes([i + 1]) * MiB for i in range(8))
    assert_nothing_left_open(mount)


def _write_half(path: str, half: int, size: int, ready, go) -> None:
    with open(path, "r+b") as file, mmap.mmap(file.fileno(), size) as mapped:
        ready.set()
        go.wait(10)
        start = half * size // 2
        for offset in range(start, start + size // 2, 4096):
            mapped[offset:offset + 4096] = bytes([half + 1]) * 4096
        mapped.flush()


def test_one_file_mapped_by_two_processes(mount, mounter):
    size = 16 * MiB
    with open(mount.path("shared"), "wb") as file:
        file.write(b"\xee" * size)
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    readies = [context.Event() for _ in range(2)]
    workers = [context.Process(target=_write_half, args=(mount.path("shared"), half, size, readies[half], go))
               for half in range(2)]
    for worker in workers:
        worker.start()
    for ready in readies:
        assert ready.wait(30)
    go.set()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    expected = b"\x01" * (size // 2) + b"\x02" * (size // 2)
    assert read(mount.path("shared")) == expected
    assert_nothing_left_open(mount)
    assert_committed_and_rebuilt(mount, mounter, {"shared": expected})


def test_pwrite_from_threads_into_a_sealed_file_starts_one_version(mount, mounter):
    # Every thread's first write finds the version sealed: exactly one copy-on-write must happen.
    size = 32 * MiB
    with open(mount.path("f"), "wb") as file:
        file.write(b"\x00" * size)
    fd = os.open(mount.path("f"), os.O_WRONLY)
    barrier = threading.Barrier(8)

    def worker(index: int) -> None:
        barrier.wait()
        for offset in range(index * MiB, size, 8 * MiB):
            assert os.pwrite(fd, bytes([index + 1]) * MiB, offset) == MiB

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    os.close(fd)
    expected = b"".join(bytes([block % 8 + 1]) * MiB for block in range(32))
    assert read(mount.path("f")) == expected
    assert len(versions_of(mount, "f")) == 2
    assert_nothing_left_open(mount)
    assert_committed_and_rebuilt(mount, mounter, {"f": expected})


def test_posix_fallocate_extends_and_keeps_content(mount):
    with open(mount.path("g"), "wb") as file:
        file.write(b"head")
    fd = os.open(mount.path("g"), os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, 3 * MiB + 5)
    finally:
        os.close(fd)
    data = read(mount.path("g"))
    assert len(data) == 3 * MiB + 5
    assert data[:4] == b"head" and data[4:] == bytes(len(data) - 4)
    fd = os.open(mount.path("g"), os.O_RDWR)
    try:
        # Modes other than plain allocation are not supported (docs/SEMANTICS.md).
        with pytest.raises(OSError) as error:
            punch_hole(fd, 0, 4096)
        assert error.value.errno == errno.EOPNOTSUPP
    finally:
        os.close(fd)
    assert read(mount.path("g")) == data
    assert_nothing_left_open(mount)


def _copy_file_range(source: str, target: str) -> None:
    with open(source, "rb") as src, open(target, "wb") as dst:
        left = os.fstat(src.fileno()).st_size
        while left:
            done = os.copy_file_range(src.fileno(), dst.fileno(), left)
            assert done > 0
            left -= done


def test_copy_file_range_within_the_mount_and_sendfile_from_outside(mount, tmp_path):
    payload = os.urandom(5 * MiB + 123)
    (tmp_path / "outside").write_bytes(payload)
    with open(mount.path("a"), "wb") as file:
        file.write(payload[::-1])
    _copy_file_range(mount.path("a"), mount.path("c"))
    assert read(mount.path("c")) == payload[::-1]
    # Between two file systems the kernel answers EXDEV, as for any pair without a shared copy
    # method; cp and shutil then fall back to sendfile or read/write.
    with pytest.raises(OSError) as error:
        _copy_file_range(str(tmp_path / "outside"), mount.path("b"))
    assert error.value.errno == errno.EXDEV
    shutil.copyfile(tmp_path / "outside", mount.path("b"))
    assert read(mount.path("b")) == payload
    assert_nothing_left_open(mount)
