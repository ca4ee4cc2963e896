"""The lake: the durable format on top of an object store. Synchronous; no FUSE, no trio.

Keys (docs/FORMAT.md):
    lake.json                        descriptor: format name and version, chunking profile
    packs/<3 hex>/<32 hex>           packs (packs.py): chunk objects end to end and an index; random ids
    chunks/<3 hex>/<32 hex>          loose chunk objects (codec.py), keyed by xxh3-128 of the raw bytes:
                                     what lakes of format 1 to 3 hold; still read, no longer written
    manifests/<3 hex>/<32 hex>       manifests (manifest.py), keyed by xxh3-128 of their bytes
    log/<mount id>/<16 hex seq>      namespace log segments (namespace.py)
    mounts/<mount id>                one small object per mount that ever published: running mounts
                                     find every log with one LIST of mounts/
    feed/<16 hex time>-<mount>-<16 hex seq>   an empty marker per published segment, keyed by the
                                     writer's clock: running mounts find new segments with one LIST
    snapshots/<16 hex horizon>-<mount>-<16 hex segments>   the replayed namespace up to a horizon
                                     (snapshot.py): a starting mount reads it and what follows
No key is ever derived from a user-supplied name.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ckptfs.errors import CorruptObjectError
from ckptfs.lake import chunker, codec, events, manifest, namespace, packs, retention, snapshot
from ckptfs.lake.packs import LOOSE, Location
from ckptfs.store import ObjectNotFound, ObjectStore, PreconditionFailed

log = logging.getLogger(__name__)
DESCRIPTOR_KEY = "lake.json"
FORMAT_NAME = "ckptfs-lake"
# 2: events with owners, times, special files, hard links; 3: placement, snapshots; 4: packs, manifests
# that name where each chunk lies
FORMAT_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
# How late a segment may reach the lake and its events keep their time in the replay order, and the
# clock skew between mounts that snapshots allow for (events.placement, lake/snapshot.py). Lake-wide:
# every mount must place events alike, so they live in the descriptor; these are the defaults.
LATE_PUBLISH_S = 600
MAX_CLOCK_SKEW_S = 300
# How long garbage collection waits between marking an object and deleting it, and how young an
# object must be for it to be protected unread (docs/DESIGN.md, "Garbage collection"). Lake-wide:
# every writer's lease is a quarter of it. The floor keeps a writer's lease above the clock skew.
GC_GRACE_S = 86400
# A version replaced or removed sooner than this after it was written is folded into what followed
# (lake/retention.py): the temp file of an atomic save, an append loop's closes. 0 shows every close.
FOLD_S = 10


@dataclass
class LogView:
    """What a mount reads to start: a snapshot's tree (or an empty one) and the events after it."""
    base: namespace.Namespace
    events: list[events.Event]  # after the base, in replay order
    cursors: dict[str, int]  # mount -> highest seq read (every lower one read too, or in the snapshot)
    horizon_ns: int | None = None
    snapshot_key: str | None = None
    base_covers: dict[str, int] = field(default_factory=dict)  # the snapshot's cursors
    segments_read: int = 0

    def replay(self) -> namespace.Namespace:
        tree = self.base.copy()
        for change in self.events:
            tree.apply(change)
        tree.events, tree.cursors = self.events, self.cursors
        return tree


# Where a job scheduler says which job a process belongs to.
JOB_VARIABLES = ("SLURM_JOB_ID", "SLURM_PROCID", "TORCHELASTIC_RUN_ID", "RANK", "KUBERNETES_POD_NAME",
                 "POD_NAME", "JOB_ID")


def writer_identity() -> dict[str, Any]:
    """The host, user and job (from the scheduler's environment) of this process."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    job = {name.lower(): os.environ[name] for name in JOB_VARIABLES if os.environ.get(name)}
    if os.environ.get("KUBERNETES_SERVICE_HOST") and os.environ.get("HOSTNAME"):
        job.setdefault("pod", os.environ["HOSTNAME"])
    return {"host": socket.gethostname(), "user": user, "job": job}


def gc_grace_floor_s(skew_s: int) -> int:
    """The shortest grace that keeps writers safe: their lease (a quarter of it) must exceed twice the
    clock skew, which garbage collection's deadlines allow for on both sides."""
    return max(2, 8 * skew_s)


