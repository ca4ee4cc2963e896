"""`gc/lock`: one garbage collection run at a time on a lake (docs/FORMAT.md, "Garbage collection").

A run creates the lock with a conditional PUT, rewrites it every minute and deletes it at its end.
Mounts never read it: it orders runs, not saves. A lock nobody rewrote for 10 minutes is taken
over. That bound is for a holder on another machine, which a run cannot look at; a holder on this
machine it can: the lock names the kernel's boot, the pid namespace, the pid and the process's
start time, and a run that finds the same boot and namespace but no process with that pid and
start time knows the holder is gone and takes the lock at once (so does one on a machine that has
restarted since the lock was last rewritten).
A job killed and restarted on the same node (a mount running GC on a schedule, `ckptfs gc` from a
timer) no longer waits 10 minutes, nor for a human's `--break-lock`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from ckptfs.errors import CkptfsError
from ckptfs.store import ObjectNotFound, ObjectStore, PreconditionFailed

log = logging.getLogger(__name__)
LOCK = "gc/lock"
LOCK_REFRESH_NS = 60 * 10**9
LOCK_STALE_NS = 10 * 60 * 10**9


class GcBusy(CkptfsError):
    """Another garbage collection run holds the lake's lock."""


def _read(path: str) -> str | None:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError:
        return None


def boot_id() -> str | None:
    """This boot of the machine (changes at every restart, a power cut's included); None if unknown."""
    return _read("/proc/sys/kernel/random/boot_id")


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def booted_ns() -> int:
    """When this machine booted, on the wall clock."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def start_ticks(pid: int) -> int | None:
    """When process `pid` started, in clock ticks after boot (/proc/PID/stat, field 22); None if no
    such process. With the pid, it names one process for the life of a boot."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: count from the last ')'
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def this_process() -> dict[str, Any]:
    """This process as a lock names it."""
    return {"host": socket.gethostname(), "boot": boot_id(), "pidns": _pid_namespace(), "pid": os.getpid(),
            "pid_start": start_ticks(os.getpid())}


def holder_gone(holder: dict[str, Any], now_ns: int) -> str | None:
    """Why the lock's holder is known to be gone, or None if that cannot be told from here (another
    machine, another pid namespace, a lock written before locks named their process, a holder that
    still runs). The same boot id is the same kernel: the pid and its start time then say whether
    the holder still runs. Another boot of a machine of the same name is taken for this machine
    restarted only if the lock was last rewritten before this boot and over two rewrites ago (a
    live holder rewrites it every minute; two machines may share a name)."""
    boot = boot_id()
    if not boot or not holder.get("boot") or not isinstance(holder.get("refreshed_ns"), int):
        return None
    if holder["boot"] != boot:
        if (holder.get("host") == socket.gethostname() and holder["refreshed_ns"] < booted_ns()
                and holder["refreshed_ns"] < now_ns - 2 * LOCK_REFRESH_NS):
            return "this machine has restarted since"
        return None
    if holder.get("pidns") != _pid_namespace() or not isinstance(holder.get("pid"), int) \
            or holder.get("pid_start") is None:
        return None
    if start_ticks(holder["pid"]) != holder["pid_start"]:
        return f"pid {holder['pid']} of this machine is no longer that process"
    return None


class GcLock:
    def __init__(self, store: ObjectStore, run_id: str, now: Callable[[], int]) -> None:
        self.store = store
        self.run_id = run_id
        self.now = now
        self._touched = 0

    def _body(self, started_ns: int) -> bytes:
        return json.dumps({"run": self.run_id, **this_process(), "started_ns": started_ns,
                           "refreshed_ns": self.now()}).encode()

    def acquire(self, started_ns: int, break_lock: bool) -> None:
        for _ in range(2):
            try:
                self.store.put(LOCK, self._body(started_ns), if_absent=True)
                self._touched = self.now()
                return
            except PreconditionFailed:
                try:
                    holder = json.loads(self.store.get(LOCK))
                except ObjectNotFound:
                    continue
                except ValueError:
                    holder = {}
                if not isinstance(holder, dict):
                    holder = {}
                refreshed = holder.get("refreshed_ns") if isinstance(holder.get("refreshed_ns"), int) else 0
                gone = holder_gone(holder, self.now())
                if not break_lock and gone is None and refreshed > self.now() - LOCK_STALE_NS:
                    raise GcBusy(f"another gc is running on {self.store.url} (run {holder.get('run')} on "
                                 f"{holder.get('host')}, pid {holder.get('pid')}, refreshed "
                                 f"{(self.now() - refreshed) / 1e9:.0f} s ago); pass --break-lock only if "
                                 "that run is dead") from None
                if gone is not None:
                    log.warning("taking over the gc lock of run %s: %s", holder.get("run"), gone)
                self.store.delete(LOCK)
        raise GcBusy(f"could not take {self.store.url}{LOCK}: another run took it meanwhile")

    def touch(self, started_ns: int) -> None:
        """Rewrite the lock once a minute, so that no other run takes it over."""
        if self.now() - self._touched >= LOCK_REFRESH_NS:
            self.store.put(LOCK, self._body(started_ns))
            self._touched = self.now()

    def release(self) -> None:
        self.store.delete(LOCK)
