"""Randomized crash trials shaped like training: writer processes save checkpoints (fresh files, some
written to a temporary name and renamed, and an in-place overwrite of one `last.ckpt` each, as
Lightning does) and optionally update a writable `numpy.memmap`; one or two mounts share the lake;
`ckptfs gc` may run throughout. At a random moment the node dies: every daemon, writer and GC process
is SIGKILLed, or, with `power_cut`, first frozen while the cache disk loses every write not fsynced
(tests/powercut.py). The mounts restart on what is left, and then:

* every file a writer saw fsynced reads back as that version or a later one it began, whole (a
  mapping's page as any state it was given since its last msync): nothing durable lost, no torn version;
* every version `.versions` lists is one a writer wrote whole;
* start-up repair brings each mount up with no help;
* at the end, after `ckptfs sync`, everything recorded is committed and `ckptfs fsck --verify-data`
  finds no problem in the lake.

Writers log what they begin (`"durable": false`) before writing and what fsync (or msync, or rename
plus fsync of the directory) made durable after it returned, to a record on the test's own disk.

Used by tests/test_crash.py (a few dozen trials in CI) and scripts/crash_trials.py (thousands).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from dataclasses import dataclass, field

import xxhash

from ckptfs.lake import Lake
from ckptfs.lake.check import check_lake
from ckptfs.store import open_store
from tests.helpers import Mount

PAGE = 4096

WRITER = textwrap.dedent("""
    import json, os, random, sys, xxhash
    root, record_path, trial, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(seed)
    record = open(record_path, "a")
    os.makedirs(root, exist_ok=True)

    def log(path, data, durable):
        record.write(json.dumps({"path": os.path.relpath(path, os.path.dirname(root)),
                                 "digest": xxhash.xxh3_64_hexdigest(data), "durable": durable}) + "\\n")
        record.flush()

    shared = rng.randbytes(1_000_000)
    for n in range(10_000):
        size = rng.choice([0, 1, 100, 70_000, 1_000_000, 3_000_000, 9_000_000])
        # most of a checkpoint is what the last one held; the rest is new
        data = (shared * (size // 1_000_000) + rng.randbytes(size % 1_000_000)) if rng.random() < 0.5 \\
            else rng.randbytes(size)
        if rng.random() < 0.3:
            final = staged = os.path.join(root, "last.ckpt")  # overwritten in place
        else:
            final = os.path.join(root, f"t{trial}-f{n}")
            staged = final + ".tmp" if rng.random() < 0.4 else final   # DCP/HF style: write tmp, rename
        log(final, data, False)
        durable = rng.random() < 0.7  # torch.save itself never fsyncs
        with open(staged, "wb") as file:
            file.write(data)
            file.flush()
            if durable:
                os.fsync(file.fileno())
        if not durable:
            if staged != final:
                os.rename(staged, final)
            continue
        if staged != final:
            os.rename(staged, final)
            directory = os.open(root, os.O_RDONLY)
            os.fsync(directory)
            os.close(directory)
        log(final, data, True)
""")

MEMMAP_WRITER = textwrap.dedent("""
    import json, os, random, sys, numpy, xxhash
    root, record_path, trial, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(seed)
    record = open(record_path, "a")
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, "state.mm")
    pages = 256
    name = os.path.relpath(path, os.path.dirname(root))

    def log(array, durable, only=None):
        view = array.view(numpy.uint8).reshape(pages, 4096)
        indices = range(pages) if only is None else only
        record.write(json.dumps({"path": name, "durable": durable, "memmap": True,
                                 "pages": {i: xxhash.xxh3_64_hexdigest(view[i].tobytes()) for i in indices}}) + "\\n")
        record.flush()

    array = numpy.memmap(path, dtype=numpy.uint8, mode="r+" if os.path.exists(path) else "w+", shape=(pages * 4096,))
    for step in range(100_000):
        first = rng.randrange(pages)
        count = rng.randrange(1, 16)
        touched = list(range(first, min(pages, first + count)))
        new = numpy.frombuffer(rng.randbytes(len(touched) * 4096), dtype=numpy.uint8)
        view = array.view(numpy.uint8).reshape(pages, 4096)
        given = {i: xxhash.xxh3_64_hexdigest(new[k * 4096:(k + 1) * 4096].tobytes()) for k, i in enumerate(touched)}
        record.write(json.dumps({"path": name, "durable": False, "memmap": True, "pages": given}) + "\\n")
        record.flush()
        view[first:first + len(touched)] = new.reshape(len(touched), 4096)
        if step % 4 == 3:
            array.flush()  # msync(MS_SYNC): the kernel writes the pages back, then fsync
            log(array, True)
""")


@dataclass
class Shape:
    """What a trial looks like; each flag adds a way training meets a crash."""
    writers: int = 1  # writer processes per mount, each in its own directory
    mounts: int = 1  # mounts of the one lake, each on its own cache dir, SIGKILLed together
    memmap: bool = False  # one more process per mount updating a writable numpy.memmap in place
    gc: bool = False  # `ckptfs gc` (keep-last 1, grace 2 s) runs throughout and is killed with the rest
    power_cut: bool = False  # the first mount's cache disk loses what was not fsynced (tests/powercut.py)


@dataclass
class TrialResult:
    trials: int = 0
    recorded_files: int = 0
    durable_records: int = 0
    undone_writes: int = 0  # writes the power cuts took back from the cache disks
    lost_files: list[str] = field(default_factory=list)
    torn_versions: list[str] = field(default_factory=list)
    start_failures: list[str] = field(default_factory=list)
    lake_problems: list[str] = field(default_factory=list)
    kill_times: list[float] = field(default_factory=list)


class Record:
    """What the writers began and what they saw made durable, per path, in order."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.entries: dict[str, list[dict]] = defaultdict(list)

    def read(self) -> set[str]:
        """Take in what was appended since the last read; the paths it names."""
        seen: set[str] = set()
        if not os.path.exists(self.path):
            return seen
        with open(self.path) as record:
            record.seek(self.offset)
            for line in record:
                if not line.endswith("\n"):
                    break  # a writer killed mid-line
                self.offset += len(line.encode())
                entry = json.loads(line)
                self.entries[entry["path"]].append(entry)
                seen.add(entry["path"])
        return seen

    def durable_paths(self) -> list[str]:
        return [path for path, entries in self.entries.items() if any(e["durable"] for e in entries)]

    def allowed(self, path: str) -> set[str] | None:
        """Digests the file may show now: the last one made durable and any begun after it."""
        entries = self.entries[path]
        last = max((i for i, e in enumerate(entries) if e["durable"]), default=None)
        if last is None:
            return None
        return {e["digest"] for e in entries[last:]}

    def allowed_pages(self, path: str) -> dict[int, set[str]] | None:
        entries = self.entries[path]
        last = max((i for i, e in enumerate(entries) if e["durable"]), default=None)
        if last is None:
            return None
        allowed: dict[int, set[str]] = defaultdict(set)
        for entry in entries[last:]:
            for index, digest in entry["pages"].items():
                allowed[int(index)].add(digest)
        return allowed

    def ever(self, path: str) -> set[str]:
        return {e["digest"] for e in self.entries[path] if "digest" in e}


def _digest(path: str) -> str:
    hasher = xxhash.xxh3_64()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            hasher.update(block)
    return hasher.hexdigest()


def verify(mount: Mount, record: Record, paths: list[str] | None = None, *,
           committed: bool = False, versions_seen: set[tuple[str, str]] | None = None) -> tuple[list[str], list[str]]:
    """(lost, torn): recorded durable files that are missing or show a version they may not, and
    versions under .versions that no writer wrote whole, read on `mount` (after a refresh, it shows
    what the other mounts published too); `committed` also asks for every file to be in the lake.

    `versions_seen`, if given, holds the versions (path, name) found whole after an earlier
    restart: they are not read again, and the ones found whole now are added. A version listed
    after a restart was repaired from what the last cut left and nothing writes it again, so it
    cannot tear later; reading every version of each `last.ckpt` after every restart made trial
    N read N versions, and a 1,000-trial run slowed from 5 s to 40 s a trial."""
    lost, torn = [], []
    for path in record.durable_paths() if paths is None else paths:
        where = mount.path(path)
        try:
            if record.entries[path][0].get("memmap"):
                allowed_pages = record.allowed_pages(path)
                with open(where, "rb") as file:
                    data = file.read()
                for index, digests in (allowed_pages or {}).items():
                    page = xxhash.xxh3_64_hexdigest(data[index * PAGE:(index + 1) * PAGE])
                    if page not in digests:
                        lost.append(f"{path}: page {index} shows a state never given since the last msync")
                        break
            else:
                actual = _digest(where)
                if actual not in (record.allowed(path) or set()):
                    lost.append(f"{path}: shows {actual}, which is neither its last fsynced version nor a later one"
                                if actual in record.ever(path) else f"{path}: content differs from every version")
            state = os.getxattr(where, "user.ckptfs.state")
        except OSError as error:
            lost.append(f"{path}: {error}")
            continue
        if committed and not state.startswith(b"committed"):
            lost.append(f"{path}: state {state!r} after sync")
        if record.entries[path][0].get("memmap"):
            continue  # a mapping's version is whatever pages it held when sealed
        versions = mount.path(".versions", path)
        ever = record.ever(path)
        for name in sorted(os.listdir(versions)) if os.path.isdir(versions) else []:
            if versions_seen is not None and (path, name) in versions_seen:
                continue
            try:
                if _digest(os.path.join(versions, name)) not in ever:
                    torn.append(f"{path}: .versions/{name} is no version a writer wrote")
                elif versions_seen is not None:
                    versions_seen.add((path, name))
            except OSError as error:
                torn.append(f"{path}: .versions/{name}: {error}")
    return lost, torn


class PowerCutLayer:
    """tests/powercut.py on `backing`, mounted on `mountpoint`, steered by signals."""

    def __init__(self, backing: str, mountpoint: str) -> None:
        os.makedirs(backing, exist_ok=True)
        os.makedirs(mountpoint, exist_ok=True)
        self.mountpoint = mountpoint
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "powercut.py")
        self.process = subprocess.Popen([sys.executable, script, backing, mountpoint], stdout=subprocess.PIPE,
                                        text=True)
        self._expect("ready")

    def _expect(self, word: str) -> str:
        line = self.process.stdout.readline()
        if not line.startswith(word):
            raise RuntimeError(f"power-cut layer said {line!r}, expected {word}")
        return line

    def cut(self) -> int:
        self.process.send_signal(signal.SIGUSR1)
        return int(self._expect("cut").split()[1])

    def revive(self) -> None:
        self.process.send_signal(signal.SIGUSR2)
        self._expect("live")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()
        subprocess.run(["fusermount3", "-u", "-z", self.mountpoint], capture_output=True)


