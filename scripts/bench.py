#!/usr/bin/env python3
"""Benchmark ckptfs against the floors (local disk, a null pyfuse3 file system), the network (boto3
direct), s3fs-fuse and rclone.

    python scripts/bench.py [--endpoint-url URL | --plain-moto] [--size-gib 1] [--repeat 3] [--skip-peers]

Everything runs in one go against one S3 endpoint. By default that is a model of S3 on 127.0.0.1
(tests/s3model.py: moto_server behind a proxy that adds AWS's published first-byte latency and
per-connection bandwidth, and counts requests by type); --endpoint-url names a real endpoint
(credentials then come from the usual AWS chain); --plain-moto is moto alone (correctness only:
its costs are not S3's). Requests per GiB saved and restored, and their price at S3 Standard rates,
are counted at the proxy for ckptfs and boto3. Prints a table with
min/median/max per figure and the ratios against the targets, and writes both to docs/BENCHMARKS.md
with a chart, docs/benchmarks.png. s3fs and rclone are installed from Debian when missing (as root),
or skipped with a clear message. Figures, not assertions: tests never time anything.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import io
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import boto3  # noqa: E402
import torch  # noqa: E402

from ckptfs.cli import progress_of  # noqa: E402
from tests.helpers import MotoServer, force_unmount, is_mounted  # noqa: E402
from tests.s3model import S3Model, use_test_credentials  # noqa: E402

GIB = 1024**3
MIB = 1024**2


def settle(*, drop: bool = False) -> None:
    """Write back every dirty page before a timed step, so no step pays for the previous one's.

    `drop`, before a timed write: also drop the clean page cache. On a VM that returns free memory
    to its host, a write that needs pages the guest has not touched lately pays a host fault per
    page. Saving the same 1 GiB to a plain directory stalled 0.89 s with pages to spare and 3.51 s
    once earlier files filled the page cache (docs/BENCHMARKS.md); dropping it first gives every
    system the same start. Not before restores: the warm restore is the page cache's figure.
    """
    os.sync()
    if drop:
        with open("/proc/sys/vm/drop_caches", "w") as caches:
            caches.write("1\n")


# -- data -----------------------------------------------------------------------------------------
# -- the client's own cost: CPU and GIL per GiB, which do not depend on the server -----------------
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
GIL_RATE = 200  # py-spy samples per second


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds a process has used so far, all its threads (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


class GilSampler:
    """Seconds a process holds the GIL while it runs: py-spy records, at GIL_RATE Hz and without
    stopping the process, only the samples in which a thread holds the GIL (`--gil --nonblocking`)."""

    def __init__(self, pid: int, workdir: str) -> None:
        self.output = os.path.join(workdir, f"gil-{pid}-{uuid.uuid4().hex[:6]}.txt")
        self.process = subprocess.Popen(
            ["py-spy", "record", "--pid", str(pid), "--gil", "--nonblocking", "--rate", str(GIL_RATE),
             "--format", "raw", "--output", self.output], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._stacks: collections.Counter | None = None
        time.sleep(0.5)  # attached

    def stop(self) -> float:
        stacks = self.stacks()
        return sum(stacks.values()) / GIL_RATE if stacks is not None else float("nan")

    def stacks(self) -> collections.Counter | None:
        """The samples by stack ("thread;frame;frame": count), once py-spy has stopped; None if it wrote none."""
        if self._stacks is None and self.process is not None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=60)
            self.process = None
            try:
                with open(self.output) as samples:
                    self._stacks = collections.Counter()
                    for line in samples:
                        if line.strip():
                            stack, count = line.rsplit(" ", 1)
                            self._stacks[stack] += int(count)
                os.unlink(self.output)
            except FileNotFoundError:
                pass
        return self._stacks


class CostMeter:
    """CPU (user, system) and GIL seconds of one process, and the server's CPU, over one phase."""

    def __init__(self, bench: Bench, pid: int, *, gil: bool = True) -> None:
        self.bench, self.pid = bench, pid
        self.servers = bench.server_pids()
        self.sampler = GilSampler(pid, bench.workdir) if gil and shutil.which("py-spy") else None
        self.cpu = cpu_seconds(pid)
        self.server_cpu = sum(sum(cpu_seconds(server)) for server in self.servers)

    def record(self, system: str, phase: str, size: int) -> None:
        user, sys_ = (after - before for after, before in zip(cpu_seconds(self.pid), self.cpu, strict=True))
        gil = self.sampler.stop() if self.sampler is not None else float("nan")
        gib = size / GIB
        self.bench.record(system, f"{phase}: CPU s per GiB (user)", user / gib)
        self.bench.record(system, f"{phase}: CPU s per GiB (system)", sys_ / gib)
        self.bench.record(system, f"{phase}: GIL s per GiB", gil / gib)
        if self.servers:
            server = sum(sum(cpu_seconds(server)) for server in self.servers) - self.server_cpu
            self.bench.record(system, f"{phase}: server CPU s per GiB", server / gib)


