"""The namespace: each mount's append-only log of tree changes, and the replay that builds the tree.

Why a log per mount: many mounts commit into the same directory at once (every DCP rank writes a shard),
so there is no mutable object per directory to contend on. A mount writes its own numbered segments
`log/<mount>/<seq>` (each key written once, conditionally); a reader LISTs `log/`, GETs the segments and
replays all events ordered by (time, mount, seq, position). Per mount, event times strictly increase, so
each mount's own order (close and rename order) is kept. Paths are bytes relative to the lake root.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ckptfs.errors import CorruptObjectError
from ckptfs.lake.manifest import decode_path, encode_path

FORMAT = 1
OPS = {"put", "unlink", "mkdir", "rmdir", "symlink", "rename", "attr"}
MAX_SEGMENT = 64 * 1024 * 1024


def segment_key(mount: str, seq: int) -> str:
    return f"log/{mount}/{seq:016x}"


def parse_segment_key(key: str) -> tuple[str, int] | None:
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != "log":
        return None
    try:
        return parts[1], int(parts[2], 16)
    except ValueError:
        return None


def encode_segment(mount: str, seq: int, events: list[dict[str, Any]]) -> bytes:
    return json.dumps({"format": FORMAT, "mount": mount, "seq": seq, "events": events},
                      separators=(",", ":")).encode()


def decode_segment(blob: bytes, key: str) -> list[dict[str, Any]]:
    try:
        document = json.loads(blob)
        if document.get("format") != FORMAT:
            raise CorruptObjectError(f"{key}: unknown log format {document.get('format')!r}")
        events = document["events"]
        for event in events:
            if event["op"] not in OPS or not isinstance(event["time_ns"], int):
                raise CorruptObjectError(f"{key}: malformed event {event!r:.200}")
        return events
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CorruptObjectError(f"{key}: malformed log segment ({error})") from None


def event(op: str, path: bytes, time_ns: int, **fields: Any) -> dict[str, Any]:
    """Build a log event; bytes-valued fields are paths and are encoded losslessly."""
    record: dict[str, Any] = {"op": op, "path": encode_path(path), "time_ns": time_ns}
    for name, value in fields.items():
        record[name] = encode_path(value) if isinstance(value, bytes) else value
    return record


@dataclass
class Entry:
    kind: str  # "file", "dir" or "symlink"
    mode: int
    mtime_ns: int
    size: int = 0
    manifest: str | None = None
    target: bytes | None = None


@dataclass
class State:
    """One point in a path's history: a version with content, or its deletion."""
    time_ns: int
    manifest: str | None  # None means the path was deleted (or renamed away) at this time
    size: int = 0
    mode: int = 0o644


@dataclass
class Namespace:
    entries: dict[bytes, Entry] = field(default_factory=lambda: {b"": Entry("dir", 0o755, 0)})
    history: dict[bytes, list[State]] = field(default_factory=dict)

    def _ensure_parents(self, path: bytes, time_ns: int) -> None:
        parts = path.split(b"/")[:-1]
        for depth in range(1, len(parts) + 1):
            parent = b"/".join(parts[:depth])
            if parent not in self.entries or self.entries[parent].kind != "dir":
                self._remove(parent, time_ns)
                self.entries[parent] = Entry("dir", 0o755, time_ns)

    def _remember(self, path: bytes, state: State) -> None:
        self.history.setdefault(path, []).append(state)

    def _remove(self, path: bytes, time_ns: int) -> None:
        """Remove a path and everything under it, recording deletions of files."""
        prefix = path + b"/"
        for victim in [p for p in self.entries if p == path or p.startswith(prefix)]:
            if self.entries[victim].kind == "file":
                self._remember(victim, State(time_ns, None))
            del self.entries[victim]

    def descendants(self, path: bytes) -> list[bytes]:
        prefix = path + b"/" if path else b""
        return sorted(p for p in self.entries if p.startswith(prefix) and p != path)

    def apply(self, record: dict[str, Any]) -> None:
        op, time_ns = record["op"], record["time_ns"]
        path = decode_path(record["path"])
        if not path:
            return
        if op == "put":
            if path in self.entries and self.entries[path].kind != "file":
                self._remove(path, time_ns)
            self._ensure_parents(path, time_ns)
            entry = Entry("file", record["mode"], record["mtime_ns"], record["size"], record["manifest"])
            self.entries[path] = entry
            self._remember(path, State(time_ns, entry.manifest, entry.size, entry.mode))
        elif op == "symlink":
            self._remove(path, time_ns)
            self._ensure_parents(path, time_ns)
            self.entries[path] = Entry("symlink", 0o777, time_ns, target=decode_path(record["target"]))
        elif op == "mkdir":
            if path not in self.entries or self.entries[path].kind != "dir":
                self._remove(path, time_ns)
                self._ensure_parents(path, time_ns)
                self.entries[path] = Entry("dir", record.get("mode", 0o755), time_ns)
        elif op in ("unlink", "rmdir"):
            self._remove(path, time_ns)
        elif op == "attr":
            if path in self.entries:
                self.entries[path].mode = record.get("mode", self.entries[path].mode)
                self.entries[path].mtime_ns = record.get("mtime_ns", self.entries[path].mtime_ns)
        elif op == "rename":
            self._rename(path, decode_path(record["dst"]), time_ns)

    def _rename(self, source: bytes, destination: bytes, time_ns: int) -> None:
        if source not in self.entries or source == destination or not destination:
            return
        moved = [source] + self.descendants(source)
        self._remove(destination, time_ns)
        self._ensure_parents(destination, time_ns)
        for old in moved:
            new = destination + old[len(source):]
            entry = self.entries.pop(old)
            self.entries[new] = entry
            if entry.kind == "file":
                self._remember(old, State(time_ns, None))
                self._remember(new, State(time_ns, entry.manifest, entry.size, entry.mode))
