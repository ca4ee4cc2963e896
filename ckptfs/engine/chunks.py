"""The chunk path: hash each chunk of a staging file, skip what the lake holds (dedup), compress where it
pays, and pack the rest (lake/packs.py): the chunks of one call go into its packs in file order, so a
reader fetches a run of them with one ranged GET; a pack is PUT once PACK_BYTES are in it, or when the
call's chunks end. Used by the version workers (engine/uploader.py) and by the rounds that upload a
file while it is written (engine/prefix.py). Where each chunk went is recorded in the journal's
known chunks and, for the version's own packs, in `placed`: its manifest names those copies first.

Memory is bounded three times: chunks read but not yet in a pack by `slots`, packs being filled by
the calls running at once (CALLS_AT_ONCE, one pack each), packs being PUT by PACKS_IN_FLIGHT (each up
to PACK_BYTES): 384 MiB at most. A pack takes its PUT slot only once it is full: a pack slot held by a
pack still waiting for chunks, while the chunk slots it waited for were held by calls waiting for a
pack slot, stopped every upload once more calls ran than there were pack slots.

Journal access happens only on the trio thread; threads do CPU and network work only.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial

import trio

from ckptfs import libc
from ckptfs.cache.journal import Journal
from ckptfs.cache.staging import Staging
from ckptfs.engine.progress import Progress
from ckptfs.engine.tasks import first_failure_wins
from ckptfs.errors import CkptfsError
from ckptfs.lake import Lake, codec, packs
from ckptfs.lake.chunker import Cut
from ckptfs.lake.packs import Location, object_key

# 32 MiB: 32 PUTs per GiB of new data, under the 64 the lake's budget allows with manifests and
# segments; 8 in flight fill 8 connections (~85 MB/s each on S3) with 256 MiB of packs being PUT
# (docs/DESIGN.md, "Packs").
PACK_BYTES = 32 << 20
PACKS_IN_FLIGHT = 8
CALLS_AT_ONCE = 4  # calls filling packs at once (version uploads and upload-while-writing windows)
# Chunks below this are packed again even when the lake has them: the ~100-byte record headers of
# torch.save output (chunker profile 3) are the same in every save, and naming their old copies
# broke every run of a fresh file's chunks at every record (a 1 GiB restore: 519 GETs, not 37).
SMALL_CHUNK = 64 << 10
# Chunks read and hashed in one hand-off to a thread: trio's hand-off costs ~130 µs of CPU holding
# the GIL (ThreadCache.start_thread_soon: 10% of a save's GIL samples at one per chunk), and each
# batch is a message through the stages (trio task steps). 8, not 4: a fresh 0.5 GiB of torch.save
# output took the event loop 2,100 task steps per GiB instead of 3,200, ~20% less of its CPU; with
# the default 32 chunk slots, four batches are still read at once.
BATCH_CHUNKS = 8
# Chunks whose ids came with their cuts and that must be read all the same (small ones, packed
# again): up to this many bytes are read and hashed on the event loop, not handed to a thread. A
# torch.save record header is ~100 bytes, and an identical re-save read one per tensor: each a
# hand-off of ~130 µs holding the GIL, for ~10 µs of work.
READ_HERE = 256 << 10


# A chunk object as its pieces (codec.encode_parts: header, payload), copied once, into its pack.
_Object = tuple[bytes, bytes | memoryview]


@dataclass
class _Pack:
    """A pack being filled by one call: (chunk id, raw length, chunk object) in file order."""
    objects: list[tuple[bytes, int, _Object]] = field(default_factory=list)
    size: int = 0


@dataclass
class _Upload:
    """The state of one `upload_chunks` call, shared by its stages."""
    version: int
    fd: int
    slots: trio.Semaphore  # bounds the chunks in hand (read, hashed, waiting for their pack)
    entries: dict[int, tuple[bytes, int]] = field(default_factory=dict)  # index -> (chunk id, length)
    claimed: set[bytes] = field(default_factory=set)  # chunks this call packs; others wait for them
    elsewhere: set[bytes] = field(default_factory=set)  # chunks another call is packing
    holding: int = 0  # slots taken by chunks not yet in a pack or skipped
    count: int = 0  # cuts fed so far
    new_bytes: int = 0  # raw bytes of the chunks this call stored
    stored_bytes: int = 0  # bytes of the packs it PUT


# A chunk ready for packing: (chunk id, raw length, chunk object), or None if it needs no packing.
_Ready = tuple[bytes, int, _Object] | None


class ChunkUploads:
    def __init__(self, journal: Journal, staging: Staging, lake: Lake, progress: Progress, *,
                 network_threads: int = 16, pack_bytes: int = PACK_BYTES,
                 packs_in_flight: int = PACKS_IN_FLIGHT, clock: Callable[[], int] = time.time_ns) -> None:
        self.journal = journal
        self.clock = clock
        # Objects garbage collection has marked or deleted (engine/leases.py): never deduped against.
        self.avoid: set[str] = set()
        self.written: dict[str, int] = {}  # pack key -> when this mount PUT it (the leases vouch for it)
        self.staging = staging
        self.lake = lake
        self.progress = progress
        self.network = trio.CapacityLimiter(network_threads)
        self.cpu = trio.CapacityLimiter(max(1, os.cpu_count() or 1))
        self._chunk_slots = trio.Semaphore(network_threads * 2)  # bounds chunk bytes held in memory
        self._inflight_chunks: dict[bytes, trio.Event] = {}  # chunk id -> set once its pack landed or failed
        self._calls = trio.CapacityLimiter(CALLS_AT_ONCE)
        self._pack_slots = trio.Semaphore(packs_in_flight)  # taken by a full pack until its PUT ends
        self._packs_in_flight = packs_in_flight
        # Pack buffers whose PUT has ended, for the next packs: a fresh 32 MiB pack faulted in a page
        # per 4 KiB it held. Let go of once no upload runs, so an idle daemon does not keep them.
        self._pack_buffers: list[bytearray] = []
        self._hashers = 2 * max(1, os.cpu_count() or 1)  # reading, hashing, compressing: threads of `cpu`
        self.pack_bytes = pack_bytes
        self.sent: dict[int, int] = {}  # version id -> bytes of it in the lake so far
        # version id -> where its own packs put its chunks: its manifest names these copies rather
        # than older ones the journal knows (small chunks are packed again, next to their neighbours)
        self.placed: dict[int, dict[bytes, Location]] = {}

    async def upload_chunks(self, version: int, fd: int, cuts: list[Cut] | trio.MemoryReceiveChannel[list[Cut]],
                            slots: trio.Semaphore | None = None) -> tuple[list[tuple[bytes, int]], int, int]:
        """Hash, dedup and pack the chunks at `cuts` of a staging file: (entries, new bytes, stored bytes).
        When it returns, every chunk of `entries` is in the lake and its location in the journal.

        `cuts` is a list, or a channel of lists still being cut. `slots` bounds the chunks in hand at
        once (default: shared by all versions).

        A pipeline of stages over memory channels: feed (a slot per cut, a few cuts at a time) ->
        prepare (read, hash, dedup, compress; several at once) -> pack (in file order; a full pack takes a pack slot)
        -> put (PACKS_IN_FLIGHT at once, giving the slot back). The first failure stops every stage.
        """
        run = _Upload(version, fd, slots or self._chunk_slots)
        to_prepare_send, to_prepare = trio.open_memory_channel[tuple[int, list[Cut]]](0)
        # Unbounded, and bounded all the same: every chunk in it holds one of `run.slots`.
        to_pack_send, to_pack = trio.open_memory_channel[list[tuple[int, _Ready]]](math.inf)
        to_put_send, to_put = trio.open_memory_channel[_Pack](0)
        try:
            async with self._calls, first_failure_wins() as tasks:
                tasks.start_soon(self._feed, run, cuts, to_prepare_send)
                async with to_prepare, to_pack_send, to_put:
                    for _ in range(self._hashers):
                        tasks.start_soon(self._prepare, run, to_prepare.clone(), to_pack_send.clone())
                    tasks.start_soon(self._pack, run, to_pack, to_put_send)
                    for _ in range(self._packs_in_flight):
                        tasks.start_soon(self._put, run, to_put.clone())
        finally:
            for _ in range(run.holding):
                run.slots.release()
            self._release(list(run.claimed), run.claimed)  # what never reached a pack that landed
            if not self._calls.borrowed_tokens and self._pack_buffers:
                # let go of them in a thread of their own: their pages are given back without the
                # GIL, so neither this loop nor the other threads wait for the unmapping
                idle, self._pack_buffers = self._pack_buffers, []
                trio.lowlevel.start_thread_soon(partial(libc.release_pages, idle), lambda _: None)
        # Chunks another call was packing: theirs must land before a manifest names them.
        for identifier in run.elsewhere:
            while identifier in self._inflight_chunks:
                await self._inflight_chunks[identifier].wait()
            if self.known(identifier) is None:
                raise CkptfsError(f"chunk {identifier.hex()} of version {version:x}: the upload packing it failed")
        return [run.entries[number] for number in range(run.count)], run.new_bytes, run.stored_bytes

    # -- the stages ---------------------------------------------------------------------------
    async def _feed(self, run: _Upload, cuts: list[Cut] | trio.MemoryReceiveChannel[list[Cut]],
                    send: trio.MemorySendChannel[tuple[int, list[Cut]]]) -> None:
        """Hand on the cuts a few at a time (one thread hand-off reads and hashes them all), each
        with a slot: the first waited for, the others only if free at once, so a call given few
        slots never holds some while it waits for more."""
        async with send:
            async for batch in _batches(cuts):
                position = 0
                while position < len(batch):
                    await run.slots.acquire()
                    taken = 1
                    while taken < BATCH_CHUNKS and position + taken < len(batch):
                        try:
                            run.slots.acquire_nowait()
                        except trio.WouldBlock:
                            break
                        taken += 1
                    run.holding += taken
                    await send.send((run.count, batch[position:position + taken]))
                    run.count += taken
                    position += taken

    async def _prepare(self, run: _Upload, receive: trio.MemoryReceiveChannel[tuple[int, list[Cut]]],
                       send: trio.MemorySendChannel[list[tuple[int, _Ready]]]) -> None:
        """A batch of cuts read and hashed in one hand-off to a thread, handed on as one message: each
        message costs the event loop a pass of trio's scheduler (two tasks woken), per batch, not per
        chunk. Cuts that come with their ids (a sealed file's, hashed as it was cut) are settled first,
        and only the chunks this call packs are read."""
        async with receive, send:
            async for first, cuts in receive:
                if all(cut.identifier is not None for cut in cuts):
                    await send.send(await self._prepare_hashed(run, first, cuts))
                    continue
                read = await trio.to_thread.run_sync(_read_chunks, run.fd, cuts, limiter=self.cpu)
                prepared = []
                for offset, (cut, chunk) in enumerate(zip(cuts, read, strict=True)):
                    _check_length(run, cut, chunk[0])
                    data, identifier, pieces, small = chunk
                    run.entries[first + offset] = (identifier, cut.length)
                    if not small and not self._claim(run, identifier, cut.length):
                        prepared.append((first + offset, None))
                        continue
                    prepared.append((first + offset, await self._ready(identifier, cut.length, data, pieces)))
                await send.send(prepared)

    async def _prepare_hashed(self, run: _Upload, first: int, cuts: list[Cut]) -> list[tuple[int, _Ready]]:
        """Cuts with their ids: a chunk the lake holds or another call is packing is settled without
        reading it; the others (and every small one, always packed again) are read in one hand-off."""
        prepared: dict[int, _Ready] = {}
        to_read: list[int] = []
        for offset, cut in enumerate(cuts):
            assert cut.identifier is not None
            run.entries[first + offset] = (cut.identifier, cut.length)
            if cut.length < SMALL_CHUNK or self._claim(run, cut.identifier, cut.length):
                to_read.append(offset)
            else:
                prepared[first + offset] = None
        if to_read:
            wanted = [cuts[offset] for offset in to_read]
            if sum(cut.length for cut in wanted) <= READ_HERE:  # record headers: less than a hand-off costs
                read = _read_chunks(run.fd, wanted)
            else:
                read = await trio.to_thread.run_sync(_read_chunks, run.fd, wanted, limiter=self.cpu)
            for offset, cut, (data, identifier, pieces, _) in zip(to_read, wanted, read, strict=True):
                _check_length(run, cut, data)
                prepared[first + offset] = await self._ready(identifier, cut.length, data, pieces)
        return sorted(prepared.items())

    def _claim(self, run: _Upload, identifier: bytes, length: int) -> bool:
        """Whether this call packs a chunk (it is claimed for it), or it is deduplicated: the lake
        holds it, or another call is packing it. No await here: two calls never both pack one chunk."""
        if self.known(identifier) is not None:
            self._deduplicated(run, length)
            return False
        if identifier in self._inflight_chunks:
            self._deduplicated(run, length)
            run.elsewhere.add(identifier)
            return False
        self._inflight_chunks[identifier] = trio.Event()
        run.claimed.add(identifier)
        return True

    async def _ready(self, identifier: bytes, length: int, data: bytes, pieces: _Object | None) -> _Ready:
        """A chunk to pack, as its object; lz4 might pay: worth a thread of its own, only for a chunk to store."""
        if pieces is None:
            pieces = await trio.to_thread.run_sync(codec.encode_parts, data, identifier, limiter=self.cpu)
        return identifier, length, pieces

    def known(self, identifier: bytes) -> Location | None:
        """Where the lake holds a chunk, unless that object is one garbage collection marked."""
        where = self.journal.chunk_location(identifier)
        if where is None or self.avoid and object_key(identifier, where) in self.avoid:
            return None
        return where

    def _deduplicated(self, run: _Upload, length: int) -> None:
        self.journal.add_counter("dedup_bytes", length)
        self.sent[run.version] = self.sent.get(run.version, 0) + length

    async def _pack(self, run: _Upload, receive: trio.MemoryReceiveChannel[list[tuple[int, _Ready]]],
                    send: trio.MemorySendChannel[_Pack]) -> None:
        """Take the chunks in file order into packs; hand each pack on as it fills, and the last."""
        waiting: dict[int, _Ready] = {}  # prepared out of order
        following = 0  # the index whose chunk goes next
        current: _Pack | None = None
        async with receive, send:
            async for prepared in receive:
                waiting.update(prepared)
                while following in waiting:
                    item = waiting.pop(following)
                    following += 1
                    if item is not None:
                        current = current or _Pack()
                        current.objects.append(item)
                        current.size += sum(len(piece) for piece in item[2])
                    run.holding -= 1
                    run.slots.release()
                    if current is not None and current.size >= self.pack_bytes:
                        full, current = current, None
                        await self._hand_on(full, send)
            if current is not None:
                await self._hand_on(current, send)

    async def _hand_on(self, pack: _Pack, send: trio.MemorySendChannel[_Pack]) -> None:
        """A pack is complete: take a PUT slot for it (a put task gives it back) and hand it on."""
        await self._pack_slots.acquire()
        try:
            await send.send(pack)
        except BaseException:
            self._pack_slots.release()
            raise

    async def _put(self, run: _Upload, receive: trio.MemoryReceiveChannel[_Pack]) -> None:
        async with receive:
            async for pack in receive:
                identifiers = [identifier for identifier, _, _ in pack.objects]
                raw = sum(length for _, length, _ in pack.objects)
                buffer = self._pack_buffers.pop() if self._pack_buffers else bytearray()
                try:
                    pack_id = packs.new_pack_id()
                    data, locations = await trio.to_thread.run_sync(
                        packs.encode, pack_id, [(identifier, pieces) for identifier, _, pieces in pack.objects],
                        buffer, limiter=self.cpu)
                    pack.objects = []  # the objects are in `data` now: hold them once
                    await trio.to_thread.run_sync(self.lake.put_pack, pack_id, data, limiter=self.network)
                    self.written[packs.pack_key(pack_id)] = self.clock()
                    self.journal.add_chunk_locations(zip(identifiers, locations, strict=True))
                    self.placed.setdefault(run.version, {}).update(zip(identifiers, locations, strict=True))
                    self.journal.add_counter("packs", 1)
                    run.new_bytes += raw
                    run.stored_bytes += len(data)
                    self.sent[run.version] = self.sent.get(run.version, 0) + raw
                finally:
                    self._pack_buffers.append(buffer)  # its PUT has ended, whatever the outcome
                    self._pack_slots.release()
                    self._release(identifiers, run.claimed)

    def _release(self, identifiers: list[bytes], claimed: set[bytes]) -> None:
        """Chunks a call claimed are settled (in the lake, or given up): wake whoever waits on them."""
        for identifier in identifiers:
            if identifier in claimed:
                claimed.discard(identifier)
                self._inflight_chunks.pop(identifier).set()


def _check_length(run: _Upload, cut: Cut, data: bytes) -> None:
    if len(data) != cut.length:
        raise CkptfsError(f"staging file of version {run.version:x} changed under the uploader")


def _read_chunks(fd: int, cuts: list[Cut]) -> list[tuple[bytes, bytes, _Object | None, bool]]:
    """In a worker thread, one hand-off for a few chunks (BATCH_CHUNKS)."""
    return [_read_chunk(fd, cut) for cut in cuts]


def _read_chunk(fd: int, cut: Cut) -> tuple[bytes, bytes, _Object | None, bool]:
    """In a worker thread, one hand-off for what every chunk needs: its bytes, its id, its object
    when that takes no compressing (or it is small), and whether it is small. A small chunk is
    always packed again next to its neighbours, even while another call packs it too: a torch.save
    record header is the same in every save, and naming another upload's copy broke this file's
    runs at every record (saves uploaded side by side: 59 GETs, not 10). This was three hand-offs
    per chunk (read, hash, encode), then two (the object in a second one); trio's hand-off to a
    thread (ThreadCache.start_thread_soon) had 8%, then 12% of the daemon's GIL samples in a save
    (scripts/profile_cpu.py). Dense weights need no second: lz4's probe says no. A few chunks now
    share one hand-off (_read_chunks)."""
    data = os.pread(fd, cut.length, cut.offset)
    identifier = codec.chunk_id(data)
    if cut.identifier is not None and identifier != cut.identifier and len(data) == cut.length:
        raise CkptfsError(f"staging file changed under the uploader: the chunk at {cut.offset} is not "
                          "what was cut and hashed there")
    if cut.length < SMALL_CHUNK and len(data) == cut.length:
        return data, identifier, codec.encode_parts(data, identifier), True
    return data, identifier, codec.raw_parts(data, identifier), False


async def _batches(cuts: list[Cut] | trio.MemoryReceiveChannel[list[Cut]]) -> AsyncIterator[list[Cut]]:
    if isinstance(cuts, list):
        yield cuts
        return
    async for batch in cuts:
        yield batch
