"""The local journal: one SQLite database (WAL) in the cache dir, the single source of truth of a mount.

It holds the inode table, directory entries, file versions and their upload state, the path history
shown under .versions, the outbox of namespace events waiting to be published in order, the set of
chunk ids known to exist in the lake, counters, and the uploaded prefix of files too large for the
cache (`prefix_chunks`: their bytes left the cache disk, engine/spill.py). The daemon touches it
only from the trio thread.
Inode numbers and version ids are never reused (AUTOINCREMENT): a version id names its staging
file, and an inode number may still sit in the kernel's caches.

Commits are batched: callers change rows freely and `commit()` runs at the boundaries that matter
(close, rename, fsync, and a periodic tick), so no write() pays for a commit of its own.
`commit(durable=True)` fsyncs the WAL, for fsync() and for anything the lake already depends on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ckptfs.lake.manifest import Manifest
from ckptfs.lake.packs import LOOSE, Location

SCHEMA_VERSION = 4
ROOT_INODE = 1
OPEN, SEALED, COMMITTED = 0, 1, 2
STATE_NAMES = {OPEN: "dirty", SEALED: "uploading", COMMITTED: "committed"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inodes(
    ino INTEGER PRIMARY KEY AUTOINCREMENT, mode INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0, atime_ns INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL, target BLOB, version INTEGER, rdev INTEGER NOT NULL DEFAULT 0, node TEXT);
CREATE TABLE IF NOT EXISTS dirents(
    parent INTEGER NOT NULL, name BLOB NOT NULL, ino INTEGER NOT NULL, PRIMARY KEY(parent, name));
CREATE INDEX IF NOT EXISTS dirents_by_ino ON dirents(ino);
CREATE TABLE IF NOT EXISTS versions(
    id INTEGER PRIMARY KEY AUTOINCREMENT, ino INTEGER, state INTEGER NOT NULL, staged INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0, mode INTEGER NOT NULL DEFAULT 420, mtime_ns INTEGER NOT NULL DEFAULT 0,
    path BLOB, sealed_ns INTEGER, manifest TEXT, stored_bytes INTEGER NOT NULL DEFAULT 0,
    prefix_end INTEGER NOT NULL DEFAULT 0, hole_end INTEGER NOT NULL DEFAULT 0,
    prefix_new INTEGER NOT NULL DEFAULT 0, prefix_stored INTEGER NOT NULL DEFAULT 0, target BLOB);
CREATE INDEX IF NOT EXISTS versions_by_state ON versions(state);
CREATE INDEX IF NOT EXISTS versions_by_manifest ON versions(manifest);
CREATE TABLE IF NOT EXISTS history(
    id INTEGER PRIMARY KEY, path BLOB NOT NULL, time_ns INTEGER NOT NULL, version INTEGER);
CREATE INDEX IF NOT EXISTS history_by_path ON history(path, time_ns);
CREATE TABLE IF NOT EXISTS outbox(seq INTEGER PRIMARY KEY AUTOINCREMENT, event TEXT NOT NULL, version INTEGER);
CREATE TABLE IF NOT EXISTS known_chunks(
    id BLOB PRIMARY KEY, pack BLOB, offset INTEGER NOT NULL DEFAULT 0, stored INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS synced(version INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS prefix_chunks(
    version INTEGER NOT NULL, seq INTEGER NOT NULL, id BLOB NOT NULL, length INTEGER NOT NULL,
    PRIMARY KEY(version, seq)) WITHOUT ROWID;
"""
# Schema 1 lacked the spilled prefix: its versions table gains these columns (prefix_chunks is
# created by the script above).
_MIGRATE_FROM_1 = [f"ALTER TABLE versions ADD COLUMN {name} INTEGER NOT NULL DEFAULT 0"
                   for name in ("prefix_end", "hole_end", "prefix_new", "prefix_stored")]
