"""Filling a new cache dir's journal from the lake, and repairing an existing one after a crash.

Plain synchronous code on the journal and the staging files, run before a mount serves: tests and
scripts that need no mount use it without FUSE.
"""

from __future__ import annotations

import logging
import os
import stat
import uuid

from ckptfs.cache.journal import COMMITTED, OPEN, ROOT_INODE, Inode, Journal
from ckptfs.cache.staging import Staging
from ckptfs.lake import Lake, namespace
from ckptfs.lake.lake import LogView

log = logging.getLogger(__name__)


def rebuild_from_lake(journal: Journal, view: LogView) -> namespace.Namespace:
    """Fill an empty journal with the tree and history of what was read of the lake (`view`).
    Returns the replayed tree. The lake's chunks are learnt after the mount is ready
    (daemon.learn_known_chunks)."""
    tree = view.replay()
    by_manifest: dict[str, int] = {}

    def version_for(path: bytes, manifest: str, size: int, mode: int, mtime_ns: int, time_ns: int) -> int:
        if manifest not in by_manifest:
            by_manifest[manifest] = journal.new_version(None, state=COMMITTED, staged=False, size=size,
                                                        mode=mode, mtime_ns=mtime_ns, manifest=manifest,
                                                        path=path, sealed_ns=time_ns)
        return by_manifest[manifest]

    for path, states in tree.history.items():
        for state in states:
            version = None
            if state.manifest is not None:
                version = version_for(path, state.manifest, state.size, state.mode, state.time_ns, state.time_ns)
            elif state.target is not None:  # a symlink's state: where it pointed
                version = journal.new_version(None, state=COMMITTED, staged=False, size=len(state.target),
                                              mode=0o777, mtime_ns=state.time_ns, path=path,
                                              sealed_ns=state.time_ns, target=state.target)
            journal.add_history(path, state.time_ns, version)
    root, replayed_root = journal.inode(ROOT_INODE), tree.entries[b""]
    if root is not None and replayed_root.mtime_ns:  # the lake's root times, once anything was put in it
        root.mtime_ns, root.ctime_ns = replayed_root.mtime_ns, max(replayed_root.ctime_ns, replayed_root.mtime_ns)
        journal.save_inode(root)
    inodes = {b"": ROOT_INODE}
    by_entry: dict[int, int] = {}  # id(Entry) -> ino: hard links are one entry under several paths
    for path in sorted(tree.entries, key=lambda p: (p.count(b"/"), p)):
        if not path:
            continue
        entry = tree.entries[path]
        parent_path, _, name = path.rpartition(b"/")
        ino = by_entry.get(id(entry))
        if ino is None:
            ino = by_entry[id(entry)] = _inode_for_entry(journal, path, entry, version_for).ino
        journal.add_dirent(inodes[parent_path], name, ino)
        inodes[path] = ino
    return tree  # RemoteChanges.start_from starts this mount's clock after what was read


_KIND_TYPES = {"dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "file": stat.S_IFREG, "fifo": stat.S_IFIFO,
               "socket": stat.S_IFSOCK, "char": stat.S_IFCHR, "block": stat.S_IFBLK}


def _inode_for_entry(journal: Journal, path: bytes, entry: namespace.Entry, version_for) -> Inode:
    """The journal inode of a replayed entry, with its owner (the mounting user where the lake's
    format-1 events did not record one), mode and times."""
    uid = entry.uid if entry.uid is not None else os.getuid()
    gid = entry.gid if entry.gid is not None else os.getgid()
    mode = _KIND_TYPES[entry.kind] | (0o777 if entry.kind == "symlink" else entry.mode)
    inode = journal.create_inode(mode, uid, gid, target=entry.target, time_ns=entry.mtime_ns,
                                 rdev=entry.rdev, node=entry.node)
    inode.atime_ns = entry.atime_ns if entry.atime_ns is not None else entry.mtime_ns
    inode.ctime_ns = entry.ctime_ns or entry.mtime_ns
    if entry.kind == "file":
        inode.size = entry.size
        if entry.manifest is not None:
            inode.version = version_for(path, entry.manifest, entry.size, entry.mode, entry.mtime_ns,
                                        entry.mtime_ns)
    journal.save_inode(inode)
    return inode


def prepare_journal(journal: Journal, staging: Staging, lake: Lake, view: LogView, *,
                    new_mount_id: str | None = None, rebooted: bool = False) -> tuple[str, namespace.Namespace | None]:
    """Return this cache dir's mount id, and the lake's replayed tree (from `view`) if the cache dir
    was new and rebuilt from it (None after a repair of an existing one). A new cache dir gets
    `new_mount_id`, or a random one. `rebooted`: the machine restarted since a daemon stopped
    without closing the cache dir (CacheDir.rebooted)."""
    mount_id = journal.get_meta("mount_id")
    if mount_id is None:
        tree = rebuild_from_lake(journal, view)
        mount_id = new_mount_id or uuid.uuid4().hex[:16]
        journal.set_meta("mount_id", mount_id)
        journal.commit(durable=True)
        log.info("new cache dir: %d entries rebuilt from %s; mount id %s", len(tree.entries) - 1, lake.store.url,
                 mount_id)
        return mount_id, tree
    known = set()
    synced = journal.synced_versions()
    for version in journal.staged_versions():
        known.add(version.id)
        if version.state != COMMITTED:
            continue
        # Its bytes are in the lake. The staging copy serves reads only if it is whole: a power cut
        # keeps of an unsynced file whatever part reached the disk (cache/check.py), and a reboot
        # after an unclean stop may have kept any part of it.
        size = staging.sizes.get(version.id)  # as listed when the cache dir was opened: one stat a file
        if size is not None and (size != version.size or (rebooted and version.id not in synced)):
            log.info("not reading version %x from its staging copy (%d of %d bytes%s): from the lake instead",
                     version.id, size, version.size, ", unsynced before a reboot" if rebooted else "")
            staging.remove(version.id)
            size = None
        if size is None:
            journal.update_version(version.id, staged=0)
    for identifier in staging.versions_on_disk():
        if identifier not in known:
            staging.remove(identifier)
    for ino in journal.orphan_inodes():
        inode = journal.inode(ino)
        if inode and inode.version is not None and (v := journal.version(inode.version)) and v.state == OPEN:
            log.info("dropping open version %x (%d bytes): its file was unlinked while open before a crash",
                     v.id, staging.sizes.get(v.id, 0))
            staging.remove(v.id)
            journal.delete_version(v.id)
        journal.delete_inode(ino)
    journal.commit(durable=True)
    return mount_id, None
