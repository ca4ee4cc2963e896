"""Randomized crash trials: a writer records files only after fsync, the daemon is SIGKILLed at a
random moment, the mount restarts on the same cache dir, and every recorded file must read back
identical, end up committed, and the lake must pass the checker (no torn version).

Used by tests/test_crash.py (a few dozen trials in CI) and scripts/crash_trials.py (hundreds).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field

from ckptfs.lake import Lake
from ckptfs.lake.check import check_lake
from ckptfs.store import open_store
from tests.helpers import Mount

WRITER = textwrap.dedent("""
    import hashlib, json, os, random, sys
    root, record_path, trial, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    rng = random.Random(seed)
    record = open(record_path, "a")
    for n in range(10_000):
        size = rng.choice([0, 1, 100, 70_000, 1_000_000, 3_000_000, 9_000_000, 24_000_000])
        data = rng.randbytes(size) if size < 2_000_000 else (rng.randbytes(1_000_000) * (size // 1_000_000))
        directory = os.path.join(root, f"d{n % 3}")
        os.makedirs(directory, exist_ok=True)
        name = f"t{trial}-f{n}"
        final = os.path.join(directory, name)
        staged = final + ".tmp" if rng.random() < 0.4 else final   # DCP/HF style: write tmp, rename
        with open(staged, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if staged != final:
            os.rename(staged, final)
        record.write(json.dumps({"path": os.path.relpath(final, root),
                                 "sha256": hashlib.sha256(data).hexdigest()}) + "\\n")
        record.flush()
        os.fsync(record.fileno())
""")


@dataclass
class TrialResult:
    trials: int = 0
    recorded_files: int = 0
    lost_files: list[str] = field(default_factory=list)
    lake_problems: list[str] = field(default_factory=list)
    kill_times: list[float] = field(default_factory=list)


def _recorded(record_path: str) -> dict[str, str]:
    files = {}
    if os.path.exists(record_path):
        with open(record_path) as record:
            for line in record:
                if line.endswith("\n"):
                    entry = json.loads(line)
                    files[entry["path"]] = entry["sha256"]
    return files


def verify(mount: Mount, record_path: str) -> list[str]:
    """Names of recorded files that are missing, different, or not committed."""
    lost = []
    for path, digest in _recorded(record_path).items():
        try:
            with open(mount.path(path), "rb") as file:
                actual = hashlib.sha256(file.read()).hexdigest()
            state = os.getxattr(mount.path(path), "user.ckptfs.state")
        except OSError as error:
            lost.append(f"{path}: {error}")
            continue
        if actual != digest:
            lost.append(f"{path}: content differs")
        elif not state.startswith(b"committed"):
            lost.append(f"{path}: state {state!r} after sync")
    return lost


def run_trials(workdir: str, trials: int, *, seed: int = 0, store_url: str | None = None,
               extra: list[str] | None = None, max_kill_delay: float = 2.5) -> TrialResult:
    rng = random.Random(seed)
    store_url = store_url or f"file://{workdir}/lake"
    script = os.path.join(workdir, "writer.py")
    record_path = os.path.join(workdir, "record.jsonl")
    with open(script, "w") as file:
        file.write(WRITER)
    result = TrialResult()
    for trial in range(trials):
        mount = Mount(store_url, os.path.join(workdir, "mnt"), os.path.join(workdir, "cache"),
                      os.path.join(workdir, "daemon.log"), extra=extra).start()
        writer = subprocess.Popen([sys.executable, script, mount.mountpoint, record_path, str(trial),
                                   str(rng.randrange(1 << 30))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        delay = rng.uniform(0.05, max_kill_delay)
        result.kill_times.append(delay)
        time.sleep(delay)
        os.kill(mount.process.pid, signal.SIGKILL)  # the daemon dies wherever it is
        # Stop the writer before clearing the dead mount, or it would write into the directory below.
        if writer.poll() is None:
            os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        mount.kill()
        result.trials += 1
    final = Mount(store_url, os.path.join(workdir, "mnt"), os.path.join(workdir, "cache"),
                  os.path.join(workdir, "daemon.log"), extra=extra).start()
    try:
        final.cli("sync", "--timeout", "600", final.mountpoint)
        result.lost_files = verify(final, record_path)
        result.recorded_files = len(_recorded(record_path))
    finally:
        final.unmount()
    endpoint = None
    if extra and "--endpoint-url" in extra:
        endpoint = extra[extra.index("--endpoint-url") + 1]
    report = check_lake(Lake(open_store(store_url, endpoint_url=endpoint)), verify_data=True)
    result.lake_problems = [f"{p.kind} {p.key}: {p.detail}" for p in report.problems]
    return result