# Schema 2 lacked device numbers and the lake identity of inodes (hard links, rebuilt inodes), and
# the targets of symlink versions (their history).
_MIGRATE_FROM_2 = ["ALTER TABLE inodes ADD COLUMN rdev INTEGER NOT NULL DEFAULT 0",
                   "ALTER TABLE inodes ADD COLUMN node TEXT",
                   "ALTER TABLE versions ADD COLUMN target BLOB"]
# Schema 3 knew chunks only as loose objects: known chunks gain where they lie (pack NULL: loose).
_MIGRATE_FROM_3 = ["ALTER TABLE known_chunks ADD COLUMN pack BLOB",
                   "ALTER TABLE known_chunks ADD COLUMN offset INTEGER NOT NULL DEFAULT 0",
                   "ALTER TABLE known_chunks ADD COLUMN stored INTEGER NOT NULL DEFAULT 0"]


@dataclass
class Inode:
    ino: int
    mode: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    target: bytes | None = None
    version: int | None = None
    rdev: int = 0
    node: str | None = None  # identity in the lake, shared with its hard links; None: from the mount id

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


@dataclass
class Version:
    id: int
    ino: int | None
    state: int
    staged: bool
    size: int
    mode: int
    mtime_ns: int
    path: bytes | None
    sealed_ns: int | None
    manifest: str | None
    stored_bytes: int
    prefix_end: int = 0  # [0, prefix_end) is in the lake as the chunks in prefix_chunks
    hole_end: int = 0  # [0, hole_end) of the staging file is punched out: read it from those chunks
    target: bytes | None = None  # a symlink's version (its history): where it pointed


_INODE_COLUMNS = "ino, mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns, target, version, rdev, node"
_VERSION_COLUMNS = ("id, ino, state, staged, size, mode, mtime_ns, path, sealed_ns, manifest, stored_bytes, "
                    "prefix_end, hole_end, target")


