"""`ckptfs ls` and `ckptfs cp`: a lake read without FUSE (ckptfs/reader.py), for a machine that has
none or only needs one checkpoint."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

from ckptfs.cli import human
from ckptfs.errors import CkptfsError


def _instant(text: str | None) -> int | None:
    if text is None:
        return None
    from ckptfs.files.past import parse_instant
    instant = parse_instant(text.encode())
    if instant is None:
        raise CkptfsError(f"--at {text!r}: not an ISO 8601 time (e.g. 2026-11-28T14:00Z)")
    return instant + 999_999


def _name(path: bytes) -> str:
    return path.decode(errors="replace")


def command_ls(args: argparse.Namespace) -> int:
    from ckptfs.reader import listing, open_lake_at

    lake, inside = open_lake_at(args.url, args.endpoint_url)
    found = listing(lake, inside, _instant(args.at))
    if not found:
        raise CkptfsError(f"nothing at {args.url}" + (f" at {args.at}" if args.at else ""))
    if args.json:
        print(json.dumps([{"path": _name(f.path), "size": f.size, "mtime_ns": f.mtime_ns} for f in found], indent=2))
        return 0
    for entry in found:
        when = datetime.datetime.fromtimestamp(entry.mtime_ns / 1e9, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{entry.size:>14,}  {when}  {_name(entry.path)}")
    return 0


def command_cp(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from ckptfs.reader import copy_to, listing, open_lake_at

    lake, inside = open_lake_at(args.url, args.endpoint_url)
    found = listing(lake, inside, _instant(args.at))
    if not found:
        raise CkptfsError(f"nothing at {args.url}" + (f" at {args.at}" if args.at else ""))
    single = len(found) == 1 and found[0].path == inside
    total = sum(entry.size for entry in found)
    with Progress(TextColumn("[bold]cp[/]"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  disable=not sys.stderr.isatty(), transient=True) as progress:
        task = progress.add_task("", total=total)
        for entry in found:
            if single:
                target = os.path.join(args.destination, os.path.basename(_name(entry.path))) \
                    if os.path.isdir(args.destination) else args.destination
            else:
                relative = _name(entry.path[len(inside) + 1:] if inside else entry.path)
                target = os.path.join(args.destination, relative)
            os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
            copy_to(lake, lake.get_manifest(entry.manifest or ""), target,
                    progress=lambda done: progress.advance(task, done))
    print(f"ckptfs: copied {len(found)} files, {human(total)}, to {args.destination}")
    return 0


def add_parsers(commands: argparse._SubParsersAction) -> None:
    listing = commands.add_parser("ls", help="list a lake's files without mounting it")
    listing.add_argument("url", help="a lake or a path in it: s3://bucket/prefix/run1, file:///lake/run1")
    listing.add_argument("--at", metavar="TIME", help="as it was at this ISO 8601 time")
    listing.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"),
                         help="S3-compatible endpoint (default: AWS_ENDPOINT_URL or AWS)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=command_ls)
    copy = commands.add_parser("cp", help="copy a file or a directory out of a lake without mounting it")
    copy.add_argument("url", help="a file or directory in a lake: s3://bucket/prefix/run1/step-100")
    copy.add_argument("destination", help="a local file or directory")
    copy.add_argument("--at", metavar="TIME", help="the version current at this ISO 8601 time")
    copy.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"),
                      help="S3-compatible endpoint (default: AWS_ENDPOINT_URL or AWS)")
    copy.set_defaults(handler=command_cp)
