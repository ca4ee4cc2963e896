"""Namespace events: built by a mount, and read back from the lake, validated here and only here.

A lake is shared by many nodes and often by several teams, so every event a mount reads is input
from a client it does not control. `parse` turns a raw event (one JSON object of a log segment)
into an `Event` whose every path, mode, size, time, owner and id has been checked, or raises
`InvalidEvent` saying what is wrong; the reader skips that event, reports it (log, fsck) and serves
the rest. Nothing downstream of `parse` checks again, and nothing reads raw events but `parse`.

What a valid path is: bytes relative to the lake root, components separated by one `/`, each
component 1-255 bytes, without NUL, not `.` or `..`; at most 4096 bytes in all; the first component
is not `.versions` (the mount's history tree). Modes are permission bits only (at most 0o7777): the
file type comes from the operation. Set-id bits are kept, and grant nothing: mounts are always
`nosuid,nodev`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ckptfs.errors import CorruptObjectError
from ckptfs.lake.manifest import MAX_FILE_SIZE, decode_path, encode_path

NAME_MAX = 255
PATH_MAX = 4096
HISTORY_NAME = b".versions"
# File types besides regular files, directories and symlinks, created with mknod(2).
SPECIAL_KINDS = ("fifo", "socket", "char", "block")
OPS = {"put", "unlink", "mkdir", "rmdir", "symlink", "rename", "attr", "mknod", "link"}
MANIFEST_ID = re.compile(r"[0-9a-f]{32}\Z")
TIME_LIMIT = 1 << 63  # nanoseconds since the epoch in a signed 64-bit integer: years 1678-2262
ID_LIMIT = 1 << 32
NODE_MAX = 64


class InvalidEvent(CorruptObjectError):
    """An event of a log segment that does not describe a valid change of the tree."""


@dataclass(frozen=True, slots=True)
class Event:
    op: str
    path: bytes
    time_ns: int
    mount: str = ""  # the mount whose segment holds it, its seq and position there (set by the reader)
    seq: int = 0
    position: int = 0
    dst: bytes | None = None  # rename: the new path; link: the new name
    manifest: str | None = None  # put
    size: int = 0  # put
    mode: int | None = None  # permission bits; put, mkdir, mknod, attr
    mtime_ns: int | None = None
    atime_ns: int | None = None
    uid: int | None = None  # None in events of format 1: the mounting user owns the entry
    gid: int | None = None
    target: bytes | None = None  # symlink
    kind: str | None = None  # mknod: one of SPECIAL_KINDS
    rdev: int = 0  # mknod of a device
    node: str | None = None  # identity of the file's inode, shared by its hard links
    dir_mtime_ns: int | None = None  # the mtime of the directory holding `path` after the change
    dst_dir_mtime_ns: int | None = None  # rename, link: the mtime of the directory holding `dst`
    published_ns: int | None = None  # when its segment was published (None: the segment does not say)
    placed_ns: int = -1  # where it sorts: its time, or later if it was published late (`placement`)

    @property
    def order(self) -> tuple[int, str, int, int]:
        """The replay order of all mounts' events (docs/FORMAT.md)."""
        return (self.placed_ns, self.mount, self.seq, self.position)


def placement(time_ns: int, published_ns: int | None, late_ns: int) -> int:
    """Where an event sorts: at its time, unless its segment reached the lake more than `late_ns`
    after it (an outage or a crash kept it in an outbox); then at `late_ns` before the segment's
    publication. So no event sorts before (publication - late_ns): a snapshot of everything placed
    before a horizon stays complete once every segment published before horizon + late_ns (+ the
    clocks' skew) is read (lake/snapshot.py)."""
    if published_ns is None:
        return time_ns
    return max(time_ns, published_ns - late_ns)


def path_problem(path: bytes) -> str | None:
    """Why `path` is not a valid lake path, or None if it is."""
    if not path:
        return "empty path"
    if len(path) > PATH_MAX:
        return f"path longer than {PATH_MAX} bytes"
    components = path.split(b"/")
    for component in components:
        if not component:
            return "empty path component (leading, trailing or doubled '/')"
        if component in (b".", b".."):
            return f"path component {component!r}"
        if b"\0" in component:
            return "NUL byte in a path component"
        if len(component) > NAME_MAX:
            return f"path component longer than {NAME_MAX} bytes"
    if components[0] == HISTORY_NAME:
        return f"path inside the reserved {HISTORY_NAME.decode()} tree"
    return None


