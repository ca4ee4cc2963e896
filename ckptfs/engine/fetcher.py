"""The read path for versions not in the local cache: manifests and chunks fetched on demand.

A read maps its byte range onto the manifest's chunk table (bisect), fetches the chunks it needs in
parallel worker threads, verifies each against its id (codec.decode) and keeps it in the shared chunk
cache. Sequential readers get read-ahead: the next chunks are fetched in the background. Two readers
asking for the same chunk share one GET. A damaged or missing chunk raises CorruptObjectError; it is
never replaced by other bytes.
"""

from __future__ import annotations

import bisect
import logging
import os
from collections import OrderedDict

import trio

from ckptfs.cache.chunkcache import ChunkCache
from ckptfs.errors import CkptfsError, CorruptObjectError
from ckptfs.lake import Lake
from ckptfs.lake.manifest import Manifest

log = logging.getLogger(__name__)


class Fetcher:
    def __init__(self, lake: Lake, chunk_cache: ChunkCache, *, network_threads: int = 32,
                 readahead_chunks: int = 8, readahead_max_chunks: int = 128, memory_chunks: int = 16) -> None:
        self.lake = lake
        self.chunk_cache = chunk_cache
        self.network = trio.CapacityLimiter(network_threads)
        self.disk = trio.CapacityLimiter(8)  # chunk cache reads
        self.readahead_chunks = readahead_chunks
        self.readahead_max_chunks = readahead_max_chunks
        # id of a manifest's chunk list -> read-ahead depth: doubles with every sequential read, up to
        # the maximum (~150 MiB of ~1.2 MiB chunks), so a restore keeps every network thread busy
        # while a reader that jumps around fetches only what it reads.
        self._depth: dict[int, int] = {}
        self._manifests: OrderedDict[str, tuple[Manifest, list[int]]] = OrderedDict()
        self._memory: OrderedDict[bytes, bytes] = OrderedDict()
        self._memory_chunks = memory_chunks
        self._inflight: dict[bytes, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        self.fetched_bytes = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def manifest(self, identifier: str) -> tuple[Manifest, list[int]]:
        cached = self._manifests.get(identifier)
        if cached is None:
            value = await trio.to_thread.run_sync(self.lake.get_manifest, identifier, limiter=self.network)
            cached = (value, value.offsets())
            self._manifests[identifier] = cached
            while len(self._manifests) > 64:
                self._manifests.popitem(last=False)
        self._manifests.move_to_end(identifier)
        return cached

    async def chunk(self, identifier: bytes) -> bytes:
        while True:
            data = self._memory.get(identifier)
            if data is not None:
                self._memory.move_to_end(identifier)
                return data
            waiting = self._inflight.get(identifier)
            if waiting is None:
                break
            # Another reader is fetching it. Look again afterwards: on success the chunk is cached;
            # on failure exactly one of the waiters takes the slot and tries again.
            await waiting.wait()
        done = self._inflight[identifier] = trio.Event()
        try:
            if identifier in self.chunk_cache:
                # Off the event loop: a cache read waits for the disk and hashes a MiB, and every
                # other request (and the read-ahead) would wait behind it.
                data = self.chunk_cache.loaded(identifier, await trio.to_thread.run_sync(
                    self.chunk_cache.load, identifier, limiter=self.disk))
                if data is not None:
                    self._remember(identifier, data)
                    return data
            try:
                data = await trio.to_thread.run_sync(self.lake.get_chunk, identifier, limiter=self.network)
            except CorruptObjectError as error:
                log.error("cannot read %s", error)
                raise
            self.fetched_bytes += len(data)
            self.chunk_cache.put(identifier, data)
            self._remember(identifier, data)
            return data
        finally:
            del self._inflight[identifier]
            done.set()

    def _remember(self, identifier: bytes, data: bytes) -> None:
        self._memory[identifier] = data
        while len(self._memory) > self._memory_chunks:
            self._memory.popitem(last=False)

    async def read(self, manifest_id: str, offset: int, size: int, *, sequential: bool = False) -> bytes:
        manifest, offsets = await self.manifest(manifest_id)
        if manifest.inline is not None:
            return manifest.inline[offset:offset + size]
        return await self.read_chunks(manifest.chunks, offsets, manifest.size, offset, size, sequential=sequential)

    async def read_chunks(self, chunks: list[tuple[bytes, int]], offsets: list[int], total: int, offset: int,
                          size: int, *, sequential: bool = False) -> bytes:
        """Bytes [offset, offset + size) of the `total` bytes made of `chunks` (starting at `offsets`)."""
        end = min(total, offset + size)
        if offset >= end:
            return b""
        first = bisect.bisect_right(offsets, offset) - 1
        last = bisect.bisect_right(offsets, end - 1) - 1
        wanted = range(first, last + 1)
        pieces: dict[int, bytes] = {}
        for index in wanted:  # the usual case when warm: no task, no thread
            data = self._memory.get(chunks[index][0])
            if data is not None:
                self._memory.move_to_end(chunks[index][0])
                pieces[index] = data
        failures: list[Exception] = []

        async def fetch(index: int) -> None:
            try:
                pieces[index] = await self.chunk(chunks[index][0])
            except Exception as error:  # noqa: BLE001 - the read fails with the first error, below
                failures.append(error)
                nursery.cancel_scope.cancel()

        missing = [index for index in wanted if index not in pieces]
        if missing:
            async with trio.open_nursery() as nursery:
                for index in missing:
                    nursery.start_soon(fetch, index)
        if failures:
            raise failures[0]
        if sequential and self._nursery is not None:
            depth = min(self.readahead_max_chunks, 2 * self._depth.get(id(chunks), self.readahead_chunks // 2))
            self._depth[id(chunks)] = depth
            if len(self._depth) > 256:
                self._depth.pop(next(iter(self._depth)))
            for index in range(last + 1, min(len(chunks), last + 1 + depth)):
                identifier = chunks[index][0]
                if (identifier not in self._inflight and identifier not in self._memory
                        and identifier not in self.chunk_cache):
                    self._nursery.start_soon(self._prefetch, identifier)
        elif not sequential:
            self._depth.pop(id(chunks), None)
        # Copy only the bytes asked for: a read is usually a slice of one chunk (the kernel asks
        # 128 KiB at a time), and joining whole chunks first copied each MiB eight times.
        parts = []
        for index in wanted:
            low = max(offset, offsets[index]) - offsets[index]
            high = min(end, offsets[index] + chunks[index][1]) - offsets[index]
            parts.append(memoryview(pieces[index])[low:high])
        return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)

    async def _prefetch(self, identifier: bytes) -> None:
        try:
            await self.chunk(identifier)
        except Exception as error:  # noqa: BLE001 - a failed prefetch is retried by the real read
            log.debug("prefetch of %s failed: %s", identifier.hex(), error)

    async def prefetch(self, manifest_ids: list[str], progress: dict[str, int]) -> None:
        """Bring every chunk of these versions into the chunk cache (`ckptfs prefetch`), every
        network thread busy; `progress` counts the bytes done of the bytes to do."""
        wanted: dict[bytes, int] = {}
        for identifier in manifest_ids:
            manifest, _ = await self.manifest(identifier)
            for chunk, length in manifest.chunks:
                wanted.setdefault(chunk, length)
        progress["total_bytes"] = sum(wanted.values())
        progress["done_bytes"] = sum(length for chunk, length in wanted.items() if chunk in self.chunk_cache)
        missing = [(chunk, length) for chunk, length in wanted.items() if chunk not in self.chunk_cache]
        if sum(length for _, length in missing) + self.chunk_cache.used_bytes > self.chunk_cache.limit_bytes:
            raise CkptfsError(f"{progress['total_bytes']} bytes do not fit in the chunk cache "
                              f"({self.chunk_cache.limit_bytes} bytes: a quarter of --cache-size)")
        queue = iter(missing)

        async def worker() -> None:
            for chunk, length in queue:
                if chunk not in self.chunk_cache:
                    await self.chunk(chunk)
                progress["done_bytes"] += length

        async with trio.open_nursery() as nursery:
            for _ in range(self.network.total_tokens):
                nursery.start_soon(worker)

    async def read_all_into(self, manifest_id: str, fd: int) -> None:
        """Write a whole version into a local file (copy-on-write of a remote-only file)."""
        manifest, offsets = await self.manifest(manifest_id)
        if manifest.inline is not None:
            os.pwrite(fd, manifest.inline, 0)
        for (identifier, _), start in zip(manifest.chunks, offsets, strict=True):
            os.pwrite(fd, await self.chunk(identifier), start)
        os.ftruncate(fd, manifest.size)
