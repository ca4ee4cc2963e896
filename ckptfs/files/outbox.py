"""This mount's namespace events: their times, the inode identities they name, and their queueing in
the journal's outbox for the engine to publish in order.

Event times strictly increase within a mount: they order its log (docs/FORMAT.md).
"""

from __future__ import annotations

import time
from typing import Any

from ckptfs.cache.journal import Inode, Journal
from ckptfs.engine.interface import Engine
from ckptfs.lake import events


class Outbox:
    def __init__(self, journal: Journal, engine: Engine, mount_id: str) -> None:
        self.journal = journal
        self.engine = engine
        self.mount_id = mount_id
        self._last_event_ns = int(journal.get_meta("newest_seen_ns") or 0)

    def event_time(self) -> int:
        """A hybrid logical clock: the wall clock, but never at or below a time this mount has seen
        (its own events or another mount's), so a node whose clock is behind still stamps its new
        changes after everything it has read."""
        self._last_event_ns = max(time.time_ns(), self._last_event_ns + 1)
        return self._last_event_ns

    def observe(self, time_ns: int) -> None:
        """Another mount's event at `time_ns` was read."""
        if time_ns > self._last_event_ns:
            self._last_event_ns = time_ns
            self.journal.set_meta("newest_seen_ns", str(time_ns))

    def node_id(self, inode: Inode) -> str:
        """The inode's identity in the lake: kept across rebuilds, shared by its hard links."""
        return inode.node or f"{self.mount_id}.{inode.ino:x}"

    def enqueue(self, op: str, path: bytes, time_ns: int, *, version: int | None = None, **fields: Any) -> None:
        """Queue an event at a time the caller took from event_time(); a `put` names its version,
        which the uploader commits before it publishes the event."""
        self.journal.enqueue(events.record(op, path, time_ns, **fields), version)
        if version is None:
            self.engine.event_queued()

    def publish(self, op: str, path: bytes, **fields: Any) -> None:
        self.enqueue(op, path, self.event_time(), **fields)
