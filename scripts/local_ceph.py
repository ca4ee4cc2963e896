#!/usr/bin/env python3
"""A real S3 implementation on 127.0.0.1: a one-node Ceph (a monitor, one OSD on memstore) and its
S3 gateway, radosgw, from Debian's packages. For benchmarks against a server used in production
(`scripts/bench.py --endpoint-url`), never for tests (moto is theirs).

    python scripts/local_ceph.py start [--dir DIR] [--port 7480] [--memory-gib 10]
    . DIR/env                      # AWS_ENDPOINT_URL, the user's keys, checksums as the server takes them
    python scripts/bench.py --endpoint-url "$AWS_ENDPOINT_URL" $(cat DIR/server-pids-args)
    python scripts/local_ceph.py stop [--dir DIR]

`start` installs ceph-mon, ceph-osd and radosgw when missing (as root, scripts/apt_install.sh), writes
a cluster of its own under DIR (a config, keys, the monitor's store; no /etc/ceph, no systemd), starts
the three daemons in the foreground of their own sessions with their pids in DIR/pids, and makes an
S3 user. The OSD keeps objects in memory (memstore, at most --memory-gib; it takes ~1.6x that in
RSS when full, and refuses writes once full): the figures are the gateway's and the client's, not a
disk's. The gateway frees what was deleted or overwritten within seconds, not after its default two
hours, so a benchmark's cleanup makes room. One copy of each object (pool size 1), as on one node.
`stop` stops those pids (TERM, then KILL) and removes DIR.

Ceph 16 (Debian 12) predates S3's trailing checksums, so DIR/env sets
AWS_REQUEST_CHECKSUM_CALCULATION=when_required: the standard AWS setting, which boto3 obeys for the
baseline and ckptfs for its own client (ckptfs sends its CRC32C header only where it asks).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("ceph-mon", "ceph-osd", "radosgw")
ACCESS_KEY = "ckptfsbenchaccess"
SECRET_KEY = "ckptfs-bench-secret-key"


def run(*command: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=True, capture_output=True, text=True, **kwargs)


def install() -> None:
    if all(shutil.which(tool) for tool in ("ceph-mon", "ceph-osd", "radosgw")):
        return
    if os.geteuid() != 0:
        sys.exit("local_ceph: ceph-mon, ceph-osd and radosgw are missing; run as root to install them")
    subprocess.run([os.path.join(REPO, "scripts", "apt_install.sh"), "--no-install-recommends", *PACKAGES],
                   check=True)


def config(directory: str, fsid: str, port: int, memory: int) -> str:
    return f"""[global]
