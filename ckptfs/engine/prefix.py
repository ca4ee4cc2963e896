"""Upload while writing: the prefix of a file still being written goes to the lake before close.

Content-defined cuts depend only on the bytes from the previous cut onwards, so a cut found inside the
written prefix of a file is a cut the whole file will have, except the last one, which may only mark
where the written bytes end. A round reads the bytes written since the last final cut, keeps every cut
but the last, and sends those chunks down the chunk path (engine/chunks.py: hash, dedup, compress, PUT). At seal the
version worker starts from the end of the last final cut, so a large sequential save has only its
tail left to do when the writer closes it.

The early chunks are used only if the bytes a round read are unchanged when the version is sealed: a
write or truncate that reaches below the end of what has been read drops the version's early work and
the version is uploaded the normal way. Chunks go into the lake before any manifest names them, as on
the normal path; a version that is never sealed leaves unreferenced chunks for GC.

The same rounds serve spilling (engine/spill.py): when the cache is nearly full of dirty data, the
files being written spill, their rounds run whatever `round_bytes` says, use the chunk path's full
concurrency (the writer is waiting on them), and punch each uploaded window out of the staging file.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from dataclasses import dataclass, field

import trio

from ckptfs.engine.chunks import ChunkUploads
from ckptfs.engine.early import Early
from ckptfs.engine.spill import Spill
from ckptfs.lake.chunker import LOOKBACK, MAX_SIZE, RECORD_MAGIC, Chunker, Cut

log = logging.getLogger(__name__)

DEFAULT_ROUND_BYTES = 32 << 20
BUSY_CORES = 2  # the writer and the daemon's FUSE thread
MIN_ROUND_BYTES = 2 * MAX_SIZE  # a round this long always holds at least one final cut
WINDOW_BYTES = 16 << 20  # the bytes a round reads and cuts at a time


def spare_cores() -> int:
    return (os.cpu_count() or 1) - BUSY_CORES


def default_round_bytes() -> int:
    """On by default only where cores are left for it: on two cores it lengthens the save it overlaps
    and the upload barely gains (docs/DESIGN.md, "Upload while writing")."""
    return DEFAULT_ROUND_BYTES if spare_cores() >= 2 else 0


class PrefixUploads:
    """Told of writes to the staging files of versions being written (through engine/interface.py),
    runs rounds for sequentially written files."""

    def __init__(self, chunks: ChunkUploads, round_bytes: int = DEFAULT_ROUND_BYTES,
                 spill: Spill | None = None) -> None:
        if round_bytes and round_bytes < MIN_ROUND_BYTES:
            raise ValueError(f"upload-while-writing rounds must be 0 (off) or at least {MIN_ROUND_BYTES} bytes")
        self.chunks = chunks
        self.round_bytes = round_bytes
        self.spill = spill
        self._nursery: trio.Nursery | None = None  # where rounds run, while run() does
        # Early work only gets the cores that the writer and the FUSE thread leave: on a small
        # machine it would otherwise lengthen the save it overlaps (docs/DESIGN.md).
        self.slots = trio.Semaphore(max(1, min(16, spare_cores())))
        self._early: dict[int, Early] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the rounds until cancelled (the uploader runs this)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # -- what the file system tells of a version being written --------------------------------
    def written(self, version: int, offset: int, length: int) -> None:
        early = self._early.get(version)
        if early is None:
            early = self._early[version] = Early()
        if early.broken:
            return
        if offset < early.read_end:
            self._break(version, early, "rewritten")
            return
        if offset <= early.frontier:
            early.frontier = max(early.frontier, offset + length)
        if early.running is None and self._due(early):
            self._start(version, early)

    def _due(self, early: Early) -> bool:
        waiting = early.frontier - early.done
        return bool(self.round_bytes and waiting >= self.round_bytes) or (early.spill and waiting >= MIN_ROUND_BYTES)

    def _start(self, version: int, early: Early) -> None:
        if self._nursery is not None:
            early.running = trio.Event()
            self._nursery.start_soon(self._rounds, version, early)

    def truncated(self, version: int, size: int) -> None:
        if self.spill is not None and size == 0:
            self.spill.drop(version)  # any other size below the prefix went through before_change
        early = self._early.get(version)
        if early is None or early.broken:
            return
        if size < early.read_end:
            self._break(version, early, "truncated")
        early.frontier = min(early.frontier, size)

    def forget(self, version: int) -> None:
        early = self._early.pop(version, None)
        if early is not None:
            early.broken = True  # a round in flight must not record or punch a removed staging file
        self.chunks.sent.pop(version, None)
        self.chunks.placed.pop(version, None)
        if self.spill is not None:
            self.spill.forget(version)

    # -- spilling ------------------------------------------------------------------------------
    def relieve(self) -> bool:
        """The cache is nearly full of dirty data: make every file being written spill. Returns
        whether a spilling round is running (it will free space)."""
        if self.spill is None or not self.spill.supported:
            return False
        running = False
        for version, early in self._early.items():
            if early.broken or early.sealed:
                continue
            early.spill = True
            if early.running is None and self._due(early):
                self._start(version, early)
            running = running or early.running is not None
        return running

    async def before_change(self, version: int, offset: int) -> bool:
        """Called before a write or truncate at `offset`: below a spilled prefix, the early work is
        dropped and the punched bytes come back first. Returns whether it had to (the caller looks
        again: the version may have been sealed meanwhile)."""
        if self.spill is None or offset >= self.spill.prefix_end.get(version, 0):
            return False
        early = self._early.get(version)
        if early is not None and not early.broken:
            self._break(version, early, "rewritten")  # no round may punch once the restore began
        await self.spill.restore(version)
        return True

    def _break(self, version: int, early: Early, why: str) -> None:
        early.broken = True
        if early.done:
            log.info("version %x %s below its early-uploaded prefix: uploading it whole at seal", version, why)

    # -- at seal -------------------------------------------------------------------------------
    async def take(self, version: int, size: int) -> Early | None:
        """The usable early work of a version sealed at `size` (after its round in flight ends), or
        None; forgets it. Without early work in memory (after a restart, or a rewrite above it), a
        spilled prefix recorded in the journal still counts."""
        early = self._early.get(version)
        if early is not None and early.running is not None:
            early.sealed = True
            await early.running.wait()
        early = self._early.pop(version, None)
        if early is not None and not early.broken and 0 < early.done <= size:
            return early
        end = self.spill.prefix_end.get(version, 0) if self.spill is not None else 0
        if 0 < end <= size:
            entries, new_bytes, stored_bytes = self.chunks.journal.prefix(version)
            return Early(frontier=end, done=end, read_end=end, entries=entries, new_bytes=new_bytes,
                         stored_bytes=stored_bytes, persisted=len(entries))
        return None

    def versions(self) -> list[int]:
        """The versions with early work (written sequentially, or spilling)."""
        return list(self._early)

    def early_bytes(self, version: int) -> int:
        early = self._early.get(version)
        return early.done if early is not None and not early.broken else 0

    # -- rounds --------------------------------------------------------------------------------
    async def _rounds(self, version: int, early: Early) -> None:
        """Cut the written prefix a window at a time and upload its chunks. Two windows are in flight:
        the next one is cut, and its chunks start, while the last chunks of the one before finish.
        A writer spilling 3 GiB through a 512 MiB cache wrote at 113-121 MB/s with one window in
        flight, 130-184 MB/s with two, 99-146 MB/s with four (boto3 upload_file: 129-189 MB/s)."""
        chunks = self.chunks
        event = early.running
        assert event is not None
        fd = -1
        failure: Exception | None = None
        try:
            fd = os.open(chunks.staging.path(version), os.O_RDONLY)
            buffer = bytearray(LOOKBACK + WINDOW_BYTES)  # one buffer, reused
            in_flight: deque[_Window] = deque()
            cut_end = early.done
            exhausted = False
            async with trio.open_nursery() as nursery:
                try:
                    while True:
                        # Started once round_bytes are new; goes on while a window can hold a final cut.
                        if (len(in_flight) < WINDOWS_IN_FLIGHT and not exhausted and not (early.broken or early.sealed)
                                and early.frontier - cut_end >= MIN_ROUND_BYTES):
                            final = await self._cut_window(fd, buffer, early, cut_end)
                            if final:
                                window = _Window(cut_end, final[-1].offset + final[-1].length)
                                cut_end = window.end
                                # A spilling file's writer waits for this: it gets the chunk path's concurrency.
                                nursery.start_soon(self._upload_window, version, fd, final, window,
                                                   None if early.spill else self.slots)
                                in_flight.append(window)
                                continue
                            exhausted = True
                        if not in_flight or early.broken:
                            break
                        self._settle(version, early, await in_flight.popleft().result())
                except Exception as error:  # noqa: BLE001 - raised below, once the uploads in flight stop
                    failure = error
                nursery.cancel_scope.cancel()
            if failure is not None:
                raise failure
        except Exception as error:  # noqa: BLE001 - early work is an optimisation: the seal path redoes it
            log.warning("upload while writing version %x stopped: %s (the version is uploaded at seal)",
                        version, error)
            early.broken = True
        finally:
            if fd >= 0:
                os.close(fd)
            early.read_end = early.done if not early.broken else early.read_end
            early.running = None
            event.set()
            chunks.progress.notify()  # a writer waiting for room looks again

    async def _cut_window(self, fd: int, buffer: bytearray, early: Early, start: int) -> list[Cut]:
        """The final cuts of the window of written bytes from `start` (a cut): all but the last."""
        end = min(early.frontier, start + WINDOW_BYTES)
        early.read_end = max(early.read_end, end)
        cuts = await trio.to_thread.run_sync(_cut_range, fd, start, end, buffer,
                                             self.chunks.lake.chunking_profile, limiter=self.chunks.cpu)
        # The last cut may only be where the bytes read end; a record header cut off by the end of
        # the window must fall in that last, tentative chunk too.
        final = cuts[:-1]
        while final and final[-1].offset + final[-1].length > end - len(RECORD_MAGIC):
            final.pop()
        if final:
            early.read_end = final[-1].offset + final[-1].length
        return final

    async def _upload_window(self, version: int, fd: int, cuts: list[Cut], window: _Window,
                             slots: trio.Semaphore | None) -> None:
        try:
            window.outcome = await self.chunks.upload_chunks(version, fd, cuts, slots)
        except Exception as error:  # noqa: BLE001 - handed to the round, which stops on it
            window.outcome = error
        finally:
            window.finished.set()

    def _settle(self, version: int, early: Early, outcome: tuple[list[tuple[bytes, int]], int, int]) -> None:
        """A window's chunks are all in the lake: the prefix grows by it (and spills, if spilling)."""
        if early.broken:
            return
        entries, new_bytes, stored_bytes = outcome
        start = early.done
        early.entries.extend(entries)
        early.new_bytes += new_bytes
        early.stored_bytes += stored_bytes
        early.done = start + sum(length for _, length in entries)
        self.chunks.journal.add_counter("early_bytes", early.done - start)
        if early.spill and self.spill is not None:
            self.spill.punch(version, early)
            self.chunks.progress.notify()