def _wait_for_growth(path: str, size: int, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and os.path.getsize(path) > size:
            return
        time.sleep(0.01)


def run_trials(workdir: str, trials: int, *, seed: int = 0, store_url: str | None = None,
               extra: list[str] | None = None, max_kill_delay: float = 2.5, shape: Shape | None = None,
               progress=None, deadline: float | None = None) -> TrialResult:
    """`trials` trials, or as many as start before `deadline` (time.monotonic()), then the end
    checks: every recorded file committed and whole, and the lake verified."""
    shape = shape or Shape()
    rng = random.Random(seed)
    store_url = store_url or f"file://{workdir}/lake"
    extra = list(extra or [])
    if shape.gc:
        extra += ["--lake-setting", "gc_grace_s=2", "--lake-setting", "max_clock_skew_s=0",
                  "--lake-setting", "late_publish_s=0"]
    scripts = {}
    for name, text in (("writer.py", WRITER), ("memmap_writer.py", MEMMAP_WRITER)):
        scripts[name] = os.path.join(workdir, name)
        with open(scripts[name], "w") as file:
            file.write(text)
    record = Record(os.path.join(workdir, "record.jsonl"))
    layer = None
    if shape.power_cut:
        layer = PowerCutLayer(os.path.join(workdir, "disk"), os.path.join(workdir, "disk-mnt"))

    def cache_dir(index: int) -> str:
        if index == 0 and layer is not None:
            return os.path.join(layer.mountpoint, "cache")
        return os.path.join(workdir, f"cache{index}")

    live: list[Mount] = []  # this trial's mounts and processes: stopped however the run ends
    running: list[subprocess.Popen] = []

    def start_mounts() -> list[Mount] | None:
        mounts = live
        mounts.clear()
        for index in range(shape.mounts):
            mount = Mount(store_url, os.path.join(workdir, f"mnt{index}"), cache_dir(index),
                          os.path.join(workdir, f"daemon{index}.log"), extra=extra)
            mounts.append(mount)  # in `live` while it starts: a stop then kills its daemon too
            try:
                mount.start(timeout=120)
            except RuntimeError as error:
                result.start_failures.append(f"mount {index}: {str(error).splitlines()[0]}")
                for started in mounts:
                    started.kill()
                return None
        return mounts

    result = TrialResult()
    gc_command = [sys.executable, "-m", "ckptfs", "gc", store_url, "--break-lock"]
    if "--endpoint-url" in extra:
        gc_command += ["--endpoint-url", extra[extra.index("--endpoint-url") + 1]]
    checked = 0
    versions_seen: set[tuple[str, str]] = set()  # whole after a restart: not read after the next
    try:
        for trial in range(trials):
            if deadline is not None and time.monotonic() >= deadline:
                break  # the end checks always run: a run stopped by hand never reached them
            mounts = start_mounts()
            if mounts is None:
                break
            # What the last trial's writers saw durable must be there, whole, right after the restart.
            touched = record.read()
            for index, mount in enumerate(mounts):
                paths = [p for p in record.durable_paths() if p in touched and p.startswith(f"m{index}w")]
                lost, torn = verify(mount, record, paths, versions_seen=versions_seen)
                result.lost_files += [f"after trial {trial - 1}: {line}" for line in lost]
                result.torn_versions += [f"after trial {trial - 1}: {line}" for line in torn]
            if shape.gc and trial == 0:
                mounts[0].cli("retention", "set", mounts[0].mountpoint, "--keep-last", "1")
            processes = running
            processes.clear()
            recorded = os.path.getsize(record.path) if os.path.exists(record.path) else 0
            for index, mount in enumerate(mounts):
                for k in range(shape.writers):
                    processes.append(subprocess.Popen(
                        [sys.executable, scripts["writer.py"], mount.path(f"m{index}w{k}"), record.path, str(trial),
                         str(rng.randrange(1 << 30))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                if shape.memmap:
                    processes.append(subprocess.Popen(
                        [sys.executable, scripts["memmap_writer.py"], mount.path(f"m{index}w-mm"), record.path,
                         str(trial), str(rng.randrange(1 << 30))], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL))
            if shape.gc:
                processes.append(subprocess.Popen(
                    ["bash", "-c", 'while true; do "$@" >/dev/null 2>&1; sleep 0.2; done', "gc", *gc_command],
                    start_new_session=True))
            # The cut lands a random while after the writers have begun writing, not after a random
            # wall time: on a loaded machine their interpreters can take longer to start than the
            # longest delay, and a cut before any write tests nothing.
            _wait_for_growth(record.path, recorded, timeout=30)
            delay = rng.uniform(0.05, max_kill_delay)
            result.kill_times.append(delay)
            time.sleep(delay)
            daemons = [mount.process for mount in mounts]
            if layer is not None:
                # Power cut: everything on the node stops at once, then the cache disk forgets.
                for process in daemons + processes:
                    _signal(process, signal.SIGSTOP, group=process is processes[-1] and shape.gc)
                _wait_stopped(daemons)
                result.undone_writes += layer.cut()
            for process in daemons + processes:  # the daemons die wherever they are
                _signal(process, signal.SIGKILL, group=process is processes[-1] and shape.gc)
            for process in processes:
                process.wait()
            for mount in mounts:
                mount.kill()
            live.clear()
            if layer is not None:
                layer.revive()
            result.trials += 1
            if progress:
                progress(result)
        record.read()
        final = start_mounts()
        if final is not None:
            try:
                for mount in final:
                    mount.cli("sync", "--timeout", "600", mount.mountpoint)
                for mount in final:
                    mount.cli("refresh", mount.mountpoint)
                lost, torn = verify(final[0], record, committed=True)
                result.lost_files += lost
                result.torn_versions += torn
                checked = len(record.durable_paths())
            finally:
                for mount in final:
                    mount.unmount()
                live.clear()
    finally:
        # Stopped mid-trial (SIGTERM, an error): its writers and mounts go before the layer and the
        # workdir do; a mount left behind kept the workdir from being removed.
        for process in running:  # SIGKILL ends a stopped process too
            _signal(process, signal.SIGKILL, group=shape.gc and process is running[-1])
            process.wait()
        running.clear()
        for mount in live:
            mount.kill()
        if layer is not None:
            layer.stop()
    result.recorded_files = checked
    result.durable_records = sum(e["durable"] for entries in record.entries.values() for e in entries)
    endpoint = extra[extra.index("--endpoint-url") + 1] if "--endpoint-url" in extra else None
    report = check_lake(Lake(open_store(store_url, endpoint_url=endpoint)), verify_data=True)
    result.lake_problems = [f"{p.kind} {p.key}: {p.detail}" for p in report.problems]
    return result


def _signal(process: subprocess.Popen, signum: int, *, group: bool = False) -> None:
    try:
        if group:
            os.killpg(process.pid, signum)  # the GC loop and the `ckptfs gc` it runs
        elif process.poll() is None:
            os.kill(process.pid, signum)
    except ProcessLookupError:
        pass


def _wait_stopped(processes: list[subprocess.Popen], timeout: float = 1.0) -> None:
    """SIGSTOP takes effect when each thread next returns to user space: wait until every thread is
    stopped or blocked in the kernel (on a request to the layer, which the cut answers)."""
    deadline = time.monotonic() + timeout
    for process in processes:
        while time.monotonic() < deadline:
            try:
                states = []
                for task in os.listdir(f"/proc/{process.pid}/task"):
                    with open(f"/proc/{process.pid}/task/{task}/stat") as stat:
                        states.append(stat.read().rsplit(")", 1)[1].split()[0])
            except (FileNotFoundError, ProcessLookupError):
                break
            if all(state in "TtD" for state in states):  # D: waiting on the layer, where the cut is
                break
            time.sleep(0.005)
