#!/usr/bin/env python3
"""What pyfuse3 itself costs per GiB in CPU and GIL time, under one or more Python interpreters.

    python scripts/bench_pyfuse3_gil.py [--size-gib 1] [--repeat 3] [--python PY ...] [--stage]

Each interpreter serves the null file system (scripts/nullfs.py: writes discarded, reads zeros),
so what is measured is the binding's floor, no ckptfs in it: `dd` writes a new file of
`--size-gib` through it in 1 MiB writes (direct_io, as ckptfs's saves), then reads it back
(page cache empty: every byte comes from the file system). For each: the server's CPU seconds
per GiB (user, system, from /proc) and the seconds per GiB a thread of it held the GIL (py-spy
`--gil --nonblocking`), and the ceiling that sets (1 / GIL s per GiB). Interpreters are
interleaved in each repeat; medians are printed, and the ratio to the first interpreter.
`--stage`: every write also goes into a staging file (`pwrite`), as ckptfs's write handler does.
Compare stock pyfuse3 with scripts/build_pyfuse3_nogil.py's build:

    python scripts/build_pyfuse3_nogil.py --venv /tmp/nogil
    python scripts/bench_pyfuse3_gil.py --python python3 /tmp/nogil/bin/python
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench import GilSampler, cpu_seconds, start_nullfs  # noqa: E402

GIB = 1 << 30


def one(python: str, size_gib: float, workdir: str, stage: bool = False) -> dict[str, tuple[float, float, float]]:
    """{"write"|"read": (user, system, GIL) seconds per GiB} for one interpreter."""
    mountpoint = tempfile.mkdtemp(dir=workdir)
    staging = os.path.join(workdir, "staging") if stage else None
    server = start_nullfs(mountpoint, python, stage=staging)
    figures = {}
    try:
        count = int(size_gib * 1024)
        path = os.path.join(mountpoint, "data")
        for name, command in (("write", ["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={count}"]),
                              ("read", ["dd", f"if={path}", "of=/dev/null", "bs=1M"])):
            sampler = GilSampler(server.pid, workdir)
            user, system = cpu_seconds(server.pid)
            subprocess.run(command, check=True, capture_output=True)
            after_user, after_system = cpu_seconds(server.pid)
            gil = sampler.stop()
            gib = count / 1024
            figures[name] = ((after_user - user) / gib, (after_system - system) / gib, gil / gib)
    finally:
        subprocess.run(["fusermount3", "-u", mountpoint], check=False)
        server.wait(timeout=30)
        os.rmdir(mountpoint)
        if staging:
            os.unlink(staging)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--python", nargs="+", default=[sys.executable])
    parser.add_argument("--stage", action="store_true",
                        help="the null file system also writes every write into a staging file, as ckptfs does")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {python: [] for python in args.python}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(args.repeat):
            for python in args.python:
                runs[python].append(one(python, args.size_gib, workdir, args.stage))
    print(f"per GiB, medians of {args.repeat}      user    sys    CPU    GIL  ceiling GiB/s  GIL vs first")
    first: dict[str, float] = {}
    for python, results in runs.items():
        for name in ("write", "read"):
            user, system, gil = (statistics.median(r[name][i] for r in results) for i in range(3))
            first.setdefault(name, gil)
            ceiling = 1 / gil if gil else float("inf")
            ratio = gil / first[name] if first[name] else float("nan")
            print(f"{name:<5} {python[-28:]:<28} {user:6.3f} {system:6.3f} {user + system:6.3f} {gil:6.3f} "
                  f"{ceiling:8.2f}  {ratio:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
