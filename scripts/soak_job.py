#!/usr/bin/env python3
"""One rank of the training job scripts/soak.py runs: a process in a gloo process group that trains a
small model on its own mount of the lake and saves it every `--interval` seconds, alternating a
PyTorch Distributed Checkpoint all ranks write with a `torch.save` of rank 0, rotated as frameworks
rotate; with `--resume`, it first resumes from what `ckptfs latest` names, as a restart script does.
It writes what it does (saves, stalls, digests of what it saved, resumes and the time each part took)
as JSON lines to `--events`, which the coordinator reads. Started by scripts/soak.py, not by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

KEEP = 3  # checkpoints of each kind the rotation keeps
STEP_S = 0.05  # a training step


def digest_of(tensors: dict) -> dict[str, str]:
    import xxhash

    return {key: xxhash.xxh3_64_hexdigest(tensor.contiguous().numpy().tobytes())
            for key, tensor in sorted(tensors.items())}


def make_state(rank: int, world: int, mib: int):
    import torch

    generator = torch.Generator().manual_seed(1234)  # the model is the same on every rank
    quarter = mib * (1 << 20) // 4 // 4  # float32 elements in a quarter of the checkpoint
    model = {"embedding": torch.randn(quarter * 2, generator=generator),  # never changes
             "layer1": torch.randn(quarter // 2, generator=generator),
             "layer2": torch.randn(quarter // 2, generator=generator)}
    shard = torch.Generator().manual_seed(99 + rank)
    optim = {f"exp_avg.{rank}": torch.randn(quarter // world, generator=shard),
             f"exp_avg_sq.{rank}": torch.rand(quarter // world, generator=shard)}
    return model, optim


def train_step(model: dict, optim: dict, rng) -> None:
    import torch

    for name in ("layer1", "layer2"):  # a little of every layer changes (same on every rank: same seed)
        tensor = model[name]
        index = torch.from_numpy(rng.integers(0, tensor.numel(), size=max(1, tensor.numel() // 2000)))
        tensor[index] += 0.001
    for tensor in optim.values():  # an optimizer state changes everywhere
        tensor.mul_(0.9).add_(0.01)


def rank_main(args: argparse.Namespace) -> int:
    import numpy
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException: DCP shares it

    rank, world, mount = args.rank, args.world, args.mount
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=600))
    events = open(args.events, "a")  # noqa: SIM115 - for the life of the process

    def log(**event) -> None:
        events.write(json.dumps({"rank": rank, "t": time.time(), **event}) + "\n")
        events.flush()

    log(event="started")  # the job's own start (interpreter, torch, process group) ends here

    model, optim = make_state(rank, world, args.mib)
    step = 0

    def resume(reason: str) -> None:
        nonlocal step
        # Where the time goes (the report's recovery breakdown): each part from the end of the last.
        parts, mark = {}, [time.monotonic()]

        def part(name: str) -> None:
            now = time.monotonic()
            parts[name] = round(now - mark[0], 3)
            mark[0] = now

        while True:  # this rank's mount answers again
            try:
                os.getxattr(mount, "user.ckptfs.status")
                break
            except OSError:
                time.sleep(0.05)
        part("mount_answers_s")
        named = [None]
        if rank == 0:
            # Rank 0 looks for the checkpoint on its own mount while the other ranks' mounts start:
            # a checkpoint complete now is one every rank can load (a restarted mount only adds what
            # its cache held, and a save that failed on one rank never wrote its `.metadata`).
            # What `ckptfs latest` does, in its two steps, timed apart: the sweep of the lake, then
            # the look at the checkpoints (on a fresh mount, a lake GET for the newest `.metadata`).
            ckptfs_command("refresh", mount)
            part("refresh_s")
            code, out = ckptfs_command("latest", "--no-refresh", os.path.join(mount, "run", "dcp"))
            named = [os.path.relpath(out.strip(), mount) if code == 0 else None]
            part("latest_s")
            if named[0] is not None:  # what this mount wrote of it is published: the others can see it
                ckptfs_command("sync", os.path.join(mount, named[0]))
            part("sync_s")
        dist.barrier()
        part("barrier_s")
        dist.broadcast_object_list(named, src=0)
        part("named_s")
        if named[0] is None:
            log(event="resumed", step=0, path=None, reason=reason, parts=parts)
            return
        deadline = time.monotonic() + 120
        while rank != 0 and not os.path.exists(os.path.join(mount, named[0], ".metadata")):
            ckptfs_command("refresh", mount)
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        part("visible_s")
        state = {"model": model, "optim": optim, "step": torch.tensor(0)}
        loading = time.monotonic()
        dcp.load(state, checkpoint_id=os.path.join(mount, named[0]))
        step = int(state["step"])
        part("load_s")
        log(event="resumed", step=step, path=named[0], reason=reason, load_s=time.monotonic() - loading,
            parts=parts)

    if args.resume:
        resume("job restarted")
    rng = numpy.random.default_rng(7 + step)
    saves = 0
    # Every rank takes the same steps, and saves at the same ones: DCP's save is a collective.
    save_every = max(1, round(args.interval / STEP_S))
    stop = os.path.join(os.path.dirname(args.events), "stop")
    syncing: list[threading.Thread] = []
    while True:
        stopping = [os.path.exists(stop)]
        dist.broadcast_object_list(stopping, src=0)  # every rank leaves at the same step
        if stopping[0]:
            # a rank asked to stop leaves when its saves are durable: a `ckptfs sync` still waiting
            # on the mount would keep it busy for the unmount that follows
            for thread in syncing:
                thread.join()
            break
        train_step(model, optim, rng)
        step += 1
        time.sleep(STEP_S)
        if step % save_every:
            continue
        kind = "dcp" if saves % 2 == 0 else "export"
        saves += 1
        relative = f"run/dcp/step-{step}" if kind == "dcp" else f"run/export/step-{step}.pt"
        path = os.path.join(mount, relative)
        log(event="save_begin", kind=kind, step=step, path=relative)
        started = time.monotonic()
        try:
            if kind == "dcp":
                dcp.save({"model": model, "optim": optim, "step": torch.tensor(step)}, checkpoint_id=path)
                if os.path.exists(os.path.join(os.path.dirname(args.events), "small_files")):
                    for index in range(20):  # what a trainer writes beside a checkpoint: configs, RNG, logs
                        with open(os.path.join(path, f"extra-r{rank}-{index}.json"), "w") as file:
                            json.dump({"step": step, "rank": rank, "index": index}, file)
            elif rank == 0:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                torch.save({"model": model, "step": step}, path)
        except (Exception, CheckpointException) as error:  # noqa: BLE001 - a dead mount, or another rank's
            log(event="save_failed", kind=kind, step=step, path=relative, error=str(error)[:300])
            resume(f"save of step {step} failed")
            continue
        stall = time.monotonic() - started
        digests = digest_of(optim) if kind == "dcp" else {}
        if rank == 0:
            digests.update(digest_of(model))
        log(event="saved", kind=kind, step=step, path=relative, stall=stall, digests=digests)
        if kind == "dcp" or rank == 0:
            syncing = [thread for thread in syncing if thread.is_alive()]
            syncing.append(threading.Thread(target=_durable, args=(log, mount, path, kind, step), daemon=True))
            syncing[-1].start()
        if rank == 0:
            _rotate(os.path.dirname(path))
    return 0


def ckptfs_command(*args: str) -> tuple[int, str]:
    """A ckptfs command in this process, as a restart script that imports ckptfs runs it (no
    interpreter start per call): (exit code, stdout)."""
    import io

    from ckptfs import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(list(args))
    return code, out.getvalue()


def _durable(log, mount: str, path: str, kind: str, step: int) -> None:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "ckptfs", "sync", "--timeout", "900", path], capture_output=True)
    if done.returncode == 0:
        log(event="durable", kind=kind, step=step, after=time.monotonic() - started)


def _rotate(directory: str) -> None:
    """Keep the newest KEEP checkpoints, as Lightning's save_top_k or HF's save_total_limit do."""
    def step_of(name: str) -> int:
        digits = "".join(c for c in name.split("-")[-1] if c.isdigit())
        return int(digits or 0)
    with contextlib.suppress(OSError):
        names = sorted(os.listdir(directory), key=step_of)
        for name in names[:-KEEP]:
            victim = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                shutil.rmtree(victim) if os.path.isdir(victim) else os.unlink(victim)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--port", type=int, required=True, help="the process group's rendezvous port")
    parser.add_argument("--mount", required=True, help="this rank's mountpoint")
    parser.add_argument("--events", required=True, help="the JSON lines file the coordinator reads")
    parser.add_argument("--mib", type=int, required=True, help="checkpoint size per rank, MiB")
    parser.add_argument("--interval", type=float, required=True, help="seconds between saves")
    parser.add_argument("--resume", action="store_true", help="resume from what `ckptfs latest` names first")
    return rank_main(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
