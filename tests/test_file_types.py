"""Every file type, hard links, owners, modes and times: on the mount, and kept in the lake (a mount
rebuilt from the lake alone shows the same)."""

import os
import socket
import stat
import subprocess

import pytest

from tests.helpers import read, write


def rebuilt(mount, mounter, name="rebuilt"):
    """A fresh mount of the same lake (empty cache dir) once everything is published."""
    mount.sync()
    return mounter(mount.store_url, cache=f"{name}-cache", name=name)


def test_fifo_socket_and_device_nodes_are_kept(mount, mounter):
    os.mkfifo(mount.path("fifo"), 0o640)
    os.mknod(mount.path("char"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(mount.path("block"), 0o640 | stat.S_IFBLK, os.makedev(7, 0))
    os.mknod(mount.path("plain"), 0o644 | stat.S_IFREG)
    server = socket.socket(socket.AF_UNIX)
    server.bind(mount.path("sock"))
    server.listen()
    client = socket.socket(socket.AF_UNIX)
    client.connect(mount.path("sock"))  # a socket bound on the mount is usable
    client.close()
    server.close()
    # nodev: a device node from the lake opens nothing on this node.
    with pytest.raises(PermissionError):
        open(mount.path("char"), "rb")
    expected = {"fifo": (stat.S_IFIFO, 0o640, 0), "char": (stat.S_IFCHR, 0o600, os.makedev(1, 3)),
                "block": (stat.S_IFBLK, 0o640, os.makedev(7, 0)), "plain": (stat.S_IFREG, 0o644, 0),
                "sock": (stat.S_IFSOCK, None, 0)}
    sock_mode = stat.S_IMODE(os.lstat(mount.path("sock")).st_mode)
    for view in (mount, rebuilt(mount, mounter)):
        for name, (kind, mode, rdev) in expected.items():
            info = os.lstat(view.path(name))
            assert stat.S_IFMT(info.st_mode) == kind, name
            assert stat.S_IMODE(info.st_mode) == (mode if mode is not None else sock_mode), name
            assert info.st_rdev == rdev, name
    assert read(mount.path("plain")) == b""


def test_hard_links_share_content_and_history(mount, mounter):
    write(mount.path("a"), b"one")
    os.makedirs(mount.path("d"))
    os.link(mount.path("a"), mount.path("d", "b"))
    assert os.stat(mount.path("a")).st_nlink == 2
    assert os.stat(mount.path("a")).st_ino == os.stat(mount.path("d", "b")).st_ino
    write(mount.path("d", "b"), b"two")  # O_TRUNC through the second name
    assert read(mount.path("a")) == b"two"
    # Every name's history has the versions the file had while it bore that name.
    assert len(os.listdir(mount.path(".versions", "a"))) == 2
    assert len(os.listdir(mount.path(".versions", "d", "b"))) == 2
    with pytest.raises(PermissionError):
        os.link(mount.path("d"), mount.path("dirlink"))

    view = rebuilt(mount, mounter)
    assert os.stat(view.path("a")).st_ino == os.stat(view.path("d", "b")).st_ino
    assert os.stat(view.path("a")).st_nlink == 2 and read(view.path("d", "b")) == b"two"
    # The rebuilt mount keeps the inode's identity: its writes reach every name in the lake too.
    with open(view.path("a"), "r+b") as file:
        file.write(b"3")
    view.sync()
    third = rebuilt(view, mounter, "third")
    assert read(third.path("d", "b")) == b"3wo" and os.stat(third.path("d", "b")).st_nlink == 2

    # The first mount follows the lake: once it has applied what `view` wrote (at its next refresh,
    # which a busy machine may reach before this line), both its names show it. Taken now, not raced.
    mount.cli("refresh", mount.mountpoint)
    assert read(mount.path("a")) == read(mount.path("d", "b")) == b"3wo"
    os.unlink(mount.path("a"))
    assert read(mount.path("d", "b")) == b"3wo" and os.stat(mount.path("d", "b")).st_nlink == 1
    fourth = rebuilt(mount, mounter, "fourth")
    assert not os.path.exists(fourth.path("a")) and os.stat(fourth.path("d", "b")).st_nlink == 1


def test_a_link_to_a_file_still_being_written_gets_its_content(mount, mounter):
    with open(mount.path("w"), "wb") as file:
        file.write(b"partial")
        os.link(mount.path("w"), mount.path("w2"))
        file.write(b" and the rest")
    view = rebuilt(mount, mounter)
    assert read(view.path("w2")) == b"partial and the rest" == read(view.path("w"))


def test_owners_modes_and_times_are_kept(mount, mounter):
    os.makedirs(mount.path("shared"))
    os.chown(mount.path("shared"), 1234, 5678)
    os.chmod(mount.path("shared"), 0o2775)  # set-group-id: new entries take its group
    write(mount.path("shared", "f"), b"x")
    os.makedirs(mount.path("shared", "sub"))
    assert os.stat(mount.path("shared", "f")).st_gid == 5678
    assert os.stat(mount.path("shared", "sub")).st_gid == 5678
    assert os.stat(mount.path("shared", "sub")).st_mode & stat.S_ISGID
    write(mount.path("owned"), b"y")
    os.chown(mount.path("owned"), 4321, 8765)
    os.chmod(mount.path("owned"), 0o4751)
    future = 2**33 * 10**9 + 123  # the year 2242: past 2038
    os.utime(mount.path("owned"), ns=(future - 10**9, future))
    os.symlink("owned", mount.path("link"))
    os.chown(mount.path("link"), 999, 998, follow_symlinks=False)
    os.utime(mount.path("link"), ns=(10**18, 10**18 + 5), follow_symlinks=False)
    before = os.stat(mount.path("owned")).st_ctime_ns
    os.chmod(mount.path("owned"), 0o4750)
    assert os.stat(mount.path("owned")).st_ctime_ns > before  # every metadata change updates ctime
    view = rebuilt(mount, mounter)
    info = os.stat(view.path("owned"))
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (4321, 8765, 0o4750)
    assert (info.st_atime_ns, info.st_mtime_ns) == (future - 10**9, future)
    link = os.lstat(view.path("link"))
    assert link.st_uid == 999 and link.st_mtime_ns == 10**18 + 5 and os.readlink(view.path("link")) == "owned"
    shared = os.stat(view.path("shared"))
    assert (shared.st_uid, shared.st_gid, stat.S_IMODE(shared.st_mode)) == (1234, 5678, 0o2775)
    assert os.stat(view.path("shared", "sub")).st_gid == 5678


def test_readdir_lists_dot_entries_and_links_count_subdirectories(mount):
    os.makedirs(mount.path("top", "a"))
    os.makedirs(mount.path("top", "b"))
    write(mount.path("top", "f"), b"")
    # Python's listdir hides the dot entries; ls shows what readdir(3) returns.
    listing = subprocess.run(["ls", "-a", "-1", mount.path("top")], capture_output=True, text=True, check=True)
    assert listing.stdout.split("\n")[:-1] == [".", "..", "a", "b", "f"]
    fd = os.open(mount.path("top"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert os.stat(".", dir_fd=fd).st_nlink == 4  # 2 + two subdirectories
    finally:
        os.close(fd)
    assert os.stat(mount.path("top", "..")).st_ino == os.stat(mount.mountpoint).st_ino


def test_a_symlink_has_history_that_resolves_where_it_pointed(mount, mounter):
    """Lightning's save_last="link" makes last.ckpt a relative symlink to the newest checkpoint."""
    os.makedirs(mount.path("run"))
    for step in (1, 2):
        write(mount.path("run", f"step={step}.ckpt"), b"weights %d" % step)
        if step > 1:
            os.unlink(mount.path("run", "last.ckpt"))
        os.symlink(f"step={step}.ckpt", mount.path("run", "last.ckpt"))
    os.symlink("/absolute/target", mount.path("abs"))
    for view in (mount, rebuilt(mount, mounter)):
        states = sorted(os.listdir(view.path(".versions", "run", "last.ckpt")))
        assert len(states) == 2
        for step, state in zip((1, 2), states, strict=True):
            link = view.path(".versions", "run", "last.ckpt", state)
            assert os.path.islink(link)
            assert read(link) == b"weights %d" % step  # resolves into the live tree, where it pointed
        (state,) = os.listdir(view.path(".versions", "abs"))
        assert os.readlink(view.path(".versions", "abs", state)) == "/absolute/target"
        assert os.readlink(view.path("run", "last.ckpt")) == "step=2.ckpt"
