"""Namespace snapshots: the replay of the log up to a horizon, in one object, so that a mount reads
one snapshot and the segments after it instead of every segment ever written.

A snapshot `snapshots/<16 hex horizon>-<mount>-<16 hex segments>` holds
* `cursors`: for each mount, the highest seq of the segments it covers (every lower one is covered);
* the tree and every path's history as replayed from all events placed before `horizon_ns`;
* `tail`: the events of the covered segments placed at or after the horizon, as published.
A reader replays the tail and every segment after the cursors on top of the tree: the same result
as replaying the whole log, provided no segment published later holds an event placed before the
horizon. Placement (events.placement) bounds that: an event sorts no earlier than its segment's
publication minus the lake's `late_publish_s`. So a writer takes as horizon the wall-clock time of
a full listing of every log it read, less `late_publish_s` and `max_clock_skew_s`.

A snapshot is input from another client like any segment: everything in it is validated, and one
that does not hold together is refused as a whole (the reader then takes an older one, or the log).
The segment count in the key lets a mount see how far the newest snapshot is behind without a GET.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import lz4.frame

from ckptfs.errors import CorruptObjectError
from ckptfs.lake import events
from ckptfs.lake.events import Event
from ckptfs.lake.manifest import MAX_FILE_SIZE, decode_path, encode_path
from ckptfs.lake.namespace import Entry, Namespace, State, parse_stamped_key, valid_mount_id

FORMAT = 1
PREFIX = "snapshots/"
MAX_SNAPSHOT = 4 << 30  # decompressed bytes a reader accepts
_KINDS = ("file", "dir", "symlink", *events.SPECIAL_KINDS)


def key(horizon_ns: int, mount: str, segments: int) -> str:
    return f"{PREFIX}{horizon_ns:016x}-{mount}-{segments:016x}"


def parse_key(name: str) -> tuple[int, str, int] | None:
    """(horizon, writer, segments covered) of a snapshot key, or None if it is not one."""
    return parse_stamped_key(name, PREFIX)


@dataclass
class Snapshot:
    horizon_ns: int
    cursors: dict[str, int]
    tree: Namespace  # everything placed before the horizon
    tail: list[Event] = field(default_factory=list)  # covered events placed at or after it, in order

    @property
    def segments(self) -> int:
        return sum(seq + 1 for seq in self.cursors.values())


# -- writing -------------------------------------------------------------------------------------
def unparse(change: Event) -> dict[str, Any]:
    """The raw event that `events.parse` reads back as `change` (placement aside)."""
    return events.record(change.op, change.path, change.time_ns, dst=change.dst, manifest=change.manifest,
                         size=change.size if change.op == "put" else None, mode=change.mode,
                         mtime_ns=change.mtime_ns, atime_ns=change.atime_ns, uid=change.uid, gid=change.gid,
                         target=change.target, kind=change.kind, rdev=change.rdev if change.op == "mknod" else None,
                         node=change.node, dir_mtime_ns=change.dir_mtime_ns,
                         dst_dir_mtime_ns=change.dst_dir_mtime_ns)


def encode(snapshot: Snapshot) -> bytes:
    tree = snapshot.tree
    entries, index = [], {}
    for path, entry in tree.entries.items():
        if not path or id(entry) in index:
            continue  # the root's kind, mode and owner are the same in every lake: its times go apart
        index[id(entry)] = len(entries)
        entries.append([entry.kind, entry.mode, entry.mtime_ns, entry.size, entry.manifest,
                        None if entry.target is None else encode_path(entry.target), entry.uid, entry.gid,
                        entry.atime_ns, entry.ctime_ns, entry.rdev, entry.node,
                        sorted(encode_path(name) for name in entry.names)])
    history = [[encode_path(path), [[s.time_ns, s.manifest, s.size, s.mode,
                                     None if s.target is None else encode_path(s.target)] for s in states]]
               for path, states in tree.history.items()]
    tail: dict[tuple[str, int], list[Any]] = {}
    for change in snapshot.tail:
        tail.setdefault((change.mount, change.seq), [change.mount, change.seq, change.published_ns, []])[3].append(
            [change.position, unparse(change)])
    # Which entry each inode identity names is part of the state (the lake may hold two entries with
    # one node id, and then the replay's choice decides where the next `put` of it goes).
    nodes = [[node, index[id(entry)]] for node, entry in tree.nodes.items() if id(entry) in index]
    root = tree.entries[b""]
    document = {"format": FORMAT, "horizon_ns": snapshot.horizon_ns, "cursors": snapshot.cursors,
                "root_times": [root.mtime_ns, root.ctime_ns],
                "entries": entries, "nodes": nodes, "history": history, "tail": list(tail.values())}
    return lz4.frame.compress(json.dumps(document, separators=(",", ":")).encode())


# -- reading -------------------------------------------------------------------------------------
def decode(blob: bytes, name: str, late_ns: int) -> Snapshot:
    """The validated snapshot; CorruptObjectError naming `name` and what is wrong otherwise."""
    try:
        if blob[:4] != b"\x04\x22\x4d\x18":
            raise ValueError("not an lz4 frame")
        decompressor = lz4.frame.LZ4FrameDecompressor()
        text = decompressor.decompress(blob, max_length=MAX_SNAPSHOT)
        if not decompressor.eof:
            raise ValueError(f"truncated, or larger than {MAX_SNAPSHOT} bytes")
        document = json.loads(text)
        if not isinstance(document, dict):
            raise ValueError("not an object")
        if document.get("format") != FORMAT:
            raise ValueError(f"unknown snapshot format {document.get('format')!r:.40}")
        horizon = _integer(document.get("horizon_ns"), "horizon_ns", 0, events.TIME_LIMIT)
        cursors = _cursors(document.get("cursors"))
        tree = Namespace()
        _entries(tree, document.get("entries"), document.get("nodes"))
        root_times = document.get("root_times", [0, 0])  # snapshots written before it have none
        if not isinstance(root_times, list) or len(root_times) != 2:
            raise ValueError("root_times is not a pair")
        tree.entries[b""].mtime_ns = _integer(root_times[0], "root mtime", -events.TIME_LIMIT, events.TIME_LIMIT)
        tree.entries[b""].ctime_ns = _integer(root_times[1], "root ctime", -events.TIME_LIMIT, events.TIME_LIMIT)
        _history(tree, document.get("history"))
        tail = sorted(_tail(document.get("tail"), cursors, late_ns, name), key=lambda change: change.order)
    except (ValueError, TypeError, RuntimeError, events.InvalidEvent) as error:
        raise CorruptObjectError(f"{name}: not a valid namespace snapshot ({error})") from None
    return Snapshot(horizon, cursors, tree, tail)


def _integer(value: Any, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value < high:
        raise ValueError(f"{what} {value!r:.40} out of range")
    return value


def _optional(value: Any, what: str, low: int, high: int) -> int | None:
    return None if value is None else _integer(value, what, low, high)


def _path(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{what} is not a path")
    path = decode_path(value)
    problem = events.path_problem(path)
    if problem is not None:
        raise ValueError(f"{what} {value!r:.80}: {problem}")
    return path


def _target(value: Any) -> bytes | None:
    if value is None:
        return None
    target = decode_path(value) if isinstance(value, str) else b""
    if not target or len(target) > events.PATH_MAX or b"\0" in target:
        raise ValueError("bad symlink target")
    return target


def _manifest(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not events.MANIFEST_ID.match(value)):
        raise ValueError("bad manifest id")
    return value


def _cursors(value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ValueError("cursors is not an object")
    for mount, seq in value.items():
        if not valid_mount_id(mount):
            raise ValueError(f"bad mount id {mount!r:.40}")
        _integer(seq, "cursor", 0, 1 << 63)
    return dict(value)


def _entries(tree: Namespace, rows: Any, nodes: Any) -> None:
    if not isinstance(rows, list) or not isinstance(nodes, list):
        raise ValueError("entries or nodes is not a list")
    limit = events.TIME_LIMIT
    made = []
    for row in rows:
        if not isinstance(row, list) or len(row) != 13:
            raise ValueError("malformed entry")
        kind, mode, mtime, size, manifest, target, uid, gid, atime, ctime, rdev, node, names = row
        if kind not in _KINDS:
            raise ValueError(f"unknown kind {kind!r:.40}")
        if node is not None and (not isinstance(node, str) or not 0 < len(node) <= events.NODE_MAX):
            raise ValueError("bad node id")
        entry = Entry(kind, _integer(mode, "mode", 0, 0o10000), _integer(mtime, "mtime_ns", -limit, limit),
                      size=_integer(size, "size", 0, MAX_FILE_SIZE + 1), manifest=_manifest(manifest),
                      target=_target(target), uid=_optional(uid, "uid", 0, events.ID_LIMIT),
                      gid=_optional(gid, "gid", 0, events.ID_LIMIT),
                      atime_ns=_optional(atime, "atime_ns", -limit, limit),
                      ctime_ns=_integer(ctime, "ctime_ns", 0, limit), rdev=_integer(rdev, "rdev", 0, 1 << 64),
                      node=node)
        if (kind == "symlink") != (entry.target is not None) or (kind != "file" and (manifest or size)):
            raise ValueError(f"a {kind} entry with content it cannot have")
        if not isinstance(names, list) or not names or (len(names) > 1 and kind == "dir"):
            raise ValueError("bad names")
        for text in names:
            path = _path(text, "name")
            if path in tree.entries:
                raise ValueError(f"{text!r:.80} named twice")
            tree._bind(path, entry)
        made.append(entry)
    tree.nodes = {}
    for item in nodes:
        if not isinstance(item, list) or len(item) != 2 or type(item[1]) is not int or not 0 <= item[1] < len(made):
            raise ValueError("malformed node index")
        if made[item[1]].node != item[0] or item[0] in tree.nodes:
            raise ValueError(f"node {item[0]!r:.40} indexed wrongly")
        tree.nodes[item[0]] = made[item[1]]
    for path in tree.entries:
        parent = path.rpartition(b"/")[0]
        if path and tree.entries.get(parent, Entry("file", 0, 0)).kind != "dir":
            raise ValueError(f"{encode_path(path)!r:.80} has no parent directory")


def _history(tree: Namespace, rows: Any) -> None:
    if not isinstance(rows, list):
        raise ValueError("history is not a list")
    for row in rows:
        if not isinstance(row, list) or len(row) != 2 or not isinstance(row[1], list):
            raise ValueError("malformed history")
        path = _path(row[0], "history path")
        states = []
        for state in row[1]:
            if not isinstance(state, list) or len(state) != 5:
                raise ValueError("malformed history state")
            time_ns, manifest, size, mode, target = state
            states.append(State(_integer(time_ns, "time_ns", 0, events.TIME_LIMIT), _manifest(manifest),
                                _integer(size, "size", 0, MAX_FILE_SIZE + 1), _integer(mode, "mode", 0, 0o10000),
                                _target(target)))
        if path in tree.history:
            raise ValueError(f"history of {row[0]!r:.80} given twice")
        tree.history[path] = states


def _tail(rows: Any, cursors: dict[str, int], late_ns: int, name: str) -> Iterable[Event]:
    if not isinstance(rows, list):
        raise ValueError("tail is not a list")
    for row in rows:
        if not isinstance(row, list) or len(row) != 4 or not isinstance(row[3], list):
            raise ValueError("malformed tail")
        mount, seq, published_ns, raws = row
        if not valid_mount_id(mount) or _integer(seq, "seq", 0, 1 << 63) > cursors.get(mount, -1):
            raise ValueError("a tail segment the cursors do not cover")
        published_ns = _optional(published_ns, "published_ns", 0, events.TIME_LIMIT)
        for item in raws:
            if not isinstance(item, list) or len(item) != 2:
                raise ValueError("malformed tail event")
            position = _integer(item[0], "position", 0, 1 << 32)
            yield events.parse(item[1], mount=mount, seq=seq, position=position, published_ns=published_ns,
                               late_ns=late_ns, where=f"{name} tail {mount}/{seq} event {position}")