fsid = {fsid}
mon host = [v2:127.0.0.1:3300,v1:127.0.0.1:6789]
public network = 127.0.0.0/8
keyring = {directory}/keyring
run dir = {directory}/run
admin socket = {directory}/run/$name.asok
log file = {directory}/log/$name.log
pid file = {directory}/run/$name.pid
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon max pg per osd = 1000
mon warn on pool no redundancy = false
[mon]
mon data = {directory}/mon/$name
[osd]
osd data = {directory}/osd/$name
osd objectstore = memstore
memstore device bytes = {memory}
[client.rgw.local]
rgw frontends = beast endpoint=127.0.0.1:{port}
rgw data = {directory}/rgw
rgw enable usage log = false
rgw gc obj min wait = 0
rgw gc processor period = 5
"""


def keyring(directory: str) -> None:
    path = os.path.join(directory, "keyring")
    run("ceph-authtool", "--create-keyring", path, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *")
    entities = {"client.admin": ("mon", "allow *", "osd", "allow *", "mgr", "allow *", "mds", "allow *"),
                "osd.0": ("mon", "allow profile osd", "osd", "allow *", "mgr", "allow profile osd"),
                "client.rgw.local": ("mon", "allow rw", "osd", "allow rwx", "mgr", "allow rw")}
    for name, caps in entities.items():
        arguments = [item for cap, grant in zip(caps[::2], caps[1::2], strict=True) for item in ("--cap", cap, grant)]
        run("ceph-authtool", path, "--gen-key", "-n", name, *arguments)


def start_daemon(directory: str, name: str, command: list[str]) -> None:
    log = open(os.path.join(directory, "log", f"{name}.out"), "ab")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True)
    with open(os.path.join(directory, "pids"), "a") as pids:
        pids.write(f"{name} {process.pid}\n")


def wait_for(what: str, check, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (subprocess.SubprocessError, OSError):  # a command failed or timed out: not up yet
            pass
        time.sleep(1)
    sys.exit(f"local_ceph: {what} did not come up within {timeout:.0f} s (logs in the cluster's log/)")


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def start(args: argparse.Namespace) -> None:
    directory = os.path.abspath(args.dir)
    if os.path.exists(os.path.join(directory, "pids")):
        sys.exit(f"local_ceph: {directory} holds a running cluster; `stop` it first")
    install()
    for sub in ("run", "log", "mon/mon.a", "osd/osd.0", "rgw"):
        os.makedirs(os.path.join(directory, sub), exist_ok=True)
    conf = os.path.join(directory, "ceph.conf")
    fsid = str(uuid.uuid4())
    with open(conf, "w") as file:
        file.write(config(directory, fsid, args.port, args.memory_gib << 30))
    keyring(directory)
    monmap = os.path.join(directory, "monmap")
    run("monmaptool", "--create", "--fsid", fsid, "--addv", "a", "[v2:127.0.0.1:3300,v1:127.0.0.1:6789]", monmap)
    run("ceph-mon", "-c", conf, "--mkfs", "-i", "a", "--monmap", monmap,
        "--keyring", os.path.join(directory, "keyring"))
    start_daemon(directory, "mon.a", ["ceph-mon", "-c", conf, "-f", "-i", "a"])
    ceph = ("ceph", "-c", conf, "--connect-timeout", "5")
    wait_for("the monitor", lambda: bool(run(*ceph, "mon", "stat", timeout=15)))
    osd_uuid = str(uuid.uuid4())
    number = run(*ceph, "osd", "new", osd_uuid, timeout=30).stdout.strip()
    run("ceph-osd", "-c", conf, "-i", number, "--mkfs", "--osd-uuid", osd_uuid)
    start_daemon(directory, f"osd.{number}", ["ceph-osd", "-c", conf, "-f", "-i", number])
    wait_for("the OSD", lambda: '"num_up_osds":1' in run(*ceph, "osd", "stat", "--format", "json",
                                                          timeout=15).stdout.replace(" ", ""))
    start_daemon(directory, "rgw.local", ["radosgw", "-c", conf, "-f", "-n", "client.rgw.local"])
    wait_for("radosgw", lambda: port_open(args.port), timeout=180)
    run("radosgw-admin", "-c", conf, "user", "create", "--uid", "bench", "--display-name", "ckptfs bench",
        "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY, timeout=60)
    endpoint = f"http://127.0.0.1:{args.port}"
    with open(os.path.join(directory, "env"), "w") as env:
        env.write(f"export AWS_ENDPOINT_URL={endpoint}\nexport AWS_ACCESS_KEY_ID={ACCESS_KEY}\n"
                  f"export AWS_SECRET_ACCESS_KEY={SECRET_KEY}\nexport AWS_DEFAULT_REGION=us-east-1\n"
                  "export AWS_REQUEST_CHECKSUM_CALCULATION=when_required\n"
                  "export AWS_RESPONSE_CHECKSUM_VALIDATION=when_required\n")
    with open(os.path.join(directory, "server-pids-args"), "w") as file:
        file.write(" ".join(f"--server-pid {pid}" for _, pid in pids(directory)) + "\n")
    print(f"Ceph {run('ceph', '--version').stdout.split()[2]} on {endpoint}: . {directory}/env")


def pids(directory: str) -> list[tuple[str, int]]:
    try:
        with open(os.path.join(directory, "pids")) as file:
            return [(name, int(pid)) for name, pid in (line.split() for line in file if line.strip())]
    except FileNotFoundError:
        return []


def stop(args: argparse.Namespace) -> None:
    directory = os.path.abspath(args.dir)
    running = pids(directory)
    for _, pid in reversed(running):  # the gateway first, the monitor last
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    for name, pid in reversed(running):
        while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}") and _state(pid) != "Z":
            time.sleep(0.2)
        if os.path.exists(f"/proc/{pid}") and _state(pid) != "Z":
            print(f"local_ceph: {name} ({pid}) ignored TERM; killing it")
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(directory, ignore_errors=True)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("--dir", default="/tmp/ckptfs-ceph", help="where the cluster lives")
    parser.add_argument("--port", type=int, default=7480, help="radosgw's port on 127.0.0.1")
    parser.add_argument("--memory-gib", type=int, default=10, help="the OSD's memstore size")
    args = parser.parse_args()
    (start if args.action == "start" else stop)(args)


if __name__ == "__main__":
    main()
