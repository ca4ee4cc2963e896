"""Garbage collection: mark, wait a grace period, sweep. No lock that a save waits for.

One run (`ckptfs gc`, docs/DESIGN.md "Garbage collection"):

1. Take the cut-off time `start` before reading anything (a cut-off taken after a long scan would
   call objects written during the scan old).
2. Replay the lake's history and judge every version by the retention policies, tags and holds
   (lake/retention.py): the manifests of kept versions are live, and so is every manifest written
   less than a grace ago (it may belong to a version a mount has not published yet).
3. Read every live manifest (streamed, in parallel; only the object keys it names are kept): the
   packs and loose chunks they name are live, and so is every object written less than a grace ago.
4. Everything else is a candidate. A candidate that an earlier run already marked at least a grace
   ago is deleted now; the others are marked, with the time they were first marked.
5. The new marks object (`gc/marks/`) is written before anything is deleted, and lists what is
   deleted as tombstones, kept for two graces: a writer reads the newest marks object and never
   names a marked or deleted object (engine/leases.py), and names an object it has not checked
   within its lease only after a HEAD. Then the manifests and objects are deleted, then older marks.

So a deletion always has two scans a grace apart that found the object unreferenced, and a writer
that dedups against it either published its manifest before the second scan (which then sees it)
or sees the mark first. Marking is the soft delete: until the sweep after the grace, a policy
change or a tag brings the data back. Only one run at a time holds `gc/lock` (a run refreshes it
every minute; one not refreshed for 10 minutes is taken over); mounts never look at it.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ckptfs.errors import CkptfsError
from ckptfs.lake import codec, keeps, packs
from ckptfs.lake.gclock import GcLock
from ckptfs.lake.lake import Lake
from ckptfs.lake.packs import Location
from ckptfs.lake.retention import Retention, governing
from ckptfs.store import ObjectNotFound, ObjectStore

# Repacking: a pack whose live bytes have fallen below REPACK_BELOW of its size has its live chunks
# copied into a new pack and a relocation written (docs/DESIGN.md "Repacking", measured by
# scripts/measure_repack.py); packs under SMALL_PACK made of small chunks only are merged. At most
# REPACK_BUDGET bytes a run.
REPACK_BELOW = 0.5
SMALL_PACK = 4 << 20
SMALL_CHUNK_OBJECT = (64 << 10) + 32  # a chunk the uploader packs again at every save (engine/chunks.py)
NEW_PACK = 32 << 20
DELETE_RUN = 64  # keys a deleting thread passes to store.delete_many at a time
REPACK_BUDGET = 4 << 30
MARKS = "gc/marks/"
log = logging.getLogger(__name__)
COLLECTED = "gc/collected/"
# Collection records a lake keeps before a run folds them into one (GarbageCollector._fold_collected):
# a fresh mount reads at most this many and the fold, in one round of GETs or a few.
FOLD_RECORDS = 64
STANDARD_GB_MONTH = 0.023  # S3 Standard, first 50 TB, us-east-1
_DATA_PREFIXES = ("packs/", "chunks/")


@dataclass
class Marks:
    run_ns: int
    marked: dict[str, int] = field(default_factory=dict)  # key -> when first marked
    deleted: dict[str, int] = field(default_factory=dict)  # key -> when deleted (tombstones)
    archived: dict[str, str] = field(default_factory=dict)  # key -> storage class (writers avoid them)
    archiving: dict[str, int] = field(default_factory=dict)  # key -> when first announced for archiving


def marks_key(run_ns: int, run: str) -> str:
    return f"{MARKS}{run_ns:016x}-{run}"


def encode_marks(marks: Marks) -> bytes:
    return json.dumps({"format": 1, "run_ns": marks.run_ns, "marked": marks.marked,
                       "deleted": marks.deleted, "archived": marks.archived,
                       "archiving": marks.archiving}).encode()


def read_marks(store: ObjectStore) -> tuple[str, Marks] | None:
    """The newest marks object (one LIST and one GET), or None if no run has marked anything."""
    keys = sorted(store.list(MARKS))
    for key in reversed(keys):
        try:
            value = json.loads(store.get(key))
            return key, Marks(int(value["run_ns"]), {str(k): int(v) for k, v in value["marked"].items()},
                              {str(k): int(v) for k, v in value["deleted"].items()},
                              {str(k): str(v) for k, v in value.get("archived", {}).items()},
                              {str(k): int(v) for k, v in value.get("archiving", {}).items()})
        except ObjectNotFound:
            continue  # replaced meanwhile; an older one is still a valid view
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise CkptfsError(f"{key} is not a marks object ({error})") from None
    return None


def read_collected(store: ObjectStore, skip: set[str] | None = None) -> dict[str, int]:
    """Manifest id -> when garbage collection deleted it; records in `skip` (keys already read:
    records never change) are not read again, and the keys read are added to it. The records are
    read side by side: one after the other, a fresh mount's `ckptfs refresh` waited 1.9 s for ~30
    of them on the S3 model (the soak's job restart, a GC run every 5 minutes). A record listed but
    gone when read was folded into a newer one (GarbageCollector._fold_collected writes the fold
    before it deletes what it folded): the records are listed once more and the new ones read."""
    collected: dict[str, int] = {}
    seen: set[str] = set()
    for _ in range(2):
        keys = [key for key in store.list(COLLECTED) if key not in seen and (skip is None or key not in skip)]
        found = store.get_each(keys)
        for key in keys:
            seen.add(key)
            if key in found:
                value = decode_collected(key, found[key])
                for identifier in value.get("manifests", ()):
                    collected[identifier] = max(collected.get(identifier, 0), int(value["collected_ns"]))
            if skip is not None:  # read, or gone: either way never to read again
                skip.add(key)
        if len(found) == len(keys):
            break
    return collected


def decode_collected(key: str, blob: bytes) -> dict[str, Any]:
    """A collection record: {"format", "collected_ns", "manifests"}."""
    try:
        return json.loads(blob)
    except ValueError as error:
        raise CkptfsError(f"{key} is not a collection record ({error})") from None


@dataclass
class Report:
    started_ns: int
    dry_run: bool
    grace_s: int
    versions: int = 0
    versions_kept: int = 0
    kept_by_rule: Counter[str] = field(default_factory=Counter)
    kept_by_policy: Counter[str] = field(default_factory=Counter)  # governing prefix ("" the default)
    collectable_by_policy: Counter[str] = field(default_factory=Counter)
    versions_collectable: int = 0
    manifests: int = 0
    manifests_live: int = 0
    data_objects: int = 0
    data_objects_live: int = 0
    marked: int = 0
    marked_bytes: int = 0
    rescued: int = 0
    deleted: int = 0
    deleted_bytes: int = 0
    repacked: int = 0  # packs whose live chunks were copied (the old ones go at a later sweep)
    repacked_bytes: int = 0  # live bytes copied
    repack_frees: int = 0  # bytes of those packs that were dead
    relocations_deleted: int = 0  # relocations of packs gone that no manifest names any more
    archived: int = 0  # packs moved to a colder storage class by this run
    archived_bytes: int = 0
    stored_bytes: int = 0
    missing: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        after = self.stored_bytes - self.deleted_bytes
        return {"started_ns": self.started_ns, "dry_run": self.dry_run, "grace_s": self.grace_s,
                "seconds": round(self.seconds, 3),
                "versions": {"total": self.versions, "kept": self.versions_kept,
                             "kept_by_rule": dict(sorted(self.kept_by_rule.items())),
                             "by_policy": {prefix: {"kept": self.kept_by_policy[prefix],
                                                    "collectable": self.collectable_by_policy[prefix]}
                                           for prefix in sorted(set(self.kept_by_policy)
                                                                | set(self.collectable_by_policy))},
                             "collectable": self.versions_collectable},
                "manifests": {"total": self.manifests, "live": self.manifests_live},
                "data_objects": {"total": self.data_objects, "live": self.data_objects_live},
                "marked": {"objects": self.marked, "bytes": self.marked_bytes},
                "rescued": self.rescued,
                "deleted": {"objects": self.deleted, "bytes": self.deleted_bytes},
                "archived": {"packs": self.archived, "bytes": self.archived_bytes},
                "repacked": {"packs": self.repacked, "bytes_copied": self.repacked_bytes,
                             "dead_bytes": self.repack_frees, "relocations_deleted": self.relocations_deleted},
                "stored_bytes": {"before": self.stored_bytes, "after": after},
                "dollars_per_month": {"before": round(dollars_per_month(self.stored_bytes), 4),
                                      "after": round(dollars_per_month(after), 4)},
                "missing_manifests": self.missing[:20]}


def retention_now(lake: Lake, now_ns: int) -> Retention:
    """The lake's policies, tags and holds, judging at `now_ns`: what GC keeps, and what `ckptfs log`
    and `ckptfs du` say it keeps."""
    tagged: dict[str, list[str]] = {}
    for tag in keeps.read_tags(lake.store):
        for _, identifier in tag.entries:
            tagged.setdefault(identifier, []).append(tag.name)
    return Retention(lake.retention_policies(), now_ns, tagged, keeps.read_holds(lake.store, now_ns), lake.fold_ns)


def dollars_per_month(stored_bytes: int) -> float:
    return stored_bytes / 1e9 * STANDARD_GB_MONTH


class GarbageCollector:
    def __init__(self, lake: Lake, *, now: Callable[[], int] = time.time_ns, threads: int = 16,
                 progress: Callable[[str, int, int], None] = lambda phase, done, total: None) -> None:
        self.lake = lake
        self.store = lake.store
        self.now = now
        self.threads = threads
        self.progress = progress
        self.run_id = secrets.token_hex(4)
        self.lock = GcLock(self.store, self.run_id, now)

    # -- a run --------------------------------------------------------------------------------
    def run(self, *, dry_run: bool = False, break_lock: bool = False) -> Report:
        start = self.now()  # the cut-off, before anything is read
        began = time.monotonic()
        grace, skew = self.lake.grace_ns, self.lake.skew_ns
        report = Report(start, dry_run, grace // 10**9)
        if not dry_run:
            self.lock.acquire(start, break_lock)
        try:
            self._run(report, start, grace, skew, dry_run)
        finally:
            if not dry_run:
                self.lock.release()
        report.seconds = time.monotonic() - began
        return report

    def _run(self, report: Report, start: int, grace: int, skew: int, dry_run: bool) -> None:
        previous = read_marks(self.store)
        previous_marks = previous[1] if previous is not None else Marks(0)
        kept, cold = self._kept_manifests(report, start)
        young = start - grace - skew
        self.progress("listing manifests", 0, 0)
        live_manifests: set[str] = set()
        listed: set[str] = set()
        candidates: dict[str, int] = {}  # key -> size
        for info in self.store.list_stat("manifests/"):
            identifier = info.key.rsplit("/", 1)[-1]
            listed.add(info.key)
            report.manifests += 1
            report.stored_bytes += info.size
            if identifier in kept or info.modified_ns >= young:
                live_manifests.add(identifier)
            else:
                candidates[info.key] = info.size
        report.manifests_live = len(live_manifests)
        report.missing = sorted(kept - live_manifests)
        unkept_manifests = [key.rsplit("/", 1)[-1] for key in candidates]  # in the lake until they are due
        relocated = {packs.parse_relocation_key(key) for key in self.store.list(packs.RELOCATIONS)} - {None}
        followed: set[bytes] = set()  # relocated packs some manifest in the lake names, at any hop
        live_objects, live_ranges, cold_packs = self._objects_named(live_manifests, start, relocated, cold,
                                                                    followed)
        self.progress("listing packs", 0, 0)
        sizes: dict[str, tuple[int, int]] = {}
        archived: dict[str, str] = {}
        for prefix in _DATA_PREFIXES:
            for info in self.store.list_stat(prefix):
                listed.add(info.key)
                report.data_objects += 1
                report.stored_bytes += info.size
                if info.storage_class != "STANDARD":
                    archived[info.key] = info.storage_class
                if info.key in live_objects or info.modified_ns >= young:
                    report.data_objects_live += 1
                    sizes[info.key] = (info.size, info.modified_ns)
                else:
                    candidates[info.key] = info.size
            self.lock.touch(start)
        # Decide: due (marked a grace ago by an earlier run, still unreferenced) or marked now.
        # A tombstone whose object is still there is a sweep that was interrupted: it was due then.
        due = {key: size for key, size in candidates.items()
               if previous_marks.marked.get(key, start) <= start - grace or key in previous_marks.deleted}
        report.rescued = sum(1 for key in previous_marks.marked if key in listed and key not in candidates)
        marked_at = self.now()  # when writers can first see the new marks
        marks = Marks(start)
        for key in candidates.keys() - due.keys():
            marks.marked[key] = previous_marks.marked.get(key, marked_at)
        report.marked = len(marks.marked)
        report.marked_bytes = sum(candidates[key] for key in marks.marked)
        marks.deleted = {key: when for key, when in previous_marks.deleted.items() if when > start - 2 * grace}
        # Tiers: a pack only cold versions name is announced, and moved a grace later if it still is
        # (a writer that names it meanwhile makes it hot again, as with marks).
        marks.archived = {key: cls for key, cls in archived.items() if key not in due}
        moving = {}
        for key, cls in cold_packs.items():
            if key in archived or key in due or key in marks.marked or sizes.get(key, (0, start))[1] >= young:
                continue
            first = previous_marks.archiving.get(key, marked_at)
            if first <= start - grace:
                moving[key] = cls
            else:
                marks.archiving[key] = first
        marks.archived.update(moving)
        for key in due:
            marks.deleted[key] = marked_at
        report.deleted = len(due)
        report.deleted_bytes = sum(due.values())
        if dry_run:
            return
        # Relocations no manifest needs any more: their old pack is gone (writers never name a
        # deleted pack, and every manifest naming it was in the lake before it went), and no
        # manifest in the lake, kept or not yet collected, names it at any hop.
        if relocated:  # the manifests awaiting collection are read for this alone
            self._objects_named(unkept_manifests, start, relocated, {}, followed)
        unneeded = sorted(packs.relocation_key(pack) for pack in relocated
                          if pack not in followed and packs.pack_key(pack) not in listed)
        report.relocations_deleted = len(unneeded)
        self._repack(report, live_ranges, sizes, young, start)
        new_key = marks_key(marked_at, self.run_id)
        self.store.put(new_key, encode_marks(marks))
        manifests_due = [key.rsplit("/", 1)[-1] for key in due if key.startswith("manifests/")]
        if manifests_due:
            self.store.put(f"{COLLECTED}{marked_at:016x}-{self.run_id}",
                           json.dumps({"format": 1, "collected_ns": marked_at, "manifests": manifests_due}).encode())
            self._fold_collected(marked_at)
        # Manifests first, all of them: no manifest ever names a pack that is gone while it is
        # still there.
        manifests = sorted(key for key in due if key.startswith("manifests/"))
        self._delete([manifests, sorted(due.keys() - set(manifests)), unneeded], start)
        for key, cls in sorted(moving.items()):
            self.store.set_storage_class(key, cls)
            report.archived += 1
            report.archived_bytes += sizes[key][0]
            self.lock.touch(start)
        for key in self.store.list(MARKS):
            if key != new_key:
                self.store.delete(key)

    def _fold_collected(self, marked_at: int) -> None:
        """Once more than FOLD_RECORDS collection records have piled up (a run every 5 minutes
        leaves 288 a day, and every fresh mount reads them all), write them as one record under a
        key of its own, then delete them. The fold is a record like the others: a reader, of any
        version, takes its manifests as collected when the fold was written."""
        keys = list(self.store.list(COLLECTED))
        if len(keys) <= FOLD_RECORDS:
            return
        found = self.store.get_each(keys)
        manifests: set[str] = set()
        for key, blob in found.items():
            manifests.update(decode_collected(key, blob).get("manifests", ()))
        fold = f"{COLLECTED}{marked_at:016x}-{secrets.token_hex(4)}"
        self.store.put(fold, json.dumps({"format": 1, "collected_ns": marked_at,
                                         "manifests": sorted(manifests)}).encode())
        self.store.delete_many(sorted(found))

    def _kept_manifests(self, report: Report, start: int) -> set[str]:
        self.progress("reading the history", 0, 0)
        tree = self.lake.read_namespace()
        retention = retention_now(self.lake, start)
        policies, held = retention.policies, retention.held
        kept: set[str] = set(retention.tagged) | held
        cold: dict[str, str | None] = {}  # kept manifest -> the class all its versions may move to
        for path, verdict in retention.judge_all(tree.history):
            report.versions += 1
            prefix = governing(path, policies)
            policy = "(no policy)" if prefix is None else "/" + prefix.decode(errors="replace")
            if verdict.kept:
                report.versions_kept += 1
                report.kept_by_policy[policy] += 1
                report.kept_by_rule[verdict.reasons[0].split(" ")[0]] += 1
                identifier = verdict.state.manifest or ""
                kept.add(identifier)
                cls = None if "held" in verdict.reasons else retention.archive_class(path, verdict)
                cold[identifier] = cls if cold.get(identifier, cls) == cls else None
            else:
                report.versions_collectable += 1
                report.collectable_by_policy[policy] += 1
        kept.discard("")
        return kept, {identifier: cls for identifier, cls in cold.items() if cls and identifier not in held}

    def _objects_named(self, identifiers: Iterable[str], start: int, relocated: set[bytes],
                       cold: dict[str, str], followed: set[bytes]) -> tuple[set[str], dict[bytes, set[int]],
                                                                           dict[str, str]]:
        """The packs and loose chunks named by these manifests, through relocations (GETs in
        parallel, streamed); each pack's live chunk objects as offset << 32 | stored length; and
        the packs only `cold` manifests name, with the class they may move to. The relocated packs
        they name on the way, directly or through another relocation, are added to `followed`."""
        named: set[str] = set()
        ranges: dict[bytes, set[int]] = {}
        hot: set[str] = set()
        cold_packs: dict[str, str] = {}
        todo = sorted(identifiers)
        done = 0

        def read(identifier: str) -> tuple[str, list[tuple[bytes, Location]]]:
            try:
                value = self.lake.get_manifest(identifier)
            except CkptfsError as error:
                if "missing" in str(error):
                    return identifier, []  # deleted meanwhile: a manifest nothing keeps and a grace old
                raise
            return identifier, [(chunk, self._resolve(chunk, value.location(index), relocated, followed))
                                for index, (chunk, _) in enumerate(value.chunks)]

        with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
            for batch in _batches(todo, 256):
                for identifier, located in pool.map(read, batch):
                    cls = cold.get(identifier)
                    for chunk, where in located:
                        key = packs.object_key(chunk, where)
                        named.add(key)
                        if not where.loose:
                            ranges.setdefault(where.pack, set()).add(where.offset << 32 | where.stored)
                            if cls is None:
                                hot.add(key)
                            else:
                                cold_packs.setdefault(key, cls)
                done += len(batch)
                self.progress("reading manifests", done, len(todo))
                self.lock.touch(start)
        return named, ranges, {key: cls for key, cls in cold_packs.items() if key not in hot}

    def _resolve(self, chunk: bytes, where: Location, relocated: set[bytes], followed: set[bytes]) -> Location:
        """Where a chunk is now: a repacked pack's chunks are where its relocation says (a chunk the
        relocation lacks was named again after the repack: its old pack stays). The relocated packs
        on the way go into `followed` (set.add holds the GIL: threads may share it)."""
        while not where.loose and where.pack in relocated:
            followed.add(where.pack)
            moved = self.lake.relocation(where.pack)
            if moved is None or chunk not in moved:
                break
            where = moved[chunk]
        return where

    def _repack(self, report: Report, ranges: dict[bytes, set[int]], sizes: dict[str, tuple[int, int]],
                young: int, start: int) -> None:
        """Copy the live chunks of mostly dead packs (and of small packs) into new packs, then write
        a relocation for each old pack. The old packs, no longer named through the relocations, are
        marked by the next run and deleted a grace later; readers follow the relocation once they
        are gone (Lake.get_run)."""
        chosen = []
        small = []
        for pack, live in ranges.items():
            size, modified = sizes.get(packs.pack_key(pack), (0, young))
            if not size or modified >= young:
                continue  # gone, or too young to judge
            live_bytes = sum(value & 0xFFFFFFFF for value in live)
            if live_bytes < REPACK_BELOW * size:
                chosen.append((pack, live, live_bytes, size))
            elif size < SMALL_PACK and all(value & 0xFFFFFFFF <= SMALL_CHUNK_OBJECT for value in live):
                small.append((pack, live, live_bytes, size))  # only small chunks: torch.save's headers
        if len(small) >= 2:
            chosen += small
        budget = REPACK_BUDGET
        group: list[tuple[bytes, list[tuple[bytes, bytes]]]] = []
        filled = 0
        for pack, live, live_bytes, size in sorted(chosen, key=lambda item: item[0]):
            if live_bytes > budget:
                break
            objects = self._live_objects(pack, live, size)
            if objects is None:
                continue
            budget -= live_bytes
            report.repacked += 1
            report.repacked_bytes += live_bytes
            report.repack_frees += size - live_bytes
            group.append((pack, objects))
            filled += sum(len(blob) for _, blob in objects)
            if filled >= NEW_PACK:
                self._write_repacked(group)
                group, filled = [], 0
            self.progress("repacking", report.repacked, len(chosen))
            self.lock.touch(start)
        if group:
            self._write_repacked(group)

    def _live_objects(self, pack: bytes, live: set[int], size: int) -> list[tuple[bytes, bytes]] | None:
        """(chunk id, chunk object) of a pack's live chunks, read and verified."""
        key = packs.pack_key(pack)
        try:
            trailer = self.store.get(key, size - packs.TRAILER_SIZE, size)
            begin, end = packs.index_range(pack, trailer, size)
            _, entries = packs.read_index(pack, self.store.get(key, begin, end), size)
        except (ObjectNotFound, CkptfsError) as error:
            log.warning("not repacking %s: %s", key, error)
            return None
        wanted = [(chunk, where) for chunk, where in entries if where.offset << 32 | where.stored in live]
        if not wanted:
            return None
        datas = self.lake.get_run(wanted)
        return [codec.encode(data, chunk) for (chunk, _), data in zip(wanted, datas, strict=True)]

    def _write_repacked(self, group: list[tuple[bytes, list[tuple[bytes, bytes]]]]) -> None:
        new = packs.new_pack_id()
        objects = [item for _, chosen in group for item in chosen]
        data, locations = packs.encode(new, objects)
        self.lake.put_pack(new, data)  # the new pack first: a relocation never names a missing pack
        position = 0
        for old, chosen in group:
            moved = dict(zip((chunk for chunk, _ in chosen), locations[position:position + len(chosen)], strict=True))
            position += len(chosen)
            self.store.put(packs.relocation_key(old), packs.encode_relocation(old, moved))

    def _delete(self, groups: list[list[str]], start: int) -> None:
        """Each group's keys gone before the next group's go. A thread deletes DELETE_RUN keys at a
        time with `delete_many`: on S3 one DeleteObjects where one DELETE a key made 64 requests."""
        done, total = 0, sum(len(group) for group in groups)
        with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
            for group in groups:
                for batch in _batches(group, self.threads * DELETE_RUN):
                    list(pool.map(self.store.delete_many, _batches(batch, DELETE_RUN)))
                    done += len(batch)
                    self.progress("deleting", done, total)
                    self.lock.touch(start)


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for first in range(0, len(items), size):
        yield items[first:first + size]
