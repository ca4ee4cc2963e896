"""The daemon's memory over many rotated saves: RSS, minor page faults and CPU of one mount.

    python scripts/daemon_memory.py [--saves 120] [--mib 24] [--keep 3] [ENV=VALUE ...]

One mount of an embedded lake (file://) in a temporary directory. Each save changes a little of a
state of `--mib` MiB, writes it to step-N.bin, waits for `ckptfs sync` of it and deletes the save
`--keep` back, as a framework's rotation does. Prints the daemon's RSS along the way, its growth
after the first sixth of the saves, and its minor page faults and CPU seconds. ENV=VALUE pairs go to
the daemon's environment, to compare heap settings within one run of this machine, e.g.
MALLOC_TRIM_THRESHOLD_=131072 (glibc's default) against the daemon's own (ckptfs/libc.py).
Figures, not assertions.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()  # fields from the state on (field 3)


def _rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saves", type=int, default=120)
    parser.add_argument("--mib", type=int, default=24)
    parser.add_argument("--keep", type=int, default=3)
    parser.add_argument("env", nargs="*", help="NAME=VALUE for the daemon's environment")
    args = parser.parse_args()
    extra = dict(pair.split("=", 1) for pair in args.env)
    with tempfile.TemporaryDirectory(prefix="ckptfs-memory-") as root:
        lake, cache, mnt = (os.path.join(root, name) for name in ("lake", "cache", "mnt"))
        for directory in (lake, cache, mnt):
            os.makedirs(directory)
        daemon = subprocess.Popen([sys.executable, "-m", "ckptfs", "mount", f"file://{lake}", mnt, "--foreground",
                                   "--cache-dir", cache, "--log-file", os.path.join(root, "daemon.log")],
                                  env=dict(os.environ, **extra))
        try:
            while not os.path.ismount(mnt):
                if daemon.poll() is not None:
                    raise SystemExit(f"the mount exited with {daemon.returncode}")
                time.sleep(0.1)
            rng = np.random.default_rng(0)
            state = rng.standard_normal(args.mib << 18).astype(np.float32)
            rss = []
            for step in range(args.saves):
                state[rng.integers(0, state.size, 1000)] += 1
                path = os.path.join(mnt, f"step-{step}.bin")
                with open(path, "wb") as out:
                    out.write(state.tobytes())
                subprocess.run([sys.executable, "-m", "ckptfs", "sync", path], check=True, capture_output=True)
                if step >= args.keep:
                    os.unlink(os.path.join(mnt, f"step-{step - args.keep}.bin"))
                rss.append(_rss_mib(daemon.pid))
            fields = _stat(daemon.pid)
            ticks = os.sysconf("SC_CLK_TCK")
            warm = max(1, args.saves // 6)
            marks = sorted({min(args.saves, max(1, args.saves * share // 6)) for share in range(1, 7)})
            print(f"{args.saves} saves of {args.mib} MiB, keep {args.keep}, daemon env {extra or 'as is'}")
            print("  RSS MiB after save " + ", ".join(f"{mark}: {rss[mark - 1]}" for mark in marks))
            print(f"  RSS growth after the first {warm} saves: {100 * (max(rss[warm:]) / max(rss[:warm]) - 1):+.0f}%")
            print(f"  minor faults {int(fields[7]):,}, CPU user {int(fields[11]) / ticks:.2f} s,"
                  f" system {int(fields[12]) / ticks:.2f} s")
        finally:
            subprocess.run(["umount", mnt], check=False)
            daemon.wait(timeout=120)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
