"""The lake: the durable format on top of an object store. Synchronous; no FUSE, no trio.

Keys (docs/FORMAT.md):
    lake.json                        descriptor: format name and version, chunking profile
    chunks/<3 hex>/<32 hex>          chunk objects (codec.py), keyed by xxh3-128 of the raw bytes
    manifests/<3 hex>/<32 hex>       manifests (manifest.py), keyed by xxh3-128 of their bytes
    log/<mount id>/<16 hex seq>      namespace log segments (namespace.py)
    mounts/<mount id>                one small object per mount that ever published: running mounts
                                     find every log with one LIST of mounts/
    feed/<16 hex time>-<mount>-<16 hex seq>   an empty marker per published segment, keyed by the
                                     writer's clock: running mounts find new segments with one LIST
No key is ever derived from a user-supplied name.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from ckptfs.errors import CorruptObjectError
from ckptfs.lake import chunker, codec, events, manifest, namespace
from ckptfs.store import ObjectNotFound, ObjectStore, PreconditionFailed

log = logging.getLogger(__name__)
DESCRIPTOR_KEY = "lake.json"
FORMAT_NAME = "ckptfs-lake"
FORMAT_VERSION = 2  # 2: namespace events with owners, times, special files and hard links
READABLE_VERSIONS = (1, 2)


class Lake:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.chunking_profile = chunker.PROFILE  # the lake's own, once open() has read its descriptor

    # -- descriptor ---------------------------------------------------------------------------
    def open(self, *, create: bool = True) -> dict[str, Any]:
        """Check the lake's format version, creating the descriptor in an empty lake."""
        try:
            blob = self.store.get(DESCRIPTOR_KEY)
        except ObjectNotFound:
            if not create:
                raise
            descriptor = {"format": FORMAT_NAME, "version": FORMAT_VERSION,
                          "chunking": {"profile": chunker.PROFILE, "min": chunker.MIN_SIZE,
                                       "avg": chunker.AVG_SIZE, "max": chunker.MAX_SIZE},
                          "created_ns": time.time_ns()}
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
        profile = descriptor.get("chunking", {}).get("profile", 1)
        if profile not in chunker.PROFILES:
            raise CorruptObjectError(f"{self.store.url} is chunked with profile {profile!r}; this ckptfs "
                                     f"knows profiles {', '.join(map(str, chunker.PROFILES))}")
        self.chunking_profile = profile
        if create and version < FORMAT_VERSION:
            # A mount writes events of the current format: older readers must refuse the lake with
            # a clear message rather than skip those events. The upgraded descriptor is the same
            # whoever writes it, so two mounts upgrading at once need no condition.
            descriptor = {**descriptor, "version": FORMAT_VERSION}
            self.store.put(DESCRIPTOR_KEY, json.dumps(descriptor).encode())
            log.info("upgraded %s from lake format v%d to v%d", self.store.url, version, FORMAT_VERSION)
        return descriptor

    # -- chunks -------------------------------------------------------------------------------
    def put_chunk_object(self, identifier: bytes, blob: bytes) -> bool:
        """Store a chunk object unless the lake has it; False if it was already there.

        One conditional PUT instead of HEAD + PUT: fresh data (the common case for what is not
        known locally) costs one request. A chunk is content-addressed, so whoever wrote it first
        wrote the same bytes; a retried PUT whose first attempt landed is answered the same way.
        """
        try:
            self.store.put(codec.chunk_key(identifier), blob, if_absent=True)
            return True
        except PreconditionFailed:
            return False

    def chunk_ids(self) -> Iterator[bytes]:
        """The ids of every chunk in the lake (one LIST per thousand chunks)."""
        for key in self.store.list("chunks/"):
            try:
                yield bytes.fromhex(key.rsplit("/", 1)[-1])
            except ValueError:
                continue

    def get_chunk(self, identifier: bytes) -> bytes:
        """Return the verified raw bytes of a chunk; CorruptObjectError if missing or damaged."""
        key = codec.chunk_key(identifier)
        try:
            blob = self.store.get(key)
        except ObjectNotFound:
            raise CorruptObjectError(f"chunk {identifier.hex()} is missing from the lake ({key})") from None
        return codec.decode(blob, identifier)

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
    def append_log(self, mount: str, seq: int, events: list[dict[str, Any]]) -> None:
        key = namespace.segment_key(mount, seq)
        try:
            self.store.put(key, namespace.encode_segment(mount, seq, events), if_absent=True)
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
            raw_events = namespace.decode_segment(self.store.get(key), key)
        except (CorruptObjectError, ObjectNotFound) as error:
            damaged(error)
            return []
        valid = []
        for position, raw in enumerate(raw_events):
            try:
                valid.append(events.parse(raw, mount=mount, seq=seq, position=position,
                                          where=f"{key} event {position}"))
            except events.InvalidEvent as error:
                damaged(error)
        return valid

    def read_events(self, on_damaged: Callable[[str, Exception], None] | None = None,
                    cursors: dict[str, int] | None = None) -> list[events.Event]:
        """All published events of all mounts, validated, in replay order (`Event.order`).
        `cursors`, if given, receives the last seq read of each mount."""
        ordered = []
        for mount, seq, key in self.segments():
            ordered.extend(self.read_segment(mount, seq, key, on_damaged))
            if cursors is not None:
                cursors[mount] = max(cursors.get(mount, -1), seq)
        ordered.sort(key=lambda change: change.order)
        return ordered

    def read_namespace(self, on_damaged: Callable[[str, Exception], None] | None = None) -> namespace.Namespace:
        tree = namespace.Namespace()
        tree.events = self.read_events(on_damaged, tree.cursors)
        for change in tree.events:
            tree.apply(change)
        return tree

    # -- mounts -------------------------------------------------------------------------------
    def register_mount(self, mount: str) -> None:
        """Announce a mount, so that running mounts find its log with one small LIST (`mounts/`)."""
        key = f"mounts/{mount}"
        if self.store.size(key) is None:
            self.store.put(key, json.dumps({"mount": mount, "created_ns": time.time_ns()}).encode())

    def mounts(self) -> list[str]:
        found = [key.rsplit("/", 1)[-1] for key in self.store.list("mounts/")]
        return [mount for mount in found if namespace.valid_mount_id(mount)]
