#!/usr/bin/env python3
"""Where the daemon's CPU and GIL go, per GiB, on the save and restore paths, against boto3's own.

    python scripts/profile_cpu.py [--size-gib 0.5] [--repeat 3] [--endpoint-url URL] [--top 15]

One mount on moto_server (plain: its CPU is counted apart and never in the daemon's figures) or on
`--endpoint-url`. Phases, each measured on the daemon process alone:
* save to durable: torch.save of a fresh state dict, until the lake has it;
* identical re-save: the same state dict to another name, until durable;
* cold restore: a new mount on an empty cache dir, page cache dropped, the file read to the end.
For each: CPU seconds per GiB (user, system, /proc), seconds per GiB holding the GIL (py-spy
`--gil --nonblocking`: only samples in which a thread holds it), the single-daemon ceiling
(1 / GIL s per GiB), the GIL seconds per GiB by part (pyfuse3's C, the S3 client, ckptfs, trio) on
the event loop and on worker threads, and the functions that held the GIL most (self samples, and
with the functions they called), and what asked trio for the time it held the GIL (the nearest
frame outside trio: a thread hand-off, a channel, pyfuse3's loop). `--stacks DIR` keeps the folded
stacks. boto3's upload_file and download_file of the same bytes, in a process of their own,
give the baseline; upload_file twice: as configured by default (on plain http it SHA-256 signs every
part, besides its CRC32) and with an unsigned payload (what it does on https, where the checksum
stands in). `--repeat N` runs it all N times, interleaved, and prints medians (the stacks are
every repeat's together). Figures, not assertions.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from bench import GIB, Bench, Boto3Direct, Ckptfs, CostMeter, boto3_cost, checkpoint, state_dict  # noqa: E402


def top(stacks: collections.Counter, count: int) -> list[tuple[str, float, float]]:
    """(function, share of GIL samples with it on top, share with it anywhere) of py-spy folded stacks."""
    total = sum(stacks.values()) or 1
    own: collections.Counter = collections.Counter()
    anywhere: collections.Counter = collections.Counter()
    for stack, samples in stacks.items():
        frames = [_short(frame) for frame in stack.split(";")[1:]]  # [0] is the thread
        if frames:
            own[frames[-1]] += samples
        for frame in set(frames):
            anywhere[frame] += samples
    return [(name, own[name] / total, anywhere[name] / total) for name, _ in own.most_common(count)]


# Where a GIL sample's time belongs: the innermost frame of a family named here (a standard-library
# frame counts for whoever called it). pyfuse3's session loop is Cython run under one Python wrapper:
# samples on top in it are its C (the /dev/fuse read, a write's copy, a read's reply, handler set-up).
PARTS = (("pyfuse3", ("pyfuse3/", "_pyfuse3.py")),
         ("S3 client", ("botocore/", "urllib3/", "s3transfer/", "http/", "ssl.py", "socket.py")),
         ("ckptfs", ("ckptfs/",)),
         ("trio", ("trio/", "outcome/", "sniffio/")))


def _part(frame: str) -> str | None:
    """The family of a py-spy frame, "function (path/to/file.py:line)", by where its file lies."""
    path = frame.rsplit(" (", 1)[-1]
    for name, marks in PARTS:
        if any(path.startswith(mark) or "/" + mark in path for mark in marks):
            return name
    return None


def parts(stacks: collections.Counter) -> dict[tuple[str, str], float]:
    """Share of GIL samples by (thread, part): the thread is trio's (the event loop: FUSE requests,
    steering) or a worker (trio's threads: reading, hashing, packing, S3 requests)."""
    total = sum(stacks.values()) or 1
    shares: collections.Counter = collections.Counter()
    for stack, samples in stacks.items():
        frames = stack.split(";")
        thread = "worker" if any("_thread_cache.py" in frame for frame in frames) else "event loop"
        part = next((found for found in map(_part, reversed(frames)) if found is not None), "other")
        shares[thread, part] += samples
    return {key: count / total for key, count in shares.items()}


def callers_of(stacks: collections.Counter, part: str, count: int) -> list[tuple[str, float]]:
    """(function, share of all GIL samples) for samples whose time is `part`'s, by the nearest frame
    of another family below it: what asked trio (or the S3 client) for the work it held the GIL for."""
    total = sum(stacks.values()) or 1
    asked: collections.Counter = collections.Counter()
    for stack, samples in stacks.items():
        frames = stack.split(";")[1:]
        families = [_part(frame) for frame in frames]
        inner = next((i for i in reversed(range(len(frames))) if families[i] is not None), None)
        if inner is None or families[inner] != part:
            continue
        below = next((frames[i] for i in reversed(range(inner)) if families[i] not in (None, part)), "(none)")
        asked[_short(below)] += samples
    return [(name, samples / total) for name, samples in asked.most_common(count)]


def _short(frame: str) -> str:
    """ "function (path/to/file.py:line)" -> "function (file.py)" """
    if " (" not in frame:
        return frame
    name, where = frame.rsplit(" (", 1)
    return f"{name} ({where.rsplit(':', 1)[0].split('/')[-1]})"


def phase(bench: Bench, pid: int, name: str, size: int, run, figures: dict, stacks: dict) -> None:
    meter = CostMeter(bench, pid)
    started = time.perf_counter()
    run()
    elapsed = time.perf_counter() - started
    if meter.sampler is not None:
        stacks[name].update(meter.sampler.stacks())
    meter.record("ckptfs", name, size)
    figures.setdefault(name, {"seconds": []})["seconds"].append(elapsed)


def once(bench: Bench, args, repeat: int, figures: dict, stacks: dict) -> int:
    """One repeat: the three phases on a mount, then boto3's; returns the bytes of the checkpoint."""
    sd = state_dict(args.size_gib, seed=1)
    system = Ckptfs(bench)
    system.start()
    try:
        def save(name: str):
            def run() -> None:
                os.makedirs(os.path.dirname(system.path(name)), exist_ok=True)
                torch.save(checkpoint(sd, 1), system.path(name))
                system.wait_durable(name)
            return run

        save(f"r{repeat}/warm-up/model.pt")()  # imports, connections and the first packs' buffers
        size = os.path.getsize(system.path(f"r{repeat}/warm-up/model.pt"))
        sd = state_dict(args.size_gib, seed=2 + repeat)
        pid = system.process.pid
        phase(bench, pid, "save to durable", size, save(f"r{repeat}/fresh/model.pt"), figures, stacks)
        phase(bench, pid, "identical re-save", size, save(f"r{repeat}/again/model.pt"), figures, stacks)
        system.make_cold()

        def restore() -> None:
            with open(system.path(f"r{repeat}/fresh/model.pt"), "rb") as file:
                while file.readinto(buffer):
                    pass

        buffer = bytearray(1 << 20)
        phase(bench, system.process.pid, "cold restore", size, restore, figures, stacks)
    finally:
        system.stop()
        system.cleanup()
    direct = Boto3Direct(bench)
    direct.start()
    try:
        path = direct.path("model.pt")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save(checkpoint(sd, 1), path)
        subprocess.run(["sync"], check=False)
        boto3_cost(bench, "upload", f"{direct.prefix}/model.pt", path, size)
        boto3_cost(bench, "upload unsigned", f"{direct.prefix}/model-unsigned.pt", path, size)
        boto3_cost(bench, "download", f"{direct.prefix}/model.pt", path + ".down", size)
    finally:
        direct.cleanup()
    return size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=0.5)
    parser.add_argument("--endpoint-url")
    parser.add_argument("--bucket")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--stacks", metavar="DIR", help="also write each phase's GIL stacks, folded, to DIR")
    args = parser.parse_args()
    if shutil.which("py-spy") is None:
        print("profile_cpu: py-spy is not installed (pip install py-spy): no GIL figures")
    bench = Bench(argparse.Namespace(endpoint_url=args.endpoint_url, plain_moto=not args.endpoint_url,
                                     bucket=args.bucket, workdir=args.workdir))
    figures: dict = {}
    stacks: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    try:
        for repeat in range(args.repeat):
            size = once(bench, args, repeat, figures, stacks)
    finally:
        bench.close()
    for name in figures:
        figures[name]["top"] = top(stacks[name], args.top)
        figures[name]["parts"] = parts(stacks[name])
        figures[name]["trio callers"] = callers_of(stacks[name], "trio", args.top)
    if args.stacks:
        os.makedirs(args.stacks, exist_ok=True)
        for name, counter in stacks.items():
            with open(os.path.join(args.stacks, name.replace(" ", "-") + ".folded"), "w") as file:
                file.writelines(f"{stack} {samples}\n" for stack, samples in counter.most_common())

    def value(system: str, figure: str) -> float:
        return statistics.median(bench.results.get(figure, {}).get(system, [float("nan")]))

    medians = f", medians of {args.repeat}" if args.repeat > 1 else ""
    print(f"per GiB ({size / GIB:.2f} GiB{medians})          user   sys   CPU   GIL  ceiling  wall")
    rows = [("save to durable", ("upload", "upload unsigned")), ("identical re-save", ()),
            ("cold restore", ("download",))]
    for name, baselines in rows:
        user = value("ckptfs", f"{name}: CPU s per GiB (user)")
        sys_ = value("ckptfs", f"{name}: CPU s per GiB (system)")
        gil = value("ckptfs", f"{name}: GIL s per GiB")
        print(f"ckptfs {name:<22} {user:5.2f} {sys_:5.2f} {user + sys_:5.2f} {gil:5.2f} "
              f"{1 / gil if gil else float('inf'):5.2f} GiB/s {statistics.median(figures[name]['seconds']):5.2f} s")
        for baseline in baselines:
            b_user = value("boto3 direct", f"{baseline}: CPU s per GiB (user)")
            b_sys = value("boto3 direct", f"{baseline}: CPU s per GiB (system)")
            b_gil = value("boto3 direct", f"{baseline}: GIL s per GiB")
            label = baseline.replace("upload", "upload_file").replace("download", "download_file")
            print(f"boto3 {label:<23} {b_user:5.2f} {b_sys:5.2f} {b_user + b_sys:5.2f} {b_gil:5.2f}"
                  f"   daemon CPU {((user + sys_) / (b_user + b_sys)):.2f}x boto3's")
    print("\nGIL s per GiB by part (event loop / worker threads)")
    names = [name for name, _ in PARTS] + ["other"]
    print(f"{'':22}" + "".join(f"{name:>18}" for name in names))
    for name, entry in figures.items():
        gil = value("ckptfs", f"{name}: GIL s per GiB")
        share = entry["parts"]
        cells = [f"{gil * share.get(('event loop', part), 0):.2f} / {gil * share.get(('worker', part), 0):.2f}"
                 for part in names]
        print(f"{name:22}" + "".join(f"{cell:>18}" for cell in cells))
    for name, entry in figures.items():
        print(f"\n{name}: where the daemon held the GIL (share of GIL samples: on top, anywhere in the stack)")
        for function, own, anywhere in entry["top"]:
            print(f"  {own:6.1%} {anywhere:6.1%}  {function}")
        print(f"\n{name}: trio's share, by the function outside trio that asked for the work")
        for function, share in entry["trio callers"]:
            print(f"  {share:6.1%}  {function}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
