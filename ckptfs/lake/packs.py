"""Packs: many chunk objects in one store object, so a GiB costs tens of requests instead of a thousand.

A pack (`packs/<3 hex>/<32 hex>`, a random id, written once) is chunk objects exactly as codec.py
encodes them, laid end to end, then an index and a trailer:

    chunk object | chunk object | ... | index: count x [chunk id 16 bytes, offset u64, stored u32]
    | trailer: index offset u64, count u32, magic b"CKPP"

Readers do not need the index: a manifest names each chunk's pack, offset and stored length
(`Location`), so a chunk is one ranged GET and adjacent chunks of one pack are one GET together.
The index makes a pack self-describing, for repacking (docs/DESIGN.md). A chunk read
from a pack is verified against its id (codec.decode) like any other.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass

from ckptfs.errors import CorruptObjectError
from ckptfs.lake import codec
from ckptfs.libc import copy_into

MAGIC = b"CKPP"
PREFIX = "packs/"
_INDEX_ENTRY = struct.Struct("<16sQI")
_TRAILER = struct.Struct("<QI4s")
TRAILER_SIZE = _TRAILER.size
# The most one GET of a run asks for: a whole pack (closed at 32 MiB or just past it, by up to one
# chunk, engine/chunks.py), so that a pack is one GET rather than a GET and its last chunk.
RUN_BYTES = 40 << 20
# The most bytes between two chunks of a run that a GET reads and drops: the ~100-byte record
# headers an unchanged tensor's chunks have between them in an older pack (chunker profile 3).
RUN_GAP = 64 << 10


@dataclass(frozen=True, slots=True)
class Location:
    """Where a chunk object is: bytes [offset, offset + stored) of pack `pack`; LOOSE for a chunk
    stored as its own object under `chunks/` (lakes of format 1 to 3)."""
    pack: bytes
    offset: int
    stored: int

    @property
    def loose(self) -> bool:
        return not self.pack

    @property
    def end(self) -> int:
        return self.offset + self.stored


LOOSE = Location(b"", 0, 0)


def new_pack_id() -> bytes:
    return os.urandom(16)


def pack_key(pack: bytes) -> str:
    text = pack.hex()
    return f"{PREFIX}{text[:3]}/{text}"


RELOCATIONS = "relocations/"


def relocation_key(pack: bytes) -> str:
    text = pack.hex()
    return f"{RELOCATIONS}{text[:3]}/{text}"


def parse_relocation_key(key: str) -> bytes | None:
    name = key.rsplit("/", 1)[-1]
    try:
        pack = bytes.fromhex(name)
    except ValueError:
        return None
    return pack if len(pack) == 16 and key == relocation_key(pack) else None


def encode_relocation(pack: bytes, moved: dict[bytes, Location]) -> bytes:
    return json.dumps({"format": 1, "pack": pack.hex(),
                       "chunks": {chunk.hex(): [where.pack.hex(), where.offset, where.stored]
                                  for chunk, where in moved.items()}}).encode()


def decode_relocation(blob: bytes, pack: bytes) -> dict[bytes, Location]:
    try:
        value = json.loads(blob)
        if value.get("format") != 1 or value["pack"] != pack.hex():
            raise ValueError("not this pack's relocation")
        moved = {bytes.fromhex(chunk): Location(bytes.fromhex(new), int(offset), int(stored))
                 for chunk, (new, offset, stored) in value["chunks"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CorruptObjectError(f"{relocation_key(pack)}: not a relocation ({error})") from None
    if any(len(chunk) != 16 or len(where.pack) != 16 or where.stored < codec.HEADER_SIZE
           for chunk, where in moved.items()):
        raise CorruptObjectError(f"{relocation_key(pack)}: a malformed entry")
    return moved


def object_key(chunk: bytes, where: Location) -> str:
    """The lake object holding a chunk at `where`: its pack, or the loose chunk object."""
    return codec.chunk_key(chunk) if where.loose else pack_key(where.pack)


def parse_pack_key(key: str) -> bytes | None:
    name = key.rsplit("/", 1)[-1]
    try:
        pack = bytes.fromhex(name)
    except ValueError:
        return None
    return pack if len(pack) == 16 and key == pack_key(pack) else None


def encode(pack: bytes, objects: list[tuple[bytes, bytes | tuple[bytes, ...]]],
           into: bytearray | None = None) -> tuple[bytes | bytearray, list[Location]]:
    """The bytes of a pack holding these (chunk id, chunk object) pairs, and where each one lies.
    An object may come as the pieces it is made of (codec.encode_parts: header, payload): they are
    copied once, into the pack, rather than joined into an object first. With `into`, the pack is
    that buffer, resized to fit and filled without the GIL (libc.copy_into): a buffer reused pack
    after pack is not faulted in again."""
    pieces: list[bytes] = []
    locations, offset = [], 0
    for _, blob in objects:
        parts = blob if isinstance(blob, tuple) else (blob,)
        size = sum(len(part) for part in parts)
        pieces += parts
        locations.append(Location(pack, offset, size))
        offset += size
    index = b"".join(_INDEX_ENTRY.pack(identifier, where.offset, where.stored)
                     for (identifier, _), where in zip(objects, locations, strict=True))
    trailer = _TRAILER.pack(offset, len(objects), MAGIC)
    if into is not None:
        copy_into(into, [*pieces, index, trailer])
        return into, locations
    return b"".join([*pieces, index, trailer]), locations


def index_range(pack: bytes, trailer: bytes, size: int) -> tuple[int, int]:
    """From a pack's last TRAILER_SIZE bytes: the byte range [start, size) holding its index and trailer."""
    if len(trailer) != TRAILER_SIZE:
        raise CorruptObjectError(f"pack {pack.hex()}: truncated")
    index_offset, count, magic = _TRAILER.unpack(trailer)
    if magic != MAGIC or index_offset + count * _INDEX_ENTRY.size + TRAILER_SIZE != size:
        raise CorruptObjectError(f"pack {pack.hex()}: bad trailer")
    return index_offset, size


