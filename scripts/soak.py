#!/usr/bin/env python3
"""A training run in miniature against real mounts of one lake on the S3 model: baseline, stress, soak.

    python scripts/soak.py --minutes 2                      # what CI-sized machines can afford
    python scripts/soak.py --minutes 120 --out docs/soak     # the documented run
    python scripts/soak.py --endpoint-url URL --bucket B     # a real endpoint instead of the model

Ranks are separate processes (scripts/soak_job.py) in one gloo process group, each with its own
mount (its own cache dir) of the same lake, like the nodes of a job. Each rank holds a replicated
model (weights that change a little every step, an embedding that never does) and its shard of an
optimizer state that changes everywhere, and saves every `--interval` seconds, alternating a
PyTorch Distributed Checkpoint that all ranks write (`run/dcp/step-N`) with a `torch.save` of the
model by rank 0 (`run/export/step-N.pt`), keeping the last three of each as frameworks rotate. A
save is followed by `ckptfs sync` of it in the background: the time from save to durable. Under
the rotation, the lake has a policy (`ckptfs retention set`: the newest version of each live file
and every version current within `--keep-within`) and every mount collects garbage every
`--gc-every` (the lake's grace `--gc-grace`), so the lake stops growing once the policy lets go of
what the rotation deleted.

Phases, one after the other on the same lake:
* baseline: no faults, `--baseline-saves` checkpoints;
* stress: saves back to back, many small files beside each checkpoint, and rank 0's mount restarted
  with a cache smaller than what it saves (it spills), for `--stress-saves` checkpoints;
* soak: `--minutes` with faults injected throughout: a share of failing S3 requests, a full outage of
  `--outage` seconds, a rank's mount SIGKILLed mid-save and restarted (the job resumes from `ckptfs
  latest`), and the whole job killed and started again on fresh mounts (empty cache dirs and new
  mountpoints: new nodes, which do not wait for the dead ones to be cleared).

Every second the coordinator samples each mount (bytes at risk and their age, store errors, daemon
RSS, cache disk use), the lake (bytes and objects, every 10 s) and the requests the model counted;
`ckptfs latest` is asked every few seconds and what it names is recorded. Every checkpoint `latest`
ever named is loaded from the lake as it was then and compared, tensor by tensor, with what the
ranks saved: while the policy still keeps it, from the lake without a mount (every quarter of
`--keep-within`, as an evaluation job reads checkpoints during training: a read through a mount
would hold the version for 7 days), and the rest at the end through a mount (`.at/<time>/`).
Writes `soak.json` and `soak.png` (one panel per figure, faults marked) to `--out`, and prints the
acceptance figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from soak_job import digest_of, make_state  # noqa: E402

from ckptfs.lake.retention import parse_duration  # noqa: E402
from tests.helpers import Mount, free_port  # noqa: E402

PRICE_PER_1000 = {"PUT": 0.005, "POST": 0.005, "LIST": 0.005, "GET": 0.0004, "HEAD": 0.0004, "DELETE": 0.0}


# -- the coordinator ---------------------------------------------------------------------------
class Soak:
    def __init__(self, args: argparse.Namespace, work: str) -> None:
        self.args = args
        self.work = work
        self.model = None
        if args.endpoint_url:
            self.endpoint, self.bucket = args.endpoint_url, args.bucket
        else:
            from tests.s3model import S3Model

            self.model = S3Model()
            self.endpoint, self.bucket = self.model.endpoint, self.model.bucket()
        self.url = f"s3://{self.bucket}/soak-{int(time.time())}"
        self.mounts: list[Mount | None] = [None] * args.ranks
        self.generation = 0  # fresh cache dirs after a job restart
        self.ranks: list[subprocess.Popen] = []
        self.events_path = os.path.join(work, "events.jsonl")
        self.events_offset = 0
        self.events: list[dict] = []
        self.samples: list[dict] = []
        self.faults: list[dict] = []
        self.named: list[dict] = []  # what `ckptfs latest` named, and when
        self.checked: dict[int, str | None] = {}  # index in named -> None (loaded and equal) or the last error
        self.checked_during_run = 0
        self.gc_seen: set[tuple[int, int]] = set()  # (daemon pid, its gc run count)
        self.gc_reports: list[dict] = []
        self.phase = "baseline"
        self.started = time.time()
        self.stop_sampling = threading.Event()
        self.cache_size = {}
        self.lake: dict = {}
        self.mount_times: list[dict] = []
        self.metrics_ports: dict[int, int] = {}

    # mounts and ranks
    def mount(self, rank: int, *, cache_size: str | None = None) -> Mount:
        cache_size = cache_size or self.args.cache_size
        self.metrics_ports[rank] = free_port()
        # A job restarted on fresh mounts is on new nodes: new mountpoints, not waiting for the old ones
        mountpoint = f"mnt{rank}" + (f"-g{self.generation}" if self.generation else "")
        mount = Mount(self.url, os.path.join(self.work, mountpoint),
                      os.path.join(self.work, f"cache{rank}-g{self.generation}"),
                      os.path.join(self.work, f"daemon{rank}.log"),
                      extra=["--endpoint-url", self.endpoint, "--cache-size", cache_size, "--refresh", "2",
                             "--metrics-address", f"127.0.0.1:{self.metrics_ports[rank]}"] + self.gc_options())
        started, started_t = time.monotonic(), time.time()
        self.mounts[rank] = mount.start(timeout=120)
        self.mount_times.append({"t": time.time(), "started_t": started_t, "rank": rank,
                                 "seconds": time.monotonic() - started})
        self.cache_size[rank] = cache_size
        return mount

    def gc_options(self) -> list[str]:
        """Every mount collects garbage (the lake's lock lets one at a time); the lake's settings
        count only for the mount that creates it: a grace of `--gc-grace` (all mounts are on one
        clock here, so 1 s of skew), and a late publication keeps its place through the outage."""
        args = self.args
        if args.no_policy:
            return []
        return ["--gc-every", args.gc_every, "--lake-setting", f"gc_grace_s={args.gc_grace}",
                "--lake-setting", "max_clock_skew_s=1", "--lake-setting", f"late_publish_s={int(args.outage) + 60}"]

    def start_ranks(self, *, resume: bool) -> None:
        port = free_port()
        self.ranks = [subprocess.Popen(
            [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "soak_job.py"),
             "--rank", str(rank), "--world", str(self.args.ranks),
             "--port", str(port), "--mount", self.mounts[rank].mountpoint, "--events", self.events_path,
             "--mib", str(self.args.mib), "--interval", str(self.interval)] + (["--resume"] if resume else []),
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.work, f"rank{rank}.log"), "a"))  # noqa: SIM115
            for rank in range(self.args.ranks)]

    def stop_ranks(self, *, kill: bool = False) -> None:
        if kill:
            for process in self.ranks:
                if process.poll() is None:
                    process.kill()
        else:
            open(os.path.join(self.work, "stop"), "w").close()
        for process in self.ranks:
            try:
                process.wait(timeout=600)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.work, "stop"))

    def set_interval(self, seconds: float) -> None:
        self.interval = seconds  # for the ranks started next

    # observation
    def read_events(self) -> list[dict]:
        new = []
        if os.path.exists(self.events_path):
            with open(self.events_path) as file:
                file.seek(self.events_offset)
                for line in file:
                    if not line.endswith("\n"):
                        break
                    self.events_offset += len(line.encode())
                    event = json.loads(line)
                    event["phase"] = self.phase
                    new.append(event)
        self.events += new
        return new

    def saves_done(self) -> int:
        return sum(1 for e in self.events if e["event"] == "saved" and e["rank"] == 0)

    def watch_lake(self) -> None:
        """The lake's size every 10 s, and what `ckptfs latest` names every 3 s (own threads: the
        per-second samples must not wait for them)."""
        while not self.stop_sampling.wait(10):
            # The model's own endpoint: the soak's listings are not the mounts' requests to count.
            direct = self.model.direct if self.model is not None else self.endpoint
            self.lake = _lake_size(direct, self.bucket, self.url.split("/", 3)[3])

    def watch_latest(self) -> None:
        while not self.stop_sampling.wait(3):
            if self.mounts[0] is not None and self.mounts[0].process is not None:
                with contextlib.suppress(OSError, AttributeError):
                    self.ask_latest()

    def sample_forever(self) -> None:
        while not self.stop_sampling.is_set():
            now = time.time()
            sample = {"t": now, "phase": self.phase, "mounts": {}}
            for rank, mount in enumerate(self.mounts):
                if mount is None or mount.process is None:
                    continue
                entry = {"pid": mount.process.pid, "rss_mib": _rss_mib(mount.process.pid),
                         "cache_mib": _disk_mib(mount.cache_dir)}
                with contextlib.suppress(OSError, ValueError):
                    status = mount.status()
                    entry.update({key: status.get(key) for key in (
                        "at_risk_bytes", "at_risk_oldest_s", "store_retrying", "store_retries", "last_store_error",
                        "staged_bytes", "spilled_bytes", "spilled_bytes_total", "gc_runs")})
                    entry["store_errors"] = sum((status.get("store_errors") or {}).values())
                    if status.get("gc_runs") and (mount.process.pid, status["gc_runs"]) not in self.gc_seen:
                        self.gc_seen.add((mount.process.pid, status["gc_runs"]))
                        self.gc_reports.append({"t": now, "rank": rank, **(status.get("gc_last") or {})})
                entry.update(_scrape(self.metrics_ports[rank]))
                sample["mounts"][rank] = entry
            if self.model is not None:
                sample["requests"] = dict(self.model.counts())
                # requests the proxy failed so far (answered with an error, or reset in an outage)
                sample["injected"] = sum(n for kind, n in self.model.proxy.counts.items() if kind != "requests")
            sample["lake"] = self.lake
            self.samples.append(sample)
            self.stop_sampling.wait(max(0.0, 1.0 - (time.time() - now)))

    def watch_named(self) -> None:
        """Load what `latest` named while the policy keeps it: after `--keep-within` the versions
        the rotation deleted are the garbage collector's."""
        every = 30.0 if self.args.no_policy else max(5.0, parse_duration(self.args.keep_within) / 4)
        while not self.stop_sampling.wait(every):
            if self.mounts[0] is not None and self.mounts[0].process is not None:
                with contextlib.suppress(OSError, AttributeError):
                    self.verify(final=False)

    def ask_latest(self) -> None:
        mount = self.mounts[0]
        for kind in ("dcp", "export"):
            found = subprocess.run([sys.executable, "-m", "ckptfs", "latest", mount.path("run", kind)],
                                   capture_output=True, text=True)
            answered = time.time()
            if found.returncode != 0 or not found.stdout.strip():
                continue
            path = os.path.relpath(found.stdout.strip(), mount.mountpoint)
            if not self.named or all(n["path"] != path for n in self.named[-4:]):
                self.named.append({"t": answered, "path": path, "kind": kind})

    def fault(self, kind: str, **detail) -> dict:
        fault = {"kind": kind, "start": time.time(), **detail}
        self.faults.append(fault)
        print(f"  fault: {kind} {detail}", flush=True)
        return fault

    # phases
    def wait_saves(self, count: int, timeout: float) -> None:
        target = self.saves_done() + count
        deadline = time.monotonic() + timeout
        while self.saves_done() < target and time.monotonic() < deadline:
            time.sleep(0.5)
            self.read_events()

    def run(self) -> dict:
        args = self.args
        for rank in range(args.ranks):
            self.mount(rank)
        if not args.no_policy:
            self.mounts[0].cli("retention", "set", self.mounts[0].mountpoint, "--keep-last", "1",
                               "--keep-within", args.keep_within)
        self.set_interval(args.interval)
        self.start_ranks(resume=False)
        watchers = [threading.Thread(target=target, daemon=True)
                    for target in (self.sample_forever, self.watch_lake, self.watch_latest, self.watch_named)]
        for watcher in watchers:
            watcher.start()
        try:
            print(f"baseline: {args.baseline_saves} checkpoints every {args.interval} s", flush=True)
            self.wait_saves(args.baseline_saves, timeout=args.baseline_saves * (args.interval + 60))
            self.phase = "stress"
            print(f"stress: {args.stress_saves} checkpoints back to back, small files, a spilling cache", flush=True)
            open(os.path.join(self.work, "small_files"), "w").close()
            self.stop_ranks()
            self.set_interval(0)
            self.mounts[0].unmount()  # rank 0 writes the most: its shard and the torch.save of the model
            self.mount(0, cache_size=args.stress_cache_size)
            self.start_ranks(resume=True)
            self.wait_saves(args.stress_saves, timeout=args.stress_saves * 120)
            os.unlink(os.path.join(self.work, "small_files"))
            self.stop_ranks()
            self.mounts[0].unmount()
            self.mount(0)
            self.phase = "soak"
            self.set_interval(args.interval)
            print(f"soak: {args.minutes} min with faults", flush=True)
            self.start_ranks(resume=True)
            self.soak(args.minutes * 60)
        finally:
            self.stop_ranks()
            self.stop_sampling.set()
            for watcher in watchers:
                watcher.join()
            self.read_events()
        for mount in self.mounts:
            if mount is not None:
                mount.cli("sync", "--timeout", "900", mount.mountpoint, check=False)
        self.ask_latest()
        verified = self.verify(final=True)
        for mount in self.mounts:
            if mount is not None:
                mount.unmount()
        return self.report(verified)

    def soak(self, seconds: float) -> None:
        args = self.args
        end = time.monotonic() + seconds
        rng = random.Random(args.seed)
        # the faults, spread over the soak: (fraction of the soak, what)
        plan = sorted([(0.15, "errors"), (0.35, "outage"), (0.55, "kill_mount"), (0.8, "restart_job")])
        for at, kind in plan:
            while time.monotonic() < end - seconds * (1 - at):
                time.sleep(0.5)
                self.read_events()
            if kind == "errors" and self.model is not None:
                fault = self.fault("failing requests", rate=0.05)
                self.model.proxy.fault_rate = 0.05
                time.sleep(min(60.0, seconds * 0.1))
                self.model.proxy.fault_rate = 0.0
                fault["end"] = time.time()
            elif kind == "outage" and self.model is not None:
                fault = self.fault("outage", seconds=args.outage)
                self.model.proxy.outage = True
                time.sleep(args.outage)
                self.model.proxy.outage = False
                fault["end"] = time.time()
            elif kind == "kill_mount":
                self.kill_mount_mid_save(rng)
            elif kind == "restart_job":
                fault = self.fault("job killed, restarted on fresh mounts")
                self.stop_ranks(kill=True)
                old = list(self.mounts)
                for mount in old:  # the nodes die: every daemon at once
                    if mount.process is not None and mount.process.poll() is None:
                        os.kill(mount.process.pid, signal.SIGKILL)
                self.generation += 1
                # New nodes come up side by side while the dead mounts are cleared
                threads = [threading.Thread(target=mount.kill) for mount in old]
                threads += [threading.Thread(target=self.mount, args=(rank,)) for rank in range(args.ranks)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                self.start_ranks(resume=True)
                self.wait_resumed(after=fault["start"])
                fault["end"] = time.time()
        while time.monotonic() < end:
            time.sleep(0.5)
            self.read_events()

    def kill_mount_mid_save(self, rng: random.Random) -> None:
        rank = self.args.ranks - 1
        seen = len(self.events)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the next save that rank begins
            self.read_events()
            if any(e["event"] == "save_begin" and e["rank"] == rank and e["kind"] == "dcp" for e in self.events[seen:]):
                break  # a save this rank writes a shard of
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))
        fault = self.fault("mount SIGKILLed mid-save", rank=rank)
        self.mounts[rank].kill()
        self.mount(rank)  # the same cache dir: what it held is uploaded now
        if not self.wait_resumed(after=fault["start"], timeout=120):
            fault["note"] = "the save had finished: training went on without noticing"
        fault["end"] = time.time()

    def wait_resumed(self, after: float, timeout: float = 600) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(process.poll() is not None for process in self.ranks):
                raise RuntimeError(f"every rank exited; see {self.work}/rank*.log")
            self.read_events()
            if sum(1 for e in self.events if e["event"] == "resumed" and e["t"] > after) >= self.args.ranks:
                return True
            time.sleep(0.2)
        return False

    # the end
    def verify(self, *, final: bool) -> dict:
        """Load each checkpoint `latest` named and not yet checked, from the lake as it was when named,
        and compare. During the run only those named over 10 s ago (their ranks' `saved` events are
        read by then); at the end, all that are left."""
        import torch
        import torch.distributed.checkpoint as dcp

        # A path can be saved twice (the job resumed from an older step and got there again): what
        # `latest` named is each rank's last save of it before the naming.
        saves: dict[str, dict[int, list[tuple[float, dict]]]] = {}
        for event in self.events:
            if event["event"] == "saved":
                saves.setdefault(event["path"], {}).setdefault(event["rank"], []).append((event["t"], event["digests"]))
        mount = self.mounts[0]
        pending = [(index, named) for index, named in enumerate(list(self.named))
                   if self.checked.get(index, "") is not None and (final or named["t"] < time.time() - 10)]
        if not pending:
            return self.verified()
        if final:
            mount.cli("refresh", mount.mountpoint, check=False)
        else:
            # While the run goes on, from the lake itself (ckptfs/reader.py, as `ckptfs cp --at`
            # reads it): a read through a mount holds the version for 7 days (a job that resumed
            # from it keeps it), so checking every checkpoint through one kept them all from GC.
            from ckptfs.reader import open_lake_at

            direct = self.model.direct if self.model is not None else self.endpoint  # not counted as the mounts'
            lake, _ = open_lake_at(self.url, endpoint_url=direct)
            namespace = lake.read_namespace()
        for index, named in pending:
            # `latest` saw it complete just before it answered at t; rotation may remove it soon after.
            when = datetime.datetime.fromtimestamp(named["t"], datetime.UTC).isoformat(timespec="microseconds")
            expected = {}
            for history in saves.get(named["path"], {}).values():
                before = [digests for t, digests in history if t <= named["t"]]
                if before:
                    expected.update(before[-1])
            scratch = os.path.join(self.work, "verify")
            try:
                if not expected:
                    raise ValueError("no rank recorded saving it")
                where = (mount.path(".at", when, named["path"]) if final
                         else _copy_out(lake, namespace, named, scratch))
                if named["kind"] == "dcp":
                    model, _ = make_state(0, self.args.ranks, self.args.mib)
                    optim = {}
                    for rank in range(self.args.ranks):
                        optim.update(make_state(rank, self.args.ranks, self.args.mib)[1])
                    state = {"model": model, "optim": optim, "step": torch.tensor(0)}
                    dcp.load(state, checkpoint_id=where, no_dist=True)
                    actual = {**digest_of(model), **digest_of(optim)}
                else:
                    actual = digest_of(torch.load(where, weights_only=True)["model"])
                if actual != expected:
                    raise ValueError(f"{sum(actual.get(k) != v for k, v in expected.items())} tensors differ")
                self.checked[index] = None
                self.checked_during_run += not final
            except Exception as error:  # noqa: BLE001 - each failure is reported; tried again until the end
                self.checked[index] = f"{named['path']} (named at {when}): {error}"
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        return self.verified()

    def verified(self) -> dict:
        return {"named": len(self.named),
                "loaded_and_equal": sum(1 for error in self.checked.values() if error is None),
                "loaded_while_the_run_went_on": self.checked_during_run,
                "failures": [error for error in self.checked.values() if error is not None]}

    def report(self, verified: dict) -> dict:
        saves = [e for e in self.events if e["event"] == "saved" and (e["kind"] == "dcp" or e["rank"] == 0)]
        durable = [e for e in self.events if e["event"] == "durable"]
        soak = [e for e in saves if e["phase"] == "soak"]
        tenth = max(1, len(soak) // 10)

        def p(values: list[float], q: float) -> float | None:
            values = sorted(values)
            return values[min(len(values) - 1, int(q * len(values)))] if values else None

        first, last = [e["stall"] for e in soak[:tenth]], [e["stall"] for e in soak[-tenth:]]
        # RSS growth of each daemon process that lived through the soak long enough: its last tenth
        # against its first tenth after warm-up (the first fifth of its life), medians.
        series: dict[int, list[float]] = {}
        for sample in self.samples:
            if sample["phase"] == "soak":
                for entry in sample["mounts"].values():
                    if entry.get("rss_mib"):
                        series.setdefault(entry["pid"], []).append(entry["rss_mib"])
        growth = {}
        for pid, values in series.items():
            warm = values[len(values) // 5:]
            if len(warm) >= 20:
                tenth = max(1, len(warm) // 10)
                growth[pid] = statistics.median(warm[-tenth:]) / statistics.median(warm[:tenth]) - 1
        recoveries = []
        for fault in self.faults:
            if "end" in fault and fault["kind"] != "failing requests" and fault["kind"] != "outage":
                after = [e for e in self.events if e["event"] == "resumed" and e.get("path")
                         and fault["start"] < e["t"] <= fault["end"] + 1]
                if after:
                    restarted = [m for m in self.mount_times if fault["start"] <= m["t"] <= fault["end"]]
                    mounts = [m["seconds"] for m in restarted]
                    started = [e["t"] for e in self.events if e["event"] == "started"
                               and fault["start"] < e["t"] <= fault["end"] + 1]
                    job_start = (max(started) - min(m["t"] for m in self.mount_times if m["t"] >= fault["start"])
                                 if started else 0.0)  # the ranks' interpreter, torch and process group
                    recoveries.append({"fault": fault["kind"],
                                       "seconds": round(max(e["t"] for e in after) - fault["start"], 2),
                                       "job_start_s": round(max(0.0, job_start), 2),
                                       "mount_s": round(max(mounts, default=0), 2),
                                       # the harness: the old processes killed before a mount starts
                                       "until_mounts_start_s": round(min(
                                           (m["started_t"] for m in restarted), default=fault["start"])
                                           - fault["start"], 2),
                                       "restore_s": round(max(e.get("load_s", 0) for e in after), 2),
                                       # the slowest rank's time in each part of resuming, and before it
                                       # (the kill noticed: a save failing, or the job's start)
                                       "parts": {name: max(e.get("parts", {}).get(name, 0) for e in after)
                                                 for name in dict.fromkeys(
                                                     name for e in sorted(after, key=lambda e: e["rank"])
                                                     for name in e.get("parts", {}))},
                                       "before_resume_s": round(max(
                                           e["t"] - sum(e.get("parts", {}).values()) - fault["start"]
                                           for e in after), 2)})
        requests = self.samples[-1].get("requests", {}) if self.samples else {}
        dollars = sum(PRICE_PER_1000.get(k, 0) * n / 1000 for k, n in requests.items())
        visible = {}
        for fault in self.faults:
            if fault["kind"] in ("failing requests", "outage") and "end" in fault:
                before = [s for s in self.samples if s["t"] < fault["start"]]
                errors_before = {rank: m.get("store_errors") or 0 for rank, m in (before[-1]["mounts"] if before
                                                                                   else {}).items()}
                metrics_before = {rank: m.get("metrics_store_errors") or 0 for rank, m in (
                    before[-1]["mounts"] if before else {}).items()}
                # From the first request the fault failed: a share of failing requests shows once
                # one has failed (run 3's five unseen samples came before any had: ~9 requests in
                # the first 7 s, 5% failing).
                injected_before = before[-1].get("injected", 0) if before else 0
                during = [s for s in self.samples if fault["start"] <= s["t"] <= fault["end"]
                          and s.get("injected", injected_before + 1) > injected_before]
                during = [s for s in during if s["t"] >= during[0]["t"] + 1] if during else []
                shown = [s for s in during if any(
                    m.get("store_retrying") or (m.get("store_errors") or 0) > errors_before.get(rank, 0)
                    for rank, m in s["mounts"].items())]
                scraped = [s for s in during if any(
                    m.get("metrics_store_retrying")
                    or (m.get("metrics_store_errors") or 0) > metrics_before.get(rank, 0)
                    for rank, m in s["mounts"].items())]
                visible[fault["kind"]] = {"samples": len(during), "in_status": len(shown), "in_metrics": len(scraped)}
        spilled = {phase: max((m.get("spilled_bytes_total") or 0 for s in self.samples if s["phase"] == phase
                               for m in s["mounts"].values()), default=0) for phase in ("baseline", "stress", "soak")}
        # The lake under the policy: what it held halfway through the soak and at the end (flat once
        # the garbage collector keeps up with the rotation), and what the collector did.
        lake = [(s["t"], s["lake"]["bytes"]) for s in self.samples if s["phase"] == "soak" and s["lake"].get("bytes")]
        halfway = [b for t, b in lake if t >= (lake[0][0] + lake[-1][0]) / 2][:1] if lake else []
        gc = {"runs": len([r for r in self.gc_reports if "error" not in r]),
              "failed": [r["error"] for r in self.gc_reports if "error" in r],
              "marked_objects": sum(r.get("marked", {}).get("objects", 0) for r in self.gc_reports),
              "deleted_objects": sum(r.get("deleted", {}).get("objects", 0) for r in self.gc_reports),
              "deleted_bytes": sum(r.get("deleted", {}).get("bytes", 0) for r in self.gc_reports),
              "seconds_max": max((r.get("seconds", 0) for r in self.gc_reports), default=0)}
        figures = {
            "saves": len(saves), "durable": len(durable), "spilled_bytes_max": spilled,
            "stall_p50_s": p([e["stall"] for e in saves], 0.5), "stall_p99_s": p([e["stall"] for e in saves], 0.99),
            "soak_stall_p99_first_tenth_s": p(first, 0.99), "soak_stall_p99_last_tenth_s": p(last, 0.99),
            "stall_p99_drift": (p(last, 0.99) / p(first, 0.99) - 1) if first and last and p(first, 0.99) else None,
            "durable_p50_s": p([e["after"] for e in durable], 0.5),
            "durable_p99_s": p([e["after"] for e in durable], 0.99),
            "rss_growth_after_warmup": growth,
            "recoveries": recoveries,
            "requests": requests, "request_dollars": round(dollars, 4),
            "request_dollars_per_checkpoint": round(dollars / max(1, len([e for e in saves if e["rank"] == 0])), 6),
            "lake_bytes": (self.samples[-1]["lake"] or {}).get("bytes") if self.samples else None,
            "lake_bytes_soak_halfway": halfway[0] if halfway else None,
            "lake_bytes_soak_max": max((b for _, b in lake), default=None),
            # objects by kind at the soak's start, halfway and end: what grows while the bytes do not
            "lake_objects_by_kind": _kinds_over(
                [(s["t"], s["lake"]) for s in self.samples if s["phase"] == "soak" and s["lake"].get("kinds")]),
            "gc": gc,
            "faults_visible_share_of_samples": visible,
            "verified": verified,
        }
        return {"figures": figures, "faults": self.faults, "named": self.named, "events": self.events,
                "samples": self.samples, "args": vars(self.args), "cache_size": self.cache_size}

    def close(self) -> None:
        for mount in self.mounts:
            if mount is not None:
                mount.kill()
        if self.model is not None:
            self.model.stop()


def _copy_out(lake, namespace, named: dict, directory: str) -> str:
    """What `named` was in the lake when `latest` named it, copied into `directory`: its path there."""
    from ckptfs.reader import copy_to, listing

    wanted = listing(lake, named["path"].encode(), int(named["t"] * 1e9), namespace)
    if not wanted:
        raise ValueError("not in the lake")
    for found in wanted:
        destination = os.path.join(directory, found.path.decode())
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        copy_to(lake, lake.get_manifest(found.manifest), destination)
    return os.path.join(directory, named["path"])


def _gb(size: int | None) -> str:
    return "n/a" if size is None else f"{size / 1e9:.2f} GB"


def _scrape(port: int) -> dict:
    """What the mount's Prometheus endpoint says of the store: errors so far, and retrying now."""
    import urllib.request

    found = {"metrics_store_errors": 0.0}
    with contextlib.suppress(OSError, ValueError):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("ckptfs_store_errors_total{"):
                    found["metrics_store_errors"] += float(line.rsplit(" ", 1)[1])
                elif line.startswith("ckptfs_store_retrying "):
                    found["metrics_store_retrying"] = float(line.rsplit(" ", 1)[1])
    return found


def _rss_mib(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    return None


def _disk_mib(path: str) -> float:
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
    return total / (1 << 20)


def _kinds_over(lake: list[tuple[float, dict]]) -> dict[str, dict[str, int]]:
    """The lake's objects by kind at the first sample, the one halfway and the last."""
    if not lake:
        return {}
    middle = (lake[0][0] + lake[-1][0]) / 2
    halfway = next(value for t, value in lake if t >= middle)
    return {"start": lake[0][1]["kinds"], "halfway": halfway["kinds"], "end": lake[-1][1]["kinds"]}


def _lake_size(endpoint: str, bucket: str, prefix: str) -> dict:
    """Objects and bytes in the lake, and objects by kind (the key's first part: packs, manifests,
    log, feed, ...), so that a count that keeps growing under the policy names what grows."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    count = size = 0
    kinds: dict[str, int] = {}
    with contextlib.suppress(Exception):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
            for item in page.get("Contents", []):
                count += 1
                size += item["Size"]
                kind = item["Key"][len(prefix) + 1:].split("/", 1)[0]
                kinds[kind] = kinds.get(kind, 0) + 1
    return {"objects": count, "bytes": size, "kinds": kinds}


def chart(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = result["samples"][0]["t"] if result["samples"] else 0
    figure, axes = plt.subplots(6, 1, figsize=(11, 18), sharex=True)
    saves = [e for e in result["events"] if e["event"] == "saved"]
    axes[0].plot([e["t"] - start for e in saves], [e["stall"] for e in saves], ".", label="save stall (s), each rank")
    durable = [e for e in result["events"] if e["event"] == "durable"]
    axes[0].plot([e["t"] - start for e in durable], [e["after"] for e in durable], "x", label="save to durable (s)")
    axes[0].legend()
    axes[0].set_ylabel("seconds")
    ranks = sorted({rank for s in result["samples"] for rank in s["mounts"]})
    for rank in ranks:
        times = [s["t"] - start for s in result["samples"] if rank in s["mounts"]]
        entries = [s["mounts"][rank] for s in result["samples"] if rank in s["mounts"]]
        axes[1].plot(times, [(e.get("at_risk_bytes") or 0) / 2**20 for e in entries], label=f"mount {rank}")
        axes[2].plot(times, [e.get("rss_mib") or 0 for e in entries], label=f"mount {rank}")
        axes[3].plot(times, [e.get("cache_mib") or 0 for e in entries], label=f"mount {rank}")
    axes[1].set_ylabel("not yet durable (MiB)")
    axes[2].set_ylabel("daemon RSS (MiB)")
    axes[3].set_ylabel("cache disk (MiB)")
    lake = [(s["t"] - start, s["lake"]) for s in result["samples"] if s.get("lake")]
    axes[4].plot([t for t, _ in lake], [v["bytes"] / 2**20 for _, v in lake], label="lake MiB")
    axes[4].plot([t for t, _ in lake], [v["objects"] for _, v in lake], label="lake objects")
    for kind in sorted({kind for _, v in lake for kind in v.get("kinds", {})}):
        counts = [v.get("kinds", {}).get(kind, 0) for _, v in lake]
        if max(counts) >= 50:  # the kinds that count; lake.json, gc/lock and the like do not
            axes[4].plot([t for t, _ in lake], counts, ":", label=f"{kind}/ objects")
    axes[4].legend()
    requests = [(s["t"] - start, s.get("requests") or {}) for s in result["samples"]]
    dollars = [sum(PRICE_PER_1000.get(k, 0) * n / 1000 for k, n in r.items()) for _, r in requests]
    axes[5].plot([t for t, _ in requests], dollars, label="request dollars (S3 Standard)")
    axes[5].legend()
    axes[5].set_xlabel("seconds since start")
    for axis in axes[1:4]:
        axis.legend()
    for fault in result["faults"]:
        for axis in axes:
            axis.axvspan(fault["start"] - start, fault.get("end", fault["start"] + 1) - start, color="red", alpha=0.15)
        axes[0].annotate(fault["kind"], (fault["start"] - start, axes[0].get_ylim()[1] * 0.9), fontsize=7, rotation=90)
    figure.tight_layout()
    figure.savefig(path, dpi=80)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=2, help="length of the soak phase")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--mib", type=int, default=32, help="checkpoint size per rank, MiB")
    parser.add_argument("--interval", type=float, default=5, help="seconds between saves")
    parser.add_argument("--baseline-saves", type=int, default=6)
    parser.add_argument("--stress-saves", type=int, default=6)
    parser.add_argument("--cache-size", default="4G")
    parser.add_argument("--stress-cache-size", default="16M",
                        help="rank 0's cache in the stress phase: smaller than what it saves, so it spills")
    parser.add_argument("--outage", type=float, default=60, help="seconds of the full outage")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep-within", default="10m", help="the lake policy: every version current within this long")
    parser.add_argument("--gc-every", default="5m", help="each mount's --gc-every")
    parser.add_argument("--gc-grace", type=int, default=60, help="the lake's gc_grace_s, seconds")
    parser.add_argument("--no-policy", action="store_true", help="no lake policy and no GC: rotation only")
    parser.add_argument("--endpoint-url", help="a real S3 endpoint instead of the model")
    parser.add_argument("--bucket", help="with --endpoint-url: the bucket to use")
    parser.add_argument("--out", default=".", help="directory for soak.json and soak.png")
    args = parser.parse_args()
    if args.endpoint_url and not args.bucket:
        parser.error("--endpoint-url needs --bucket")
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="ckptfs-soak-")
    soak = Soak(args, work)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        result = soak.run()
    finally:
        soak.close()
        # the daemons' and ranks' logs outlive the work dir: where a figure went wrong, they say why
        logs = os.path.join(args.out, "logs")
        os.makedirs(logs, exist_ok=True)
        for name in os.listdir(work):
            if name.endswith((".log", ".jsonl")):
                shutil.copy(os.path.join(work, name), logs)
    with open(os.path.join(args.out, "soak.json"), "w") as file:
        json.dump({k: v for k, v in result.items() if k != "events"} | {"saves": [
            e for e in result["events"] if e["event"] != "save_begin"]}, file, indent=1, default=str)
    chart(result, os.path.join(args.out, "soak.png"))
    figures = result["figures"]
    print(json.dumps(figures, indent=1, default=str))
    verified = figures["verified"]
    drift = figures["stall_p99_drift"]
    growth = list(figures["rss_growth_after_warmup"].values())
    print("acceptance:")
    print(f"  stall p99 drift (last tenth of the soak against the first): "
          f"{'n/a' if drift is None else f'{drift:+.0%}'} (target ≤ +10%)")
    print(f"  daemon RSS growth after warm-up, per daemon that lived through the soak: "
          f"{', '.join(f'{g:+.0%}' for g in growth) or 'none lived long enough'} (target ≤ +10%)")
    for r in figures["recoveries"]:
        own = f", of which {r['job_start_s']} s the job's own start" if r["job_start_s"] else ""
        print(f"  recovery, {r['fault']}: {r['seconds']} s from the kill to every rank resumed from what latest "
              f"named{own} (target ≤ mount {r['mount_s']} s + restore {r['restore_s']} s = "
              f"{r['mount_s'] + r['restore_s']:.2f} s)")
        print(f"    {r['until_mounts_start_s']} s until the new mounts started (killing the old processes), "
              f"{r['before_resume_s']} s until the ranks began resuming, then (slowest rank) "
              + ", ".join(f"{name[:-2]} {seconds} s" for name, seconds in r["parts"].items()))
    print(f"  checkpoints latest named: {verified['named']}, loaded and equal: {verified['loaded_and_equal']}, "
          f"failed: {len(verified['failures'])} (target 0)")
    for failure in verified["failures"][:10]:
        print("    " + failure)
    print(f"  request cost per checkpoint: ${figures['request_dollars_per_checkpoint']:.6f}")
    gc = figures["gc"]
    if not args.no_policy:
        print(f"  lake under the policy (keep-within {args.keep_within}): {_gb(figures['lake_bytes_soak_halfway'])} "
              f"halfway through the soak, {_gb(figures['lake_bytes'])} at the end, "
              f"{_gb(figures['lake_bytes_soak_max'])} at most; gc: {gc['runs']} runs "
              f"({len(gc['failed'])} failed), {gc['deleted_objects']} objects deleted ({_gb(gc['deleted_bytes'])}), "
              f"longest run {gc['seconds_max']} s")
    kinds = figures.get("lake_objects_by_kind") or {}
    if kinds:
        print("  lake objects by kind, soak start / halfway / end: " + ", ".join(
            f"{kind} {kinds['start'].get(kind, 0)}/{kinds['halfway'].get(kind, 0)}/{kinds['end'].get(kind, 0)}"
            for kind in sorted(set(kinds["start"]) | set(kinds["end"]))))
    print("  faults visible in status while they lasted (share of samples):",
          figures["faults_visible_share_of_samples"])
    shutil.rmtree(work, ignore_errors=True)
    return 0 if not verified["failures"] and verified["loaded_and_equal"] > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
