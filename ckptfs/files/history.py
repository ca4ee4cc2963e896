"""The read-only `.versions` tree: every path's history, one file per version, named by UTC time; a
symlink's history has one symlink per state, pointing where the link pointed then.

`/ckpt/.versions/<path>/` lists the versions of <path> (oldest first when sorted by name) and, if the
path is or was a directory, the names under it that have history. Deleted paths stay listed, and show
it: their directory here has the sticky bit (`dr-xr-xr-t` in `ls -l`), its mtime is when the path was
deleted (for a live path: its newest change) and its `user.ckptfs.state` says `deleted <time>`.
Versions garbage collection deleted are not listed. A version replaced or removed less than the
lake's `fold_s` after it was written (the temp
file of an atomic save, an append loop's intermediate closes) is folded: not listed, like a path
whose every version was folded. Nodes get inode numbers from a range the journal never hands out;
they live only in memory. Nothing here writes.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from ckptfs.cache.journal import Journal
from ckptfs.files.past import PastNode, PastView
from ckptfs.lake.retention import FOLD_NS

NAME = b".versions"
FIRST_VIRTUAL_INODE = 1 << 60
ROOT_VIRTUAL_INODE = FIRST_VIRTUAL_INODE


@dataclass(frozen=True)
class Node:
    path: bytes           # the live path this node mirrors (b"" for the .versions root)
    version: int | None   # None for a directory node; the journal version id for a version file
    time_ns: int = 0


def version_name(time_ns: int) -> str:
    moment = datetime.datetime.fromtimestamp(time_ns / 1e9, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H-%M-%S.") + f"{(time_ns // 1_000_000) % 1000:03d}Z"


def is_virtual(ino: int) -> bool:
    return ino >= FIRST_VIRTUAL_INODE


class VersionsView:
    def __init__(self, journal: Journal, fold_ns: int = FOLD_NS) -> None:
        self.journal = journal
        self.fold_ns = fold_ns  # the lake's fold_s
        self._nodes: dict[int, Node | PastNode] = {ROOT_VIRTUAL_INODE: Node(b"", None)}
        self._inodes: dict[Node | PastNode, int] = {Node(b"", None): ROOT_VIRTUAL_INODE}
        self._next = ROOT_VIRTUAL_INODE + 1
        self.collected: set[str] = set()  # manifests GC has deleted (mount.py's Following keeps it up)
        self.past = PastView(journal)  # .at and .tags (files/past.py), on the same inode numbers
        self.past.collected = self.collected
        self.at_root = self._inode_for(PastNode("at", None, b"", None))
        self.tags_root = self._inode_for(PastNode("tags", None, b"", None))

    def node(self, ino: int) -> Node | PastNode | None:
        return self._nodes.get(ino)

    def _inode_for(self, node: Node | PastNode) -> int:
        ino = self._inodes.get(node)
        if ino is None:
            ino = self._inodes[node] = self._next
            self._nodes[ino] = node
            self._next += 1
        return ino

    def versions_of(self, path: bytes) -> list[tuple[bytes, int, int]]:
        """(file name, version id, time) of every version of `path` that has content, oldest first."""
        result: list[tuple[bytes, int, int]] = []
        seen: dict[bytes, int] = {}
        rows = self.journal.history(path)
        for index, (time_ns, version) in enumerate(rows):
            if version is None:
                continue
            if index + 1 < len(rows) and rows[index + 1][0] - time_ns < self.fold_ns:
                continue  # folded into what replaced it
            if self.collected:
                row = self.journal.version(version)
                if row is not None and row.manifest in self.collected:
                    continue  # gone from the lake: retention let it go and GC deleted it
            name = version_name(time_ns).encode()
            count = seen.get(name, 0) + 1
            seen[name] = count
            result.append((name if count == 1 else name + b"~%d" % count, version, time_ns))
        return result

    def children(self, ino: int) -> list[tuple[bytes, int]]:
        node = self._nodes[ino]
        if isinstance(node, PastNode):
            return [(name, self._inode_for(child)) for name, child in self.past.children(node)] \
                if node.version is None else []
        if node.version is not None:
            return []
        entries = [(name, self._inode_for(Node(self._join(node.path, name), None)))
                   for name in self.journal.history_children(node.path) if self._shown(self._join(node.path, name))]
        if node.path:
            entries += [(name, self._inode_for(Node(node.path, version, time_ns)))
                        for name, version, time_ns in self.versions_of(node.path)]
        return sorted(entries)

    def lookup(self, ino: int, name: bytes) -> int | None:
        node = self._nodes.get(ino)
        if node is None or node.version is not None:
            return None
        if isinstance(node, PastNode):
            child = self.past.lookup(node, name)
            return None if child is None else self._inode_for(child)
        if node.path:
            for version_file, version, time_ns in self.versions_of(node.path):
                if version_file == name:
                    return self._inode_for(Node(node.path, version, time_ns))
        child = self._join(node.path, name)
        if name in self.journal.history_children(node.path):
            return self._inode_for(Node(child, None))
        return None

    def _shown(self, path: bytes) -> bool:
        """Whether a path is listed: live, or a (former) directory, or with a version not folded."""
        return (self.journal.lookup_path(path) is not None or bool(self.journal.history_children(path))
                or bool(self.versions_of(path)))

    def state(self, path: bytes) -> tuple[bool, int]:
        """(live, time of its newest change: its deletion if it is deleted) of a path with history."""
        return self.journal.lookup_path(path) is not None, self.journal.newest_history_time(path)

    def link_target(self, ino: int) -> bytes | None:
        """The target a symlink's version shows, or None if the node is not one. A relative target
        is rewritten to climb out of `.versions/<dir>/<name>/` to `<dir>/`, so it resolves where the
        link pointed from its own directory."""
        node = self._nodes.get(ino)
        if node is None or node.version is None:
            return None
        version = self.journal.version(node.version)
        if version is None or version.target is None:
            return None
        if isinstance(node, PastNode) or version.target.startswith(b"/"):
            return version.target  # .at and .tags mirror the tree: a relative target resolves as it did
            return version.target
        directory = node.path.rpartition(b"/")[0]
        climb = b"../" * (node.path.count(b"/") + 2)  # the name's folder, then .versions itself
        return climb + (directory + b"/" if directory else b"") + version.target

    @staticmethod
    def _join(parent: bytes, name: bytes) -> bytes:
        return parent + b"/" + name if parent else name
