"""The upload pipeline: sealed versions -> chunks -> manifest -> published namespace events.

Version workers take sealed versions in seal order, cut their staging file into content-defined
chunks (worker thread) while the chunk path (engine/chunks.py) hashes, dedups, compresses and PUTs
them, then PUT the manifest and mark the version committed in the journal. The publisher
(engine/publisher.py) turns the outbox into log segments once the versions they name are
committed. Files written sequentially have their prefix uploaded before the seal (engine/prefix.py).

Journal access happens only on the trio thread; threads do CPU and network work only.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import time
from collections.abc import Callable

import trio

from ckptfs.cache.journal import COMMITTED, SEALED, Journal, Version
from ckptfs.cache.staging import Staging
from ckptfs.engine.chunks import ChunkUploads
from ckptfs.engine.leases import Leases, StaleLocations
from ckptfs.engine.prefix import DEFAULT_ROUND_BYTES, PrefixUploads
from ckptfs.engine.progress import Progress
from ckptfs.engine.publisher import Publisher
from ckptfs.engine.spill import Spill
from ckptfs.engine.tasks import first_failure_wins
from ckptfs.errors import CkptfsError
from ckptfs.lake import Lake, codec
from ckptfs.lake.chunker import Chunker, Cut
from ckptfs.lake.manifest import INLINE_LIMIT, Manifest
from ckptfs.store import StoreError

log = logging.getLogger(__name__)


# Versions uploaded at once. A small file is one manifest PUT: with 2, 1,000 files on the S3 model
# (100 ms to first byte) took 107 s to upload. Memory stays bounded by the chunk path's slots.
VERSION_WORKERS = 16


class Uploader:
    def __init__(self, journal: Journal, staging: Staging, lake: Lake, mount_id: str, *,
                 network_threads: int = 16, version_workers: int = VERSION_WORKERS,
                 round_bytes: int = DEFAULT_ROUND_BYTES, spill: Spill | None = None,
                 on_committed: Callable[[int], None] = lambda version: None,
                 on_uncommitted: Callable[[int], None] = lambda version: None,
                 on_published: Callable[[int, list[dict], int], None] = lambda seq, events, published_ns: None,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.journal = journal
        self.staging = staging
        self.lake = lake
        self.mount_id = mount_id
        self.progress = Progress()
        self.chunks = ChunkUploads(journal, staging, lake, self.progress, network_threads=network_threads,
                                   clock=clock)
        self.network, self.cpu, self.sent = self.chunks.network, self.chunks.cpu, self.chunks.sent
        self.leases = Leases(lake, self.network, clock=clock)
        self.manifest_written: dict[int, int] = {}  # version -> when its manifest was PUT
        # Cutting threads wait on their channel while the chunk path catches up: they must not hold
        # the chunk path's `cpu` tokens meanwhile, or as many versions as cores cutting at once
        # leave none for reading and hashing, and every upload stops.
        self._cutting = trio.CapacityLimiter(max(1, os.cpu_count() or 1))
        self.publisher = Publisher(journal, lake, mount_id, self.progress, self.network, self._record_error,
                                   on_published, recheck=self._recheck)
        self._version_workers = version_workers
        # Sealed versions to upload, in seal order; every worker takes from it. (A wake-up Event
        # replaced by each worker that went to sleep woke only the last one: uploads ran one at a
        # time whatever the number of workers.)
        self._queue_send, self._queue = trio.open_memory_channel[int](math.inf)
        self._queued: set[int] = set()  # submitted and not yet committed (retries included)
        self.active: set[int] = set()  # sealed versions a version worker is on
        self.last_error: str | None = None
        self.last_error_time: float | None = None
        self.on_committed = on_committed  # the evictor learns of clean data here
        self.on_uncommitted = on_uncommitted  # ... and that it is dirty again (_recheck)
        self.prefix = PrefixUploads(self.chunks, round_bytes, spill)

    # -- queueing and waiting -----------------------------------------------------------------
    def submit(self, version: int) -> None:
        if version not in self._queued:
            self._queued.add(version)
            self._queue_send.send_nowait(version)
        self.publisher.poke()

    def busy(self) -> bool:
        """Whether uploads are queued or running: more committed (evictable) data is coming."""
        return bool(self._queued)

    def poke(self) -> None:
        """An outbox event without a version (mkdir, rename, unlink) is ready to publish."""
        self.publisher.poke()

    def notify_progress(self) -> None:
        self.progress.notify()

    async def wait_for_progress(self) -> None:
        await self.progress.wait()

    async def wait_published(self, upto: int) -> None:
        await self.publisher.wait_published(upto)

    def outbox_head(self) -> int:
        return self.publisher.outbox_head()

    # -- tasks --------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        for version in self.journal.versions_in_state(SEALED):
            self.submit(version.id)
        async with trio.open_nursery() as nursery:
            await nursery.start(self.prefix.run)
            for _ in range(self._version_workers):
                nursery.start_soon(self._version_worker, self._queue.clone())
            nursery.start_soon(self.publisher.run)
            task_status.started()

    async def _version_worker(self, queue: trio.MemoryReceiveChannel[int]) -> None:
        async for version in queue:
            try:
                await self._upload_version(version)
            except StaleLocations as error:
                log.info("%s", error)
                self._queue_send.send_nowait(version)  # at once: its dedup now skips those objects
                continue
            except Exception as error:  # noqa: BLE001 - a worker must survive anything; staged data stays
                if not isinstance(error, (StoreError, OSError, CkptfsError)):
                    log.exception("unexpected failure uploading version %x", version)
                self._record_error(f"upload of version {version:x}: {error}")
                await trio.sleep(5)
                self._queue_send.send_nowait(version)  # again, behind what was queued meanwhile
                continue
            finally:
                self.active.discard(version)
                self.sent.pop(version, None)
                self.chunks.placed.pop(version, None)
            self._queued.discard(version)
            self.publisher.poke()
            self.notify_progress()

    def _record_error(self, message: str) -> None:
        log.error("%s (staged data is kept; will retry)", message)
        self.last_error, self.last_error_time = message, time.time()

    async def _upload_version(self, identifier: int) -> None:
        version = self.journal.version(identifier)
        if version is None or version.state != SEALED:
            return
        self.active.add(identifier)
        early = await self.prefix.take(identifier, version.size)
        start = early.done if early is not None else 0
        if self.staging.holes.get(identifier, 0) > start:
            raise CkptfsError(f"version {identifier:x} has a punched prefix but no record of its chunks")
        self.sent[identifier] = start
        fd = os.open(self.staging.path(identifier), os.O_RDONLY)
        try:
            if version.size <= INLINE_LIMIT:
                inline = await trio.to_thread.run_sync(os.pread, fd, version.size, 0)
                entries: list[tuple[bytes, int]] = []
                new_bytes = stored_bytes = 0
            else:
                inline = None
                entries, new_bytes, stored_bytes = await self._cut_and_upload(identifier, fd, version.size, start)
                if early is not None:
                    entries = early.entries + entries
                    new_bytes += early.new_bytes
                    stored_bytes += early.stored_bytes
        finally:
            os.close(fd)
        if inline is not None and len(inline) != version.size:
            raise CkptfsError(f"staging file of version {identifier:x} is shorter than its size")
        locations = []
        placed = self.chunks.placed.pop(identifier, {})
        for chunk, _ in entries:  # every chunk is in the lake by now, and the journal knows where
            where = placed.get(chunk) or self.chunks.known(chunk)
            if where is None:
                raise CkptfsError(f"version {identifier:x}: no location known for chunk {chunk.hex()}")
            locations.append(where)
        manifest = Manifest(path=version.path or b"", size=version.size, mode=version.mode,
                            mtime_ns=version.mtime_ns, mount=self.mount_id, time_ns=version.sealed_ns or 0,
                            chunks=entries, inline=inline, locations=locations)
        await self._check_leases(identifier, manifest.object_keys())
        manifest_id = await trio.to_thread.run_sync(self.lake.put_manifest, manifest, limiter=self.network)
        written = self.leases.clock()
        self.leases.vouch(manifest.object_keys(), written)
        self.manifest_written[identifier] = written
        self.journal.update_version(identifier, state=COMMITTED, manifest=manifest_id, stored_bytes=stored_bytes)
        self.journal.add_counter("versions_committed", 1)
        self.journal.add_counter("logical_bytes", version.size)
        self.journal.add_counter("new_chunk_bytes", new_bytes)
        self.journal.add_counter("stored_bytes", stored_bytes)
        self.journal.commit(durable=True)
        self.on_committed(identifier)
        log.info("committed version %x (%s, %d bytes, %d new)", identifier, version.path, version.size, new_bytes)

    async def _check_leases(self, identifier: int, keys: set[str]) -> None:
        """Garbage collection's writer rule (engine/leases.py): a manifest names only objects that
        will still be there. Chunks in one that is not are uploaded again, by the retry."""
        for key in keys & self.chunks.written.keys():
            self.leases.vouch([key], self.chunks.written[key])
        bad = await self.leases.unsafe(keys)
        if not bad:
            return
        self._avoid(bad)
        self.journal.commit()
        raise StaleLocations(f"version {identifier:x}: {len(bad)} lake objects its chunks were deduplicated "
                             "against are marked or deleted by garbage collection; uploading those chunks again")

    def _avoid(self, bad: set[str]) -> None:
        """Never dedup against these objects again; forget the chunk locations in those GC deleted
        (a marked one still holds its chunks, and a spilled prefix may still be read from it)."""
        self.chunks.avoid |= bad
        self.journal.forget_objects(bad - self.leases.marked.keys())

    async def _recheck(self, versions: list[int]) -> bool:
        """Before publishing: a version whose manifest was written more than half a grace ago (or
        before a restart) is checked again, since GC may have marked what it names meanwhile. One
        that fails is uploaded again from its staging file; False: the batch must wait for it."""
        now = self.leases.clock()
        ready = True
        for identifier in versions:
            if now - self.manifest_written.get(identifier, 0) <= self.lake.grace_ns // 2:
                continue
            version = self.journal.version(identifier)
            if version is None or version.manifest is None:
                continue
            manifest = await trio.to_thread.run_sync(self.lake.get_manifest, version.manifest, limiter=self.network)
            bad = await self.leases.unsafe(manifest.object_keys())
            if not bad:
                self.manifest_written[identifier] = now
                continue
            if not version.staged or self.staging.holes.get(identifier):
                log.error("version %x (%s) waited to be published until GC marked %d objects it names, and its "
                          "data is no longer staged: publishing it as it is", identifier, version.path, len(bad))
                continue
            log.warning("version %x (%s) waited to be published until GC marked %d objects it names: "
                        "uploading it again", identifier, version.path, len(bad))
            self._avoid(bad)
            self.journal.update_version(identifier, state=SEALED, manifest=None)
            self.journal.commit()
            self.on_uncommitted(identifier)
            self.submit(identifier)
            ready = False
        return ready

    async def _cut_and_upload(self, version: int, fd: int, size: int, start: int,
                              ) -> tuple[list[tuple[bytes, int]], int, int]:
        """Cut a sealed staging file from `start` in a thread while its first chunks already upload."""
        send, receive = trio.open_memory_channel[list[Cut]](4)
        result: tuple[list[tuple[bytes, int]], int, int] = ([], 0, 0)

        async def cut() -> None:
            async with send:
                await trio.to_thread.run_sync(_cut_file_into, send, fd, size, start, self.lake.chunking_profile,
                                              limiter=self._cutting)

        async def upload() -> None:
            nonlocal result
            async with receive:
                result = await self.chunks.upload_chunks(version, fd, receive)

        async with first_failure_wins() as tasks:
            tasks.start_soon(cut)
            tasks.start_soon(upload)
        if sum(length for _, length in result[0]) != size - start:
            raise CkptfsError(f"cutting version {version:x} stopped short")
        return result

    # -- figures ------------------------------------------------------------------------------
    def pending_of(self, version: Version) -> int:
        """Bytes of a sealed version not yet sent to the lake."""
        sent = self.sent.get(version.id) if version.id in self.active else self.prefix.early_bytes(version.id)
        return max(0, version.size - (sent or 0))

    def pending_bytes(self) -> int:
        """Bytes of sealed versions not yet sent to the lake, without reading every sealed version:
        what `ckptfs sync` polls while thousands of files wait."""
        _, size, _ = self.journal.versions_summary(SEALED)
        sent = sum(self.sent.get(version, 0) for version in self.active)
        sent += sum(self.prefix.early_bytes(version) for version in self.prefix.versions()
                    if version in self._queued and version not in self.active)
        return max(0, size - sent)


CUT_BATCH = 16


def _cut_file_into(send: trio.MemorySendChannel[list[Cut]], fd: int, size: int, start: int, profile: int) -> None:
    """In a worker thread: send the cuts of a sealed staging file from `start` (one of its cuts) to
    its end, a batch at a time, each with its chunk's id: hashed here while the chunker has just
    brought its pages in, so that a chunk the lake already holds is never read again (an identical
    re-save read, hashed and handed to threads every byte a second time). Stops quietly if the
    receiver has gone (its upload failed)."""
    if size <= start:
        return
    batch: list[Cut] = []
    try:
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mapped:
            cuts = Chunker(profile).cut(mapped, skip=start)
            whole = memoryview(mapped)
            try:
                for cut in cuts:
                    with whole[cut.offset:cut.offset + cut.length] as piece:
                        batch.append(Cut(cut.offset, cut.length, codec.chunk_id(piece)))
                    if len(batch) == CUT_BATCH:
                        trio.from_thread.run(send.send, batch)
                        batch = []
            finally:
                cuts.close()  # release the views of the mapping before the mapping closes
                whole.release()
        if batch:
            trio.from_thread.run(send.send, batch)
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.Cancelled):
        return