class Lake:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.chunking_profile = chunker.PROFILE  # the lake's own, once open() has read its descriptor
        self.late_ns = LATE_PUBLISH_S * 10**9
        self.skew_ns = MAX_CLOCK_SKEW_S * 10**9
        self.grace_ns = GC_GRACE_S * 10**9
        self.fold_ns = FOLD_S * 10**9
        self._relocations: dict[bytes, dict[bytes, Location]] = {}
        self.created_ns = 0

    # -- descriptor ---------------------------------------------------------------------------
    def open(self, *, create: bool = True, settings: dict[str, int] | None = None) -> dict[str, Any]:
        """Check the lake's format version, creating the descriptor in an empty lake (with `settings`:
        late_publish_s, max_clock_skew_s, gc_grace_s, fold_s; checked as when read)."""
        try:
            blob = self.store.get(DESCRIPTOR_KEY)
        except ObjectNotFound:
            if not create:
                raise
            descriptor = {"format": FORMAT_NAME, "version": FORMAT_VERSION,
                          "chunking": {"profile": chunker.PROFILE, "min": chunker.MIN_SIZE,
                                       "avg": chunker.AVG_SIZE, "max": chunker.MAX_SIZE},
                          "created_ns": time.time_ns(), **(settings or {})}
            try:
                self.store.put(DESCRIPTOR_KEY, json.dumps(descriptor).encode(), if_absent=True)
            except PreconditionFailed:
                pass  # another mount created it first; read theirs
            blob = self.store.get(DESCRIPTOR_KEY)
        try:
            descriptor = json.loads(blob)
            name, version = descriptor["format"], descriptor["version"]
        except (ValueError, KeyError, TypeError):
            raise CorruptObjectError(f"{self.store.url}{DESCRIPTOR_KEY} is not a ckptfs lake descriptor") from None
        if name != FORMAT_NAME or version not in READABLE_VERSIONS:
            raise CorruptObjectError(f"{self.store.url} holds lake format {name!r} v{version}; this ckptfs "
                                     f"reads {FORMAT_NAME} v{', v'.join(map(str, READABLE_VERSIONS))}")
        for name, wanted in (settings or {}).items():
            if descriptor.get(name) != wanted:
                log.warning("%s exists with %s=%s; the setting %s=%s applies only to a lake being created",
                            self.store.url, name, descriptor.get(name, "(default)"), name, wanted)
        profile = descriptor.get("chunking", {}).get("profile", 1)
        if profile not in chunker.PROFILES:
            raise CorruptObjectError(f"{self.store.url} is chunked with profile {profile!r}; this ckptfs "
                                     f"knows profiles {', '.join(map(str, chunker.PROFILES))}")
        self.chunking_profile = profile
        self.created_ns = descriptor.get("created_ns", 0)  # the lake's identity, for cache dirs
        for name, default in (("late_publish_s", LATE_PUBLISH_S), ("max_clock_skew_s", MAX_CLOCK_SKEW_S)):
            value = descriptor.get(name, default)
            if type(value) is not int or not 0 <= value <= 7 * 24 * 3600:
                raise CorruptObjectError(f"{self.store.url}{DESCRIPTOR_KEY}: {name} {value!r:.40} is not a "
                                         "number of seconds up to a week")
        self.late_ns = descriptor.get("late_publish_s", LATE_PUBLISH_S) * 10**9
        self.skew_ns = descriptor.get("max_clock_skew_s", MAX_CLOCK_SKEW_S) * 10**9
        grace = descriptor.get("gc_grace_s", GC_GRACE_S)
        floor = gc_grace_floor_s(self.skew_ns // 10**9)
        if type(grace) is not int or not floor <= grace <= 365 * 86400:
            raise CorruptObjectError(f"{self.store.url}{DESCRIPTOR_KEY}: gc_grace_s {grace!r:.40} is not a number "
                                     f"of seconds from {floor} (8 x max_clock_skew_s, at least 2) to a year")
        self.grace_ns = grace * 10**9
        fold = descriptor.get("fold_s", FOLD_S)
        if type(fold) is not int or not 0 <= fold <= 86400:
            raise CorruptObjectError(f"{self.store.url}{DESCRIPTOR_KEY}: fold_s {fold!r:.40} is not a number of "
                                     "seconds up to a day")
        self.fold_ns = fold * 10**9
        if create and version < FORMAT_VERSION:
            # A mount writes events of the current format: older readers must refuse the lake with
            # a clear message rather than skip those events. The upgraded descriptor is the same
            # whoever writes it, so two mounts upgrading at once need no condition.
            descriptor = {**descriptor, "version": FORMAT_VERSION}
            self.store.put(DESCRIPTOR_KEY, json.dumps(descriptor).encode())
            log.info("upgraded %s from lake format v%d to v%d", self.store.url, version, FORMAT_VERSION)
        return descriptor

    def through(self, store: ObjectStore) -> Lake:
        """This lake, opened, through another store of the same objects (another retry policy): its
        descriptor is not read again (a round of requests at a mount's start)."""
        other = Lake(store)
        for name in ("chunking_profile", "late_ns", "skew_ns", "grace_ns", "fold_ns", "created_ns"):
            setattr(other, name, getattr(self, name))
        return other

    # -- chunks -------------------------------------------------------------------------------
    def chunk_ids(self) -> Iterator[bytes]:
        """The ids of every chunk in the lake (one LIST per thousand chunks)."""
        for key in self.store.list("chunks/"):
            try:
                yield bytes.fromhex(key.rsplit("/", 1)[-1])
            except ValueError:
                continue

    def get_chunk(self, identifier: bytes, where: Location = LOOSE) -> bytes:
        """Return the verified raw bytes of a chunk; CorruptObjectError if missing or damaged."""
        return self.get_run([(identifier, where)])[0]

    def get_run(self, run: list[tuple[bytes, Location]]) -> list[bytes]:
        """The verified raw bytes of chunks of one pack, in pack order (packs.runs), with one ranged
        GET from the first to the end of the last; or of one loose chunk. CorruptObjectError if
        missing or damaged."""
        first = run[0][1]
        if first.loose:
            (identifier, _), = run
            key = codec.chunk_key(identifier)
            try:
                return [codec.decode(self.store.get(key), identifier)]
            except ObjectNotFound:
                raise CorruptObjectError(f"chunk {identifier.hex()} is missing from the lake ({key})") from None
        key = packs.pack_key(first.pack)
        # Each object once (packs.runs puts a chunk that a file holds twice in one run), in pack order.
        objects = sorted({where.offset: where for _, where in run}.values(), key=lambda where: where.offset)
        sizes = _object_parts(objects)
        try:
            parts = self.store.get_parts(key, objects[0].offset, sizes)
        except ObjectNotFound:
            moved = self.relocation(first.pack)
            if moved is None or any(identifier not in moved for identifier, _ in run):
                raise CorruptObjectError(f"pack {first.pack.hex()} is missing from the lake ({key})") from None
            # Repacked by GC (lake/gc.py): the chunks are where the relocation says, perhaps in
            # several packs, perhaps moved again.
            return [self.get_chunk(identifier, moved[identifier]) for identifier, _ in run]
        if [len(part) for part in parts] != sizes:
            raise CorruptObjectError(f"chunk {run[-1][0].hex()}: pack {first.pack.hex()} ends before byte "
                                     f"{objects[-1].end} ({key})")
        stored = {where.offset: (parts[3 * number + 1], parts[3 * number + 2]) for number, where in enumerate(objects)}
        decoded: dict[tuple[int, bytes], bytes] = {}
        for identifier, where in run:
            if (where.offset, identifier) not in decoded:
                try:
                    decoded[where.offset, identifier] = codec.decode_parts(*stored[where.offset], identifier)
                except CorruptObjectError as error:
                    raise CorruptObjectError(f"{error} ({key} at byte {where.offset})") from None
        return [decoded[where.offset, identifier] for identifier, where in run]

    def relocation(self, pack: bytes) -> dict[bytes, Location] | None:
        """Where GC moved the live chunks of a repacked pack (`relocations/`), or None. Cached: a
        relocation never changes."""
        if pack in self._relocations:
            return self._relocations[pack]
        try:
            moved = packs.decode_relocation(self.store.get(packs.relocation_key(pack)), pack)
        except ObjectNotFound:
            return None
        self._relocations[pack] = moved
        return moved

    def put_pack(self, pack: bytes, data: bytes) -> None:
        """Store a pack. Its id is random, so it is new: no condition needed, and a retried PUT
        whose first attempt landed writes the same bytes again."""
        self.store.put(packs.pack_key(pack), data)

    def pack_ids(self) -> Iterator[bytes]:
        for key in self.store.list(packs.PREFIX):
            pack = packs.parse_pack_key(key)
            if pack is not None:
                yield pack

    # -- manifests ----------------------------------------------------------------------------
    def put_manifest(self, value: manifest.Manifest) -> str:
        blob = manifest.encode(value)
        identifier = manifest.manifest_id(blob)
        self.store.put(manifest.manifest_key(identifier), blob)
        return identifier

    def get_manifest(self, identifier: str) -> manifest.Manifest:
        key = manifest.manifest_key(identifier)
        try:
            blob = self.store.get(key)
        except ObjectNotFound:
            raise CorruptObjectError(f"manifest {identifier} is missing from the lake ({key})") from None
        if manifest.manifest_id(blob) != identifier:
            raise CorruptObjectError(f"manifest {identifier} does not match its id ({key})")
        return manifest.decode(blob, f"manifest {identifier}")

    # -- namespace log ------------------------------------------------------------------------
    def append_log(self, mount: str, seq: int, events: list[dict[str, Any]], published_ns: int | None = None) -> None:
        key = namespace.segment_key(mount, seq)
        try:
            self.store.put(key, namespace.encode_segment(mount, seq, events, published_ns), if_absent=True)
        except PreconditionFailed:
            # A retried PUT whose first attempt landed: fine if it holds what we meant to write.
            existing = namespace.decode_segment(self.store.get(key), key)
            if existing != events:
                raise CorruptObjectError(f"{key} already holds other events: is another daemon using "
                                         "this mount id?") from None
        # The change feed: running mounts find new segments with one LIST of feed/ (engine/follower.py).
        self.store.put(namespace.feed_key(time.time_ns(), mount, seq), b"")

    def feed_after(self, time_ns: int) -> list[tuple[int, str, int]]:
        """(time, mount, seq) of the feed markers written after `time_ns` (by their writers' clocks)."""
        found = []
        for key in self.store.list("feed/", start_after=namespace.feed_key(max(0, time_ns), "", 0)):
            parsed = namespace.parse_feed_key(key)
            if parsed is not None:
                found.append(parsed)
        return found

    def prune_feed(self, before_ns: int) -> int:
        """Delete the feed markers written before `before_ns` (by their writers' clocks): followers
        look back minutes, and a starting mount reads the logs themselves. Returns how many."""
        old = [key for key in self.store.list("feed/")
               if (parsed := namespace.parse_feed_key(key)) is not None and parsed[0] < before_ns]
        # One request per 1,000 keys on S3. One DELETE each, a soak's fresh mount, writing its first
        # snapshot in the sweep `ckptfs latest` asks for, pruned 615 markers at ~9 a second while
        # latest waited 66 s (docs/BENCHMARKS.md, issue 19)
        self.store.delete_many(old)
        return len(old)

    def segments(self, mount: str | None = None, after: int = -1) -> Iterator[tuple[str, int, str]]:
        """(mount, seq, key) of the log segments, of every mount or of one after seq `after` (one
        LIST from there: what a running mount asks for to follow another)."""
        if mount is None:
            keys = self.store.list("log/")
        else:
            keys = self.store.list(f"log/{mount}/",
                                   start_after=namespace.segment_key(mount, after) if after >= 0 else None)
        for key in keys:
            parsed = namespace.parse_segment_key(key)
            if parsed is None or (mount is not None and parsed[0] != mount):
                log.warning("ignoring unexpected key %s in the namespace log", key)
                continue
            yield parsed[0], parsed[1], key

    def read_segment(self, mount: str, seq: int, key: str,
                     on_damaged: Callable[[str, Exception], None] | None = None) -> list[events.Event]:
        """The valid events of one segment, in order. A segment that cannot be read or parsed, or
        an event in it that is not valid (`events.parse`), is reported to `on_damaged` with the key
        (by default: an error in the log naming it) and skipped, so one damaged object or event does
        not make the lake unreadable."""
        def damaged(error: Exception) -> None:
            if on_damaged is None:
                what = "an invalid event of" if isinstance(error, events.InvalidEvent) else "damaged namespace segment"
                log.error("skipping %s %s: %s", what, key, error)
            else:
                on_damaged(key, error)

        try:
            raw_events, published_ns = namespace.decode_segment_envelope(self.store.get(key), key)
        except (CorruptObjectError, ObjectNotFound) as error:
            damaged(error)
            return []
        return self.parse_segment(mount, seq, key, raw_events, published_ns, damaged)

    def parse_segment(self, mount: str, seq: int, key: str, raw_events: list[Any], published_ns: int | None,
                      damaged: Callable[[Exception], None]) -> list[events.Event]:
        """The valid events of a segment's raw events, placed by the lake's rule (events.placement)."""
        valid = []
        for position, raw in enumerate(raw_events):
            try:
                valid.append(events.parse(raw, mount=mount, seq=seq, position=position,
                                          where=f"{key} event {position}", published_ns=published_ns,
                                          late_ns=self.late_ns))
            except events.InvalidEvent as error:
                damaged(error)
        return valid

    def read_log(self, on_damaged: Callable[[str, Exception], None] | None = None, *, use_snapshot: bool = True,
                 threads: int = 32) -> LogView:
        """What a starting mount reads: the newest snapshot that reads well (lake/snapshot.py), then
        every segment after its cursors, GETs in parallel (as many as an S3 store's connection pool
        holds: 1,000 segments took 14.0 s with 16 in flight on the S3 model, 9.1 s with 32, 8.5 s with
        64). Without a snapshot (or `use_snapshot` False: fsck), every segment of `log/`."""
        view = LogView(namespace.Namespace(), [], {})
        snap = self.newest_snapshot() if use_snapshot else None
        if snap is not None:
            view.snapshot_key, found = snap
            view.base, view.events, view.cursors = found.tree, list(found.tail), dict(found.cursors)
            view.horizon_ns, view.base_covers = found.horizon_ns, dict(found.cursors)
            mounts = sorted(set(self.mounts()) | set(found.cursors))
            with concurrent.futures.ThreadPoolExecutor(threads) as pool:
                listed = pool.map(lambda mount: list(self.segments(mount, found.cursors.get(mount, -1))), mounts)
                keys = [segment for segments in listed for segment in segments]
        else:
            keys = list(self.segments())
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            for (mount, seq, _), read in zip(keys, pool.map(lambda item: self.read_segment(*item, on_damaged), keys),
                                             strict=True):
                view.events.extend(read)
                view.cursors[mount] = max(view.cursors.get(mount, -1), seq)
        view.segments_read = len(keys)
        view.events.sort(key=lambda change: change.order)
        return view

    def read_namespace(self, on_damaged: Callable[[str, Exception], None] | None = None, *,
                       use_snapshot: bool = True) -> namespace.Namespace:
        """The lake's tree and history (`read_log` replayed)."""
        return self.read_log(on_damaged, use_snapshot=use_snapshot).replay()

    # -- snapshots ----------------------------------------------------------------------------
    def snapshots(self) -> list[tuple[int, str, int, str]]:
        """(horizon, writer, segments covered, key) of the snapshots in the lake, newest last."""
        found = []
        for key in self.store.list(snapshot.PREFIX):
            parsed = snapshot.parse_key(key)
            if parsed is not None:
                found.append((*parsed, key))
        return sorted(found, key=lambda item: (item[0], item[2], item[3]))

    def read_snapshot(self, key: str) -> snapshot.Snapshot:
        try:
            blob = self.store.get(key)
        except ObjectNotFound:
            raise CorruptObjectError(f"{key} is gone (replaced by a newer snapshot?)") from None
        return snapshot.decode(blob, key, self.late_ns)

    def newest_snapshot(self, tries: int = 3) -> tuple[str, snapshot.Snapshot] | None:
        """The newest snapshot that reads well; one that does not is reported and the one before
        it tried, and after `tries` the whole log is read instead (None)."""
        for _, _, _, key in reversed(self.snapshots()[-tries:]):
            try:
                return key, self.read_snapshot(key)
            except CorruptObjectError as error:
                log.error("skipping namespace snapshot: %s", error)
        return None

    def put_snapshot(self, value: snapshot.Snapshot, mount: str) -> str:
        key = snapshot.key(value.horizon_ns, mount, value.segments)
        self.store.put(key, snapshot.encode(value))
        return key

    # -- retention policies -------------------------------------------------------------------
    def retention_policies(self) -> dict[bytes, retention.Policy]:
        """Every prefix's policy (one LIST, a GET each). A damaged policy stops the caller: GC
        must not run on a guess."""
        policies = {}
        for key in self.store.list(retention.PREFIX):
            try:
                path, policy, _ = retention.decode_policy(self.store.get(key), key)
            except ObjectNotFound:
                continue
            policies[path] = policy
        return policies

    def set_retention(self, path: bytes, policy: retention.Policy) -> None:
        self.store.put(retention.policy_key(path), retention.encode_policy(path, policy, time.time_ns()))

    def clear_retention(self, path: bytes) -> bool:
        key = retention.policy_key(path)
        existed = self.store.size(key) is not None
        self.store.delete(key)
        return existed

    # -- mounts -------------------------------------------------------------------------------
    def register_mount(self, mount: str) -> None:
        """Announce a mount, so that running mounts find its log with one small LIST (`mounts/`), and
        say who it is (host, user, job: `writer_identity`), the audit trail `ckptfs log` shows."""
        key = f"mounts/{mount}"
        if self.store.size(key) is None:
            self.store.put(key, json.dumps({"mount": mount, "created_ns": time.time_ns(),
                                            **writer_identity()}).encode())

    def writers(self) -> dict[str, dict[str, Any]]:
        """mount id -> what its mounts/ object says of it (host, user, job), for the mounts that say."""
        found = {}
        for mount in self.mounts():
            try:
                value = json.loads(self.store.get(f"mounts/{mount}"))
            except (ObjectNotFound, ValueError):
                continue
            found[mount] = {key: value[key] for key in ("host", "user", "job") if key in value}
        return found

    def mounts(self) -> list[str]:
        found = [key.rsplit("/", 1)[-1] for key in self.store.list("mounts/")]
        return [mount for mount in found if namespace.valid_mount_id(mount)]


def _object_parts(objects: list[Location]) -> list[int]:
    """The sizes in which to read a run of chunk objects of one pack (in pack order, each once)
    from the first one's offset: for each, the gap before it (packs.runs may skip one), its header,
    its payload. An object shorter than a header is read whole as its header (decode says it is
    truncated); objects that overlap are a damaged manifest."""
    sizes, at = [], objects[0].offset
    for where in objects:
        if where.offset < at:
            raise CorruptObjectError(f"chunk objects overlap in pack {where.pack.hex()} at byte {where.offset}")
        header = min(codec.HEADER_SIZE, where.stored)
        sizes += [where.offset - at, header, where.stored - header]
        at = where.end
    return sizes