def record(op: str, path: bytes, time_ns: int, **fields: Any) -> dict[str, Any]:
    """Build a raw event for the log; bytes-valued fields are paths and are encoded losslessly.
    Fields that are None are left out."""
    raw: dict[str, Any] = {"op": op, "path": encode_path(path), "time_ns": time_ns}
    for name, value in fields.items():
        if value is not None:
            raw[name] = encode_path(value) if isinstance(value, bytes) else value
    return raw


def integer_field(raw: dict[str, Any], name: str, low: int, high: int, *, required: bool = False) -> int | None:
    value = raw.get(name)
    if value is None:
        if required:
            raise ValueError(f"missing {name}")
        return None
    if type(value) is not int or not low <= value < high:  # bool is an int: refused too
        raise ValueError(f"{name} {value!r:.40} out of range")
    return value


def path_field(raw: dict[str, Any], name: str) -> bytes:
    text = raw.get(name)
    if not isinstance(text, str):
        raise ValueError(f"missing {name}")
    value = decode_path(text)
    problem = path_problem(value)
    if problem is not None:
        raise ValueError(f"{name}: {problem}")
    return value


def _parse(raw: Any, mount: str, seq: int, position: int, published_ns: int | None, late_ns: int) -> Event:
    if not isinstance(raw, dict):
        raise ValueError("not an object")
    op = raw.get("op")
    if op not in OPS:
        raise ValueError(f"unknown op {op!r:.40}")
    fields: dict[str, Any] = {
        "op": op, "path": path_field(raw, "path"), "mount": mount, "seq": seq, "position": position,
        "time_ns": integer_field(raw, "time_ns", 0, TIME_LIMIT, required=True),
        "mtime_ns": integer_field(raw, "mtime_ns", -TIME_LIMIT, TIME_LIMIT),
        "atime_ns": integer_field(raw, "atime_ns", -TIME_LIMIT, TIME_LIMIT),
        "uid": integer_field(raw, "uid", 0, ID_LIMIT), "gid": integer_field(raw, "gid", 0, ID_LIMIT),
        "mode": integer_field(raw, "mode", 0, 0o10000, required=op in ("put", "mknod")),
        "dir_mtime_ns": integer_field(raw, "dir_mtime_ns", -TIME_LIMIT, TIME_LIMIT),
        "dst_dir_mtime_ns": integer_field(raw, "dst_dir_mtime_ns", -TIME_LIMIT, TIME_LIMIT),
    }
    node = raw.get("node")
    if node is not None:
        if not isinstance(node, str) or not 0 < len(node) <= NODE_MAX:
            raise ValueError("bad node id")
        fields["node"] = node
    if op == "put":
        manifest = raw.get("manifest")
        if not isinstance(manifest, str) or not MANIFEST_ID.match(manifest):
            raise ValueError("bad manifest id")
        fields["manifest"] = manifest
        fields["size"] = integer_field(raw, "size", 0, MAX_FILE_SIZE + 1, required=True)
    elif op in ("rename", "link"):
        fields["dst"] = path_field(raw, "dst")
    elif op == "symlink":
        target = raw.get("target")
        if not isinstance(target, str):
            raise ValueError("missing target")
        fields["target"] = decode_path(target)
        if not fields["target"] or len(fields["target"]) > PATH_MAX or b"\0" in fields["target"]:
            raise ValueError("bad symlink target")
    elif op == "mknod":
        if raw.get("kind") not in SPECIAL_KINDS:
            raise ValueError(f"unknown kind {raw.get('kind')!r:.40}")
        fields["kind"] = raw["kind"]
        fields["rdev"] = integer_field(raw, "rdev", 0, 1 << 64) or 0
    elif op == "attr" and all(fields[name] is None for name in ("mode", "mtime_ns", "atime_ns", "uid", "gid")):
        raise ValueError("attr changes nothing")
    return Event(**fields, published_ns=published_ns, placed_ns=placement(fields["time_ns"], published_ns, late_ns))


def parse(raw: Any, *, mount: str = "", seq: int = 0, position: int = 0, where: str = "event",
          published_ns: int | None = None, late_ns: int = 0) -> Event:
    """A validated Event from a raw one; InvalidEvent naming `where`, the op and the path otherwise.
    `published_ns` is its segment's publication time (None in segments that do not record it),
    `late_ns` the lake's lateness bound (`placement`)."""
    try:
        return _parse(raw, mount, seq, position, published_ns, late_ns)
    except ValueError as error:
        op = raw.get("op") if isinstance(raw, dict) else None
        path = raw.get("path") if isinstance(raw, dict) else None
        raise InvalidEvent(f"{where} ({op!r:.20} {path!r:.80}): {error}") from None
