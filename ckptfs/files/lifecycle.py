"""File versions from the first change to the seal: copy-on-write, backpressure, reads of any version.

A file's content is its inode's current version. Changes go into that version's staging file while
it is OPEN; the first change after a version is sealed starts a new version as a copy
(copy-on-write), so a sealed version never changes. Sealing records the version in the history of
every name the file has and queues its `put` event: nothing more.

What it must never do: wait for the network before a change lands in the staging file (except to
bring back a spilled prefix the change overwrites), or let a change land in a version that is not
the file's OPEN current one.
"""

from __future__ import annotations

import errno
import logging
import os

import trio

from ckptfs.cache.journal import OPEN, SEALED, Inode, Journal, Version
from ckptfs.cache.staging import Staging
from ckptfs.engine.interface import Engine
from ckptfs.errors import CkptfsError, FsError
from ckptfs.files.changes import ChangesInFlight
from ckptfs.files.outbox import Outbox
from ckptfs.store import ObjectArchived

log = logging.getLogger(__name__)


class Lifecycle:
    def __init__(self, journal: Journal, staging: Staging, engine: Engine, outbox: Outbox) -> None:
        self.journal = journal
        self.staging = staging
        self.engine = engine
        self.outbox = outbox
        self.open_count: dict[int, int] = {}  # inode -> open handles (a mapping holds its handle)
        self.changes = ChangesInFlight()
        self._preparing: dict[int, trio.Event] = {}  # inode -> set once its new version is ready

    def current(self, inode: Inode) -> Version | None:
        return self.journal.version(inode.version) if inode.version is not None else None

    # -- changes ------------------------------------------------------------------------------
    async def writable_version(self, inode: Inode, offset: int | None, *, empty: bool = False) -> int:
        """The file's OPEN version, ready for a change at `offset` (None: no restore of a spilled prefix
        is needed, as for truncation to zero). Starts a new version if the current one is sealed.

        The kernel sends WRITEs concurrently (a mapping's write-back, threads, other processes), and
        every await here lets other handlers run. So the caller must change the version it gets back
        before its next await, and only this method starts versions: while one is being prepared
        (copy of the sealed content, refill of a spilled prefix) every other change to the file waits
        for it and then looks again, instead of starting a copy of its own.
        """
        while True:
            preparing = self._preparing.get(inode.ino)
            if preparing is not None:
                await preparing.wait()
                continue
            current = self.current(inode)
            if current is None or current.state != OPEN:
                await self._start_version(inode, current, empty=empty)
                continue
            if offset is not None and await self.engine.before_change(current.id, offset):
                continue  # it awaited: the version may have been sealed meanwhile
            return current.id

    async def _start_version(self, inode: Inode, current: Version | None, *, empty: bool) -> None:
        """Start a new OPEN version of a file as a copy of `current` (or empty) and make it current.

        `empty`: the caller truncates it to 0 at once (O_TRUNC), so a new version starts empty rather
        than as a copy of content about to be thrown away.
        """
        done = self._preparing[inode.ino] = trio.Event()
        identifier = self.journal.new_version(inode.ino, mode=inode.mode & 0o7777)
        try:
            if current is None or empty:
                self.staging.create(identifier)
            elif current.staged and self.staging.exists(current.id) and not (current.hole_end and current.manifest):
                self.staging.pinned.add(current.id)
                try:
                    await trio.to_thread.run_sync(self.staging.create, identifier, current.id)
                    if current.hole_end:
                        await self.engine.fill_spilled(current, self.staging.fd(identifier))  # still uploading
                finally:
                    self.staging.pinned.discard(current.id)
            else:
                self.staging.create(identifier)
                await self.engine.read_all_into(current.manifest, self.staging.fd(identifier))
                self.staging.refresh_size(identifier)
            inode.version = identifier
            self.journal.save_inode(inode)
        except BaseException:
            self.remove_staged(identifier)  # a partial copy: the file keeps its current version
            self.journal.delete_version(identifier)
            raise
        finally:
            del self._preparing[inode.ino]
            done.set()

    # -- the staging file of a version: every change the engine must know of goes through here --
    def write_staged(self, version: int, data: bytes, offset: int) -> int:
        written = self.staging.write(version, data, offset)
        self.engine.written(version, offset, written)
        return written

    def truncate_staged(self, version: int, size: int) -> None:
        self.staging.truncate(version, size)
        self.engine.truncated(version, size)

    def remove_staged(self, version: int) -> None:
        """A version's staging file goes, and with it what the engine did of it early."""
        self.staging.remove(version)
        self.engine.forget(version)

    # -- seal ---------------------------------------------------------------------------------
    def seal(self, inode: Inode) -> int | None:
        """Seal the file's OPEN version: it becomes immutable, part of history, queued for upload."""
        version = self.current(inode)
        if version is None or version.state != OPEN:
            return None
        paths = self.journal.paths_of(inode.ino)
        if not paths:
            return None  # unlinked while open: nothing can name it; dropped with the inode
        when = self.outbox.event_time()
        size = self.staging.size(version.id)
        inode.size = size
        self.journal.save_inode(inode)
        self.journal.update_version(version.id, state=SEALED, size=size, mode=inode.mode & 0o7777,
                                    mtime_ns=inode.mtime_ns, path=paths[0], sealed_ns=when)
        for path in paths:  # hard links share the content: every name's history gets the version
            self.journal.add_history(path, when, version.id)
        directory = self.journal.lookup_path(paths[0].rpartition(b"/")[0])
        directory_inode = self.journal.inode(directory) if directory is not None else None
        self.outbox.enqueue("put", paths[0], when, version=version.id, uid=inode.uid, gid=inode.gid,
                            atime_ns=inode.atime_ns, node=self.outbox.node_id(inode),
                            dir_mtime_ns=directory_inode.mtime_ns if directory_inode is not None else None)
        self.journal.commit()
        self.engine.submit(version.id)
        return version.id

    def seal_unheld_versions(self) -> int:
        """Seal every OPEN version that no handle can write to any more (a mapping holds its handle
        open): left by a killed daemon, or by a close this mount missed. Versions that are not their
        file's content (unlinked, or a copy interrupted by a crash) are dropped, with a log line.
        Returns how many were sealed."""
        sealed = dropped = 0
        for version in self.journal.versions_in_state(OPEN):
            if version.ino is not None and (self.open_count.get(version.ino) or version.ino in self._preparing):
                continue
            inode = self.journal.inode(version.ino) if version.ino is not None else None
            if inode is not None and inode.version == version.id and self.seal(inode) is not None:
                log.info("sealed version %x of %r: open with no handle left", version.id,
                         self.journal.path_of(inode.ino))
                sealed += 1
                continue
            log.warning("dropping open version %x (%d bytes written): %s", version.id,
                        self.staging.sizes.get(version.id, 0),
                        "its file was unlinked" if inode is not None and inode.version == version.id
                        else "it is not its file's content (a copy interrupted by a crash)")
            self.remove_staged(version.id)
            self.journal.delete_version(version.id)
            dropped += 1
        if sealed or dropped:
            self.journal.commit(durable=True)
        return sealed

    # -- reads --------------------------------------------------------------------------------
    async def read_version(self, version_id: int, offset: int, size: int, *, sequential: bool) -> bytes | memoryview:
        version = self.journal.version(version_id)
        if version is None:
            raise FsError(f"version {version_id:x} is gone", errno=errno.ENOENT)
        if version.staged and version.hole_end > offset and self.engine.spills:
            if version.manifest is None:  # spilled while written, not committed yet
                return await self.engine.read_spilled(version, offset, size, sequential=sequential)
        elif version.staged:
            self.engine.used(version_id)
            return os.pread(self.staging.fd(version_id), size, offset)
        if version.manifest is None:
            raise CkptfsError(f"version {version_id:x} has neither local data nor a manifest")
        try:
            return await self.engine.read(version.manifest, offset, size, sequential=sequential)
        except ObjectArchived as error:  # at once, never a hang: a retention policy moved it
            raise CkptfsError(f"{(version.path or b'?').decode(errors='replace')} (version of "
                              f"{version.mtime_ns / 1e9:.0f}, manifest {version.manifest}) is in an archive storage "
                              f"class: {error}") from None
