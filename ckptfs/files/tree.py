"""The tree of entries: lookups, attributes, and every change to names and metadata (mkdir, mknod,
symlink, link, unlink, rmdir, rename, chmod/chown/utimens), each recorded in the journal, in the
paths' history and as a namespace event. The read-only `.versions` tree is answered here too.

The kernel keeps a lookup count per inode; an inode that no entry names, the kernel has forgotten
and nobody has open is dropped (`maybe_delete_inode`).
"""

from __future__ import annotations

import errno
import logging
import stat
import time
from typing import Any

from ckptfs.cache.journal import COMMITTED, OPEN, ROOT_INODE, Inode, Journal
from ckptfs.cache.staging import Staging
from ckptfs.errors import FsError
from ckptfs.files import history
from ckptfs.files.attributes import AttributeChanges, Attributes, Caller
from ckptfs.files.lifecycle import Lifecycle
from ckptfs.files.outbox import Outbox
from ckptfs.files.past import AT, TAGS, PastNode
from ckptfs.lake.events import NAME_MAX, SPECIAL_KINDS

log = logging.getLogger(__name__)

SPECIAL_TYPES = dict(zip((stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK), SPECIAL_KINDS, strict=True))


VIEWS = (history.NAME, AT, TAGS)  # read-only views of the past at the root: reachable by name, never listed


def fail(code: int, why: str = "") -> FsError:
    return FsError(why or errno.errorcode.get(code, str(code)), errno=code)


