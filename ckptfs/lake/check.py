"""The lake checker behind `ckptfs fsck`: reads the lake directly, mounts nothing, changes nothing.

Every log segment must parse and every event in it be valid (`events.parse`); every version any
history state names (live or not) must have a manifest that parses and matches its id; every chunk
a manifest names must exist, and with `verify_data` must decode and hash to its id. Every namespace
snapshot must read, and the newest, with the segments after it, must replay to the same tree and
history as the whole log. Each problem names the object it concerns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ckptfs.errors import CorruptObjectError
from ckptfs.lake import codec, namespace
from ckptfs.lake.events import InvalidEvent
from ckptfs.lake.lake import Lake
from ckptfs.lake.manifest import manifest_key
from ckptfs.store import StoreError

log = logging.getLogger(__name__)


@dataclass
class Problem:
    kind: str      # "segment", "event", "snapshot", "manifest", "chunk-missing", "chunk-corrupt"
    key: str       # the object concerned
    detail: str


@dataclass
class Report:
    segments: int = 0
    versions: int = 0
    manifests: int = 0
    chunks: int = 0
    chunk_bytes: int = 0
    live_files: int = 0
    snapshots: int = 0
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
    for path, states in tree.history.items():
        for state in states:
            if state.manifest is not None:
                report.versions += 1
                manifests.setdefault(state.manifest, path)
    present = {key.rsplit("/", 1)[-1] for key in lake.store.list("chunks/")}
    checked: set[bytes] = set()
    for identifier, path in sorted(manifests.items()):
        try:
            value = lake.get_manifest(identifier)
        except (CorruptObjectError, StoreError) as error:
            report.problems.append(Problem("manifest", manifest_key(identifier),
                                           f"{error} (a version of {path!r})"))
            continue
        report.manifests += 1
        for chunk, length in value.chunks:
            if chunk in checked:
                continue
            checked.add(chunk)
            report.chunks += 1
            report.chunk_bytes += length
            key = codec.chunk_key(chunk)
            if chunk.hex() not in present:
                report.problems.append(Problem("chunk-missing", key, f"named by manifest {identifier} ({path!r})"))
            elif verify_data:
                try:
                    lake.get_chunk(chunk)
                except (CorruptObjectError, StoreError) as error:
                    report.problems.append(Problem("chunk-corrupt", key, str(error)))
    return report


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