class Journal:
    def __init__(self, path: str) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level="DEFERRED", check_same_thread=False)
        # version id -> row, for the read path (a query per 128 KiB read was 7% of a warm read).
        # Every change of a row goes through update_version/delete_version, which forget it.
        self._version_rows: dict[int, Version] = {}
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self._inodes: dict[int, Inode] = {}
        if self.get_meta("schema") is None:
            self.set_meta("schema", str(SCHEMA_VERSION))
            now = time.time_ns()
            self.db.execute(f"INSERT INTO inodes({_INODE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                            (ROOT_INODE, stat.S_IFDIR | 0o755, os.getuid(), os.getgid(), 0, now, now, now,
                             None, None, 0, None))
            self.commit(durable=True)
        elif self.get_meta("schema") in ("1", "2", "3"):
            old = int(self.get_meta("schema") or 0)
            steps = ((_MIGRATE_FROM_1 if old < 2 else []) + (_MIGRATE_FROM_2 if old < 3 else [])
                     + _MIGRATE_FROM_3)
            for statement in steps:
                self.db.execute(statement)
            self.set_meta("schema", str(SCHEMA_VERSION))
            self.commit(durable=True)
        elif self.get_meta("schema") != str(SCHEMA_VERSION):
            raise RuntimeError(f"journal {path} has schema {self.get_meta('schema')}, expected {SCHEMA_VERSION}")
        self.db.execute("CREATE INDEX IF NOT EXISTS inodes_by_node ON inodes(node)")

    def close(self) -> None:
        self.commit(durable=True)
        self.db.close()

    def commit(self, *, durable: bool = False) -> None:
        self.db.commit()
        if durable:
            # In WAL mode with synchronous=NORMAL a commit reaches the WAL file but not the disk;
            # an fsync of the WAL makes every commit so far survive a power loss.
            try:
                fd = os.open(self.path + "-wal", os.O_RDONLY)
            except FileNotFoundError:
                return
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # -- meta and counters --------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def delete_meta(self, key: str) -> None:
        self.db.execute("DELETE FROM meta WHERE key=?", (key,))

    def add_counter(self, name: str, amount: int) -> None:
        self.db.execute("INSERT INTO counters(name, value) VALUES (?, ?) "
                        "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (name, amount))

    def counters(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT name, value FROM counters"))

    # -- inodes -------------------------------------------------------------------------------
    def inode(self, ino: int) -> Inode | None:
        cached = self._inodes.get(ino)
        if cached is not None:
            return cached
        row = self.db.execute(f"SELECT {_INODE_COLUMNS} FROM inodes WHERE ino=?", (ino,)).fetchone()
        if row is None:
            return None
        inode = Inode(*row)
        self._inodes[ino] = inode
        return inode

    def create_inode(self, mode: int, uid: int, gid: int, *, target: bytes | None = None,
                     time_ns: int | None = None, rdev: int = 0, node: str | None = None) -> Inode:
        now = time.time_ns() if time_ns is None else time_ns
        cursor = self.db.execute(
            "INSERT INTO inodes(mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns, target, rdev, node) "
            "VALUES (?,?,?,?,?,?,?,?,?,?)", (mode, uid, gid, len(target or b""), now, now, now, target, rdev, node))
        return self.inode(cursor.lastrowid)  # type: ignore[return-value]

    def save_inode(self, inode: Inode) -> None:
        self.db.execute("UPDATE inodes SET mode=?, uid=?, gid=?, size=?, atime_ns=?, mtime_ns=?, ctime_ns=?, "
                        "target=?, version=?, rdev=?, node=? WHERE ino=?",
                        (inode.mode, inode.uid, inode.gid, inode.size, inode.atime_ns, inode.mtime_ns,
                         inode.ctime_ns, inode.target, inode.version, inode.rdev, inode.node, inode.ino))

    def delete_inode(self, ino: int) -> None:
        self.db.execute("DELETE FROM inodes WHERE ino=?", (ino,))
        self._inodes.pop(ino, None)

    def orphan_inodes(self) -> list[int]:
        """Inodes no directory entry names (unlinked while open before a crash)."""
        return [row[0] for row in self.db.execute(
            "SELECT ino FROM inodes WHERE ino != ? AND ino NOT IN (SELECT ino FROM dirents)", (ROOT_INODE,))]

    # -- directory entries --------------------------------------------------------------------
    def lookup(self, parent: int, name: bytes) -> int | None:
        row = self.db.execute("SELECT ino FROM dirents WHERE parent=? AND name=?", (parent, name)).fetchone()
        return row[0] if row else None

    def children(self, parent: int, after: bytes | None = None, limit: int = -1) -> list[tuple[bytes, int]]:
        if after is None:
            rows = self.db.execute("SELECT name, ino FROM dirents WHERE parent=? ORDER BY name LIMIT ?",
                                   (parent, limit))
        else:
            rows = self.db.execute("SELECT name, ino FROM dirents WHERE parent=? AND name>? ORDER BY name "
                                   "LIMIT ?", (parent, after, limit))
        return [(bytes(name), ino) for name, ino in rows]

    def has_children(self, parent: int) -> bool:
        return self.db.execute("SELECT 1 FROM dirents WHERE parent=? LIMIT 1", (parent,)).fetchone() is not None

    def add_dirent(self, parent: int, name: bytes, ino: int) -> None:
        self.db.execute("INSERT INTO dirents(parent, name, ino) VALUES (?,?,?)", (parent, name, ino))

    def remove_dirent(self, parent: int, name: bytes) -> None:
        self.db.execute("DELETE FROM dirents WHERE parent=? AND name=?", (parent, name))

    def move_dirent(self, parent: int, name: bytes, new_parent: int, new_name: bytes) -> None:
        self.db.execute("UPDATE dirents SET parent=?, name=? WHERE parent=? AND name=?",
                        (new_parent, new_name, parent, name))

    def lookup_path(self, path: bytes) -> int | None:
        """The inode a path relative to the root names, or None."""
        ino: int | None = ROOT_INODE
        for part in path.split(b"/") if path else []:
            ino = self.lookup(ino, part)
            if ino is None:
                return None
        return ino

    def parent_of(self, ino: int) -> tuple[int, bytes] | None:
        row = self.db.execute("SELECT parent, name FROM dirents WHERE ino=? LIMIT 1", (ino,)).fetchone()
        return (row[0], bytes(row[1])) if row else None

    def link_count(self, ino: int) -> int:
        return self.db.execute("SELECT COUNT(*) FROM dirents WHERE ino=?", (ino,)).fetchone()[0]

    def subdirectory_count(self, ino: int) -> int:
        """The directories in a directory: each names it as `..`, so its link count is 2 plus these."""
        return self.db.execute("SELECT COUNT(*) FROM dirents JOIN inodes ON inodes.ino = dirents.ino "
                               "WHERE parent=? AND (mode & ?) = ?", (ino, stat.S_IFMT(0o170000), stat.S_IFDIR)
                               ).fetchone()[0]

    def paths_of(self, ino: int) -> list[bytes]:
        """Every path that names an inode (hard links have several), sorted."""
        names = self.db.execute("SELECT parent, name FROM dirents WHERE ino=?", (ino,)).fetchall()
        paths = []
        for parent, name in names:
            base = self.path_of(parent)
            if base is not None:
                paths.append(base + b"/" + bytes(name) if base else bytes(name))
        return sorted(paths)

    def path_of(self, ino: int) -> bytes | None:
        """The path of an inode relative to the root, or None if it is unlinked."""
        parts: list[bytes] = []
        while ino != ROOT_INODE:
            link = self.parent_of(ino)
            if link is None:
                return None
            ino, name = link
            parts.append(name)
        return b"/".join(reversed(parts))

    def walk_files(self, top: int) -> Iterator[tuple[bytes, int]]:
        """(relative path, ino) of every non-directory under `top`, depth first."""
        stack: list[tuple[bytes, int]] = [(b"", top)]
        while stack:
            prefix, directory = stack.pop()
            for name, ino in self.children(directory):
                path = prefix + name
                inode = self.inode(ino)
                if inode is not None and inode.is_dir:
                    stack.append((path + b"/", ino))
                else:
                    yield path, ino

    # -- versions -----------------------------------------------------------------------------
    def new_version(self, ino: int | None, *, state: int = OPEN, staged: bool = True, size: int = 0,
                    mode: int = 0o644, mtime_ns: int = 0, manifest: str | None = None,
                    path: bytes | None = None, sealed_ns: int | None = None, target: bytes | None = None) -> int:
        cursor = self.db.execute(
            "INSERT INTO versions(ino, state, staged, size, mode, mtime_ns, manifest, path, sealed_ns, target) "
            "VALUES (?,?,?,?,?,?,?,?,?,?)",
            (ino, state, int(staged), size, mode, mtime_ns, manifest, path, sealed_ns, target))
        return cursor.lastrowid  # type: ignore[return-value]

    def _versions(self, where: str, parameters: tuple) -> list[Version]:
        rows = self.db.execute(f"SELECT {_VERSION_COLUMNS} FROM versions WHERE {where} ORDER BY id", parameters)
        return [Version(row[0], row[1], row[2], bool(row[3]), row[4], row[5], row[6],
                        bytes(row[7]) if row[7] is not None else None, *row[8:]) for row in rows]

    def version(self, identifier: int) -> Version | None:
        row = self._version_rows.get(identifier)
        if row is None:
            found = self._versions("id=?", (identifier,))
            if not found:
                return None
            row = self._version_rows[identifier] = found[0]
            if len(self._version_rows) > 4096:
                self._version_rows.pop(next(iter(self._version_rows)))
        return dataclasses.replace(row)  # callers may change their copy

    def update_version(self, identifier: int, **fields: Any) -> None:
        self._version_rows.pop(identifier, None)
        assignments = ", ".join(f"{name}=?" for name in fields)
        self.db.execute(f"UPDATE versions SET {assignments} WHERE id=?", (*fields.values(), identifier))

    def versions_in_state(self, state: int) -> list[Version]:
        return self._versions("state=?", (state,))

    def versions_summary(self, state: int) -> tuple[int, int, int | None]:
        """(count, total size, oldest seal time) of the versions in a state, without reading them."""
        count, size, oldest = self.db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(sealed_ns) FROM versions "
                                              "WHERE state=?", (state,)).fetchone()
        return count, size, oldest

    def delete_version(self, identifier: int) -> None:
        self._version_rows.pop(identifier, None)
        self.db.execute("DELETE FROM versions WHERE id=?", (identifier,))
        self.db.execute("DELETE FROM prefix_chunks WHERE version=?", (identifier,))
        self.db.execute("DELETE FROM synced WHERE version=?", (identifier,))

    def mark_synced(self, identifier: int) -> None:
        """A caller fsync'ed this version: its staged bytes were promised to survive a power cut
        (cache/check.py tells such a loss from one of unsynced data)."""
        self.db.execute("INSERT OR IGNORE INTO synced(version) VALUES (?)", (identifier,))

    def synced_versions(self) -> set[int]:
        return {row[0] for row in self.db.execute("SELECT version FROM synced")}

    # -- the uploaded prefix of a version whose bytes left the cache disk ---------------------
    def extend_prefix(self, identifier: int, chunks: list[tuple[bytes, int]], *, first_seq: int, end: int,
                      hole_end: int, new_bytes: int, stored_bytes: int) -> None:
        """Record that [0, end) is in the lake as the version's prefix chunks, `chunks` being those
        from number `first_seq` on, and that [0, hole_end) may be punched out of its staging file."""
        self.db.executemany("INSERT OR REPLACE INTO prefix_chunks(version, seq, id, length) VALUES (?,?,?,?)",
                            [(identifier, first_seq + index, chunk, length)
                             for index, (chunk, length) in enumerate(chunks)])
        self.update_version(identifier, prefix_end=end, hole_end=hole_end, prefix_new=new_bytes,
                            prefix_stored=stored_bytes)

    def prefix(self, identifier: int) -> tuple[list[tuple[bytes, int]], int, int]:
        """The version's prefix chunks, and the new and stored bytes its upload added."""
        chunks = [(bytes(chunk), length) for chunk, length in self.db.execute(
            "SELECT id, length FROM prefix_chunks WHERE version=? ORDER BY seq", (identifier,))]
        row = self.db.execute("SELECT prefix_new, prefix_stored FROM versions WHERE id=?", (identifier,)).fetchone()
        return chunks, (row[0] if row else 0), (row[1] if row else 0)

    def clear_prefix(self, identifier: int) -> None:
        self.db.execute("DELETE FROM prefix_chunks WHERE version=?", (identifier,))
        self.update_version(identifier, prefix_end=0, hole_end=0, prefix_new=0, prefix_stored=0)

    def staged_versions(self) -> list[Version]:
        return self._versions("staged=1", ())

    # -- history ------------------------------------------------------------------------------
    def add_history(self, path: bytes, time_ns: int, version: int | None) -> None:
        self.db.execute("INSERT INTO history(path, time_ns, version) VALUES (?,?,?)", (path, time_ns, version))

    def history(self, path: bytes) -> list[tuple[int, int | None]]:
        return list(self.db.execute("SELECT time_ns, version FROM history WHERE path=? ORDER BY time_ns, id",
                                    (path,)))

    def states_at(self, prefix: bytes, at_ns: int) -> list[tuple[bytes, int]]:
        """(path, version) of every path at or under `prefix` whose newest state at or before
        `at_ns` has content (time travel: files/past.py)."""
        newest = ("SELECT h2.id FROM history h2 WHERE h2.path = h.path AND h2.time_ns <= ? "
                  "ORDER BY h2.time_ns DESC, h2.id DESC LIMIT 1")
        if prefix:
            rows = self.db.execute(
                f"SELECT h.path, h.version FROM history h WHERE (h.path = ? OR (h.path >= ? AND h.path < ?)) "
                f"AND h.time_ns <= ? AND h.id = ({newest})", (prefix, prefix + b"/", prefix + b"0", at_ns, at_ns))
        else:
            rows = self.db.execute(
                f"SELECT h.path, h.version FROM history h WHERE h.time_ns <= ? AND h.id = ({newest})", (at_ns, at_ns))
        return [(bytes(path), version) for path, version in rows if version is not None]

    def history_times(self, limit: int) -> list[int]:
        """The newest distinct times at which any path changed, newest first."""
        return [time_ns for (time_ns,) in self.db.execute(
            "SELECT DISTINCT time_ns FROM history ORDER BY time_ns DESC LIMIT ?", (limit,))]

    def version_by_manifest(self, manifest: str) -> int | None:
        row = self.db.execute("SELECT id FROM versions WHERE manifest=? ORDER BY id DESC LIMIT 1",
                              (manifest,)).fetchone()
        return row[0] if row else None

    def newest_history_time(self, path: bytes) -> int:
        """The newest history time at `path` or under it (0 if none)."""
        row = self.db.execute("SELECT MAX(time_ns) FROM history WHERE path=? OR (path>=? AND path<?)",
                              (path, path + b"/", path + b"0")).fetchone()
        return row[0] or 0

    def history_children(self, prefix: bytes) -> list[bytes]:
        """Names of the next path component under `prefix` among all paths with history."""
        if prefix:
            start, stop = prefix + b"/", prefix + b"0"  # b"0" is the byte after b"/"
            rows = self.db.execute("SELECT DISTINCT path FROM history WHERE path>=? AND path<?", (start, stop))
            cut = len(start)
        else:
            rows = self.db.execute("SELECT DISTINCT path FROM history")
            cut = 0
        return sorted({bytes(path)[cut:].split(b"/", 1)[0] for (path,) in rows})

    def enqueue(self, record: dict[str, Any], version: int | None = None) -> int:
        cursor = self.db.execute("INSERT INTO outbox(event, version) VALUES (?, ?)",
                                 (json.dumps(record), version))
        return cursor.lastrowid  # type: ignore[return-value]

    def outbox(self, limit: int = 1000, upto: int | None = None) -> list[tuple[int, dict[str, Any], int | None]]:
        if upto is None:
            rows = self.db.execute("SELECT seq, event, version FROM outbox ORDER BY seq LIMIT ?", (limit,))
        else:
            rows = self.db.execute("SELECT seq, event, version FROM outbox WHERE seq<=? ORDER BY seq", (upto,))
        return [(seq, json.loads(text), version) for seq, text, version in rows]

    def oldest_unpublished_ns(self) -> int | None:
        """The time of the oldest change not yet in the lake: a queued event, or a version being
        written (whose event is queued at its close)."""
        event = self.db.execute("SELECT MIN(json_extract(event, '$.time_ns')) FROM outbox").fetchone()[0]
        opened = self.db.execute("SELECT MIN(i.mtime_ns) FROM versions v JOIN inodes i ON v.ino = i.ino "
                                 "WHERE v.state=?", (OPEN,)).fetchone()[0]
        found = [value for value in (event, opened) if value]
        return min(found) if found else None

    def outbox_paths(self) -> Iterator[str]:
        """The encoded paths (and destinations) the queued events name."""
        for path, destination in self.db.execute("SELECT json_extract(event, '$.path'), json_extract(event, '$.dst') "
                                                 "FROM outbox"):
            for value in (path, destination):
                if isinstance(value, str):
                    yield value

    def outbox_ready(self) -> tuple[int, int | None]:
        """(how many events from the head can be published now, the seq of the first that cannot:
        its version is not committed yet, None if there is none)."""
        blocked = self.db.execute("SELECT MIN(outbox.seq) FROM outbox LEFT JOIN versions "
                                  "ON versions.id = outbox.version WHERE outbox.version IS NOT NULL "
                                  "AND (versions.id IS NULL OR versions.state != ?)", (COMMITTED,)).fetchone()[0]
        if blocked is None:
            return self.outbox_length(), None
        return self.db.execute("SELECT COUNT(*) FROM outbox WHERE seq < ?", (blocked,)).fetchone()[0], blocked

    def outbox_tail(self) -> int:
        """The last seq ever queued (seqs are never reused, so a barrier taken now stays meaningful)."""
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
        return row[0] if row else 0

    def outbox_length(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def outbox_seq_of_version(self, version: int) -> int | None:
        """The seq of the unpublished event that publishes this version, or None once published."""
        row = self.db.execute("SELECT MAX(seq) FROM outbox WHERE version=?", (version,)).fetchone()
        return row[0] if row else None

    def drop_outbox(self, upto: int) -> None:
        self.db.execute("DELETE FROM outbox WHERE seq<=?", (upto,))

    # -- other mounts' inodes ------------------------------------------------------------------
    def inode_by_node(self, node: str, mount_id: str) -> int | None:
        """The live inode with lake identity `node` (this mount's own inodes carry none: theirs is
        `<mount id>.<ino hex>`)."""
        own, _, number = node.partition(".")
        if own == mount_id and number:
            try:
                inode = self.inode(int(number, 16))
            except ValueError:
                return None
            return inode.ino if inode is not None and inode.node in (None, node) else None
        row = self.db.execute("SELECT ino FROM inodes WHERE node=? LIMIT 1", (node,)).fetchone()
        return row[0] if row else None

    # -- chunks known to be in the lake -------------------------------------------------------
    def chunk_location(self, identifier: bytes) -> Location | None:
        """Where the lake holds a chunk, or None if this cache dir does not know it is there."""
        row = self.db.execute("SELECT pack, offset, stored FROM known_chunks WHERE id=?", (identifier,)).fetchone()
        if row is None:
            return None
        return LOOSE if row[0] is None else Location(bytes(row[0]), row[1], row[2])

    def add_known_chunks(self, identifiers: Iterable[bytes]) -> None:
        """Loose chunk objects the lake holds (lakes of format 1 to 3)."""
        self.db.executemany("INSERT OR IGNORE INTO known_chunks(id) VALUES (?)", ((i,) for i in identifiers))

    def learn_manifest(self, manifest: Manifest) -> None:
        """Every manifest read teaches where its chunks are: saving them again uploads nothing (the
        previous version of a path is the usual source of unchanged chunks)."""
        self.add_chunk_locations((chunk, manifest.location(index)) for index, (chunk, _) in enumerate(manifest.chunks))

    def add_chunk_locations(self, located: Iterable[tuple[bytes, Location]]) -> None:
        """Chunks the lake holds and where. A location learnt later replaces the one known, unless it
        is loose and the known one is in a pack (which reads with its neighbours): the newest copy is
        the one garbage collection is least likely to have marked (engine/leases.py)."""
        self.db.executemany(
            "INSERT INTO known_chunks(id, pack, offset, stored) VALUES (?,?,?,?) ON CONFLICT(id) DO UPDATE "
            "SET pack=excluded.pack, offset=excluded.offset, stored=excluded.stored "
            "WHERE excluded.pack IS NOT NULL OR known_chunks.pack IS NULL",
            ((identifier, where.pack or None, where.offset, where.stored) for identifier, where in located))

    def forget_objects(self, keys: Iterable[str]) -> None:
        """Forget chunk locations in lake objects garbage collection has deleted (or will)."""
        for key in keys:
            name = key.rsplit("/", 1)[-1]
            try:
                identifier = bytes.fromhex(name)
            except ValueError:
                continue
            if key.startswith("packs/"):
                self.db.execute("DELETE FROM known_chunks WHERE pack=?", (identifier,))
            elif key.startswith("chunks/"):
                self.db.execute("DELETE FROM known_chunks WHERE id=? AND pack IS NULL", (identifier,))
