#!/usr/bin/env python3
"""What a restart waits for in `ckptfs latest`: a sweep of the lake, then a look at the checkpoints.

On the S3 model (tests/s3model.py: moto behind a proxy with S3's first-byte latency), `--mounts`
mounts of one lake each publish a file, one of them a DCP checkpoint; then `--repeats` times a
mount starts on a fresh cache dir, as a restarted job's does, and on it `ckptfs refresh` (the
sweep alone), `ckptfs latest --no-refresh` (the look alone, the first: it reads the checkpoint's
`.metadata` from the lake) and `ckptfs latest` (both, again) are timed, run in this process as a
restart script that imports ckptfs runs them (with `--as-command`, each as a command of its own,
as a shell script runs them: an interpreter and its imports each). A sweep lists
`mounts/` and every mount's log, so its time is rounds of requests at the first-byte latency:
the figure that moves with the design, whatever the server's CPU.

With `--beside-sweeps`, another client sweeps the fresh mount over and over meanwhile (a second
`ckptfs latest`, as the soak's watcher runs every 3 s; the periodic refresh does the same with a
feed look), with a random pause of up to 0.5 s between: what a restart's `latest` waits for when
it comes while another look is out.

    python scripts/bench_latest.py --mounts 10 --repeats 5 [--beside-sweeps] [--as-command]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.helpers import Mount  # noqa: E402
from tests.s3model import S3Model  # noqa: E402


def timed(args: list[str], *, as_command: bool = False) -> tuple[float, str]:
    from ckptfs import cli

    if as_command:  # what a shell script's `$(ckptfs latest ...)` pays: an interpreter and its imports
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "ckptfs", *args], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"ckptfs {' '.join(args)} exited {done.returncode}: {done.stderr[-500:]}")
        return time.monotonic() - started, done.stdout.strip()
    out = io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(args)
    if code != 0:
        raise RuntimeError(f"ckptfs {' '.join(args)} exited {code}")
    return time.monotonic() - started, out.getvalue().strip()


def sweep_until(mountpoint: str, stop: threading.Event) -> None:
    """Another client's sweeps of a mount (what `ckptfs refresh` asks the daemon for), until `stop`."""
    while not stop.wait(random.uniform(0, 0.5)):
        os.getxattr(mountpoint, "user.ckptfs.refresh")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mounts", type=int, default=10, help="mounts that published before the restart")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--beside-sweeps", action="store_true",
                        help="another client sweeps the fresh mount over and over meanwhile")
    parser.add_argument("--as-command", action="store_true",
                        help="run each ckptfs command as a process of its own, as a shell script does")
    args = parser.parse_args()
    import torch
    import torch.distributed.checkpoint as dcp

    model = S3Model()
    mounts: list[Mount] = []
    with tempfile.TemporaryDirectory(prefix="ckptfs-bench-latest-") as work:
        try:
            url = f"s3://{model.bucket()}/lake"
            extra = ["--endpoint-url", model.endpoint, "--refresh", "0"]
            for index in range(args.mounts):
                mount = Mount(url, f"{work}/mnt{index}", f"{work}/cache{index}", f"{work}/daemon{index}.log",
                              extra=extra).start(timeout=120)
                mounts.append(mount)
                os.makedirs(mount.path("run", "dcp"), exist_ok=True)
                with open(mount.path("run", f"rank{index}.log"), "wb") as file:
                    file.write(os.urandom(1000))
                if index == 0:
                    with contextlib.redirect_stderr(io.StringIO()):  # DCP warns it runs in one process
                        dcp.save({"w": torch.randn(1000)}, checkpoint_id=mount.path("run", "dcp", "step-5"))
                subprocess.run([sys.executable, "-m", "ckptfs", "sync", mount.path("run")], check=True,
                               capture_output=True)
            # Each repeat on a mount of its own, started on an empty cache dir as a restarted job's:
            # the first look at a DCP checkpoint reads its `.metadata` from the lake (a manifest GET),
            # which a median over repeats on one mount would hide.
            times: dict[str, list[float]] = {"mount start": [], "refresh (the sweep)": [],
                                             "latest --no-refresh, first": [], "latest, again": []}
            for repeat in range(args.repeats):
                fresh = Mount(url, f"{work}/fresh{repeat}", f"{work}/cache-fresh{repeat}",
                              f"{work}/daemon-fresh{repeat}.log", extra=extra)
                started = time.monotonic()
                mounts.append(fresh.start(timeout=120))
                times["mount start"].append(time.monotonic() - started)
                top = fresh.path("run", "dcp")
                stop = threading.Event()
                beside = threading.Thread(target=sweep_until, args=(fresh.mountpoint, stop), daemon=True)
                if args.beside_sweeps:
                    beside.start()
                for name, command in (("refresh (the sweep)", ["refresh", fresh.mountpoint]),
                                      ("latest --no-refresh, first", ["latest", "--no-refresh", top]),
                                      ("latest, again", ["latest", top])):
                    seconds, answer = timed(command, as_command=args.as_command)
                    if name.startswith("latest") and not answer.endswith("step-5"):
                        raise RuntimeError(f"latest named {answer!r}, not step-5")
                    times[name].append(seconds)
                stop.set()
                if beside.is_alive():
                    beside.join()
                mounts.pop().unmount()
            print(f"{args.mounts} mounts published; then {args.repeats} fresh mounts, one after another"
                  + (", each swept over and over by another client meanwhile:" if args.beside_sweeps else ":"))
            for name, values in times.items():
                print(f"  {name:28} median {statistics.median(values):.3f} s "
                      f"(min {min(values):.3f}, max {max(values):.3f}, {len(values)} runs)")
        finally:
            for mount in mounts:  # before the directory goes
                mount.unmount()
            model.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