WINDOWS_IN_FLIGHT = 2


@dataclass
class _Window:
    """A window of a round whose chunks are uploading."""
    start: int
    end: int
    finished: trio.Event = field(default_factory=trio.Event)
    outcome: tuple[list[tuple[bytes, int]], int, int] | Exception | None = None

    async def result(self) -> tuple[list[tuple[bytes, int]], int, int]:
        await self.finished.wait()
        if isinstance(self.outcome, Exception):
            raise self.outcome
        assert self.outcome is not None
        return self.outcome


def _cut_range(fd: int, start: int, end: int, window: bytearray, profile: int) -> list[Cut]:
    """The cuts of the bytes [start, end) of a file, as offsets in the file; `start` is one of its cuts.

    The bytes (and the LOOKBACK bytes before them, which decide record boundaries) are read into
    `window`, not mapped: the file is still open for writing and may be truncated under the round,
    which would fault a mapping. The window is reused, so a round does not fault in fresh memory for
    every read.
    """
    lookback = min(start, LOOKBACK)
    with memoryview(window) as whole, whole[:lookback + end - start] as target:
        count = os.preadv(fd, [target], start - lookback)
    base = start - lookback
    return [Cut(base + cut.offset, cut.length)
            for cut in Chunker(profile).cut(window, skip=lookback, end=count)]
