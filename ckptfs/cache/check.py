"""Checks and repairs of a cache dir, used at mount start and by `ckptfs fsck --cache-dir`.

Damage is never handled silently. At start the daemon refuses to mount a cache dir with problems
and names the repair command; `repair` then does the least destructive thing:
* an unreadable journal is moved aside (kept for inspection) and the staging files are moved to
  `lost+found/`; the next mount rebuilds the tree from the lake;
* versions that were waiting for upload but whose staging file is missing or shorter than the
  version are dropped from the upload queue and the history; a file whose current content was such
  a version falls back to its last committed version, or disappears if it has none.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from typing import TextIO

from ckptfs.cache.journal import COMMITTED, Journal, Version
from ckptfs.errors import ConfigError

JOURNAL_NAME = "journal.sqlite"


@dataclass
class CacheProblem:
    kind: str     # "journal" or "staging"
    detail: str
    version: int | None = None


def lock_cache_dir(cache_dir: str) -> TextIO:
    """Take the cache dir's exclusive lock (a daemon, or fsck) and record our pid in it.

    The lock lasts as long as the returned file stays open. ConfigError names the holder if taken.
    """
    lock = open(os.path.join(cache_dir, "lock"), "a+")  # noqa: SIM115 - the caller owns it
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise ConfigError(f"cache dir {cache_dir} is in use by pid {holder}") from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def open_journal(cache_dir: str) -> Journal:
    """Open the journal, or raise sqlite3.DatabaseError if it is damaged."""
    journal = Journal(os.path.join(cache_dir, JOURNAL_NAME))
    result = journal.db.execute("PRAGMA quick_check").fetchone()[0]
    if result != "ok":
        journal.db.close()
        raise sqlite3.DatabaseError(result)
    return journal


def damaged_versions(journal: Journal, staging_dir: str) -> list[Version]:
    """Versions not yet in the lake whose staged bytes are gone or cut short."""
    damaged = []
    for version in journal.staged_versions():
        if version.state == COMMITTED:
            continue
        path = os.path.join(staging_dir, f"{version.id:016x}")
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            damaged.append(version)
            continue
        if version.state != 0 and size < version.size:  # OPEN versions take the file's size at start
            damaged.append(version)
    return damaged


def check_cache(cache_dir: str) -> list[CacheProblem]:
    try:
        journal = open_journal(cache_dir)
    except sqlite3.DatabaseError as error:
        return [CacheProblem("journal", f"the journal {os.path.join(cache_dir, JOURNAL_NAME)} is damaged: {error}")]
    try:
        return [CacheProblem("staging", f"staged data of version {v.id:x} ({v.path!r}, {v.size} bytes) is "
                             "missing or truncated", v.id)
                for v in damaged_versions(journal, os.path.join(cache_dir, "staging"))]
    finally:
        journal.db.close()


def repair_cache(cache_dir: str) -> list[str]:
    """Repair what check_cache finds; returns one line per action taken."""
    actions = []
    try:
        journal = open_journal(cache_dir)
    except sqlite3.DatabaseError:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            source = os.path.join(cache_dir, JOURNAL_NAME + suffix)
            if os.path.exists(source):
                os.replace(source, os.path.join(cache_dir, f"journal.damaged-{stamp}.sqlite{suffix}"))
        actions.append(f"moved the damaged journal aside as journal.damaged-{stamp}.sqlite")
        staging = os.path.join(cache_dir, "staging")
        if os.path.isdir(staging) and os.listdir(staging):
            lost = os.path.join(cache_dir, "lost+found", stamp)
            os.makedirs(os.path.dirname(lost), mode=0o700, exist_ok=True)
            shutil.move(staging, lost)
            actions.append(f"moved staging files to {lost} (data not yet uploaded may be there)")
        actions.append("the next mount rebuilds the tree from the lake")
        return actions
    try:
        for version in damaged_versions(journal, os.path.join(cache_dir, "staging")):
            _drop_version(journal, version)
            actions.append(f"dropped version {version.id:x} of {version.path!r}: its staged data was lost")
        journal.commit(durable=True)
    finally:
        journal.db.close()
    return actions


def _drop_version(journal: Journal, version: Version) -> None:
    db = journal.db
    db.execute("DELETE FROM outbox WHERE version=?", (version.id,))
    db.execute("DELETE FROM history WHERE version=?", (version.id,))
    for (ino,) in db.execute("SELECT ino FROM inodes WHERE version=?", (version.id,)).fetchall():
        fallback = None
        path = journal.path_of(ino)
        if path is not None:
            for _, candidate in reversed(journal.history(path)):
                older = journal.version(candidate) if candidate is not None else None
                if older is not None and older.state == COMMITTED:
                    fallback = older
                    break
        if fallback is None:
            db.execute("DELETE FROM dirents WHERE ino=?", (ino,))
            db.execute("DELETE FROM inodes WHERE ino=?", (ino,))
        else:
            db.execute("UPDATE inodes SET version=?, size=? WHERE ino=?", (fallback.id, fallback.size, ino))
    journal.delete_version(version.id)
    try:
        os.unlink(os.path.join(os.path.dirname(journal.path), "staging", f"{version.id:016x}"))
    except FileNotFoundError:
        pass
