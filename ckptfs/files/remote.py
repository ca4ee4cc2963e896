"""Changes other mounts published, applied to this mount's tree (engine/follower.py fetches them).

Which change wins: every path carries the stamp (time, mount) of the last event that changed it,
ours or another mount's (`journal.stamps`). A remote event applies to the live tree only if it is
later than the stamps of its paths and of their ancestors, so every mount ends with the same tree
whatever order the events reached it in (ties between mounts go to the larger mount id). A file
version is added to its path's history either way: two mounts that write one path keep both
versions. Event times are hybrid logical clocks (files/outbox.py): a mount never stamps below the
newest time it has seen, so a node whose clock is behind cannot hide its newer checkpoint.

What this mount has open for writing is never taken away: a remote replace or unlink of a file
being written (OPEN version or open handle) leaves the local file, whose close publishes it again,
later, so it wins everywhere. A remote rename moves it, and its close publishes it at the new path.
"""

from __future__ import annotations

import logging
import stat
from dataclasses import dataclass, field

from ckptfs.cache.journal import COMMITTED, OPEN, ROOT_INODE, Inode, Journal
from ckptfs.cache.staging import Staging
from ckptfs.files.lifecycle import Lifecycle
from ckptfs.files.outbox import Outbox
from ckptfs.files.tree import SPECIAL_TYPES, Tree
from ckptfs.lake.events import Event

log = logging.getLogger(__name__)
KIND_TYPES = {kind: type_bits for type_bits, kind in SPECIAL_TYPES.items()}


@dataclass
class Invalidations:
    """What the kernel must forget once the changes are in the journal."""
    entries: set[tuple[int, bytes]] = field(default_factory=set)  # (parent inode, name)
    inodes: set[int] = field(default_factory=set)


