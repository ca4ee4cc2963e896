"""POSIX behaviour through a real FUSE mount."""

import ctypes
import errno
import mmap
import os
import stat
import subprocess

import pytest

from tests.helpers import read, write


def test_unlink_while_open_keeps_the_open_file_readable(mount):
    write(mount.path("f"), b"payload")
    with open(mount.path("f"), "rb") as reader:
        os.unlink(mount.path("f"))
        assert not os.path.exists(mount.path("f"))
        assert reader.read() == b"payload"
    with open(mount.path("g"), "wb") as writer:
        os.unlink(mount.path("g"))
        writer.write(b"written after unlink")
    assert os.listdir(mount.mountpoint) == []


def test_rename_over_an_existing_file_replaces_it(mount):
    write(mount.path("a"), b"new")
    write(mount.path("b"), b"old")
    os.rename(mount.path("a"), mount.path("b"))
    assert os.listdir(mount.mountpoint) == ["b"]
    assert read(mount.path("b")) == b"new"
    assert len(os.listdir(mount.path(".versions", "b"))) == 2  # old and new contents both kept


def test_rename_of_a_non_empty_directory(mount):
    os.makedirs(mount.path("tmp", "sub"))
    write(mount.path("tmp", "sub", "shard0"), b"0" * 100_000)
    write(mount.path("tmp", ".metadata.tmp"), b"meta")
    os.rename(mount.path("tmp", ".metadata.tmp"), mount.path("tmp", ".metadata"))
    os.rename(mount.path("tmp"), mount.path("step-1"))
    assert sorted(os.listdir(mount.path("step-1"))) == [".metadata", "sub"]
    assert read(mount.path("step-1", "sub", "shard0")) == b"0" * 100_000
    os.makedirs(mount.path("x", "y"))
    with pytest.raises(OSError) as error:
        os.rename(mount.path("x"), mount.path("x", "y", "z"))
    assert error.value.errno == errno.EINVAL
    os.makedirs(mount.path("full"))
    write(mount.path("full", "f"), b"")
    with pytest.raises(OSError) as error:
        os.rename(mount.path("x"), mount.path("full"))
    assert error.value.errno == errno.ENOTEMPTY


def test_sparse_write_and_append(mount):
    with open(mount.path("sparse"), "wb") as file:
        file.seek(10_000_000)
        file.write(b"end")
    data = read(mount.path("sparse"))
    assert len(data) == 10_000_003 and data[:10_000_000] == bytes(10_000_000) and data[-3:] == b"end"
    write(mount.path("sparse"), b"+more", mode="ab")
    assert read(mount.path("sparse"))[-8:] == b"end+more"


def test_truncate_up_and_down(mount):
    write(mount.path("t"), b"0123456789")
    os.truncate(mount.path("t"), 4)
    assert read(mount.path("t")) == b"0123"
    os.truncate(mount.path("t"), 8)
    assert read(mount.path("t")) == b"0123\0\0\0\0"
    with open(mount.path("t"), "r+b") as file:
        file.truncate(2)
        file.seek(0, os.SEEK_END)
        file.write(b"xy")
    assert read(mount.path("t")) == b"01xy"


def test_mmap_read(mount):
    data = os.urandom(3 * 1024 * 1024 + 17)
    write(mount.path("m"), data)
    with open(mount.path("m"), "rb") as file, mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ) as mapped:
        assert mapped[:] == data
        assert mapped[1_000_000:1_000_010] == data[1_000_000:1_000_010]


def test_write_only_handles_bypass_the_page_cache_and_readers_stay_coherent(mount):
    # Write-only handles are direct_io: their bytes must still show through a reader's open
    # handle and mapping, which do use the kernel's page cache.
    size = 2 * 1024 * 1024
    write(mount.path("c"), b"a" * size)
    with open(mount.path("c"), "rb") as reader, \
            mmap.mmap(reader.fileno(), 0, prot=mmap.PROT_READ) as mapped:
        assert reader.read() == b"a" * size and mapped[:4] == b"aaaa"
        fd = os.open(mount.path("c"), os.O_WRONLY)
        try:
            assert os.pwrite(fd, b"b" * 4096, 8192) == 4096
        finally:
            os.close(fd)
        expected = b"a" * 8192 + b"b" * 4096 + b"a" * (size - 12288)
        reader.seek(0)
        assert reader.read() == expected
        assert mapped[8192:8196] == b"bbbb"
    assert read(mount.path("c")) == expected


def test_in_place_update_of_a_closed_file_starts_a_new_version(mount):
    write(mount.path("f"), b"aaaaaaaaaa")
    with open(mount.path("f"), "r+b") as file:
        file.seek(3)
        file.write(b"XY")
    assert read(mount.path("f")) == b"aaaXYaaaaa"
    versions = sorted(os.listdir(mount.path(".versions", "f")))
    assert [read(mount.path(".versions", "f", v)) for v in versions] == [b"aaaaaaaaaa", b"aaaXYaaaaa"]