def read_index(pack: bytes, tail: bytes, size: int) -> tuple[int, list[tuple[bytes, Location]]]:
    """Parse a pack's index from `tail` (the last bytes of the pack, of total `size`): (index offset,
    [(chunk id, location)]). Raises CorruptObjectError if the tail is not a valid index."""
    name = f"pack {pack.hex()}"
    if len(tail) < TRAILER_SIZE:
        raise CorruptObjectError(f"{name}: truncated")
    index_offset, count, magic = _TRAILER.unpack_from(tail, len(tail) - TRAILER_SIZE)
    if magic != MAGIC:
        raise CorruptObjectError(f"{name}: bad trailer magic")
    if index_offset + count * _INDEX_ENTRY.size + TRAILER_SIZE != size:
        raise CorruptObjectError(f"{name}: index of {count} entries at {index_offset} does not fit {size} bytes")
    start = len(tail) - TRAILER_SIZE - count * _INDEX_ENTRY.size
    if start < 0:
        raise CorruptObjectError(f"{name}: index not in the bytes read")
    entries, position = [], 0
    for identifier, offset, stored in _INDEX_ENTRY.iter_unpack(tail[start:len(tail) - TRAILER_SIZE]):
        if offset != position or stored < codec.HEADER_SIZE or offset + stored > index_offset:
            raise CorruptObjectError(f"{name}: index entry for {identifier.hex()} is out of place")
        entries.append((identifier, Location(pack, offset, stored)))
        position = offset + stored
    if position != index_offset:
        raise CorruptObjectError(f"{name}: index does not cover the chunks")
    return index_offset, entries


def index_bytes(count: int) -> int:
    """How many bytes at the end of a pack hold an index of `count` entries and the trailer."""
    return count * _INDEX_ENTRY.size + TRAILER_SIZE


def runs(locations: list[Location], max_bytes: int, max_gap: int = 0) -> list[list[int]]:
    """Group positions into runs readable with one ranged GET each: chunks of one pack, in pack
    order, each starting at most `max_gap` bytes after the one before it ends (the gap is read and
    dropped), a run spanning at most `max_bytes`. Loose chunks are runs of one. The chunks need not
    be consecutive in the list: a file whose unchanged chunks sit in an older pack between its new
    ones reads each pack's part as one run. Positions with the same location are grouped together."""
    grouped: list[list[int]] = []
    packed = sorted((position for position, where in enumerate(locations) if not where.loose),
                    key=lambda position: (locations[position].pack, locations[position].offset))
    first = end = None
    for position in packed:
        where = locations[position]
        if (grouped and first is not None and end is not None and first.pack == where.pack
                and first.offset <= where.offset <= end + max_gap and max(end, where.end) - first.offset <= max_bytes):
            grouped[-1].append(position)
            end = max(end, where.end)
            continue
        grouped.append([position])
        first, end = where, where.end
    grouped.extend([position] for position, where in enumerate(locations) if where.loose)
    return grouped
