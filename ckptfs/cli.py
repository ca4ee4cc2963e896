"""The `ckptfs` command: mount, unmount, status, sync, refresh, prefetch, snapshot, latest, fsck (and
the lake's lifecycle: retention, gc, tag, untag, log, du, in lifecycle_cli.py).

Talks to a running mount only through extended attributes on the mount (no socket, no extra port), so
`status` and `sync` work for any path under a mount. Every error is one line on stderr and a non-zero
exit; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time

from ckptfs.errors import CkptfsError

EXIT_ERROR = 1
EXIT_USAGE = 2
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 200G, 512M, 1T)")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * 1024 ** "-kmgtp".index(unit or "-"))


def parse_size_or_auto(text: str) -> int | None:
    return None if text.strip().lower() == "auto" else parse_size(text)


DEFAULT_CACHE_SIZE = 50 << 30
LAKE_SETTINGS = ("gc_grace_s", "fold_s", "late_publish_s", "max_clock_skew_s")


def parse_lake_setting(text: str) -> tuple[str, int]:
    name, _, value = text.partition("=")
    if name not in LAKE_SETTINGS or not value.isdigit():
        raise argparse.ArgumentTypeError(f"not a lake setting: {text!r} (NAME=SECONDS, NAME one of "
                                         f"{', '.join(LAKE_SETTINGS)})")
    return name, int(value)


def parse_duration_arg(text: str) -> int:
    from ckptfs.lake.retention import PolicyError, parse_duration
    try:
        seconds = parse_duration(text)
    except PolicyError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if seconds < 60:
        raise argparse.ArgumentTypeError(f"{text!r}: at least a minute")
    return seconds


def human(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return str(count)


def fail(message: str, code: int = EXIT_ERROR) -> int:
    print(f"ckptfs: error: {message}", file=sys.stderr)
    return code


# -- talking to a mount -------------------------------------------------------------------------
def mount_root(path: str) -> str:
    """The root of the ckptfs mount holding `path`. Anything else is refused before a control
    command touches it, naming the path as given (an xattr set on a path of another file system
    would stay there)."""
    real = os.path.realpath(path)
    if not os.path.exists(real):
        raise CkptfsError(f"{path} does not exist")
    root = real
    while not os.path.ismount(root):
        root = os.path.dirname(root)
    kind = filesystem_type(root)
    if kind != "fuse.ckptfs":
        raise CkptfsError(f"{path} is not on a ckptfs mount ({root} is {kind or 'not a mount point'})")
    return root


def filesystem_type(mountpoint: str) -> str | None:
    """The type /proc/self/mountinfo gives the mount at `mountpoint` (the topmost one)."""
    found = None
    with open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            fields, _, rest = line.partition(" - ")
            where = re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), fields.split()[4])
            if where == mountpoint:
                found = rest.split()[0]
    return found


def read_xattr(path: str, name: str) -> dict:
    try:
        return json.loads(os.getxattr(path, name))
    except OSError as error:
        raise CkptfsError(f"{path} is not on a running ckptfs mount ({error.strerror})") from None


def answer(args: argparse.Namespace, done: dict, line: str) -> int:
    """What an action on a mount did: its JSON with --json, else one line."""
    print(json.dumps(done, indent=2) if args.json else line)
    return 0


def status_of(root: str) -> dict:
    return read_xattr(root, "user.ckptfs.status")


def progress_of(root: str, after: int | None = None) -> dict:
    """How far the mount's publication has come (outbox_head, uploading_bytes, uploading_files,
    events_pending, and `error` while one stands): what a wait for durability asks. With `after` (an
    outbox seq), the daemon answers once every event up to it is published, or after half a second,
    or at once while an error stands, which this then paces to ten a second. A daemon started before
    that existed is polled ten times a second; one started before the progress attribute existed
    answers from its status."""
    if after is not None:
        started = time.monotonic()
        try:
            answer = json.loads(os.getxattr(root, f"user.ckptfs.progress.after.{after}"))
        except OSError as error:
            if error.errno != errno.ENODATA:
                raise CkptfsError(f"{root} is not on a running ckptfs mount ({error.strerror})") from None
        else:
            if "error" in answer:
                time.sleep(max(0.0, 0.1 - (time.monotonic() - started)))
            return answer
        time.sleep(0.1)
    try:
        return json.loads(os.getxattr(root, "user.ckptfs.progress"))
    except OSError as error:
        if error.errno != errno.ENODATA:
            raise CkptfsError(f"{root} is not on a running ckptfs mount ({error.strerror})") from None
    status = status_of(root)
    return {name: status[name] for name in ("outbox_head", "uploading_bytes", "uploading_files", "events_pending")} | (
        {"error": error} if (error := status.get("last_store_error") or status.get("last_error")) else {})


# -- commands -----------------------------------------------------------------------------------
def command_mount(args: argparse.Namespace) -> int:
    from ckptfs import daemon

    if args.mountpoint is None:
        store_url, mountpoint = None, args.store_or_mountpoint
    else:
        store_url, mountpoint = args.store_or_mountpoint, args.mountpoint
    config = daemon.MountConfig(mountpoint=mountpoint, store_url=store_url, cache_dir=args.cache_dir,
                                cache_size=DEFAULT_CACHE_SIZE if args.cache_size is None else args.cache_size,
                                endpoint_url=args.endpoint_url,
                                s3_timeout=args.s3_timeout, metrics_address=args.metrics_address,
                                durability=args.durability, allow_other=args.allow_other,
                                drain=not args.no_drain, upload_round_bytes=args.upload_while_writing,
                                refresh_interval=args.refresh, snapshot_segments=args.snapshot_every,
                                lake_settings=dict(args.lake_setting or []), gc_every_s=args.gc_every or 0,
                                reset_cache_dir=args.reset_cache_dir, drain_timeout=args.drain_timeout)
    config.resolve()
    daemon.check_mountpoint(config.mountpoint)
    created = not os.path.exists(config.cache_dir)
    try:
        daemon.check_cache_dir(config.cache_dir)
        lake = daemon.open_lake(config)  # fail here, on the terminal, for a bad URL, bucket or credentials
        room = cache_disk_room(config.cache_dir, DEFAULT_CACHE_SIZE * 5 // 4 if args.cache_size is None
                               else config.cache_size)
        if args.cache_size is None:
            config.cache_size = min(DEFAULT_CACHE_SIZE, max(room * 4 // 5, 1 << 30))
        elif config.cache_size > room:
            print(f"ckptfs: warning: --cache-size {human(config.cache_size)} but the cache disk has room for "
                  f"{human(room)} ({config.cache_dir}); writes fail with ENOSPC before the cache is full",
                  file=sys.stderr)
        code = _mount(args, config, lake)
    except BaseException:
        _remove_if_unused(config.cache_dir, created)
        raise
    if code:
        _remove_if_unused(config.cache_dir, created)
    return code


def cache_disk_room(cache_dir: str, wanted: int) -> int:
    """What the cache dir can grow to: the disk's free space and what the cache dir holds already.
    A --cache-size above it works until the disk fills; the mount says so at once. The cache dir's
    files (many, in a large cache) are summed only when the free space alone is short of `wanted`."""
    status = os.statvfs(cache_dir)
    free = status.f_bavail * status.f_frsize
    if free >= wanted:
        return free
    return free + sum(os.path.getsize(os.path.join(top, name)) for top, _, names in os.walk(cache_dir)
                      for name in names)


def _remove_if_unused(cache_dir: str, created: bool) -> None:
    """A mount that failed leaves no cache dir it created behind (only its lock file is in it)."""
    if created and os.path.isdir(cache_dir) and set(os.listdir(cache_dir)) <= {"lock"}:
        shutil.rmtree(cache_dir, ignore_errors=True)


def _mount(args: argparse.Namespace, config, lake) -> int:
    """Serve in this process (`--foreground`: on the lake already opened), or in a child that opens
    its own (a store's client and connections are not shared across fork)."""
    from ckptfs import daemon

    log_file = args.log_file or (None if args.foreground else os.path.join(config.cache_dir, "daemon.log"))
    if args.foreground:
        configure_logging(log_file, args.verbose)
        daemon.serve(config, lake=lake)
        return 0
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        configure_logging(None, args.verbose)
        code = 0

        def ready() -> None:
            os.write(write_end, b"ok\n")

        try:
            daemon.serve(config, ready)
        except CkptfsError as error:
            os.write(write_end, f"error: {error}\n".encode())
            code = EXIT_ERROR
        except BaseException as error:  # noqa: BLE001 - the parent must hear about any failure
            logging.exception("daemon failed")
            os.write(write_end, f"error: daemon failed: {error}\n".encode())
            code = EXIT_ERROR
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as reader:
        answer = reader.readline().strip()
    if answer == "ok":
        print(f"ckptfs: mounted {config.store_url} on {config.mountpoint} (pid {pid}, log {log_file})")
        return 0
    os.waitpid(pid, 0)
    return fail(answer.removeprefix("error: ") or f"the daemon exited before mounting; see {log_file}")


class _LateReplyFilter(logging.Filter):
    """pyfuse3 logs an ERROR when the kernel is gone before a reply reaches it. That happens for a
    release() answered just after the unmount: the handler has already run, and nothing was lost."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and "fuse_reply_* failed with No such file" in record.getMessage():
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def configure_logging(log_file: str | None, verbose: bool) -> None:
    handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_LateReplyFilter())
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def wait_for_sync(path: str, timeout: float | None, quiet: bool = False) -> int:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    root = mount_root(path)
    barrier = read_xattr(path, "user.ckptfs.barrier")
    if barrier["open_count"]:
        print(f"ckptfs: note: {barrier['open_count']} file(s) under {path} are still open for writing; "
              "they are covered once closed", file=sys.stderr)
    deadline = None if timeout is None else time.monotonic() + timeout
    publishing = progress_of(root)
    total = max(1, publishing["uploading_bytes"])
    with Progress(TextColumn("[bold]sync[/]"), BarColumn(), DownloadColumn(), TextColumn("{task.description}"),
                  disable=quiet or not sys.stderr.isatty(), transient=True) as progress:
        task = progress.add_task("", total=total)
        while publishing["outbox_head"] <= barrier["upto"]:
            error = publishing.get("error")
            if deadline is not None and time.monotonic() > deadline:
                message = f"not committed after {timeout:.0f}s: {publishing['events_pending']} events pending"
                return fail(message + (f"; last error: {error}" if error else ""))
            pending = publishing["uploading_bytes"]
            total = max(total, pending)
            progress.update(task, total=total, completed=total - pending,
                            description=f"{publishing['uploading_files']} files, "
                            f"{publishing['events_pending']} events" + (f" [red]retrying: {error}[/]" if error else ""))
            publishing = progress_of(root, after=barrier["upto"])
    if not quiet:
        print(f"ckptfs: {path} is committed in the lake")
    return 0


def command_sync(args: argparse.Namespace) -> int:
    return wait_for_sync(args.path, args.timeout)


def command_latest(args: argparse.Namespace) -> int:
    """The newest checkpoint under PATH whose every file is committed in the lake (ckptfs/latest.py),
    after applying what other mounts published."""
    from ckptfs.latest import latest

    path = os.path.realpath(args.path)
    if not os.path.isdir(path):
        return fail(f"{path} is not a directory")
    if not args.no_refresh:
        read_xattr(mount_root(path), "user.ckptfs.refresh")
    best, passed = latest(path)
    if args.json:
        print(json.dumps({"latest": best.as_dict() if best else None,
                          "passed_over": [checkpoint.as_dict() for checkpoint in passed]}, indent=2))
    elif best is not None:
        print(best.path)
    for checkpoint in passed if not args.json else []:
        lacks = (f"missing {', '.join(checkpoint.missing[:3])}" if checkpoint.missing
                 else f"not committed: {', '.join(checkpoint.uncommitted[:3])}")
        print(f"ckptfs: skipped {checkpoint.path} ({lacks})", file=sys.stderr)
    if best is None:
        return fail(f"no complete checkpoint under {path}")
    return 0


def command_refresh(args: argparse.Namespace) -> int:
    """Apply now what other mounts published before this call (what a restart script runs before
    it reads a checkpoint another node wrote)."""
    done = read_xattr(mount_root(args.path), "user.ckptfs.refresh")
    return answer(args, done, f"ckptfs: {args.path} is up to date with the lake ({done['events']} new events "
                              f"from {done['segments']} segments of {done['mounts']} mounts, {done['seconds']:.2f} s)")


def command_prefetch(args: argparse.Namespace) -> int:
    """Bring a checkpoint's content into this node's chunk cache (before the job starts), with
    progress, so that reading it goes at the speed of the local disk."""
    import threading

    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    path = os.path.realpath(args.path)
    root = mount_root(args.path)
    outcome: dict[str, BaseException | None] = {"error": None}

    def run() -> None:
        try:
            os.setxattr(path, "user.ckptfs.prefetch", b"1")
        except OSError as error:
            outcome["error"] = error

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    with Progress(TextColumn("[bold]prefetch[/]"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  disable=not sys.stderr.isatty(), transient=True) as progress:
        task = progress.add_task("", total=None)
        while worker.is_alive():
            worker.join(0.2)
            running = status_of(root).get("prefetching")
            if running:
                progress.update(task, total=running["total_bytes"] or None, completed=running["done_bytes"])
    if outcome["error"] is not None:
        error = outcome["error"]
        log_hint = status_of(root).get("last_error") or ""
        return fail(f"prefetch of {path} failed: {getattr(error, 'strerror', error)} {log_hint}".strip())
    done = read_xattr(root, "user.ckptfs.prefetch")
    if "error" in done:
        return fail(f"prefetch of {path} stopped: {done['error']}")
    return answer(args, done, f"ckptfs: {path}: {done['files']} files, {human(done['total_bytes'])} in the chunk "
                              f"cache ({done['seconds']:.1f} s)")


def command_snapshot(args: argparse.Namespace) -> int:
    """Write a namespace snapshot of the lake now (mounts also write them on their own as the log
    grows), so that mounts starting after it read it and the segments after it."""
    root = mount_root(args.path)
    try:
        os.setxattr(root, "user.ckptfs.snapshot", b"1")
    except OSError as error:
        raise CkptfsError(f"{args.path}: the ckptfs mount at {root} does not answer ({error.strerror})") from None
    done = read_xattr(root, "user.ckptfs.snapshot")
    return answer(args, done, f"ckptfs: wrote {done['written']} ({done['entries']} entries in the tree, "
                              f"{done['segments']} segments, {done['tail_events']} events after its horizon, "
                              f"{done['seconds']:.2f} s)")


def command_unmount(args: argparse.Namespace) -> int:
    root = os.path.realpath(args.mountpoint)
    if not os.path.ismount(root):
        return fail(f"{args.mountpoint} is not a mount point")
    if mount_root(root) != root:
        return fail(f"{args.mountpoint} is not a ckptfs mount point")
    pid = status_of(root)["pid"]
    if args.no_drain:
        os.setxattr(root, "user.ckptfs.no_drain", b"1")
    else:
        code = wait_for_sync(root, args.timeout)
        if code:
            return code
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    result = subprocess.run([tool, "-u", root] if tool else ["umount", root], capture_output=True, text=True)
    if result.returncode != 0:
        return fail(f"cannot unmount {root}: {result.stderr.strip() or result.stdout.strip()}")
    while _alive(pid):
        time.sleep(0.05)
    print(f"ckptfs: unmounted {root}" + (" (uploads left queued for the next mount)" if args.no_drain else ""))
    return 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            return stat_file.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def status_rows(status: dict) -> list[tuple[str, str]]:
    """The rows of `ckptfs status`: (what, value), as the table shows them."""
    staged = human(status["staged_bytes"])
    if status["staging_limit_bytes"]:
        staged += f" of {human(status['staging_limit_bytes'])}"
    if status["spilled_bytes"]:
        staged += f" (and {human(status['spilled_bytes'])} of files being written spilled to the lake)"
    rows = [
        ("dirty (open for writing)", f"{status['dirty_files']} files, {human(status['dirty_bytes'])}"
         f" ({human(status['dirty_uploaded_bytes'])} of it already in the lake)"),
        ("uploading", f"{status['uploading_files']} files, {human(status['uploading_bytes'])}"),
        ("staged on the cache disk", staged),
        ("oldest pending", f"{status['oldest_pending_age_s']} s"),
        ("events to publish", str(status["events_pending"])),
        ("committed", f"{status['committed_versions']} versions, {human(status['committed_bytes'])}"),
        ("new chunk bytes", human(status["new_chunk_bytes"])),
        ("stored bytes", human(status["stored_bytes"])),
        ("packs written", str(status.get("packs_written", 0))),
        ("dedup ratio", f"{status['dedup_ratio']}x" if status["dedup_ratio"] else "-"),
        ("compression ratio", f"{status['compression_ratio']}x" if status["compression_ratio"] else "-"),
        ("store", f"retrying: {status['last_store_error']}" if status["store_retrying"]
         else f"ok ({status['store_retries']} retries so far)"),
        ("store requests", ", ".join(f"{number} {kind}" for kind, number in sorted(status["store_requests"].items()))
         or "none"),
        ("following", f"every {status['refresh_interval_s']} s; started from "
         f"{status.get('start_snapshot') or 'the whole log'}; {status['snapshots_written']} snapshots written"
         if "refresh_interval_s" in status else "-"),
        ("last upload error", status["last_error"] or "none"),
    ]
    return rows


def command_status(args: argparse.Namespace) -> int:
    status = status_of(mount_root(args.path))
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ckptfs {mount_root(args.path)}", show_header=False)
    for name, value in status_rows(status):
        table.add_row(name, value)
    Console().print(table)
    return 0


def command_fsck(args: argparse.Namespace) -> int:
    if args.store_url is None and args.cache_dir is None:
        return fail("fsck needs a STORE_URL, a --cache-dir, or both", EXIT_USAGE)
    problems = 0
    output: dict = {}
    if args.cache_dir:
        problems += fsck_cache_dir(args, output)
    if args.store_url:
        problems += fsck_lake(args, output)
    if args.json:
        print(json.dumps(output, indent=2))
    return EXIT_ERROR if problems else 0


def fsck_cache_dir(args: argparse.Namespace, output: dict) -> int:
    from ckptfs.cache.check import check_cache, lock_cache_dir, repair_cache

    if not os.path.isdir(args.cache_dir):
        raise CkptfsError(f"cache dir {args.cache_dir} does not exist")
    with lock_cache_dir(args.cache_dir):
        problems = check_cache(args.cache_dir)
        actions = repair_cache(args.cache_dir) if problems and args.repair else []
        remaining = check_cache(args.cache_dir) if actions else problems
    output["cache"] = {"problems": [p.detail for p in problems], "repairs": actions,
                       "remaining": [p.detail for p in remaining]}
    if not args.json:
        for problem in problems:
            print(f"cache: {problem.detail}")
        for action in actions:
            print(f"repaired: {action}")
        if problems and not args.repair:
            print(f"run `ckptfs fsck --cache-dir {args.cache_dir} --repair` to repair")
        if not problems:
            print(f"cache dir {args.cache_dir}: ok")
    return len(remaining)


def fsck_lake(args: argparse.Namespace, output: dict) -> int:
    from ckptfs.lake import Lake
    from ckptfs.lake.check import check_lake
    from ckptfs.store import RetryingStore, open_store

    store = open_store(args.store_url, endpoint_url=args.endpoint_url)
    store.check_access(create=False)
    report = check_lake(Lake(RetryingStore(store, give_up_after=60)), verify_data=args.verify_data)
    output["lake"] = {"segments": report.segments, "versions": report.versions, "manifests": report.manifests,
                      "chunks": report.chunks, "chunk_bytes": report.chunk_bytes, "live_files": report.live_files,
                      "snapshots": report.snapshots, "packs": report.packs, "collected": report.collected,
                      "problems": [vars(p) for p in report.problems]}
    if not args.json:
        print(f"lake {store.url}: {report.live_files} files, {report.versions} versions, {report.manifests} "
              f"manifests, {report.chunks} chunks ({human(report.chunk_bytes)}) in {report.packs} packs, "
              f"{report.segments} log segments, "
              f"{report.snapshots} snapshots" + (f"; {report.collected} versions collected by gc"
                                                  if report.collected else "")
              + ("; chunk data verified" if args.verify_data else ""))
        for problem in report.problems:
            print(f"{problem.kind}: {problem.key}: {problem.detail}")
        print("ok" if report.ok else f"{len(report.problems)} problem(s)")
    return len(report.problems)


def _pyfuse3_version() -> str:
    """Which pyfuse3 runs: `3.5.0+ckptfs.nogil.2` is the build scripts/install.sh makes (the GIL let go of
    around its byte work), a plain version the released one."""
    import importlib.metadata

    try:
        return importlib.metadata.version("pyfuse3")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def build_parser() -> argparse.ArgumentParser:
    from ckptfs import __version__

    parser = argparse.ArgumentParser(prog="ckptfs", description="Mount an S3 checkpoint lake as a directory.")
    parser.add_argument("--version", action="version", version=f"ckptfs {__version__} (pyfuse3 {_pyfuse3_version()})")
    commands = parser.add_subparsers(dest="command", required=True)

    mount = commands.add_parser("mount", help="mount a lake (s3://bucket/prefix, file:///dir; default: embedded)")
    mount.add_argument("store_or_mountpoint", metavar="[STORE_URL|NAME] MOUNTPOINT",
                       help="the lake (s3://bucket/prefix, file:///dir, or a lake NAME from the config file; "
                            "none: the embedded lake) and where to mount it")
    mount.add_argument("mountpoint", nargs="?", help=argparse.SUPPRESS)
    mount.add_argument("--cache-dir", help="write-back cache directory (default under ~/.local/share/ckptfs)")
    mount.add_argument("--cache-size", type=parse_size, default=None,
                       help="cache size, e.g. 200G (default: 50G, or 80%% of what the cache disk can hold if less)")
    mount.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"),
                       help="S3-compatible endpoint (default: AWS_ENDPOINT_URL or AWS)")
    mount.add_argument("--s3-timeout", type=float, default=60,
                       help="seconds to wait for an S3 response before retrying (default 60)")
    mount.add_argument("--metrics-address", metavar="HOST:PORT",
                       help="serve Prometheus metrics here (e.g. 127.0.0.1:9464); off by default")
    mount.add_argument("--upload-while-writing", metavar="SIZE", type=parse_size_or_auto, default=None,
                       help="start uploading a file still being written sequentially once this much of it is "
                            "new; 0 turns it off (default auto: 32M with 4 or more cores, else off)")
    mount.add_argument("--durability", choices=["local", "remote"], default="local",
                       help="what fsync() waits for: the local cache disk (default) or the lake")
    mount.add_argument("--refresh", type=float, default=5.0, metavar="SECONDS",
                       help="apply what other mounts publish every this many seconds (default 5; 0: only at "
                            "start and on `ckptfs refresh`)")
    mount.add_argument("--snapshot-every", type=int, default=100, metavar="SEGMENTS",
                       help="write a namespace snapshot when the newest one is this many log segments (up to "
                            "twice that) behind; mounts starting later read it instead (default 100)")
    mount.add_argument("--lake-setting", action="append", type=parse_lake_setting, metavar="NAME=SECONDS",
                       help="a setting of the lake this mount creates (ignored for an existing lake): "
                            "gc_grace_s (default 86400), fold_s (10), late_publish_s (600), max_clock_skew_s (300)")
    mount.add_argument("--gc-every", type=parse_duration_arg, metavar="DURATION",
                       help="run garbage collection from this mount this often (e.g. 1d; one mount at a time "
                            "runs it, whatever the number given it); off by default: `ckptfs gc` from cron")
    mount.add_argument("--drain-timeout", type=float, default=25.0, metavar="SECONDS",
                       help="stopped by SIGTERM (a preempted node), upload for at most this long, then exit and "
                            "leave the rest to the next mount on the same cache dir (default 25; `umount` waits "
                            "for everything)")
    mount.add_argument("--config", metavar="PATH",
                       help="the configuration file (default: /etc/ckptfs/config.toml, then "
                            "~/.config/ckptfs/config.toml); `ckptfs mount NAME` mounts a lake it names")
    mount.add_argument("--profile", help="the AWS profile for this lake's credentials")
    mount.add_argument("--region", help="the AWS region of its bucket")
    mount.add_argument("--reset-cache-dir", action="store_true",
                       help="empty a cache dir that belongs to another lake (refused while it holds changes "
                            "that lake has not received)")
    mount.add_argument("--allow-other", action="store_true", help="let other users in (implies default_permissions)")
    mount.add_argument("--no-drain", action="store_true", help="on unmount, leave pending uploads for the next mount")
    mount.add_argument("--foreground", action="store_true", help="stay attached; log to stderr")
    mount.add_argument("--log-file", help="log here (default: daemon.log in the cache dir)")
    mount.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    mount.set_defaults(handler=command_mount)

    unmount = commands.add_parser("unmount", help="wait for uploads (with progress), then unmount")
    unmount.add_argument("mountpoint", help="the mount point of a ckptfs mount")
    unmount.add_argument("--no-drain", action="store_true", help="unmount now; uploads resume at the next mount")
    unmount.add_argument("--timeout", type=float, default=None,
                         help="give up waiting for uploads after this many seconds (exit 1, still mounted)")
    unmount.set_defaults(handler=command_unmount)

    status = commands.add_parser("status", help="dirty/uploading/committed figures of a mount")
    status.add_argument("path", help="a path inside a ckptfs mount")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=command_status)

    sync = commands.add_parser("sync", help="block until everything under PATH is committed in the lake")
    sync.add_argument("path", help="a path inside a ckptfs mount")
    sync.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    sync.set_defaults(handler=command_sync)
    newest = commands.add_parser("latest", help="the newest checkpoint under PATH committed in the lake, whole")
    newest.add_argument("path", help="a path inside a ckptfs mount")
    newest.add_argument("--json", action="store_true", help="print JSON")
    newest.add_argument("--no-refresh", action="store_true", help="do not first apply what other mounts published")
    newest.set_defaults(handler=command_latest)

    refresh = commands.add_parser("refresh", help="apply now what other mounts published before this call")
    refresh.add_argument("path", help="a path inside a ckptfs mount")
    refresh.add_argument("--json", action="store_true", help="print JSON")
    refresh.set_defaults(handler=command_refresh)

    prefetch = commands.add_parser("prefetch", help="bring a checkpoint into this node's cache before it is read")
    prefetch.add_argument("path", help="a path inside a ckptfs mount")
    prefetch.add_argument("--json", action="store_true", help="print JSON")
    prefetch.set_defaults(handler=command_prefetch)

    snap = commands.add_parser("snapshot", help="write a namespace snapshot of the lake now (starting mounts read "
                                                "it instead of every log segment)")
    snap.add_argument("path", help="a path inside a ckptfs mount")
    snap.add_argument("--json", action="store_true", help="print JSON")
    snap.set_defaults(handler=command_snapshot)

    check = commands.add_parser("fsck", help="check a lake and/or a cache dir; --repair fixes a cache dir")
    check.add_argument("store_url", nargs="?", help="the lake to check (s3://bucket/prefix, file:///dir)")
    check.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"),
                       help="S3-compatible endpoint (default: AWS_ENDPOINT_URL or AWS)")
    check.add_argument("--verify-data", action="store_true", help="read and re-hash every chunk")
    check.add_argument("--cache-dir", help="also check this (unmounted) cache dir")
    check.add_argument("--repair", action="store_true", help="repair the cache dir (see docs/DESIGN.md)")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(handler=command_fsck)

    from ckptfs.lifecycle_cli import add_parsers
    from ckptfs.offline_cli import add_parsers as add_offline_parsers
    add_parsers(commands)
    add_offline_parsers(commands)
    parser.mount_parser = mount  # type: ignore[attr-defined] - main() gives it the config file's defaults
    return parser


def _negative_values(argv: list[str]) -> list[str]:
    """`--cache-size -5G` as `--cache-size=-5G`, so the option's own check answers (argparse takes a
    value starting with '-' for an option and says only "expected one argument")."""
    joined: list[str] = []
    for token in argv:
        if joined and joined[-1].startswith("--") and "=" not in joined[-1] and re.match(r"^-\d", token):
            joined[-1] = f"{joined[-1]}={token}"
        else:
            joined.append(token)
    return joined


def with_config(parser: argparse.ArgumentParser, argv: list[str], args: argparse.Namespace) -> argparse.Namespace:
    """`ckptfs mount`: the config file's defaults and named lake (ckptfs/config.py) under the flags."""
    from ckptfs import config as configuration

    loaded = configuration.load(args.config)
    name, lake = args.store_or_mountpoint, None
    if name in loaded["lakes"]:
        lake = loaded["lakes"][name]
    elif args.mountpoint is None and "/" not in name and not os.path.isdir(name) and (
            args.config or loaded["lakes"]):
        known = ", ".join(sorted(loaded["lakes"])) or "none"
        raise CkptfsError(f"no lake named {name!r} in the config (lakes: {known}), and no directory {name}")
    values = {**loaded["defaults"], **{k: v for k, v in (lake or {}).items() if k not in ("url", "mountpoint")}}
    converters = {"cache_size": parse_size, "upload_while_writing": parse_size_or_auto, "gc_every": parse_duration_arg}
    try:
        values = {key: converters[key](str(value)) if key in converters else value for key, value in values.items()}
    except argparse.ArgumentTypeError as error:
        raise CkptfsError(f"config: {error}") from None
    parser.mount_parser.set_defaults(**values)  # type: ignore[attr-defined]
    args = parser.parse_args(argv)
    if lake is not None:
        if args.mountpoint is None and "mountpoint" not in lake:
            raise CkptfsError(f"lake {name!r} in the config has no mountpoint; give one: ckptfs mount {name} DIR")
        args.store_or_mountpoint, args.mountpoint = lake["url"], args.mountpoint or lake["mountpoint"]
    for variable, value in (("AWS_PROFILE", args.profile), ("AWS_DEFAULT_REGION", args.region)):
        if value:
            os.environ[variable] = value  # boto3 reads them, here and in the daemon
    return args


def main(argv: list[str] | None = None) -> int:
    argv = _negative_values(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "mount":
        try:
            args = with_config(parser, argv, args)
        except CkptfsError as error:
            return fail(str(error))
    try:
        return args.handler(args)
    except CkptfsError as error:
        return fail(str(error))
    except KeyboardInterrupt:
        return fail("interrupted", 130)