class RemoteChanges:
    def __init__(self, journal: Journal, staging: Staging, tree: Tree, lifecycle: Lifecycle, outbox: Outbox) -> None:
        self.journal = journal
        self.staging = staging
        self.tree = tree
        self.lifecycle = lifecycle
        self.outbox = outbox
        self.pending = Invalidations()
        self.applied = 0
        self.skipped = 0

    def take_invalidations(self) -> Invalidations:
        taken, self.pending = self.pending, Invalidations()
        return taken

    # -- entry point --------------------------------------------------------------------------
    def apply(self, change: Event) -> bool:
        """Apply one validated remote event; returns whether it changed the live tree."""
        self.outbox.observe(change.time_ns)
        stamp = (change.time_ns, change.mount)
        paths = [change.path] + ([change.dst] if change.dst is not None else [])
        newest = [self.journal.newest_stamp(path) for path in paths]
        if any(later is not None and later > stamp for later in newest):
            if change.op == "put":
                self._remember_version(change)  # both versions are kept, the later one is shown
            self.skipped += 1
            return False
        handlers = {"put": self._put, "mkdir": self._mkdir, "symlink": self._symlink, "mknod": self._mknod,
                    "unlink": self._unlink, "rmdir": self._unlink, "attr": self._attr, "link": self._hard_link,
                    "rename": self._rename}
        handlers[change.op](change)
        for path in paths:
            self.journal.set_stamp(path, change.time_ns, change.mount)
        self.applied += 1
        return True

    # -- lookups ------------------------------------------------------------------------------
    def _locate(self, path: bytes) -> tuple[int | None, int | None]:
        """(parent inode, inode) of a path; None where missing."""
        parent = ROOT_INODE
        parts = path.split(b"/")
        for part in parts[:-1]:
            child = self.journal.lookup(parent, part)
            if child is None:
                return None, None
            parent = child
        return parent, self.journal.lookup(parent, parts[-1])

    def _busy(self, ino: int) -> bool:
        """A file this mount is writing (or has open): never removed or replaced from outside."""
        inode = self.journal.inode(ino)
        if inode is None or not inode.is_file:
            return False
        current = self.lifecycle.current(inode)
        return bool(self.lifecycle.open_count.get(ino)) or (current is not None and current.state == OPEN)

    def _parent_dir(self, path: bytes, change: Event) -> int | None:
        """The inode of the directory `path` goes into, creating missing ones; None if a busy file
        stands in the way."""
        parent = ROOT_INODE
        prefix = b""
        for part in path.split(b"/")[:-1]:
            prefix = prefix + b"/" + part if prefix else part
            child = self.journal.lookup(parent, part)
            if child is not None and not self.tree.inode(child).is_dir:
                if not self._remove(parent, part, prefix, change.time_ns):
                    return None
                child = None
            if child is None:
                directory = self._new_inode(stat.S_IFDIR | 0o755, change)
                self._link(parent, part, directory.ino)
                child = directory.ino
            parent = child
        return parent

    # -- building blocks ----------------------------------------------------------------------
    def _new_inode(self, mode: int, change: Event, **fields) -> Inode:
        root = self.tree.inode(ROOT_INODE)
        uid = change.uid if change.uid is not None else root.uid
        gid = change.gid if change.gid is not None else root.gid
        inode = self.journal.create_inode(mode, uid, gid, time_ns=change.mtime_ns or change.time_ns, **fields)
        if change.atime_ns is not None:
            inode.atime_ns = change.atime_ns
        inode.ctime_ns = change.time_ns
        self.journal.save_inode(inode)
        return inode

    def _link(self, parent: int, name: bytes, ino: int) -> None:
        self.journal.add_dirent(parent, name, ino)
        self.tree.touch(self.tree.inode(parent))
        self.pending.entries.add((parent, name))
        self.pending.inodes.add(parent)

    def _remove(self, parent: int, name: bytes, path: bytes, time_ns: int) -> bool:
        """Remove an entry and everything under it that nobody here is writing; returns whether the
        entry is gone (a directory stays if a busy file is left in it)."""
        ino = self.journal.lookup(parent, name)
        if ino is None:
            return True
        inode = self.tree.inode(ino)
        if inode.is_dir:
            for child_name, _ in self.journal.children(ino):
                self._remove(ino, child_name, path + b"/" + child_name, time_ns)
            if self.journal.has_children(ino):
                return False
        elif self._busy(ino):
            return False
        elif self.journal.history(path):
            self.journal.add_history(path, time_ns, None)
        self.journal.remove_dirent(parent, name)
        self.tree.touch(self.tree.inode(parent))
        self.pending.entries.add((parent, name))
        self.pending.inodes.add(parent)
        self.tree.maybe_delete_inode(ino)
        return True

    def _replace(self, change: Event) -> int | None:
        """Clear the path for a new entry; its parent directory's inode, or None if it cannot be
        cleared (a busy file stands there)."""
        parent = self._parent_dir(change.path, change)
        if parent is None:
            return None
        name = change.path.rpartition(b"/")[2]
        if not self._remove(parent, name, change.path, change.time_ns):
            return None
        return parent

    # -- file versions ------------------------------------------------------------------------
    def _remember_version(self, change: Event) -> int:
        for time_ns, known in self.journal.history(change.path):
            if time_ns == change.time_ns and known is not None:
                version = self.journal.version(known)
                if version is not None and version.manifest == change.manifest:
                    return known  # applied before (a cache dir older than its cursors): once is enough
        version = self.journal.new_version(None, state=COMMITTED, staged=False, size=change.size,
                                           mode=change.mode or 0o644, mtime_ns=change.mtime_ns or change.time_ns,
                                           manifest=change.manifest, path=change.path, sealed_ns=change.time_ns)
        self.journal.add_history(change.path, change.time_ns, version)
        return version

    def _put(self, change: Event) -> None:
        """A new version of a file: of the inode with the event's node id if this mount has it (hard
        links: every name gets it), else of a new inode at the path."""
        target = self.journal.inode_by_node(change.node, self.outbox.mount_id) if change.node else None
        if target is not None and not self.tree.inode(target).is_file:
            target = None
        _, at_path = self._locate(change.path)
        if target is None and change.node is None and at_path is not None and self.tree.inode(at_path).is_file:
            target = at_path  # format 1 events name no inode: the file at the path gets the version
        if (target is not None and self._busy(target)) or (at_path is not None and self._busy(at_path)):
            self._remember_version(change)
            return  # written here: its close publishes a later version
        if at_path is None or at_path != target:
            parent = self._replace(change)
            if parent is None:
                self._remember_version(change)
                return
            if target is None:
                target = self._new_inode(stat.S_IFREG | (change.mode or 0o644), change, node=change.node).ino
            self._link(parent, change.path.rpartition(b"/")[2], target)
        version = self._remember_version(change)  # after the replacement, so it is the path's last state
        inode = self.tree.inode(target)
        inode.version, inode.size = version, change.size
        inode.mode = stat.S_IFREG | (change.mode if change.mode is not None else stat.S_IMODE(inode.mode))
        inode.mtime_ns = change.mtime_ns or change.time_ns
        inode.ctime_ns = change.time_ns
        if change.uid is not None:
            inode.uid = change.uid
        if change.gid is not None:
            inode.gid = change.gid
        if change.atime_ns is not None:
            inode.atime_ns = change.atime_ns
        self.journal.save_inode(inode)
        for path in self.journal.paths_of(target):
            if path != change.path:
                self.journal.add_history(path, change.time_ns, version)  # hard links share the version
        self.pending.inodes.add(target)

    # -- the other operations -----------------------------------------------------------------
    def _mkdir(self, change: Event) -> None:
        _, existing = self._locate(change.path)
        if existing is not None and self.tree.inode(existing).is_dir:
            return
        parent = self._replace(change)
        if parent is not None:
            directory = self._new_inode(stat.S_IFDIR | (change.mode if change.mode is not None else 0o755), change)
            self._link(parent, change.path.rpartition(b"/")[2], directory.ino)

    def _symlink(self, change: Event) -> None:
        parent = self._replace(change)
        if parent is None:
            return
        assert change.target is not None
        link = self._new_inode(stat.S_IFLNK | 0o777, change, target=change.target)
        self._link(parent, change.path.rpartition(b"/")[2], link.ino)
        version = self.journal.new_version(link.ino, state=COMMITTED, staged=False, size=len(change.target),
                                           mode=0o777, mtime_ns=link.mtime_ns, path=change.path,
                                           sealed_ns=change.time_ns, target=change.target)
        self.journal.add_history(change.path, change.time_ns, version)

    def _mknod(self, change: Event) -> None:
        parent = self._replace(change)
        if parent is not None:
            node = self._new_inode(KIND_TYPES[change.kind or "fifo"] | (change.mode or 0o644), change,
                                   rdev=change.rdev, node=change.node)
            self._link(parent, change.path.rpartition(b"/")[2], node.ino)

    def _unlink(self, change: Event) -> None:
        parent, existing = self._locate(change.path)
        if parent is not None and existing is not None:
            self._remove(parent, change.path.rpartition(b"/")[2], change.path, change.time_ns)

    def _attr(self, change: Event) -> None:
        _, existing = self._locate(change.path)
        if existing is None or self._busy(existing):
            return
        inode = self.tree.inode(existing)
        if change.mode is not None:
            inode.mode = stat.S_IFMT(inode.mode) | change.mode
        for name in ("uid", "gid", "mtime_ns", "atime_ns"):
            if getattr(change, name) is not None:
                setattr(inode, name, getattr(change, name))
        inode.ctime_ns = change.time_ns
        self.journal.save_inode(inode)
        self.pending.inodes.add(existing)

    def _hard_link(self, change: Event) -> None:
        assert change.dst is not None
        source = self.journal.inode_by_node(change.node, self.outbox.mount_id) if change.node else None
        if source is None:
            _, source = self._locate(change.path)
        if source is None or self.tree.inode(source).is_dir:
            return
        parent = self._replace(Event("link", change.dst, change.time_ns, mount=change.mount))
        if parent is None:
            return
        self._link(parent, change.dst.rpartition(b"/")[2], source)
        current = self.journal.inode(source).version
        if current is not None and self.journal.version(current).state != OPEN:
            self.journal.add_history(change.dst, change.time_ns, current)
        self.pending.inodes.add(source)

    def _rename(self, change: Event) -> None:
        assert change.dst is not None
        source_parent, moved = self._locate(change.path)
        if moved is None or change.dst.startswith(change.path + b"/"):
            return
        _, at_destination = self._locate(change.dst)
        if at_destination == moved:
            return
        parent = self._replace(Event("rename", change.dst, change.time_ns, mount=change.mount))
        if parent is None:
            return
        inode = self.tree.inode(moved)
        files = [(b"", moved)] if not inode.is_dir else [(b"/" + p, i) for p, i in self.journal.walk_files(moved)]
        for suffix, _ in files:
            states = self.journal.history(change.path + suffix)
            if states and states[-1][1] is not None:
                self.journal.add_history(change.dst + suffix, change.time_ns, states[-1][1])
                self.journal.add_history(change.path + suffix, change.time_ns, None)
        name_old, name_new = change.path.rpartition(b"/")[2], change.dst.rpartition(b"/")[2]
        self.journal.move_dirent(source_parent, name_old, parent, name_new)
        self.pending.entries.update({(source_parent, name_old), (parent, name_new)})
        self.pending.inodes.update({source_parent, parent, moved})
