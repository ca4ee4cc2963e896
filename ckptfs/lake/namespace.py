"""The namespace: each mount's append-only log of tree changes, and the replay that builds the tree.

Why a log per mount: many mounts commit into the same directory at once (every DCP rank writes a shard),
so there is no mutable object per directory to contend on. A mount writes its own numbered segments
`log/<mount>/<seq>` (each key written once, conditionally); a reader LISTs `log/`, GETs the segments and
replays all events ordered by (time, mount, seq, position). Per mount, event times strictly increase, so
each mount's own order (close and rename order) is kept. Paths are bytes relative to the lake root.

Segments are checked here only as envelopes; each event is validated by `events.parse`, and the replay
below takes only validated events.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ckptfs.errors import CorruptObjectError
from ckptfs.lake.events import Event
from ckptfs.lake.events import record as event  # noqa: F401 - the writers' name for it

FORMAT = 2  # 2: owners, times, special files and hard links; format 1 segments read the same way
READABLE_FORMATS = (1, 2)
MAX_SEGMENT = 64 * 1024 * 1024
# Operations that add or remove a name in the directory holding their path (rename and link also in
# the one holding their destination).
LISTING_OPS = frozenset({"mkdir", "mknod", "symlink", "unlink", "rmdir", "rename"})
_MOUNT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")


def segment_key(mount: str, seq: int) -> str:
    return f"log/{mount}/{seq:016x}"


def feed_key(time_ns: int, mount: str, seq: int) -> str:
    return f"feed/{time_ns:016x}-{mount}-{seq:016x}"


def parse_feed_key(key: str) -> tuple[int, str, int] | None:
    return parse_stamped_key(key, "feed/")


def parse_stamped_key(key: str, prefix: str) -> tuple[int, str, int] | None:
    """(time, mount, number) of a `<prefix><16 hex>-<mount>-<16 hex>` key (feed markers, snapshots)."""
    parts = key.removeprefix(prefix).split("-")
    if not key.startswith(prefix) or len(parts) < 3:
        return None
    mount = "-".join(parts[1:-1])
    try:
        return (int(parts[0], 16), mount, int(parts[-1], 16)) if valid_mount_id(mount) else None
    except ValueError:
        return None


def valid_mount_id(mount: str) -> bool:
    return _MOUNT_ID.match(mount) is not None


def parse_segment_key(key: str) -> tuple[str, int] | None:
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != "log" or not valid_mount_id(parts[1]):
        return None
    try:
        return parts[1], int(parts[2], 16)
    except ValueError:
        return None


def encode_segment(mount: str, seq: int, events: list[dict[str, Any]], published_ns: int | None = None) -> bytes:
    document: dict[str, Any] = {"format": FORMAT, "mount": mount, "seq": seq, "events": events}
    if published_ns is not None:
        document["published_ns"] = published_ns
    return json.dumps(document, separators=(",", ":")).encode()


def decode_segment(blob: bytes, key: str) -> list[Any]:
    """The raw events of a segment (each still to be validated with events.parse)."""
    return decode_segment_envelope(blob, key)[0]


def decode_segment_envelope(blob: bytes, key: str) -> tuple[list[Any], int | None]:
    """The raw events of a segment and the time it was published (None if it does not say)."""
    try:
        document = json.loads(blob)
        if not isinstance(document, dict):
            raise CorruptObjectError(f"{key}: not a log segment")
        if document.get("format") not in READABLE_FORMATS:
            raise CorruptObjectError(f"{key}: unknown log format {document.get('format')!r}")
        events = document["events"]
        if not isinstance(events, list):
            raise CorruptObjectError(f"{key}: malformed log segment (events is not a list)")
        published_ns = document.get("published_ns")
        if published_ns is not None and (type(published_ns) is not int or not 0 <= published_ns < 1 << 63):
            raise CorruptObjectError(f"{key}: malformed log segment (published_ns {published_ns!r:.40})")
        return events, published_ns
    except (ValueError, KeyError, TypeError) as error:
        raise CorruptObjectError(f"{key}: malformed log segment ({error})") from None


@dataclass(eq=False, slots=True)
class Entry:
    """An inode of the replayed tree. Hard links are one Entry under several paths (`names`)."""
    kind: str  # "file", "dir", "symlink", or one of events.SPECIAL_KINDS
    mode: int
    mtime_ns: int
    size: int = 0
    manifest: str | None = None  # None for a file linked before its first version was published
    target: bytes | None = None
    uid: int | None = None  # None: written by a mount of format 1; the mounting user owns it
    gid: int | None = None
    atime_ns: int | None = None
    ctime_ns: int = 0  # the time of the last event that changed it
    rdev: int = 0
    node: str | None = None
    names: set[bytes] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class State:
    """One point in a path's history: a file version, a symlink's target, or the path's deletion."""
    time_ns: int
    manifest: str | None  # None (and no target) means the path was deleted (or renamed away) then
    size: int = 0
    mode: int = 0o644
    target: bytes | None = None  # a symlink's target

    @property
    def deleted(self) -> bool:
        return self.manifest is None and self.target is None


