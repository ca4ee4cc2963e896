"""The lake's lifecycle commands: retention, gc, tag, untag, log, du.

They read and write the lake directly (never through the mount's FUSE requests, whose answers are
capped at 64 KiB): a PATH inside a mount names the mount's lake (the mount's status says where it
is) and a path in it. So they need the store's credentials, as the mount has; writing a policy or
a tag needs write access to the store, which is the permission that matters.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

from ckptfs.cli import EXIT_USAGE, fail, human, mount_root, status_of, wait_for_sync
from ckptfs.errors import CkptfsError

_VIRTUAL = (b".versions", b".tags", b".at")


def _open_lake(url: str, endpoint_url: str | None):
    from ckptfs.lake import Lake
    from ckptfs.store import RetryingStore, open_store

    store = open_store(url, endpoint_url=endpoint_url)
    store.check_access(create=False)
    lake = Lake(RetryingStore(store, give_up_after=60))
    lake.open(create=False)
    return lake


def lake_at(path: str) -> tuple[Any, bytes, str]:
    """The lake of the mount holding `path`, the path relative to the lake root, and the mount root."""
    real = os.path.realpath(path)
    root = mount_root(real)
    status = status_of(root)
    if "store_url" not in status:
        raise CkptfsError(f"{root} is mounted by an older ckptfs that does not say where its lake is; remount it")
    relative = os.path.relpath(real, root)
    inside = b"" if relative == "." else os.fsencode(relative)
    if inside.split(b"/", 1)[0] in _VIRTUAL:
        raise CkptfsError(f"{path} is in a read-only view of the history; name the path in the live tree")
    return _open_lake(status["store_url"], status.get("endpoint_url")), inside, root


def _shown(path: bytes) -> str:
    return "/" + os.fsdecode(path) if path else "/ (the whole lake)"


def _time(time_ns: int) -> str:
    return datetime.fromtimestamp(time_ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# -- retention ----------------------------------------------------------------------------------
def command_retention(args: argparse.Namespace) -> int:
    from ckptfs.lake import retention

    lake, inside, _ = lake_at(args.path)
    if args.action == "set":
        within = retention.parse_duration(args.keep_within) if args.keep_within else None
        archive = retention.parse_duration(args.archive_after) if args.archive_after else None
        policy = retention.Policy(keep_last=args.keep_last, keep_within_s=within, keep_hourly=args.keep_hourly,
                                  keep_daily=args.keep_daily, keep_weekly=args.keep_weekly,
                                  archive_after_s=archive, archive_class=args.archive_class)
        lake.set_retention(inside, policy)
        return _answer(args, {"path": os.fsdecode(inside), "policy": policy.rules()},
                       f"{_shown(inside)}: keep {policy.describe()}; the live version of every file is always kept")
    if args.action == "clear":
        existed = lake.clear_retention(inside)
        line = (f"{_shown(inside)}: policy removed" if existed else f"{_shown(inside)} had no policy of its own")
        return _answer(args, {"path": os.fsdecode(inside), "removed": existed}, line)
    policies = lake.retention_policies()
    governing = retention.governing(inside, policies)
    shown = {"path": os.fsdecode(inside),
             "governed_by": None if governing is None else os.fsdecode(governing),
             "policy": None if governing is None else policies[governing].rules(),
             "all": {os.fsdecode(prefix): policy.rules() for prefix, policy in sorted(policies.items())}}
    if governing is None:
        line = f"{_shown(inside)}: no policy governs it: every version is kept"
    else:
        where = "its own" if governing == inside else f"from {_shown(governing)}"
        line = f"{_shown(inside)}: keep {policies[governing].describe()} ({where})"
    return _answer(args, shown, line)


def _answer(args: argparse.Namespace, value: dict, line: str) -> int:
    print(json.dumps(value, indent=2) if args.json else line)
    return 0


# -- gc -----------------------------------------------------------------------------------------
def command_gc(args: argparse.Namespace) -> int:
    from ckptfs.lake.gc import GarbageCollector

    lake = _open_lake(args.store_url, args.endpoint_url)
    showing = sys.stderr.isatty() and not args.json

    def progress(phase: str, done: int, total: int) -> None:
        if showing:
            print(f"\rckptfs gc: {phase}" + (f" {done}/{total}" if total else "") + " " * 10,
                  end="", file=sys.stderr, flush=True)

    report = GarbageCollector(lake, progress=progress).run(dry_run=args.dry_run, break_lock=args.break_lock)
    if showing:
        print(file=sys.stderr)
    value = report.to_json()
    if args.json:
        print(json.dumps(value, indent=2))
        return 0
    versions, stored = value["versions"], value["stored_bytes"]
    print(f"{'would mark' if args.dry_run else 'marked'} {report.marked} objects ({human(report.marked_bytes)}), "
          f"{'would delete' if args.dry_run else 'deleted'} {report.deleted} ({human(report.deleted_bytes)}), "
          f"{report.rescued} marked earlier are in use again")
    if report.archived:
        print(f"moved {report.archived} packs ({human(report.archived_bytes)}) to a colder storage class")
    print(f"versions: {versions['kept']} kept of {versions['total']} "
          f"({', '.join(f'{rule} {count}' for rule, count in versions['kept_by_rule'].items()) or 'none'}), "
          f"{versions['collectable']} left to collect")
    print(f"stored: {human(stored['before'])} -> {human(stored['after'])}, "
          f"${value['dollars_per_month']['before']:.2f} -> ${value['dollars_per_month']['after']:.2f} a month "
          f"at S3 Standard; marked objects go at the first run {report.grace_s} s after their mark")
    if report.missing:
        print(f"ckptfs: warning: {len(report.missing)} kept versions have no manifest; run `ckptfs fsck`",
              file=sys.stderr)
    return 0


# -- tags ---------------------------------------------------------------------------------------
def command_tag(args: argparse.Namespace) -> int:
    from ckptfs.lake import keeps

    if args.list:
        lake, _, _ = lake_at(args.path or ".")
        tags = keeps.read_tags(lake.store)
        if args.json:
            print(json.dumps([{"name": tag.name, "created": _time(tag.created_ns), "path": os.fsdecode(tag.root),
                               "versions": len(tag.entries)} for tag in tags], indent=2))
        for tag in tags if not args.json else []:
            print(f"{tag.name}\t{_time(tag.created_ns)}\t{_shown(tag.root)}\t{len(tag.entries)} versions")
        return 0
    if args.path is None or args.name is None:
        return fail("tag needs PATH and NAME (or --list)", EXIT_USAGE)
    keeps.check_tag_name(args.name)
    if wait_for_sync(args.path, None, quiet=True):  # the tag names what is in the lake: publish it first
        return 1
    lake, inside, _ = lake_at(args.path)
    tree = lake.read_namespace()
    entry = tree.entries.get(inside)
    if entry is None:
        return fail(f"{args.path} is not in the lake")
    if entry.kind == "file":
        entries = ((inside, entry.manifest),) if entry.manifest else ()
    else:
        entries = tuple(sorted((path, value.manifest) for path, value in tree.entries.items()
                               if value.kind == "file" and value.manifest and path.startswith(inside + b"/"
                                                                                                  if inside else True)))
    if not entries:
        return fail(f"{args.path} holds no file version to tag")
    from ckptfs.store import PreconditionFailed
    try:
        keeps.put_tag(lake.store, keeps.Tag(args.name, time.time_ns(), inside, entries))
    except PreconditionFailed:
        return fail(f"tag {args.name} exists; `ckptfs untag {args.name}` first")
    return _answer(args, {"name": args.name, "path": os.fsdecode(inside), "versions": len(entries)},
                   f"tagged {_shown(inside)} as {args.name}: {len(entries)} versions kept whatever the policy")


def command_untag(args: argparse.Namespace) -> int:
    from ckptfs.lake import keeps

    lake, _, _ = lake_at(args.path)
    key = keeps.tag_key(keeps.check_tag_name(args.name))
    if lake.store.size(key) is None:
        return fail(f"no tag {args.name}")
    lake.store.delete(key)
    print(f"untagged {args.name}: its versions follow the retention policies again")
    return 0


# -- log and du ---------------------------------------------------------------------------------
def command_log(args: argparse.Namespace) -> int:
    from ckptfs.lake.accounting import history_log
    from ckptfs.lake.manifest import decode_path

    lake, inside, _ = lake_at(args.path)
    rows = history_log(lake, lake.read_namespace(), inside, time.time_ns())
    if not rows:
        return fail(f"{args.path} has no history in the lake (not published yet? `ckptfs sync` it)")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        path = decode_path(row["path"]).decode(errors="replace")
        if row.get("deleted"):
            print(f"{_time(row['time_ns'])}  {'':>10}  {'':>10}  {'deleted':<16}  {path}")
            continue
        if row.get("symlink"):
            print(f"{_time(row['time_ns'])}  {'':>10}  {'':>10}  {'symlink':<16}  {path}")
            continue
        if row["collected"]:
            state = "collected"
        elif row["kept"]:
            state = "kept: " + ", ".join(row["rules"])
        else:
            state = "folded" if row["folded"] else "to collect"
        new = human(row["new_bytes"]) if row["new_bytes"] is not None else "?"
        writer = row.get("writer") or {}
        who = f"{writer.get('user', '?')}@{writer.get('host', '?')}" if writer else (row["mount"] or "?")[:8]
        job = writer.get("job", {})
        who += f" job {job.get('slurm_job_id') or job.get('torchelastic_run_id') or job.get('pod')}" if job and (
            job.get("slurm_job_id") or job.get("torchelastic_run_id") or job.get("pod")) else ""
        print(f"{_time(row['time_ns'])}  {human(row['size']):>10}  {new + ' new':>14}  {who:<20}  "
              f"{state:<24}  {path}")
    return 0


def command_du(args: argparse.Namespace) -> int:
    from ckptfs.lake.accounting import disk_usage
    from ckptfs.lake.manifest import decode_path

    lake, inside, _ = lake_at(args.path)
    usage = disk_usage(lake, lake.read_namespace(), inside, time.time_ns())
    if args.json:
        print(json.dumps(usage, indent=2))
        return 0

    def line(name: str, figures: dict) -> str:
        return (f"{human(figures['logical_bytes']):>10} logical  {human(figures['stored_bytes']):>10} stored  "
                f"{human(figures['unique_bytes']):>10} unique  {human(figures['shared_bytes']):>10} shared  "
                f"${figures['dollars_per_month']:.4f}/month  {figures['versions']:>4} versions  {name}")
    for name, figures in usage["entries"].items():
        print(line(os.path.join(_shown(inside).split(" ")[0], decode_path(name).decode(errors="replace")), figures))
    print(line(_shown(inside) + " (total)", usage["total"]))
    return 0


# -- parsers ------------------------------------------------------------------------------------
def add_parsers(commands: argparse._SubParsersAction) -> None:
    keep = commands.add_parser("retention", help="what the lake keeps of the history under a path")
    actions = keep.add_subparsers(dest="action", required=True)
    setting = actions.add_parser("set", help="set the policy of PATH (a directory or file in a mount; the mount "
                                             "root sets the default for paths without one)")
    setting.add_argument("path", help="a path inside a mount")
    setting.add_argument("--keep-last", type=int, metavar="N", help="the N newest versions of each live file")
    setting.add_argument("--keep-within", metavar="DURATION",
                         help="every version that was current within this long (e.g. 36h, 7d, 2w)")
    setting.add_argument("--keep-hourly", type=int, metavar="N",
                         help="the tree as it was at the end of each of the N newest hours with changes")
    setting.add_argument("--keep-daily", type=int, metavar="N", help="the same for days (UTC)")
    setting.add_argument("--keep-weekly", type=int, metavar="N", help="the same for weeks (Monday to Sunday, UTC)")
    setting.add_argument("--archive-after", metavar="DURATION",
                         help="move kept versions older than this (and no longer current) to --archive-class")
    setting.add_argument("--archive-class", metavar="CLASS",
                         help="the S3 storage class for them: STANDARD_IA, ONEZONE_IA, GLACIER_IR (read as usual, "
                              "a fee per GB), GLACIER, DEEP_ARCHIVE (read only after a restore)")
    showing = actions.add_parser("show", help="the policy that governs PATH, and every policy of the lake")
    showing.add_argument("path", help="a path inside a mount")
    clearing = actions.add_parser("clear", help="remove PATH's own policy (the one above it governs it again)")
    clearing.add_argument("path", help="a path inside a mount")
    for parser in (setting, showing, clearing):
        parser.add_argument("--json", action="store_true", help="print JSON")
    keep.set_defaults(handler=command_retention)

    gc = commands.add_parser("gc", help="mark what retention no longer keeps; delete what was marked a grace ago")
    gc.add_argument("store_url", help="the lake (s3://bucket/prefix, file:///dir)")
    gc.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"),
                    help="S3-compatible endpoint (default: AWS_ENDPOINT_URL or AWS)")
    gc.add_argument("--dry-run", action="store_true", help="report what a run would mark and delete; change nothing")
    gc.add_argument("--break-lock", action="store_true",
                    help="take the lake's gc lock from a run that died on another machine (only if it is dead; "
                    "one that died on this machine is taken over without it)")
    gc.add_argument("--json", action="store_true", help="print the report as JSON")
    gc.set_defaults(handler=command_gc)

    tag = commands.add_parser("tag", help="keep a file's version, or a directory as it is now, whatever the policy")
    tag.add_argument("path", nargs="?", help="a file or directory inside a mount")
    tag.add_argument("name", nargs="?", help="the tag: letters, digits and . _ @ + -")
    tag.add_argument("--list", action="store_true", help="list the lake's tags (PATH: any path in the mount)")
    tag.add_argument("--json", action="store_true", help="print JSON")
    tag.set_defaults(handler=command_tag)
    untag = commands.add_parser("untag", help="remove a tag: its versions follow the policies again")
    untag.add_argument("name", help="the tag")
    untag.add_argument("path", nargs="?", default=".", help="any path in the mount (default: the current directory)")
    untag.set_defaults(handler=command_untag)

    history = commands.add_parser("log", help="a file's or directory's history: sizes, new bytes, writer, "
                                              "kept by which rule")
    history.add_argument("path", help="a file or directory inside a mount")
    history.add_argument("--json", action="store_true", help="print JSON")
    history.set_defaults(handler=command_log)
    usage = commands.add_parser("du", help="logical, stored, unique and shared bytes and monthly cost under a path")
    usage.add_argument("path", help="a file or directory inside a mount")
    usage.add_argument("--json", action="store_true", help="print JSON")
    usage.set_defaults(handler=command_du)
