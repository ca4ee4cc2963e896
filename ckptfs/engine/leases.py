"""The writer's side of garbage collection: what a manifest written now may name.

A mount dedups against chunks it learnt of, possibly long ago (its own packs, manifests it read,
a cache dir restored from a backup). Garbage collection (lake/gc.py) deletes an object only after
two scans a grace apart found it unreferenced, and writes a marks object listing it in between.
So before a manifest is written (and before a version whose manifest is older than half the grace
is published), every object the manifest names must be:

* not deleted (a tombstone in the newest marks object), and not marked long enough ago that a sweep
  could start before this manifest is written and published (first marked + grace - 2 x skew -
  lease); a mark younger than that is fine: the sweep's scan will see this manifest;
* vouched for within the lease (a quarter of the grace): written by this mount, named by a manifest
  this mount wrote, or found by a HEAD. Anything older is HEADed again.

The marks view is read again (one LIST, one GET) when it is older than half the lease. An object
that fails is reported to the caller, which forgets its chunk locations and uploads those chunks
again: content addressing makes a second copy always correct.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import trio

from ckptfs.errors import CkptfsError
from ckptfs.lake import Lake
from ckptfs.lake.gc import read_marks


class StaleLocations(CkptfsError):
    """A manifest would have named objects GC marked or deleted: upload those chunks again."""


class Leases:
    def __init__(self, lake: Lake, network: trio.CapacityLimiter, *, clock: Callable[[], int] = time.time_ns) -> None:
        self.lake = lake
        self.network = network
        self.clock = clock
        self.view_ns: int | None = None
        self.marked: dict[str, int] = {}
        self.deleted: set[str] = set()
        self.vouched: dict[str, int] = {}
        self.heads = 0  # HEADs made, for tests and status
        self._reading: trio.Event | None = None

    @property
    def lease_ns(self) -> int:
        return self.lake.grace_ns // 4

    def vouch(self, keys: Iterable[str], at_ns: int | None = None) -> None:
        """These objects exist as of `at_ns` and are named by something GC will see (this mount
        wrote them, or a manifest it wrote names them)."""
        when = self.clock() if at_ns is None else at_ns
        for key in keys:
            if self.vouched.get(key, -1) < when:
                self.vouched[key] = when

    async def _fresh_view(self) -> None:
        """Read the marks again if the view is older than half a lease: once (a read that takes
        longer than that must not start another; the view's time is when its read began)."""
        if self.view_ns is not None and self.clock() - self.view_ns <= self.lease_ns // 2:
            return
        if self._reading is not None:
            await self._reading.wait()
        else:
            self._reading = trio.Event()
            try:
                taken = self.clock()
                found = await trio.to_thread.run_sync(read_marks, self.lake.store, limiter=self.network)
                marks = found[1] if found is not None else None
                self.marked = dict(marks.marked) if marks is not None else {}
                if marks is not None:  # announced for a colder class: the same deadline as a mark
                    for key, first in marks.archiving.items():
                        self.marked[key] = min(first, self.marked.get(key, first))
                # deleted, or in a colder class: a manifest naming it would not read back
                self.deleted = set(marks.deleted) | set(marks.archived) if marks is not None else set()
                self.view_ns = taken
            finally:
                self._reading.set()
                self._reading = None
        if self.view_ns is None:
            raise CkptfsError("could not read garbage collection's marks; will try again")

    async def unsafe(self, keys: Iterable[str]) -> set[str]:
        """The objects among `keys` that a manifest written now must not name."""
        keys = set(keys)
        if not keys:
            return set()
        await self._fresh_view()
        now = self.clock()
        lease, grace, skew = self.lease_ns, self.lake.grace_ns, self.lake.skew_ns
        bad = set()
        unchecked = []
        for key in keys:
            first = self.marked.get(key)
            if key in self.deleted or (first is not None and now >= first + grace - 2 * skew - lease):
                bad.add(key)
            elif first is None and self.vouched.get(key, -1) < now - lease:
                unchecked.append(key)
        if unchecked:
            async def head(key: str) -> None:
                size = await trio.to_thread.run_sync(self.lake.store.size, key, limiter=self.network)
                self.heads += 1
                if size is None:
                    bad.add(key)
                else:
                    self.vouch([key], now)

            async with trio.open_nursery() as nursery:
                for key in unchecked:
                    nursery.start_soon(head, key)
        return bad
