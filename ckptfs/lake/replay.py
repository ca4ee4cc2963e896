"""The lake's namespace as one mount knows it: a base tree (a snapshot's, then compacted here), the
published events after it in replay order, the segments they cover, and their replay kept up to date.

Three parties use it, each from its own layer: the publisher adds this mount's own segments as they
leave its outbox (engine/publisher.py), the follower adds what other mounts published and the file
system brings its tree in line with the replay (files/remote.py), and snapshots fold and write it
(engine/snapshots.py). Plain Python, no trio, no journal.

Events that sort after everything replayed so far (the usual case) extend the replay in place, and
`add` returns the paths they touch. An event that sorts earlier (published late) means a replay
from scratch, and every path is to be compared: `add` returns None and `full_due` stays set until the
file system takes it.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable

from ckptfs.lake import events
from ckptfs.lake.events import Event
from ckptfs.lake.namespace import Namespace

log = logging.getLogger(__name__)


class LakeReplay:
    def __init__(self, mount_id: str, *, late_ns: int = 0) -> None:
        self.mount_id = mount_id
        self.late_ns = late_ns  # the lake's lateness bound, for this mount's own events (events.placement)
        self.base = Namespace()  # the replay of the events folded in
        self.covered: dict[str, int] = {}  # mount -> seq: its segments up to seq are in `base` or `events`
        self.segments: set[tuple[str, int]] = set()  # (mount, seq) known beyond `covered` (out of order)
        self.events: list[Event] = []  # the published events known here after `base`, in replay order
        self.horizon_ns: int | None = None  # every event placed before it is folded into `base`
        self._tree: Namespace | None = None  # base + events replayed (None: to be done from scratch)
        self.full_due = True  # the file system has not compared everything with a replay from scratch

    def start(self, base: Namespace, tail: list[Event], covered: dict[str, int], horizon_ns: int | None,
              replayed: Namespace | None = None) -> None:
        """Start from what was read of the lake (Lake.read_log); `replayed`: its replay, if one was made."""
        self.base, self.covered, self.segments, self.horizon_ns = base, dict(covered), set(), horizon_ns
        self.events = sorted(tail, key=lambda change: change.order)
        self._tree = replayed
        self.full_due = replayed is None

    def newest_time(self) -> int:
        """The newest time read: of the events, and of those folded into the base, whose times are all
        below the horizon (their place is, and no event is placed before its time)."""
        return max([self.horizon_ns or 0] + [max(change.time_ns, change.placed_ns) for change in self.events])

    def tree(self) -> Namespace:
        """The base with every event after it replayed."""
        if self._tree is None:
            self._tree = self.base.copy()
            for change in self.events:
                self._tree.apply(change)
        return self._tree

    def known(self, mount: str, seq: int) -> bool:
        return seq <= self.covered.get(mount, -1) or (mount, seq) in self.segments

    def _cover(self, mount: str, seq: int) -> None:
        self.segments.add((mount, seq))
        while (mount, self.covered.get(mount, -1) + 1) in self.segments:
            self.covered[mount] = self.covered.get(mount, -1) + 1
            self.segments.discard((mount, self.covered[mount]))

    def compact(self, horizon_ns: int) -> int:
        """Fold the events placed before `horizon_ns` into the base and forget them (the caller
        knows that no event placed before it can still arrive: lake/snapshot.py). Returns how many."""
        count = bisect.bisect_left(self.events, horizon_ns, key=lambda change: change.placed_ns)
        for change in self.events[:count]:
            self.base.apply(change)
        del self.events[:count]
        self.horizon_ns = max(self.horizon_ns or 0, horizon_ns)
        return count

    def add(self, changes: list[Event], *, touched: bool = True) -> set[bytes] | None:
        """Events of whole segments; a segment known already is not added twice. Returns the paths
        the new events touch (only if `touched`), or None if the replay starts again from scratch."""
        fresh = sorted((change for change in changes if not self.known(change.mount, change.seq)),
                       key=lambda change: change.order)
        if not fresh:
            return set()
        for mount, seq in {(change.mount, change.seq) for change in fresh}:
            self._cover(mount, seq)
        if self.horizon_ns is not None and fresh[0].placed_ns < self.horizon_ns:
            log.warning("an event of %s segment %d is placed before the horizon %d already folded; applied "
                        "after it (a clock skewed beyond the lake's max_clock_skew_s?)", fresh[0].mount,
                        fresh[0].seq, self.horizon_ns)
        if self.events and fresh[0].order < self.events[-1].order:
            self.events.extend(fresh)
            self.events.sort(key=lambda change: change.order)
            self._tree, self.full_due = None, True
            return None
        tree = self.tree()  # of the events before these
        self.events.extend(fresh)
        paths: set[bytes] = set()
        for change in fresh:
            if touched:
                paths |= _apply_touching(tree, change)
            else:
                tree.apply(change)
        return paths

    def add_own(self, seq: int, raw_events: list[dict], published_ns: int | None = None) -> None:
        """This mount's segment `seq` has just left its outbox: its events join the replay (the
        journal's tree made them; nothing is to be compared unless the replay starts again)."""
        self.add([events.parse(raw, mount=self.mount_id, seq=seq, position=position, where=f"own segment {seq}",
                               published_ns=published_ns, late_ns=self.late_ns)
                  for position, raw in enumerate(raw_events)], touched=False)

    def replay_touching(self, wanted: Callable[[Event], bool]) -> set[bytes]:
        """Replay the tree from the base (what `tree` does) and return the paths the wanted events
        touch, each taken before and after it is applied, as `add` does: a renamed directory's old
        paths are found only in the tree before the rename."""
        tree = self.base.copy()
        paths: set[bytes] = set()
        for change in self.events:
            if wanted(change):
                paths |= _apply_touching(tree, change)
            else:
                tree.apply(change)
        self._tree = tree
        return paths


def _apply_touching(tree: Namespace, change: Event) -> set[bytes]:
    """Apply the event to the tree; the paths it touches, taken before (a renamed directory's old
    paths) and after."""
    touched = _touched(tree, change)
    tree.apply(change)
    return touched | _touched(tree, change)


def _touched(tree: Namespace, change: Event) -> set[bytes]:
    touched = set()
    for path in (change.path, change.dst):
        if path is not None:
            touched.add(path)
            entry = tree.entries.get(path)
            if entry is not None:
                touched.update(entry.names)
                touched.update(tree.subtree(path))
    return touched
