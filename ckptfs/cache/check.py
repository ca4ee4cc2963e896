"""Checks and repairs of a cache dir, used at mount start and by `ckptfs fsck --cache-dir`.

Damage is never handled silently. At start the daemon refuses to mount a cache dir with problems
and names the repair command; `repair` then does the least destructive thing:
* an unreadable journal is moved aside (kept for inspection) and the staging files are moved to
  `lost+found/`; the next mount rebuilds the tree from the lake;
* versions that were waiting for upload but whose staging file is missing or shorter than the
  version are dropped from the upload queue and the history; a file whose current content was such
  a version falls back to its newest older version that is whole (in the lake, or staged in full),
  or disappears if it has none.

One loss is not damage but what a power cut does to data nobody fsync'ed, and the mount repairs it
by itself at start (`drop_unsynced_losses`), with a warning naming each file: a version closed but
never fsync'ed whose staged bytes the cache disk lost, and a version a writer was still writing when
the daemon died and never fsync'ed (its bytes are whatever part of the write reached the disk). Both
give way to the file's previous whole version, as a local file system gives the old content of a file
replaced without fsync. A version a caller fsync'ed (the journal's `synced`) is never dropped
silently: its loss means the disk broke its word, and the mount refuses as above.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from typing import TextIO

from ckptfs.cache.journal import COMMITTED, OPEN, Journal, Version
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


def drop_unsynced_losses(cache_dir: str) -> list[str]:
    """At mount start, before `check_cache`: drop the versions a crash may have left torn that no
    caller fsync'ed (see the module's docstring); one line per file, for a warning."""
    try:
        journal = open_journal(cache_dir)
    except sqlite3.DatabaseError:
        return []  # check_cache reports it
    lines = []
    try:
        synced = journal.synced_versions()
        damaged = damaged_versions(journal, os.path.join(cache_dir, "staging"))
        interrupted = [v for v in journal.versions_in_state(OPEN) if v.id not in synced and v.ino is not None]
        drop = {v.id: v for v in damaged + interrupted if v.id not in synced}
        for version in drop.values():
            path = journal.path_of(version.ino) if version.ino is not None else None
            fallback = _drop_version(journal, version, set(drop))
            why = ("its staged bytes were lost with the cache disk's unsynced writes" if version.state != OPEN
                   else "it was being written when the daemon stopped and was never fsync'ed")
            shows = f"its previous version {fallback:x}" if fallback is not None else "nothing (no earlier version)"
            lines.append(f"{path or version.path!r}: dropped version {version.id:x} ({why}); the file shows {shows}")
        if drop:
            journal.commit(durable=True)
    finally:
        journal.db.close()
    return lines


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
        damaged = damaged_versions(journal, os.path.join(cache_dir, "staging"))
        for version in damaged:
            _drop_version(journal, version, {v.id for v in damaged})
            actions.append(f"dropped version {version.id:x} of {version.path!r}: its staged data was lost")
        journal.commit(durable=True)
    finally:
        journal.db.close()
    return actions


def _drop_version(journal: Journal, version: Version, unusable: set[int]) -> int | None:
    """Forget a version; a file whose content it was falls back to its newest older version that is
    whole (in the lake, or staged and not in `unusable`), or is removed. Returns the fallback."""
    db = journal.db
    db.execute("DELETE FROM outbox WHERE version=?", (version.id,))
    db.execute("DELETE FROM history WHERE version=?", (version.id,))
    fallback = None
    for (ino,) in db.execute("SELECT ino FROM inodes WHERE version=?", (version.id,)).fetchall():
        fallback = None
        path = journal.path_of(ino)
        if path is not None:
            for _, candidate in reversed(journal.history(path)):
                older = journal.version(candidate) if candidate is not None else None
                if older is not None and older.id not in unusable and older.id != version.id and (
                        older.state == COMMITTED or (older.staged and older.state != OPEN)):
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
    return fallback.id if fallback is not None else None