BOTO3_CHILD = """
import sys, time, boto3, botocore.config
kind, endpoint, bucket, key, path = sys.argv[1:6]
# "upload unsigned": what boto3 does on https, where a checksum stands in for signing the body
config = botocore.config.Config(s3={"payload_signing_enabled": False} if kind.endswith("unsigned") else {})
client = boto3.client("s3", endpoint_url=endpoint, config=config)
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
(client.upload_file if kind.startswith("upload") else client.download_file)(*(
    (path, bucket, key) if kind.startswith("upload") else (bucket, key, path)))
"""


def boto3_cost(bench: Bench, kind: str, key: str, path: str, size: int) -> None:
    """boto3's own CPU and GIL for an upload_file or download_file of `size` bytes, in a process of
    its own (the bench's process also runs the S3 model's proxy); its start-up is not counted."""
    child = subprocess.Popen([sys.executable, "-c", BOTO3_CHILD, kind, bench.endpoint, bench.bucket, key, path],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdin is not None
    child.stdout.readline()  # imported, client made
    meter = CostMeter(bench, child.pid)
    child.stdin.write("go\n")
    child.stdin.flush()
    # Wait for its exit without reaping it (WNOWAIT): /proc/PID/stat holds its final figures until
    # it is waited for.
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    meter.record("boto3 direct", f"{kind}", size)
    child.wait()


def state_dict(size_gib: float, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    count = max(1, int(size_gib * GIB / (4 * MIB)))
    return {f"layer{i}.weight": torch.randn(MIB, generator=generator) for i in range(count)}  # 4 MiB each


def ninety_percent_unchanged(sd: dict, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    changed = dict(sd)
    for key in list(sd)[::10]:
        changed[key] = torch.randn(MIB, generator=generator)
    return changed


def checkpoint(sd: dict, step: int) -> dict:
    return {"step": step, "model": sd}


# -- the systems under test ---------------------------------------------------------------------
class System:
    name = ""
    needs_store = True

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.root = os.path.join(bench.workdir, self.name.replace(" ", "-"))
        os.makedirs(self.root, exist_ok=True)
        self.prefix = f"{self.name}-{uuid.uuid4().hex[:6]}"

    def start(self) -> None: ...
    def stop(self) -> None: ...

    def path(self, name: str) -> str:
        return os.path.join(self.mountpoint, name)

    @property
    def mountpoint(self) -> str:
        return os.path.join(self.root, "mnt")

    def save(self, obj: dict, name: str) -> tuple[float, float]:
        """(stall, time to durable) of torch.save to `name`."""
        os.makedirs(os.path.dirname(self.path(name)), exist_ok=True)
        settle(drop=True)
        started = time.perf_counter()
        torch.save(obj, self.path(name))
        stall = time.perf_counter() - started
        self.wait_durable(name)
        return stall, time.perf_counter() - started

    def wait_durable(self, name: str) -> None:
        size = os.path.getsize(self.path(name))
        key = f"{self.prefix}/{name}"
        while True:
            try:
                if self.bench.s3.head_object(Bucket=self.bench.bucket, Key=key)["ContentLength"] == size:
                    return
            except Exception:  # noqa: BLE001 - not there yet
                pass
            time.sleep(0.05)

    def make_cold(self) -> None:
        """Forget every locally cached byte, as a freshly started node would have none."""
        self.stop()
        subprocess.run(["sync"], check=False)
        with open("/proc/sys/vm/drop_caches", "w") as caches:
            caches.write("3\n")
        self.start()

    def stored_pages(self) -> Iterator[list[dict]]:
        """The objects this system stored, a LIST page at a time."""
        for page in self.bench.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bench.bucket,
                                                                           Prefix=self.prefix + "/"):
            yield page.get("Contents", [])

    def cleanup(self) -> None:
        """Delete what this system stored, so the endpoint does not hold every run's data."""
        if self.needs_store:
            for objects in self.stored_pages():
                if objects:
                    self.bench.s3.delete_objects(Bucket=self.bench.bucket,
                                                 Delete={"Objects": [{"Key": item["Key"]} for item in objects]})
        shutil.rmtree(self.root, ignore_errors=True)

    def stored_bytes(self) -> int:
        return sum(item["Size"] for objects in self.stored_pages() for item in objects)


class LocalDisk(System):
    name = "local disk"
    needs_store = False

    @property
    def mountpoint(self) -> str:
        return os.path.join(self.root, "dir")

    def start(self) -> None:
        os.makedirs(self.mountpoint, exist_ok=True)

    def wait_durable(self, name: str) -> None:
        pass

    def make_cold(self) -> None:
        subprocess.run(["sync"], check=False)
        with open("/proc/sys/vm/drop_caches", "w") as caches:
            caches.write("3\n")

    def stored_bytes(self) -> int:
        return 0


def start_nullfs(mountpoint: str, python: str = sys.executable, timeout: float = 30,
                 stage: str | None = None) -> subprocess.Popen:
    """scripts/nullfs.py serving `mountpoint` under the interpreter `python`, once it is mounted
    (`stage`: a file every write also goes into, as ckptfs's staging)."""
    os.makedirs(mountpoint, exist_ok=True)
    process = subprocess.Popen([python, os.path.join(REPO, "scripts", "nullfs.py"), mountpoint]
                               + (["--stage", stage] if stage else []))
    deadline = time.monotonic() + timeout
    while not is_mounted(mountpoint):
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                process.kill()
                process.wait()
            raise RuntimeError(f"the null file system did not mount on {mountpoint}")
        time.sleep(0.05)
    return process


class NullFuse(LocalDisk):
    """scripts/nullfs.py: accepts writes and discards them; the floor of any pyfuse3 file system."""
    name = "null pyfuse3"

    @property
    def mountpoint(self) -> str:
        return os.path.join(self.root, "mnt")

    def start(self) -> None:
        self.process = start_nullfs(self.mountpoint)

    def stop(self) -> None:
        subprocess.run(["fusermount3", "-u", self.mountpoint], check=False)
        self.process.wait()


class Boto3Direct(LocalDisk):
    """Save to local disk, then upload_file; restore with download_file. What the network allows."""
    name = "boto3 direct"
    needs_store = True

    def save(self, obj: dict, name: str) -> tuple[float, float]:
        os.makedirs(os.path.dirname(self.path(name)), exist_ok=True)
        torch.save(obj, self.path(name))
        settle()
        started = time.perf_counter()
        self.bench.shaped.upload_file(self.path(name), self.bench.bucket, f"{self.prefix}/{name}")
        upload = time.perf_counter() - started
        return float("nan"), upload  # the stall of this path is the local disk's; durable = the upload

    def restore(self, name: str) -> float:
        target = self.path(name + ".downloaded")
        settle()
        started = time.perf_counter()
        self.bench.shaped.download_file(self.bench.bucket, f"{self.prefix}/{name}", target)
        elapsed = time.perf_counter() - started
        os.unlink(target)
        return elapsed

    def stored_bytes(self) -> int:
        return System.stored_bytes(self)


class Ckptfs(System):
    name = "ckptfs"

    def start(self, cache: str = "cache", extra: list[str] | None = None) -> None:
        os.makedirs(self.mountpoint, exist_ok=True)
        self.cache_dir = os.path.join(self.root, cache)
        command = [sys.executable, "-m", "ckptfs", "mount", f"s3://{self.bench.bucket}/{self.prefix}",
                   self.mountpoint, "--foreground", "--cache-dir", self.cache_dir,
                   "--endpoint-url", self.bench.endpoint, "--log-file", os.path.join(self.root, "daemon.log")]
        self.process = subprocess.Popen(command + (extra or []))
        while not is_mounted(self.mountpoint):
            if self.process.poll() is not None:
                raise RuntimeError("ckptfs did not mount; see " + os.path.join(self.root, "daemon.log"))
            time.sleep(0.05)

    def stop(self) -> None:
        subprocess.run(["fusermount3", "-u", self.mountpoint], check=False)
        self.process.wait()

    def wait_durable(self, name: str) -> None:
        # What `ckptfs sync` does, without timing a Python start-up: take the barrier, wait for it.
        barrier = json.loads(os.getxattr(self.path(name), "user.ckptfs.barrier"))["upto"]
        while progress_of(self.mountpoint, after=barrier)["outbox_head"] <= barrier:
            pass

    def status(self) -> dict:
        return json.loads(os.getxattr(self.mountpoint, "user.ckptfs.status"))

    def make_cold(self) -> None:
        self.stop()
        shutil.rmtree(self.cache_dir)
        with open("/proc/sys/vm/drop_caches", "w") as caches:
            caches.write("3\n")
        self.start()


class S3fsFuse(System):
    name = "s3fs-fuse"

    def start(self) -> None:
        os.makedirs(self.mountpoint, exist_ok=True)
        passwd = os.path.join(self.root, "passwd")
        with open(passwd, "w") as file:
            file.write(f"{self.bench.access_key}:{self.bench.secret_key}\n")
        os.chmod(passwd, 0o600)
        subprocess.run(["s3fs", f"{self.bench.bucket}:/{self.prefix}", self.mountpoint, "-o",
                        f"url={self.bench.endpoint},use_path_request_style,passwd_file={passwd},"
                        "mp_umask=022,nonempty"], check=True)
        while not is_mounted(self.mountpoint):
            time.sleep(0.05)

    def stop(self) -> None:
        subprocess.run(["fusermount3", "-u", self.mountpoint], check=False)
        while is_mounted(self.mountpoint):
            time.sleep(0.05)


class RcloneMount(System):
    name = "rclone mount"

    def environment(self) -> dict:
        # rclone's S3 SDK refuses AWS_CA_BUNDLE together with its own HTTP transport; a plain-HTTP
        # endpoint on 127.0.0.1 needs no CA bundle anyway.
        base = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        return dict(base, RCLONE_CONFIG_BENCH_TYPE="s3", RCLONE_CONFIG_BENCH_PROVIDER="Other",
                    RCLONE_CONFIG_BENCH_ENDPOINT=self.bench.endpoint,
                    RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=self.bench.access_key,
                    RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=self.bench.secret_key,
                    RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE="true")

    def start(self) -> None:
        os.makedirs(self.mountpoint, exist_ok=True)
        self.cache_dir = os.path.join(self.root, "cache")
        self.process = subprocess.Popen(
            ["rclone", "mount", f"bench:{self.bench.bucket}/{self.prefix}", self.mountpoint,
             "--vfs-cache-mode", "writes", "--cache-dir", self.cache_dir, "--vfs-write-back", "0s"],
            env=self.environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not is_mounted(self.mountpoint):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("rclone mount did not come up")
            time.sleep(0.05)

    def stop(self) -> None:
        subprocess.run(["fusermount3", "-u", self.mountpoint], check=False)
        self.process.wait()

    def make_cold(self) -> None:
        self.stop()
        shutil.rmtree(self.cache_dir, ignore_errors=True)
        with open("/proc/sys/vm/drop_caches", "w") as caches:
            caches.write("3\n")
        self.start()


# -- the bench --------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        if args.workdir:
            os.makedirs(args.workdir, exist_ok=True)  # a --workdir that does not exist yet is made
        self.workdir = tempfile.mkdtemp(prefix="ckptfs-bench-", dir=args.workdir)
        self.server = None
        self.model: S3Model | None = None
        if not args.endpoint_url:
            use_test_credentials()  # moto, plain or behind the model
        self.fresh_endpoint()
        credentials = boto3.session.Session().get_credentials()
        self.access_key, self.secret_key = credentials.access_key, credentials.secret_key
        self.results: dict[str, dict[str, list[float]]] = {}

    def fresh_endpoint(self) -> None:
        """With the embedded moto_server, a new server (and bucket) per system: moto keeps objects in
        memory and does not give it back on delete, and a whole run holds tens of GiB."""
        if self.args.endpoint_url:
            self.endpoint = self.args.endpoint_url
            self.s3 = self.shaped = boto3.client("s3", endpoint_url=self.endpoint)
        elif self.args.plain_moto:
            if self.server is not None:
                self.server.stop()
            self.server = MotoServer()
            self.endpoint = self.server.endpoint
            self.s3 = self.shaped = boto3.client("s3", endpoint_url=self.endpoint)
        else:
            if self.model is not None:
                self.model.stop()
            self.model = S3Model()
            self.endpoint = self.model.endpoint
            # The bench's own bookkeeping (HEAD polls, listings, cleanup) goes straight to moto, so
            # the proxy counts only what the systems under test ask.
            self.s3 = boto3.client("s3", endpoint_url=self.model.direct)
            self.shaped = boto3.client("s3", endpoint_url=self.endpoint)
        self.bucket = self.args.bucket or f"ckptfs-bench-{uuid.uuid4().hex[:8]}"
        if not self.args.bucket:
            self.s3.create_bucket(Bucket=self.bucket)

    def server_pids(self) -> list[int]:
        """The server's processes on this machine, whose CPU is counted apart: moto, or what
        --server-pid names (scripts/local_ceph.py: its monitor, OSD and gateway)."""
        if self.model is not None:
            return [self.model.moto.process.pid]
        if self.server is not None:
            return [self.server.process.pid]
        return list(self.args.server_pid or ())

    def record(self, system: str, figure: str, value: float) -> None:
        self.results.setdefault(figure, {}).setdefault(system, []).append(value)

    def requests(self) -> dict[str, int]:
        """Requests the systems under test have made so far, by type (the S3 model only)."""
        return dict(self.model.proxy.by_kind) if self.model is not None else {}

    def record_requests(self, system: str, phase: str, before: dict[str, int], size: int) -> None:
        if self.model is None:
            return
        made = {kind: number - before.get(kind, 0) for kind, number in self.requests().items()}
        gib = size / GIB
        for kind in ("PUT", "GET", "LIST", "HEAD"):
            self.record(system, f"{phase}: {kind} per GiB", made.get(kind, 0) / gib)
        self.record(system, f"{phase}: request cost per TiB ($)", self.model.cost(made) / gib * 1024)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.model is not None:
            self.model.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def peers_available(install: bool) -> list[type[System]]:
    wanted = {"s3fs": S3fsFuse, "rclone": RcloneMount}
    missing = [tool for tool in wanted if shutil.which(tool) is None]
    if missing and install and os.geteuid() == 0:
        print(f"bench: installing {' '.join(missing)} from Debian")
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=False,
                       stdout=subprocess.DEVNULL, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    available = []
    for tool, system in wanted.items():
        if shutil.which(tool):
            available.append(system)
        else:
            print(f"bench: skipping {system.name}: `{tool}` is not installed and could not be installed")
    return available


def run_system(bench: Bench, kind: type[System], data: list[dict]) -> None:
    system = kind(bench)
    system.start()
    counted = isinstance(system, (Ckptfs, Boto3Direct))
    try:
        for round_number, round_data in enumerate(data):
            step = 1000 * (round_number + 1)
            fresh = checkpoint(round_data["base"], step)
            before = bench.requests()
            meter = CostMeter(bench, system.process.pid) if isinstance(system, Ckptfs) else None
            stall, durable = system.save(fresh, f"r{round_number}/step-{step}/model.pt")
            if meter is not None:
                meter.record(system.name, "save to durable", round_data["size"])
            if isinstance(system, Boto3Direct):
                name = f"r{round_number}/step-{step}/model.pt"
                boto3_cost(bench, "upload", f"{system.prefix}/{name}-cpu", system.path(name), round_data["size"])
            bench.record(system.name, "save stall (s)", stall)
            if isinstance(system, NullFuse):
                continue  # the floor of the stall: nothing is kept
            bench.record(system.name, "time to durable (s)", durable)
            if counted:
                bench.record_requests(system.name, "fresh save", before, round_data["size"])
            stored = system.stored_bytes()
            stall, durable = system.save(fresh, f"r{round_number}/step-{step}-again/model.pt")
            bench.record(system.name, "identical re-save: stall (s)", stall)
            bench.record(system.name, "identical re-save: time to durable (s)", durable)
            # from close: the stall is the page-cache copy into staging, the rest is the daemon's own
            bench.record(system.name, "identical re-save: close to durable (s)", durable - stall)
            bench.record(system.name, "identical re-save: new bytes (% of size)",
                         100 * (system.stored_bytes() - stored) / round_data["size"])
            stored = system.stored_bytes()
            stall, durable = system.save(checkpoint(round_data["changed"], step * 10),
                                         f"r{round_number}/step-{step * 10}/model.pt")
            bench.record(system.name, "90%-unchanged re-save: new bytes (% of size)",
                         100 * (system.stored_bytes() - stored) / round_data["size"])
            name = f"r{round_number}/step-{step}/model.pt"
            if isinstance(system, Boto3Direct):
                boto3_cost(bench, "download", f"{system.prefix}/{name}", system.path(name) + ".cpu",
                           round_data["size"])
                os.unlink(system.path(name) + ".cpu")
                before = bench.requests()
                elapsed = system.restore(name)
                bench.record(system.name, "cold restore (MB/s)", round_data["size"] / elapsed / 1e6)
                bench.record_requests(system.name, "cold restore", before, round_data["size"])
                continue
            system.make_cold()
            settle()
            before = bench.requests()
            meter = CostMeter(bench, system.process.pid) if isinstance(system, Ckptfs) else None
            started = time.perf_counter()
            torch.load(system.path(name), weights_only=True)
            if meter is not None:
                meter.record(system.name, "cold restore", round_data["size"])
            bench.record(system.name, "cold restore (MB/s)",
                         round_data["size"] / (time.perf_counter() - started) / 1e6)
            if counted:
                bench.record_requests(system.name, "cold restore", before, round_data["size"])
            settle()
            started = time.perf_counter()
            torch.load(system.path(name), weights_only=True)
            bench.record(system.name, "warm restore (MB/s)",
                         round_data["size"] / (time.perf_counter() - started) / 1e6)
        if not isinstance(system, (Boto3Direct, NullFuse)):
            bench.record(system.name, "raw write (MB/s)", raw_write(system.path("raw.bin"), bench.args.raw_gib))
    finally:
        system.stop()
        system.cleanup()


def stamp(block: bytearray, number: int) -> None:
    """Make 1 MiB block `number` of a file unique: every 64 KiB starts with its offset."""
    for offset in range(0, MIB, 64 * 1024):
        block[offset:offset + 8] = (number * MIB + offset).to_bytes(8, "little")


def raw_write(path: str, gib: float, *, unique: bool = False) -> float:
    """MB/s of `gib` GiB written in 1 MiB blocks. `unique`: every 64 KiB of every block is stamped
    with its offset, so no chunk repeats and all of it must be uploaded (as a real checkpoint would)."""
    block = bytearray(os.urandom(MIB))
    count = int(gib * 1024)
    settle(drop=True)
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for number in range(count):
        if unique:
            stamp(block, number)
        os.write(fd, block)
    os.close(fd)
    return count * MIB / (time.perf_counter() - started) / 1e6


def footprint(bench: Bench) -> dict[str, float]:
    """Daemon peak RSS and peak staged bytes while writing a file far larger than --cache-size."""
    system = Ckptfs(bench)
    cache_size = int(bench.args.footprint_gib * GIB / 2)
    system.start(cache="footprint-cache", extra=["--cache-size", str(cache_size)])
    peak_disk = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            used = 0
            for directory, _, files in os.walk(system.cache_dir):
                for name in files:
                    try:
                        used += os.stat(os.path.join(directory, name)).st_blocks * 512
                    except FileNotFoundError:
                        pass
            peak_disk[0] = max(peak_disk[0], used)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        throughput = raw_write(system.path("big.bin"), bench.args.footprint_gib, unique=True)
        with open(f"/proc/{system.process.pid}/status") as status:
            peak_rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))
    finally:
        done.set()
        sampler.join()
        system.stop()
        system.cleanup()
    return {"peak_rss_mib": peak_rss / MIB, "peak_cache_disk_mib": peak_disk[0] / MIB,
            "cache_size_mib": cache_size / MIB, "write_mb_s": throughput}


# -- report -----------------------------------------------------------------------------------
def summary(values: list[float]) -> str:
    values = [v for v in values if v == v]  # drop NaN
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def measured(bench: Bench, figure: str, system: str) -> list[float]:
    return [v for v in bench.results.get(figure, {}).get(system, []) if v == v]  # drop NaN


def median(bench: Bench, figure: str, system: str) -> float:
    values = measured(bench, figure, system)
    return statistics.median(values) if values else float("nan")


def best(bench: Bench, figure: str, system: str) -> float:
    """The best of the repeats: the least time, or the most MB/s."""
    values = measured(bench, figure, system)
    if not values:
        return float("nan")
    return max(values) if "MB/s" in figure else min(values)


def ratios(bench: Bench, foot: dict[str, float],
           estimate: Callable[[Bench, str, str], float] = median) -> list[tuple[str, str, str, bool]]:
    """The targets, with `estimate` (median or best) as the figure of each system's repeats."""
    def r(a: float, b: float) -> float:
        return a / b if b else float("nan")

    def m(figure: str, system: str) -> float:
        return estimate(bench, figure, system)

    local_stall = m("save stall (s)", "local disk")
    rows = []
    stall = r(m("save stall (s)", "ckptfs"), local_stall)
    rows.append(("save stall vs local disk", f"{stall:.2f}×", "≤ 1.10×", stall <= 1.10))
    floor = r(m("save stall (s)", "ckptfs"), m("save stall (s)", "null pyfuse3"))
    if floor == floor:
        rows.append(("save stall vs null pyfuse3 floor", f"{floor:.2f}×", "≤ 1.15×", floor <= 1.15))
    for phase, limit in (("fresh save", "PUT"), ("cold restore", "GET")):
        per_gib = m(f"{phase}: {limit} per GiB", "ckptfs")
        if per_gib == per_gib:
            rows.append((f"{phase}: {limit} per GiB", f"{per_gib:.0f}", "≤ 64", per_gib <= 64))
    durable = r(m("time to durable (s)", "ckptfs"), m("time to durable (s)", "boto3 direct"))
    rows.append(("time to durable vs boto3 upload_file", f"{durable:.2f}×", "≤ 1.15×", durable <= 1.15))
    again = m("identical re-save: new bytes (% of size)", "ckptfs")
    rows.append(("identical re-save: bytes uploaded again", f"{again:.2f}%", "≤ 1%", again <= 1))
    quick = r(m("identical re-save: time to durable (s)", "ckptfs"),
              m("time to durable (s)", "ckptfs"))
    rows.append(("identical re-save: durable vs fresh", f"{100 * quick:.0f}%", "≤ 10%", quick <= 0.10))
    after_close = r(m("identical re-save: close to durable (s)", "ckptfs"), m("time to durable (s)", "ckptfs"))
    rows.append(("identical re-save: close to durable vs fresh (stall aside)", f"{100 * after_close:.0f}%",
                 "≤ 10%", after_close <= 0.10))
    changed = m("90%-unchanged re-save: new bytes (% of size)", "ckptfs")
    rows.append(("90%-unchanged re-save: new bytes", f"{changed:.1f}%", "≤ 15%", changed <= 15))
    cold = r(m("cold restore (MB/s)", "ckptfs"), m("cold restore (MB/s)", "boto3 direct"))
    rows.append(("cold restore vs boto3 download_file", f"{cold:.2f}×", "≥ 1.0×", cold >= 1.0))
    warm = r(m("warm restore (MB/s)", "ckptfs"), m("warm restore (MB/s)", "local disk"))
    rows.append(("warm restore vs local disk", f"{warm:.2f}×", "≥ 0.8×", warm >= 0.8))
    raw = r(m("raw write (MB/s)", "ckptfs"), m("raw write (MB/s)", "local disk"))
    rows.append(("raw write vs local disk", f"{raw:.2f}×", "≥ 0.7×", raw >= 0.7))
    if foot:
        rows.append(("daemon peak RSS writing the big file", f"{foot['peak_rss_mib']:.0f} MiB", "≤ 300 MiB",
                     foot["peak_rss_mib"] <= 300))
        rows.append(("peak cache-disk use vs --cache-size",
                     f"{foot['peak_cache_disk_mib']:.0f} / {foot['cache_size_mib']:.0f} MiB", "never above",
                     foot["peak_cache_disk_mib"] <= foot["cache_size_mib"]))
    return rows


def endpoint_description(bench: Bench) -> str:
    if bench.model is not None:
        return (f"the S3 model (tests/s3model.py: moto_server on 127.0.0.1 behind a proxy adding "
                f"{bench.model.proxy.delay_seconds * 1000:.0f} ms before the first byte and "
                f"{bench.model.proxy.bandwidth / 1e6:.0f} MB/s per connection)")
    return "moto_server on 127.0.0.1 (no latency model)" if bench.server else bench.endpoint


def report(bench: Bench, systems: list[str], foot: dict[str, float], elapsed: float) -> str:
    lines = ["# Benchmarks", "",
             f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC by `python scripts/bench.py "
             f"--size-gib {bench.args.size_gib} --repeat {bench.args.repeat} --raw-gib {bench.args.raw_gib} "
             f"--footprint-gib {bench.args.footprint_gib}` in {elapsed / 60:.0f} min, "
             f"on {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; "
             f"S3 endpoint: {endpoint_description(bench)}. "
             "Each cell: median (min–max) over the repeats. The state dict is "
             f"{bench.args.size_gib} GiB of fp32 tensors of 4 MiB each; every save goes to a new "
             "`step-N/model.pt`, as training jobs do.", "",
             "| figure | " + " | ".join(systems) + " |", "|---|" + "---|" * len(systems)]
    for figure, by_system in bench.results.items():
        lines.append(f"| {figure} | " + " | ".join(summary(by_system.get(s, [])) for s in systems) + " |")
    lines += ["", "## ckptfs against the targets", "",
              "Ratios of medians, and of the best of the repeats (least time, most MB/s) for each system. "
              "Noise on this machine only ever adds time (see Analysis), so the best of the repeats is the "
              "closer estimate of what each system costs; a target counts as met on the medians.", "",
              "| figure | median | best of repeats | target | met |", "|---|---|---|---|---|"]
    for (name, value, target, met), (_, value_best, _, _) in zip(ratios(bench, foot),
                                                                 ratios(bench, foot, best), strict=True):
        lines.append(f"| {name} | {value} | {value_best} | {target} | {'yes' if met else '**no**'} |")
    if foot:
        lines += ["", f"Footprint run: a {bench.args.footprint_gib} GiB file written through a mount with "
                  f"`--cache-size` {foot['cache_size_mib']:.0f} MiB at {foot['write_mb_s']:.0f} MB/s."]
    lines += ["", "![chart](benchmarks.png)", ""]
    return "\n".join(lines)


def chart(bench: Bench, systems: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = ["save stall (s)", "time to durable (s)", "cold restore (MB/s)", "warm restore (MB/s)",
               "raw write (MB/s)"]
    fig, axes = plt.subplots(1, len(figures), figsize=(4 * len(figures), 4))
    for axis, figure in zip(axes, figures, strict=True):
        values = [median(bench, figure, s) for s in systems]
        axis.bar(range(len(systems)), [0 if v != v else v for v in values],
                 color=["#888888", "#aaaaaa", "#4477aa", "#cc6677", "#ddcc77", "#117733"][:len(systems)])
        axis.set_xticks(range(len(systems)), systems, rotation=30, ha="right")
        axis.set_title(figure)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint-url", help="an S3 endpoint to use instead of the S3 model on 127.0.0.1")
    parser.add_argument("--plain-moto", action="store_true", help="moto_server without the latency model")
    parser.add_argument("--bucket", help="an existing bucket (default: a new one)")
    parser.add_argument("--server-pid", type=int, action="append",
                        help="a process of the --endpoint-url server on this machine, whose CPU is counted apart")
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--raw-gib", type=float, default=4.0)
    parser.add_argument("--footprint-gib", type=float, default=8.0)
    parser.add_argument("--skip-peers", action="store_true", help="leave out s3fs and rclone")
    parser.add_argument("--workdir", default=None, help="where mounts and caches go (the cache disk)")
    parser.add_argument("--output", default=os.path.join(REPO, "docs", "BENCHMARKS.md"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: run as root (mounts, dropping the page cache between cold and warm runs)")
        return 2
    started = time.monotonic()
    bench = Bench(args)
    try:
        # Fresh tensors for every repeat, and fresh changed tensors for each 90%-unchanged variant:
        # a repeat must not find its "fresh" data already in the lake from the repeat before.
        data = []
        for round_number in range(args.repeat):
            base = state_dict(args.size_gib, seed=100 + round_number)
            buffer = io.BytesIO()
            torch.save(checkpoint(base, 1000), buffer)
            data.append({"base": base, "changed": ninety_percent_unchanged(base, seed=200 + round_number),
                         "size": len(buffer.getvalue())})
            del buffer
        kinds: list[type[System]] = [LocalDisk, NullFuse, Boto3Direct, Ckptfs]
        if not args.skip_peers:
            kinds += peers_available(install=True)
        for kind in kinds:
            print(f"bench: {kind.name} ...", flush=True)
            bench.fresh_endpoint()
            run_system(bench, kind, data)
        print("bench: ckptfs footprint ...", flush=True)
        bench.fresh_endpoint()
        foot = footprint(bench) if args.footprint_gib > 0 else {}
        systems = [kind.name for kind in kinds]
        text = report(bench, systems, foot, time.monotonic() - started)
        print(text)
        # A hand-written "## Analysis" section (profiles, explanations) survives a new run.
        if os.path.exists(args.output):
            with open(args.output) as file:
                previous = file.read()
            if "\n## Analysis" in previous:
                text += previous[previous.index("\n## Analysis"):]
        with open(args.output, "w") as file:
            file.write(text)
        chart(bench, systems, os.path.join(os.path.dirname(args.output), "benchmarks.png"))
    finally:
        for directory in os.listdir(bench.workdir):
            force_unmount(os.path.join(bench.workdir, directory, "mnt"))
        bench.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