@dataclass
class Namespace:
    entries: dict[bytes, Entry] = field(default_factory=lambda: {b"": Entry("dir", 0o755, 0, names={b""})})
    history: dict[bytes, list[State]] = field(default_factory=dict)
    nodes: dict[str, Entry] = field(default_factory=dict)  # node id -> its entry, while it has a name
    cursors: dict[str, int] = field(default_factory=dict)  # mount -> last seq read (Lake.read_namespace)
    events: list[Event] = field(default_factory=list)  # what was replayed, in order (Lake.read_namespace)
    children: dict[bytes, set[bytes]] = field(default_factory=dict)  # path -> paths of the entries in it

    def copy(self) -> Namespace:
        """An independent copy of the tree and the history (not of `events` and `cursors`)."""
        twins: dict[int, Entry] = {}
        entries = {}
        for path, entry in self.entries.items():
            twin = twins.get(id(entry))
            if twin is None:
                twin = twins[id(entry)] = dataclasses.replace(entry, names=set(entry.names))
            entries[path] = twin
        return Namespace(entries=entries, history={path: list(states) for path, states in self.history.items()},
                         nodes={node: twins[id(entry)] for node, entry in self.nodes.items() if id(entry) in twins},
                         children={path: set(names) for path, names in self.children.items()})

    def differences(self, other: Namespace, limit: int = 5) -> list[bytes]:
        """Paths (at most `limit`) whose entry or history differs between two replays."""
        def entry(tree: Namespace, path: bytes) -> tuple | None:
            e = tree.entries.get(path)
            return None if e is None else (e.kind, e.mode, e.mtime_ns, e.size, e.manifest, e.target, e.uid, e.gid,
                                           e.atime_ns, e.ctime_ns, e.rdev, e.node, frozenset(e.names))

        def states(tree: Namespace, path: bytes) -> list[tuple]:
            return [(s.time_ns, s.manifest, s.size, s.mode, s.target) for s in tree.history.get(path, ())]

        found = []
        for path in sorted(set(self.entries) | set(other.entries) | set(self.history) | set(other.history)):
            if entry(self, path) != entry(other, path) or states(self, path) != states(other, path):
                found.append(path)
                if len(found) >= limit:
                    break
        return found

    # -- building blocks -----------------------------------------------------------------------
    def _bind(self, path: bytes, entry: Entry) -> None:
        self.entries[path] = entry
        entry.names.add(path)
        if entry.node is not None:
            self.nodes[entry.node] = entry
        if path:
            self.children.setdefault(path.rpartition(b"/")[0], set()).add(path)

    def _unbind(self, path: bytes) -> Entry:
        entry = self.entries.pop(path)
        entry.names.discard(path)
        siblings = self.children.get(path.rpartition(b"/")[0])
        if siblings is not None:
            siblings.discard(path)
            if not siblings:
                del self.children[path.rpartition(b"/")[0]]
        if not entry.names and entry.node is not None and self.nodes.get(entry.node) is entry:
            del self.nodes[entry.node]
        return entry

    def _ensure_parents(self, path: bytes, time_ns: int) -> None:
        parts = path.split(b"/")[:-1]
        for depth in range(1, len(parts) + 1):
            parent = b"/".join(parts[:depth])
            if parent not in self.entries or self.entries[parent].kind != "dir":
                self._remove(parent, time_ns)
                self._bind(parent, Entry("dir", 0o755, time_ns, ctime_ns=time_ns))

    def _remember(self, path: bytes, state: State) -> None:
        self.history.setdefault(path, []).append(state)

    def subtree(self, path: bytes) -> list[bytes]:
        """The path (if it is an entry) and every entry under it, parents first."""
        if path not in self.entries:
            return []  # parents are always entries, so nothing is under a path that is not one
        found, stack = [], [path]
        while stack:
            current = stack.pop()
            found.append(current)
            stack.extend(self.children.get(current, ()))
        return found

    def _remove(self, path: bytes, time_ns: int) -> None:
        """Remove a path and everything under it, recording deletions of files."""
        for victim in self.subtree(path):
            entry = self._unbind(victim)
            if entry.kind in ("file", "symlink"):
                self._remember(victim, State(time_ns, None))
            if entry.names:
                entry.ctime_ns = time_ns  # its link count changed

    def _create(self, path: bytes, entry: Entry, time_ns: int) -> None:
        self._remove(path, time_ns)
        self._ensure_parents(path, time_ns)
        self._bind(path, entry)

    def descendants(self, path: bytes) -> list[bytes]:
        return sorted(self.subtree(path)[1:])

    # -- replay --------------------------------------------------------------------------------
    def _listing_changed(self, path: bytes, carried: int | None, time_ns: int) -> None:
        """An entry was added to or removed from the directory holding `path`: its mtime becomes the
        one the writing mount gave it (`carried`; events of older mounts carry none: the event's
        time), and never goes back (only an `attr` event sets a directory's mtime to any value)."""
        parent = self.entries.get(path.rpartition(b"/")[0])
        if parent is not None and parent.kind == "dir":
            parent.mtime_ns = max(parent.mtime_ns, time_ns if carried is None else carried)
            parent.ctime_ns = max(parent.ctime_ns, time_ns)

    def apply(self, change: Event) -> None:
        op, path, time_ns = change.op, change.path, change.time_ns
        lists = op in LISTING_OPS or (op == "put" and (change.dir_mtime_ns is not None or path not in self.entries))
        self._change(change)
        if lists:
            self._listing_changed(path, change.dir_mtime_ns, time_ns)
        if op in ("rename", "link") and change.dst is not None:
            self._listing_changed(change.dst, change.dst_dir_mtime_ns, time_ns)

    def _change(self, change: Event) -> None:
        op, path, time_ns = change.op, change.path, change.time_ns
        if op == "put":
            self._put(change)
        elif op == "symlink":
            self._create(path, Entry("symlink", 0o777, _or(change.mtime_ns, time_ns), target=change.target,
                                     uid=change.uid, gid=change.gid, ctime_ns=time_ns), time_ns)
            self._remember(path, State(time_ns, None, target=change.target))
        elif op == "mknod":
            self._create(path, Entry(change.kind or "fifo", _or(change.mode, 0o644), _or(change.mtime_ns, time_ns),
                                     uid=change.uid, gid=change.gid, atime_ns=change.atime_ns, ctime_ns=time_ns,
                                     rdev=change.rdev, node=change.node), time_ns)
        elif op == "mkdir":
            if path not in self.entries or self.entries[path].kind != "dir":
                self._create(path, Entry("dir", _or(change.mode, 0o755), _or(change.mtime_ns, time_ns),
                                         uid=change.uid, gid=change.gid, ctime_ns=time_ns), time_ns)
        elif op in ("unlink", "rmdir"):
            self._remove(path, time_ns)
        elif op == "attr":
            entry = self.entries.get(path)
            if entry is not None:
                entry.mode = _or(change.mode, entry.mode)
                entry.mtime_ns = _or(change.mtime_ns, entry.mtime_ns)
                entry.atime_ns = _or(change.atime_ns, entry.atime_ns)
                entry.uid = _or(change.uid, entry.uid)
                entry.gid = _or(change.gid, entry.gid)
                entry.ctime_ns = time_ns
        elif op == "rename":
            assert change.dst is not None
            self._rename(path, change.dst, time_ns)
        elif op == "link":
            assert change.dst is not None
            self._link(change, change.dst)

    def _put(self, change: Event) -> None:
        """A new version of a file, for every name its inode has (hard links share their content)."""
        path, time_ns = change.path, change.time_ns
        entry = self.entries.get(path)
        if entry is None or entry.kind != "file" or entry.node is None or entry.node != change.node:
            linked = self.nodes.get(change.node) if change.node is not None else None
            replacement = linked if linked is not None and linked.kind == "file" else None
            replacement = replacement or Entry("file", 0, 0, node=change.node)
            if entry is not replacement:
                if entry is not None and entry.kind == "file":
                    self._unbind(path)  # replaced, not deleted: the new state below follows the old
                self._create(path, replacement, time_ns)
            entry = replacement
        entry.manifest, entry.size = change.manifest, change.size
        entry.mode = _or(change.mode, entry.mode)
        entry.mtime_ns = _or(change.mtime_ns, time_ns)
        entry.atime_ns = _or(change.atime_ns, entry.atime_ns)
        entry.uid, entry.gid = _or(change.uid, entry.uid), _or(change.gid, entry.gid)
        entry.ctime_ns = time_ns
        for name in sorted(entry.names):
            self._remember(name, State(time_ns, entry.manifest, entry.size, entry.mode))

    def _link(self, change: Event, new: bytes) -> None:
        entry = self.entries.get(change.path)
        if entry is None or entry.kind == "dir" or (change.node is not None and entry.node != change.node):
            entry = self.nodes.get(change.node) if change.node is not None else None
        if entry is None:
            # The source's first version is not published yet (linked while being written): an
            # empty file whose coming `put` fills every name.
            entry = Entry("file", 0o644, change.time_ns, node=change.node, uid=change.uid, gid=change.gid)
        if self.entries.get(new) is entry:
            return
        self._create(new, entry, change.time_ns)
        entry.ctime_ns = change.time_ns
        if entry.kind == "file" and entry.manifest is not None:
            self._remember(new, State(change.time_ns, entry.manifest, entry.size, entry.mode))

    def _rename(self, source: bytes, destination: bytes, time_ns: int) -> None:
        if source not in self.entries or source == destination:
            return
        if destination.startswith(source + b"/") or source.startswith(destination + b"/"):
            return  # into itself or over its own ancestor: rename(2) refuses both, no mount publishes them
        if self.entries.get(destination) is self.entries[source]:
            return  # two names of one inode: rename(2) does nothing
        moved = [source] + self.descendants(source)
        self._remove(destination, time_ns)
        self._ensure_parents(destination, time_ns)
        for old in moved:
            new = destination + old[len(source):]
            entry = self._unbind(old)
            self._bind(new, entry)
            if entry.kind in ("file", "symlink"):
                self._remember(old, State(time_ns, None))
                if entry.manifest is not None or entry.target is not None:
                    self._remember(new, State(time_ns, entry.manifest, entry.size, entry.mode, entry.target))
        self.entries[destination].ctime_ns = time_ns


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value
