"""The lake checker behind `ckptfs fsck`: reads the lake directly, mounts nothing, changes nothing.

Every log segment must parse and every event in it be valid (`events.parse`); every version any
history state names (live or not) must have a manifest that parses and matches its id, unless
garbage collection recorded that it collected it (`gc/collected/`: counted, not a problem); every chunk
a manifest names must exist (as a loose object, or in the pack it names, or where the relocation
of a pack GC repacked and deleted says), and with `verify_data`
must decode and hash to its id, read with one ranged GET per run of a pack as a restore would. Every namespace
snapshot must read, and the newest, with the segments after it, must replay to the same tree and
history as the whole log. Each problem names the object it concerns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ckptfs.errors import CorruptObjectError
from ckptfs.lake import codec, namespace, packs
from ckptfs.lake.events import InvalidEvent
from ckptfs.lake.gc import read_collected
from ckptfs.lake.lake import Lake
from ckptfs.lake.manifest import manifest_key
from ckptfs.lake.packs import Location
from ckptfs.store import ObjectArchived, StoreError

log = logging.getLogger(__name__)


@dataclass
class Problem:
    kind: str      # "segment", "event", "snapshot", "manifest", "chunk-missing", "chunk-corrupt", "pack-missing"
    key: str       # the object concerned
    detail: str


@dataclass
class Report:
    segments: int = 0
    versions: int = 0
    manifests: int = 0
    chunks: int = 0
    chunk_bytes: int = 0
    packs: int = 0
    live_files: int = 0
    snapshots: int = 0
    collected: int = 0  # versions whose manifest garbage collection deleted, as retention allowed
    archived: int = 0  # chunks not verified: in an archive storage class (a restore makes them readable)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_lake(lake: Lake, *, verify_data: bool = False) -> Report:
    report = Report()
    lake.open(create=False)
    report.segments = sum(1 for _ in lake.segments())
    tree = lake.read_namespace(
        use_snapshot=False, on_damaged=lambda key, error: report.problems.append(
            Problem("event" if isinstance(error, InvalidEvent) else "segment", key, str(error))))
    report.live_files = sum(1 for entry in tree.entries.values() if entry.kind == "file")
    _check_snapshots(lake, tree, report)
    manifests: dict[str, bytes] = {}
    collected = read_collected(lake.store)
    for path, states in tree.history.items():
        for state in states:
            if state.manifest is not None:
                report.versions += 1
                if state.manifest in collected:
                    report.collected += 1
                else:
                    manifests.setdefault(state.manifest, path)
    loose = {key.rsplit("/", 1)[-1] for key in lake.store.list("chunks/")}
    present_packs = set(lake.pack_ids())
    counted: set[bytes] = set()
    checked: set[tuple[bytes, Location]] = set()  # a chunk may be in several packs (small ones are packed again)
    to_verify: list[tuple[bytes, Location, str]] = []
    referenced: set[bytes] = set()
    missing_packs: set[bytes] = set()
    for identifier, path in sorted(manifests.items()):
        try:
            value = lake.get_manifest(identifier)
        except (CorruptObjectError, StoreError) as error:
            report.problems.append(Problem("manifest", manifest_key(identifier),
                                           f"{error} (a version of {path!r})"))
            continue
        report.manifests += 1
        for index, (chunk, length) in enumerate(value.chunks):
            if chunk not in counted:
                counted.add(chunk)
                report.chunks += 1
                report.chunk_bytes += length
            where = value.location(index)
            while not where.loose and where.pack not in present_packs:  # repacked by GC: follow it
                moved = lake.relocation(where.pack)
                if moved is None or chunk not in moved:
                    break
                where = moved[chunk]
            if (chunk, where) in checked:
                continue
            checked.add((chunk, where))
            if not where.loose:
                referenced.add(where.pack)
            named = f"named by manifest {identifier} ({path!r})"
            if where.loose and chunk.hex() not in loose:
                report.problems.append(Problem("chunk-missing", codec.chunk_key(chunk), named))
            elif not where.loose and where.pack not in present_packs:
                if where.pack not in missing_packs:  # once per pack, naming the first chunk missed
                    missing_packs.add(where.pack)
                    report.problems.append(Problem("pack-missing", packs.pack_key(where.pack),
                                                   f"holds chunk {chunk.hex()} {named}"))
            elif verify_data:
                to_verify.append((chunk, where, named))
    report.packs = len(referenced)
    _verify(lake, to_verify, report)
    return report


def _verify(lake: Lake, chunks: list[tuple[bytes, Location, str]], report: Report) -> None:
    """Read every chunk back, runs of a pack at a time; a run that fails is read chunk by chunk, so
    each damaged chunk is named."""
    chunks.sort(key=lambda item: (item[1].pack, item[1].offset))
    for run in packs.runs([where for _, where, _ in chunks], packs.RUN_BYTES, packs.RUN_GAP):
        items = [chunks[position] for position in run]
        try:
            lake.get_run([(chunk, where) for chunk, where, _ in items])
            continue
        except ObjectArchived:
            report.archived += len(items)  # in a colder storage class: readable after a restore
            continue
        except (CorruptObjectError, StoreError):
            pass
        for chunk, where, named in items:
            try:
                lake.get_chunk(chunk, where)
            except (CorruptObjectError, StoreError) as error:
                key = codec.chunk_key(chunk) if where.loose else packs.pack_key(where.pack)
                report.problems.append(Problem("chunk-corrupt", key, f"{error} ({named})"))


def _check_snapshots(lake: Lake, tree: namespace.Namespace, report: Report) -> None:
    found = lake.snapshots()
    report.snapshots = len(found)
    readable = None
    for _, _, _, key in found:
        try:
            lake.read_snapshot(key)
            readable = key
        except (CorruptObjectError, StoreError) as error:
            report.problems.append(Problem("snapshot", key, str(error)))
    if readable is None:
        return
    view = lake.read_log(on_damaged=lambda key, error: None)  # damaged segments are reported above
    differing = view.replay().differences(tree)
    if differing:
        report.problems.append(Problem("snapshot", view.snapshot_key or readable,
                                       "with the segments after it, replays to another tree than the whole log "
                                       f"at {', '.join(repr(path) for path in differing)}"))
