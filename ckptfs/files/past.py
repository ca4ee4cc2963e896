"""The read-only views of the past next to `.versions`: `.at/` (time travel) and `.tags/`.

* `/ckpt/.at/<time>/` is the whole tree as it was at that instant: every file and symlink whose
  state at or before the instant was content, in its directory. Any ISO 8601 time names an instant
  (`2026-11-28T14:00Z`, `2026-11-28T14:00:00+01:00`, `2026-11-28`, or a `.versions` file name;
  the instant is the end of the millisecond named);
  listing `.at/` shows the newest LISTED_INSTANTS instants at which anything changed. Versions GC has
  collected are not there (`ckptfs log` says which were collected and when).
* `/ckpt/.tags/<name>/` is what a tag keeps (`ckptfs tag`): the tagged file, or the tagged directory's
  files, under their paths relative to it.

Both are built from the journal's history (every state a mount knows of, published by any mount or
not yet published by this one) and read through the same version rows as `.versions`. They share
its inode numbers (files/history.py); nothing here writes.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from ckptfs.cache.journal import Journal

AT = b".at"
TAGS = b".tags"
LISTED_INSTANTS = 64


@dataclass(frozen=True)
class PastNode:
    kind: str                 # "at" or "tags"
    key: int | str | None     # the instant (ns) of an `.at` tree, the tag's name; None for the view's root
    path: bytes               # relative to the tree's root (b"" for its root)
    version: int | None       # the journal version of a file or symlink; None for a directory


def parse_instant(name: bytes) -> int | None:
    """An ISO 8601 time (UTC unless it says otherwise), or a `.versions` file name, in ns."""
    text = name.decode(errors="replace").strip()
    if len(text) >= 19 and text[10] == "T" and text[13] == "-" and text[16] == "-":
        text = text[:13] + ":" + text[14:16] + ":" + text[17:]  # 2026-11-28T14-00-00.123Z
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp()) * 10**9 + moment.microsecond * 1000


class PastView:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.collected: set[str] = set()  # shared with VersionsView: manifests GC deleted
        self.tags: dict[str, tuple[bytes, dict[bytes, str]]] = {}  # name -> (root, path -> manifest)

    # -- what a node holds --------------------------------------------------------------------
    def _states(self, node: PastNode) -> dict[bytes, int]:
        """path (relative to the node's tree) -> version, of every file or symlink at or under
        node.path in its tree."""
        if node.kind == "at":
            found = {}
            for path, version in self.journal.states_at(node.path, int(node.key or 0)):
                row = self.journal.version(version)
                if row is not None and (row.manifest is None or row.manifest not in self.collected):
                    found[path] = version
            return found
        root, entries = self.tags.get(str(node.key), (b"", {}))
        found = {}
        for path, manifest in entries.items():
            relative = path[len(root) + 1:] if root and path != root else path.rpartition(b"/")[2]
            if not node.path or relative == node.path or relative.startswith(node.path + b"/"):
                version = self.journal.version_by_manifest(manifest)
                if version is not None:
                    found[relative] = version
        return found

    def children(self, node: PastNode) -> list[tuple[bytes, PastNode]]:
        if node.key is None:
            if node.kind == "at":
                names = [version_name_of(instant) for instant in self.journal.history_times(LISTED_INSTANTS)]
                return [(name, PastNode("at", _end_of(parse_instant(name)), b"", None)) for name in names]
            return [(name.encode(), PastNode("tags", name, b"", None)) for name in sorted(self.tags)]
        entries: dict[bytes, PastNode] = {}
        cut = len(node.path) + 1 if node.path else 0
        for path, version in self._states(node).items():
            if path == node.path:
                continue
            rest = path[cut:]
            name, _, deeper = rest.partition(b"/")
            child = node.path + b"/" + name if node.path else name
            entries[name] = PastNode(node.kind, node.key, child, None if deeper else version)
        return sorted(entries.items())

    def lookup(self, node: PastNode, name: bytes) -> PastNode | None:
        if node.key is None:
            if node.kind == "at":
                instant = parse_instant(name)
                return None if instant is None else PastNode("at", _end_of(instant), b"", None)
            return PastNode("tags", name.decode(), b"", None) if name.decode(errors="replace") in self.tags else None
        child = node.path + b"/" + name if node.path else name
        states = self._states(PastNode(node.kind, node.key, child, None))
        if child in states:
            return PastNode(node.kind, node.key, child, states[child])
        return PastNode(node.kind, node.key, child, None) if states else None


def _end_of(instant: int | None) -> int:
    """A time names the end of its millisecond: `.at/<a .versions name>/` holds that version."""
    return (instant or 0) + 999_999


def version_name_of(time_ns: int) -> bytes:
    from ckptfs.files.history import version_name
    return version_name(time_ns).encode()