class Tree:
    def __init__(self, journal: Journal, staging: Staging, outbox: Outbox, lifecycle: Lifecycle, *,
                 fold_ns: int = history.FOLD_NS) -> None:
        self.journal = journal
        self.staging = staging
        self.outbox = outbox
        self.lifecycle = lifecycle
        self.view = history.VersionsView(journal, fold_ns)
        self.lookups: dict[int, int] = {}
        self.page_cache_version: dict[int, int | None] = {}  # inode -> version the kernel's page cache holds
        self.dirty_inodes: set[int] = set()  # changed in memory by writes, saved at the next commit

    # -- reading ------------------------------------------------------------------------------
    def inode(self, ino: int) -> Inode:
        inode = self.journal.inode(ino)
        if inode is None:
            raise fail(errno.ENOENT)
        return inode

    def attributes(self, ino: int) -> Attributes:
        if history.is_virtual(ino):
            return self._virtual_attributes(ino)
        inode = self.inode(ino)
        nlink = 2 + self.journal.subdirectory_count(ino) if inode.is_dir else self.journal.link_count(ino)
        return Attributes(ino, inode.mode, nlink, inode.uid, inode.gid, inode.size, inode.rdev, inode.atime_ns,
                          inode.mtime_ns, inode.ctime_ns)

    def _virtual_attributes(self, ino: int) -> Attributes:
        node = self.view.node(ino)
        if node is None:
            raise fail(errno.ENOENT)
        root = self.inode(ROOT_INODE)
        if isinstance(node, PastNode):
            if node.version is None:
                when = node.key if node.kind == "at" and isinstance(node.key, int) else root.mtime_ns
                return Attributes(ino, stat.S_IFDIR | 0o555, 2, root.uid, root.gid, 0, 0, when, when, when)
            version = self.journal.version(node.version)
            if version is not None and version.target is not None:
                return Attributes(ino, stat.S_IFLNK | 0o777, 1, root.uid, root.gid, len(version.target), 0,
                                  version.mtime_ns, version.mtime_ns, version.mtime_ns)
            size, when = (version.size, version.mtime_ns) if version is not None else (0, 0)
            return Attributes(ino, stat.S_IFREG | 0o444, 1, root.uid, root.gid, size, 0, when, when, when)
        if node.version is None:
            if not node.path:
                return Attributes(ino, stat.S_IFDIR | 0o555, 2, root.uid, root.gid, 0, 0, root.mtime_ns,
                                  root.mtime_ns, root.mtime_ns)
            live, changed_ns = self.view.state(node.path)
            mode = stat.S_IFDIR | 0o555 | (0 if live else stat.S_ISVTX)  # deleted: dr-xr-xr-t
            return Attributes(ino, mode, 2, root.uid, root.gid, 0, 0, changed_ns, changed_ns, changed_ns)
        version = self.journal.version(node.version)
        kind = stat.S_IFLNK | 0o777 if version is not None and version.target is not None else stat.S_IFREG | 0o444
        size = len(self.view.link_target(ino) or b"") if kind & stat.S_IFLNK == stat.S_IFLNK else (
            version.size if version else 0)
        return Attributes(ino, kind, 1, root.uid, root.gid, size, 0, node.time_ns, node.time_ns, node.time_ns)

    def _view_root(self, name: bytes) -> int:
        return {history.NAME: history.ROOT_VIRTUAL_INODE, AT: self.view.at_root, TAGS: self.view.tags_root}[name]

    def lookup(self, parent: int, name: bytes) -> Attributes:
        if history.is_virtual(parent):
            ino = parent if name == b"." else self.view.lookup(parent, name)
            if ino is None:
                raise fail(errno.ENOENT)
            return self._virtual_attributes(ino)
        if parent == ROOT_INODE and name in VIEWS:
            return self._virtual_attributes(self._view_root(name))
        if len(name) > NAME_MAX:
            raise fail(errno.ENAMETOOLONG)
        if name == b".":
            ino = parent
        elif name == b"..":
            link = self.journal.parent_of(parent)
            ino = link[0] if link else ROOT_INODE
        else:
            ino = self.journal.lookup(parent, name)
        if ino is None:
            raise fail(errno.ENOENT)
        self.remember_lookup(ino)
        return self.attributes(ino)

    def readlink(self, ino: int) -> bytes:
        if history.is_virtual(ino):
            target = self.view.link_target(ino)
            if target is None:
                raise fail(errno.EINVAL)
            return target
        inode = self.inode(ino)
        if not inode.is_symlink:
            raise fail(errno.EINVAL)
        return inode.target or b""

    def listing(self, ino: int) -> list[tuple[bytes, int]]:
        """The entries of a directory, `.` and `..` first, as readdir shows them."""
        if history.is_virtual(ino):
            return self.view.children(ino)
        if not self.inode(ino).is_dir:
            raise fail(errno.ENOTDIR)
        link = self.journal.parent_of(ino)
        return [(b".", ino), (b"..", link[0] if link else ROOT_INODE)] + self.journal.children(ino)

    # -- the kernel's references --------------------------------------------------------------
    def remember_lookup(self, ino: int) -> None:
        if not history.is_virtual(ino):
            self.lookups[ino] = self.lookups.get(ino, 0) + 1

    def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            if history.is_virtual(ino):
                continue
            remaining = self.lookups.get(ino, 0) - count
            if remaining > 0:
                self.lookups[ino] = remaining
                continue
            self.lookups.pop(ino, None)
            try:
                self.maybe_delete_inode(ino)
            except Exception:  # noqa: BLE001 - forget must not raise
                log.exception("forget of inode %d failed", ino)

    def maybe_delete_inode(self, ino: int) -> None:
        """Drop an inode that no entry names, the kernel no longer knows and nobody has open."""
        if ino == ROOT_INODE or self.lookups.get(ino, 0) > 0 or self.lifecycle.open_count.get(ino, 0) > 0:
            return
        self.page_cache_version.pop(ino, None)
        if self.journal.parent_of(ino) is not None:
            return
        inode = self.journal.inode(ino)
        if inode is None:
            return
        current = self.lifecycle.current(inode)
        if current is not None and current.state == OPEN:
            self.lifecycle.remove_staged(current.id)
            self.journal.delete_version(current.id)
        self.journal.delete_inode(ino)

    def commit(self, *, durable: bool = False) -> None:
        for ino in self.dirty_inodes:
            inode = self.journal.inode(ino)
            if inode is not None:
                self.journal.save_inode(inode)
        self.dirty_inodes.clear()
        self.journal.commit(durable=durable)

    # -- helpers for changes ------------------------------------------------------------------
    def writable_parent(self, parent: int, name: bytes) -> Inode:
        if history.is_virtual(parent):
            raise fail(errno.EROFS)
        if len(name) > NAME_MAX:
            raise fail(errno.ENAMETOOLONG)
        if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
            raise fail(errno.EINVAL)
        if parent == ROOT_INODE and name in VIEWS:
            raise fail(errno.EEXIST)
        inode = self.inode(parent)
        if not inode.is_dir:
            raise fail(errno.ENOTDIR)
        return inode

    def absent(self, parent: int, name: bytes) -> Inode:
        """The parent directory of a new entry `name`, which must not exist yet."""
        directory = self.writable_parent(parent, name)
        if self.journal.lookup(parent, name) is not None:
            raise fail(errno.EEXIST)
        return directory

    def path(self, parent: int, name: bytes) -> bytes:
        base = self.journal.path_of(parent)
        if base is None:
            raise fail(errno.ENOENT)
        return base + b"/" + name if base else name

    def touch(self, inode: Inode, *, modified: bool = True) -> None:
        """The inode changed now: ctime, and mtime too if its content (or a directory's list) did."""
        inode.ctime_ns = time.time_ns()
        if modified:
            inode.mtime_ns = inode.ctime_ns
        self.journal.save_inode(inode)

    def new_inode(self, parent: Inode, kind: int, mode: int, caller: Caller, **fields: Any) -> Inode:
        """An inode for a new entry of `parent`, owned by the caller; in a set-group-id directory the
        group is the directory's, and a new directory is set-group-id too (as on Linux file systems)."""
        gid = caller.gid
        if parent.mode & stat.S_ISGID:
            gid = parent.gid
            if kind == stat.S_IFDIR:
                mode |= stat.S_ISGID
        return self.journal.create_inode(kind | (mode & 0o7777), caller.uid, gid, **fields)

    def add_entry(self, parent: Inode, name: bytes, inode: Inode) -> bytes:
        """Link a new inode into `parent`; returns its path."""
        self.journal.add_dirent(parent.ino, name, inode.ino)
        self.touch(parent)
        self.remember_lookup(inode.ino)
        return self.path(parent.ino, name)

    # -- changes ------------------------------------------------------------------------------
    def mkdir(self, parent: int, name: bytes, mode: int, caller: Caller) -> Attributes:
        directory = self.absent(parent, name)
        inode = self.new_inode(directory, stat.S_IFDIR, mode & ~caller.umask, caller)
        path = self.add_entry(directory, name, inode)
        self.outbox.publish("mkdir", path, mode=stat.S_IMODE(inode.mode), uid=inode.uid, gid=inode.gid,
                            mtime_ns=inode.mtime_ns, dir_mtime_ns=directory.mtime_ns)
        self.commit()
        return self.attributes(inode.ino)

    def mknod_special(self, parent: int, name: bytes, mode: int, rdev: int, caller: Caller) -> Attributes:
        """FIFOs, UNIX sockets (bind(2) creates one) and device nodes are kept in the lake like any
        entry; the mount is always nodev, so a device node opens nothing."""
        kind = stat.S_IFMT(mode)
        if kind not in SPECIAL_TYPES:
            raise fail(errno.EINVAL)
        directory = self.absent(parent, name)
        inode = self.new_inode(directory, kind, stat.S_IMODE(mode) & ~caller.umask, caller,
                               rdev=rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0)
        path = self.add_entry(directory, name, inode)
        self.outbox.publish("mknod", path, kind=SPECIAL_TYPES[kind], mode=stat.S_IMODE(inode.mode), rdev=inode.rdev,
                            uid=inode.uid, gid=inode.gid, mtime_ns=inode.mtime_ns, node=self.outbox.node_id(inode),
                            dir_mtime_ns=directory.mtime_ns)
        self.commit()
        return self.attributes(inode.ino)

    def symlink(self, parent: int, name: bytes, target: bytes, caller: Caller) -> Attributes:
        directory = self.absent(parent, name)
        inode = self.new_inode(directory, stat.S_IFLNK, 0o777, caller, target=target)
        path = self.add_entry(directory, name, inode)
        when = self.outbox.event_time()
        # Its history (`.versions/<path>/`) shows where it pointed: Lightning's `last.ckpt` link.
        version = self.journal.new_version(inode.ino, state=COMMITTED, staged=False, size=len(target), mode=0o777,
                                           mtime_ns=inode.mtime_ns, path=path, sealed_ns=when, target=target)
        self.journal.add_history(path, when, version)
        self.outbox.enqueue("symlink", path, when, target=target, uid=inode.uid, gid=inode.gid,
                            mtime_ns=inode.mtime_ns, dir_mtime_ns=directory.mtime_ns)
        self.commit()
        return self.attributes(inode.ino)

    def link(self, ino: int, parent: int, name: bytes) -> Attributes:
        """A hard link: one more name for the inode. In the lake both names share the inode's
        identity, and each version of the file goes into the history of every name it has then
        (docs/FORMAT.md)."""
        if history.is_virtual(ino):
            raise fail(errno.EROFS)
        directory = self.absent(parent, name)
        inode = self.inode(ino)
        if inode.is_dir:
            raise fail(errno.EPERM)
        source = self.journal.path_of(ino)
        if source is None:
            raise fail(errno.ENOENT)  # unlinked while open: linkat(2) of such a file answers ENOENT
        path = self.add_entry(directory, name, inode)
        self.touch(inode, modified=False)
        when = self.outbox.event_time()
        current = self.lifecycle.current(inode) if inode.is_file else None
        if current is not None and current.state != OPEN:
            self.journal.add_history(path, when, current.id)
        self.outbox.enqueue("link", source, when, dst=path, node=self.outbox.node_id(inode), uid=inode.uid,
                            gid=inode.gid, dst_dir_mtime_ns=directory.mtime_ns)
        self.commit()
        return self.attributes(ino)

    def unlink(self, parent: int, name: bytes) -> None:
        directory = self.writable_parent(parent, name)
        ino = self.journal.lookup(parent, name)
        if ino is None:
            raise fail(errno.ENOENT)
        inode = self.inode(ino)
        if inode.is_dir:
            raise fail(errno.EISDIR)
        path = self.path(parent, name)
        if not inode.is_dir and self.journal.history(path):
            self.journal.add_history(path, self.outbox.event_time(), None)
        self.journal.remove_dirent(parent, name)
        self.touch(directory)
        self.touch(inode, modified=False)  # its link count changed
        self.outbox.publish("unlink", path, dir_mtime_ns=directory.mtime_ns)
        self.maybe_delete_inode(ino)
        self.commit()

    def rmdir(self, parent: int, name: bytes) -> None:
        directory = self.writable_parent(parent, name)
        ino = self.journal.lookup(parent, name)
        if ino is None:
            raise fail(errno.ENOENT)
        if not self.inode(ino).is_dir:
            raise fail(errno.ENOTDIR)
        if self.journal.has_children(ino):
            raise fail(errno.ENOTEMPTY)
        path = self.path(parent, name)
        self.journal.remove_dirent(parent, name)
        self.touch(directory)
        self.outbox.publish("rmdir", path, dir_mtime_ns=directory.mtime_ns)
        self.maybe_delete_inode(ino)
        self.commit()

    def rename(self, parent_old: int, name_old: bytes, parent_new: int, name_new: bytes, *,
               no_replace: bool = False) -> None:
        old_directory = self.writable_parent(parent_old, name_old)
        new_directory = self.writable_parent(parent_new, name_new)
        ino = self.journal.lookup(parent_old, name_old)
        if ino is None:
            raise fail(errno.ENOENT)
        moved = self.inode(ino)
        replaced = self.journal.lookup(parent_new, name_new)
        if replaced == ino:
            return
        if replaced is not None:
            if no_replace:
                raise fail(errno.EEXIST)
            target = self.inode(replaced)
            if target.is_dir:
                if not moved.is_dir:
                    raise fail(errno.EISDIR)
                if self.journal.has_children(replaced):
                    raise fail(errno.ENOTEMPTY)
            elif moved.is_dir:
                raise fail(errno.ENOTDIR)
        if moved.is_dir:
            ancestor = parent_new
            while ancestor != ROOT_INODE:
                if ancestor == ino:
                    raise fail(errno.EINVAL)
                link = self.journal.parent_of(ancestor)
                ancestor = link[0] if link else ROOT_INODE
        source = self.path(parent_old, name_old)
        destination = self.path(parent_new, name_new)
        when = self.outbox.event_time()
        if replaced is not None:
            if not self.inode(replaced).is_dir and self.journal.history(destination):
                self.journal.add_history(destination, when, None)
            self.journal.remove_dirent(parent_new, name_new)
        # History follows the content: each file under the source gets a state at its new path.
        files = [(b"", ino)] if not moved.is_dir else [(b"/" + p, i) for p, i in self.journal.walk_files(ino)]
        for suffix, _ in files:
            states = self.journal.history(source + suffix)
            if states and states[-1][1] is not None:
                self.journal.add_history(destination + suffix, when, states[-1][1])
                self.journal.add_history(source + suffix, when, None)
        self.journal.move_dirent(parent_old, name_old, parent_new, name_new)
        self.touch(old_directory)
        self.touch(new_directory)
        self.touch(moved, modified=False)
        if replaced is not None and self.journal.link_count(replaced):
            self.touch(self.inode(replaced), modified=False)  # a hard link of it is left
        self.outbox.enqueue("rename", source, when, dst=destination, dir_mtime_ns=old_directory.mtime_ns,
                            dst_dir_mtime_ns=new_directory.mtime_ns)
        if replaced is not None:
            self.maybe_delete_inode(replaced)
        self.commit()

    def set_metadata(self, ino: int, changes: AttributeChanges) -> None:
        """chmod, chown, utimens: the inode now, and an `attr` event for the lake (an OPEN version
        carries its file's attributes in its own `put`)."""
        inode = self.inode(ino)
        if changes.mode is not None:
            inode.mode = stat.S_IFMT(inode.mode) | stat.S_IMODE(changes.mode)
        if changes.uid is not None:
            inode.uid = changes.uid
        if changes.gid is not None:
            inode.gid = changes.gid
        if changes.mtime_ns is not None:
            inode.mtime_ns = changes.mtime_ns
        if changes.atime_ns is not None:
            inode.atime_ns = changes.atime_ns
        self.touch(inode, modified=False)
        current = self.lifecycle.current(inode)
        if changes.metadata and (current is None or current.state != OPEN):
            path = self.journal.path_of(ino)
            if path:
                self.outbox.publish("attr", path, mode=stat.S_IMODE(inode.mode), mtime_ns=inode.mtime_ns,
                                    atime_ns=inode.atime_ns, uid=inode.uid, gid=inode.gid)
