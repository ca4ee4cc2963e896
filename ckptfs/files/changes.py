"""Changes in flight: what a READ of a file must wait for."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import trio


class ChangesInFlight:
    """The changes (WRITE, a SETATTR of the size) each file has received and not yet applied, so that
    a READ waits for the changes that arrived before it.

    The kernel's write-through copies a write's bytes into its page cache and unlocks the page
    before the WRITE is answered; if the page is dropped meanwhile (an attribute change invalidates
    the cache), a mapping's fault READs it again. Served from the version as it was before the
    WRITE applied (the WRITE may be waiting for a copy-on-write), the page would come back stale,
    and the mapping's write-back would then write the stale bytes over the WRITE's. Measured with
    scripts/stress_concurrent_writes.py, 5 seeds of 200 trials: 5 lost pages without this wait, none with it.
    """

    def __init__(self) -> None:
        self._next = 0
        self._pending: dict[int, set[int]] = {}  # inode -> tickets of changes not yet applied
        self._applied: dict[int, trio.Event] = {}  # inode -> set when one of them is applied

    @contextlib.contextmanager
    def change(self, ino: int) -> Iterator[None]:
        """Around a change's whole handler: entered before its first await."""
        self._next += 1
        ticket = self._next
        self._pending.setdefault(ino, set()).add(ticket)
        try:
            yield
        finally:
            pending = self._pending[ino]
            pending.discard(ticket)
            if not pending:
                del self._pending[ino]
            event = self._applied.pop(ino, None)
            if event is not None:
                event.set()

    async def wait_for_earlier(self, ino: int) -> None:
        """Return once every change the file received before this call is applied."""
        last = self._next
        while (pending := self._pending.get(ino)) and min(pending) <= last:
            event = self._applied.get(ino)
            if event is None:
                event = self._applied[ino] = trio.Event()
            await event.wait()
