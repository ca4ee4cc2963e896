"""The mount's file system assembled from its parts, and the requests that span several of them."""

from __future__ import annotations

import errno
import os
import stat

from ckptfs.cache.journal import Journal
from ckptfs.cache.staging import Staging
from ckptfs.engine.interface import Engine
from ckptfs.errors import FsError
from ckptfs.files import history
from ckptfs.files.attributes import AttributeChanges, Attributes, Caller
from ckptfs.files.control import Control
from ckptfs.files.handles import Handles
from ckptfs.files.lifecycle import Lifecycle
from ckptfs.files.outbox import Outbox
from ckptfs.files.remote import RemoteChanges
from ckptfs.files.tree import Tree
from ckptfs.lake.replay import LakeReplay
from ckptfs.lake.retention import FOLD_NS


class FileSystem:
    def __init__(self, journal: Journal, staging: Staging, engine: Engine, replay: LakeReplay, *,
                 mount_id: str, durability: str = "local", fold_ns: int = FOLD_NS) -> None:
        self.journal = journal
        self.staging = staging
        self.engine = engine
        self.outbox = Outbox(journal, engine, mount_id)
        self.lifecycle = Lifecycle(journal, staging, engine, self.outbox)
        self.tree = Tree(journal, staging, self.outbox, self.lifecycle, fold_ns=fold_ns)
        self.handles = Handles(journal, staging, engine, self.tree, self.lifecycle, durability=durability)
        self.control = Control(journal, staging, engine, mount_id)
        self.remote = RemoteChanges(journal, self.tree, self.lifecycle, self.outbox, replay)

    def commit(self, *, durable: bool = False) -> None:
        self.tree.commit(durable=durable)

    async def setattr(self, ino: int, changes: AttributeChanges, fh: int | None) -> Attributes:
        if history.is_virtual(ino):
            raise FsError("the .versions tree is read-only", errno=errno.EROFS)
        if changes.size is not None:
            await self.handles.truncate(ino, changes.size, fh)
        self.tree.set_metadata(ino, changes)
        self.commit()
        return self.tree.attributes(ino)

    def mknod(self, parent: int, name: bytes, mode: int, rdev: int, caller: Caller) -> Attributes:
        """A regular file made with mknod(2) is an empty file with its first version sealed."""
        if stat.S_IFMT(mode) == stat.S_IFREG:
            opened, attributes = self.handles.create(parent, name, mode, os.O_WRONLY | os.O_CREAT, caller)
            self.handles.release(opened.fh)
            return attributes
        return self.tree.mknod_special(parent, name, mode, rdev, caller)