def test_symlink_chmod_chown_utime(mount):
    write(mount.path("target"), b"t")
    os.symlink("target", mount.path("link"))
    assert os.readlink(mount.path("link")) == "target"
    assert read(mount.path("link")) == b"t"
    os.chmod(mount.path("target"), 0o600)
    assert stat.S_IMODE(os.stat(mount.path("target")).st_mode) == 0o600
    os.chown(mount.path("target"), 1234, 5678)
    assert (os.stat(mount.path("target")).st_uid, os.stat(mount.path("target")).st_gid) == (1234, 5678)
    os.utime(mount.path("target"), ns=(1_000_000_000, 2_000_000_000))
    assert os.stat(mount.path("target")).st_mtime_ns == 2_000_000_000


def test_directories(mount):
    os.mkdir(mount.path("d"))
    with pytest.raises(FileExistsError):
        os.mkdir(mount.path("d"))
    write(mount.path("d", "f"), b"")
    with pytest.raises(OSError) as error:
        os.rmdir(mount.path("d"))
    assert error.value.errno == errno.ENOTEMPTY
    os.unlink(mount.path("d", "f"))
    os.rmdir(mount.path("d"))
    assert os.listdir(mount.mountpoint) == []


def test_unsupported_corners_answer_their_errno(mount):
    """The errno of each corner docs/SEMANTICS.md lists as not supported."""
    write(mount.path("f"), b"x")
    write(mount.path("g"), b"y")
    os.makedirs(mount.path("d"))
    libc = ctypes.CDLL(None, use_errno=True)
    rename_exchange = 2
    result = libc.renameat2(-100, os.fsencode(mount.path("f")), -100, os.fsencode(mount.path("g")), rename_exchange)
    assert result == -1 and ctypes.get_errno() == errno.EINVAL
    with pytest.raises(OSError) as error:
        os.setxattr(mount.path("f"), "user.note", b"v")
    assert error.value.errno in (errno.ENOTSUP, errno.EOPNOTSUPP)
    with pytest.raises(OSError) as error:
        os.getxattr(mount.path("f"), "user.note")
    assert error.value.errno == errno.ENODATA
    with pytest.raises(OSError) as error:
        os.link(mount.path("d"), mount.path("e"))
    assert error.value.errno == errno.EPERM
    assert read(mount.path("f")) == b"x" and read(mount.path("g")) == b"y"


def test_names_long_non_utf8_and_deep(mount):
    long_name = b"n" * 255
    write(os.path.join(os.fsencode(mount.mountpoint), long_name), b"long")
    with pytest.raises(OSError) as error:
        write(os.path.join(os.fsencode(mount.mountpoint), b"n" * 256), b"")
    assert error.value.errno == errno.ENAMETOOLONG
    odd = os.path.join(os.fsencode(mount.mountpoint), b"\xff\xfeodd")
    write(odd, b"odd")
    assert read(odd) == b"odd"
    deep = os.path.join(mount.mountpoint, *[f"d{i:02d}" for i in range(60)])
    os.makedirs(deep)
    write(os.path.join(deep, "leaf"), b"deep")
    assert read(os.path.join(deep, "leaf")) == b"deep"
    assert b"\xff\xfeodd" in os.listdir(os.fsencode(mount.mountpoint))


def test_versions_tree_is_hidden_and_read_only(mount):
    write(mount.path("f"), b"x")
    assert ".versions" not in os.listdir(mount.mountpoint)
    assert os.path.isdir(mount.path(".versions"))
    walked = [d for d, _, _ in os.walk(mount.mountpoint)]
    assert all(".versions" not in d for d in walked)
    for action in (lambda: write(mount.path(".versions", "new"), b""),
                   lambda: os.mkdir(mount.path(".versions", "f", "x")),
                   lambda: os.unlink(mount.path(".versions", "f", os.listdir(mount.path(".versions", "f"))[0]))):
        with pytest.raises(OSError) as error:
            action()
        assert error.value.errno == errno.EROFS
    with pytest.raises(FileExistsError):
        os.mkdir(mount.path(".versions"))


def test_deleted_paths_stay_browsable(mount):
    write(mount.path("gone"), b"bye")
    os.unlink(mount.path("gone"))
    assert not os.path.exists(mount.path("gone"))
    (version,) = os.listdir(mount.path(".versions", "gone"))
    assert read(mount.path(".versions", "gone", version)) == b"bye"


def test_statfs_and_state_xattr(mount):
    assert os.statvfs(mount.mountpoint).f_namemax == 255
    write(mount.path("f"), b"x" * 1000)
    mount.sync()
    assert os.getxattr(mount.path("f"), "user.ckptfs.state") == b"committed pending_bytes=0"


def test_a_forked_child_closing_the_file_seals_what_it_holds(mount):
    """Every close() seals, also the one a forked child makes at exec or exit while the parent
    still writes: the parent's next write starts a new version, and nothing is lost."""
    with open(mount.path("f"), "wb") as file:
        file.write(b"first half ")
        file.flush()
        subprocess.run(["true"], check=True)  # fork + exec closes the inherited descriptor: a FLUSH
        file.write(b"second half")
    assert read(mount.path("f")) == b"first half second half"
    assert len(os.listdir(mount.path(".versions", "f"))) == 2
