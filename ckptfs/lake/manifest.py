"""The manifest: one immutable object per file version, naming its chunks in order.

Layout: magic b"CKPM" | format u8 | 3 reserved bytes | header length u32 | header (JSON, UTF-8) |
[format 2: pack table (packs x 16-byte pack id)] | chunk table | inline data | xxh3-64 of everything
before it (8 bytes). A chunk table entry is [16-byte id, u32 length] in format 1 (every chunk a loose
`chunks/` object) and [16-byte id, u32 length, u32 pack number, u64 offset, u32 stored length] in
format 2, where the pack number indexes the pack table and LOOSE_PACK names a loose chunk object
(lake/packs.py). A 100 GiB file at ~1.2 MiB per chunk needs ~85k entries: 3 MB of table, parsed
with one struct call. Files up to INLINE_LIMIT bytes carry their data inline and name no chunk.
The manifest id is xxh3-128 of the encoded bytes: writing the same version twice is idempotent.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

import xxhash

from ckptfs.errors import CorruptObjectError
from ckptfs.lake.codec import HEADER_SIZE, MAX_CHUNK
from ckptfs.lake.packs import LOOSE, Location, object_key

MAGIC = b"CKPM"
FORMAT = 2
READABLE = (1, 2)
INLINE_LIMIT = 64 * 1024
_PREFIX = struct.Struct("<4sB3xI")
_ENTRY_1 = struct.Struct("<16sI")
_ENTRY = struct.Struct("<16sIIQI")
_PACK = struct.Struct("<16s")
LOOSE_PACK = 0xFFFFFFFF
MAX_PACKS = 1 << 24
_TRAILER = struct.Struct("<Q")
MAX_HEADER = 1024 * 1024
MAX_FILE_SIZE = 1 << 50


def encode_path(path: bytes) -> str:
    """File names are bytes; JSON holds them as text with undecodable bytes escaped losslessly."""
    return path.decode("utf-8", "surrogateescape")


def decode_path(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


@dataclass
class Manifest:
    path: bytes
    size: int
    mode: int
    mtime_ns: int
    mount: str
    time_ns: int
    chunks: list[tuple[bytes, int]] = field(default_factory=list)
    inline: bytes | None = None
    locations: list[Location] = field(default_factory=list)  # one per chunk; empty: every chunk LOOSE

    def location(self, index: int) -> Location:
        return self.locations[index] if self.locations else LOOSE

    def object_keys(self) -> set[str]:
        """The lake objects holding this version's chunks: its packs, and loose chunk objects."""
        return {object_key(chunk, self.location(index)) for index, (chunk, _) in enumerate(self.chunks)}

    def offsets(self) -> list[int]:
        """Start offset of every chunk, for bisecting a read offset."""
        return chunk_offsets(self.chunks)


def manifest_id(blob: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(blob)


def manifest_key(identifier: str) -> str:
    return f"manifests/{identifier[:3]}/{identifier}"


def encode(manifest: Manifest) -> bytes:
    locations = manifest.locations or [LOOSE] * len(manifest.chunks)
    if len(locations) != len(manifest.chunks):
        raise ValueError("a manifest needs one location per chunk")
    packs: dict[bytes, int] = {}
    for where in locations:
        if not where.loose:
            packs.setdefault(where.pack, len(packs))
    header = json.dumps({
        "path": encode_path(manifest.path), "size": manifest.size, "mode": manifest.mode,
        "mtime_ns": manifest.mtime_ns, "mount": manifest.mount, "time_ns": manifest.time_ns,
        "chunks": len(manifest.chunks), "inline": len(manifest.inline) if manifest.inline is not None else None,
        "packs": len(packs),
    }, separators=(",", ":")).encode()
    parts = [_PREFIX.pack(MAGIC, FORMAT, len(header)), header, *packs]
    parts.extend(_ENTRY.pack(identifier, length, LOOSE_PACK if where.loose else packs[where.pack],
                             where.offset, where.stored)
                 for (identifier, length), where in zip(manifest.chunks, locations, strict=True))
    if manifest.inline is not None:
        parts.append(manifest.inline)
    body = b"".join(parts)
    return body + _TRAILER.pack(xxhash.xxh3_64_intdigest(body))


def decode(blob: bytes, name: str = "manifest") -> Manifest:
    """Parse and validate a manifest; raise CorruptObjectError on anything malformed or absurd."""
    if len(blob) < _PREFIX.size + _TRAILER.size:
        raise CorruptObjectError(f"{name}: truncated")
    body, (checksum,) = blob[:-_TRAILER.size], _TRAILER.unpack(blob[-_TRAILER.size:])
    if xxhash.xxh3_64_intdigest(body) != checksum:
        raise CorruptObjectError(f"{name}: checksum mismatch")
    magic, version, header_length = _PREFIX.unpack_from(body)
    if magic != MAGIC:
        raise CorruptObjectError(f"{name}: bad magic")
    if version not in READABLE:
        raise CorruptObjectError(f"{name}: unknown manifest format {version}")
    if header_length > MAX_HEADER or _PREFIX.size + header_length > len(body):
        raise CorruptObjectError(f"{name}: bad header length")
    try:
        header = json.loads(body[_PREFIX.size:_PREFIX.size + header_length])
        count, size, inline = int(header["chunks"]), int(header["size"]), header["inline"]
        pack_count = int(header["packs"]) if version >= 2 else 0
        manifest = Manifest(path=decode_path(header["path"]), size=size, mode=int(header["mode"]),
                            mtime_ns=int(header["mtime_ns"]), mount=str(header["mount"]),
                            time_ns=int(header["time_ns"]))
    except (ValueError, KeyError, TypeError) as error:
        raise CorruptObjectError(f"{name}: malformed header ({error})") from None
    if not 0 <= size <= MAX_FILE_SIZE or count < 0 or not 0 <= pack_count <= min(count, MAX_PACKS):
        raise CorruptObjectError(f"{name}: absurd size {size}, chunk count {count} or pack count {pack_count}")
    packs_start = _PREFIX.size + header_length
    table_start = packs_start + pack_count * _PACK.size
    entry = _ENTRY if version >= 2 else _ENTRY_1
    table_end = table_start + count * entry.size
    if table_end > len(body):
        raise CorruptObjectError(f"{name}: chunk table truncated")
    packs = [pack for (pack,) in _PACK.iter_unpack(body[packs_start:table_start])]
    if version >= 2:
        rows = list(_ENTRY.iter_unpack(body[table_start:table_end]))
        manifest.chunks = [(identifier, length) for identifier, length, _, _, _ in rows]
        try:
            manifest.locations = [LOOSE if number == LOOSE_PACK else Location(packs[number], offset, stored)
                                  for _, _, number, offset, stored in rows]
        except IndexError:
            raise CorruptObjectError(f"{name}: a chunk names a pack beyond the pack table") from None
        # A chunk object is its header and its payload, compressed only where that is smaller.
        if any(not where.loose and not HEADER_SIZE < where.stored <= length + HEADER_SIZE
               for (_, length), where in zip(manifest.chunks, manifest.locations, strict=True)):
            raise CorruptObjectError(f"{name}: absurd stored length")
        if all(where.loose for where in manifest.locations):
            manifest.locations = []  # one form for "every chunk loose", as encode takes it
    else:
        manifest.chunks = list(_ENTRY_1.iter_unpack(body[table_start:table_end]))
    if any(length == 0 or length > MAX_CHUNK for _, length in manifest.chunks):
        raise CorruptObjectError(f"{name}: absurd chunk length")
    if inline is not None:
        manifest.inline = bytes(body[table_end:])
        if len(manifest.inline) != inline or inline != size or count:
            raise CorruptObjectError(f"{name}: inline data does not match the size")
    else:
        if table_end != len(body):
            raise CorruptObjectError(f"{name}: trailing bytes")
        if sum(length for _, length in manifest.chunks) != size:
            raise CorruptObjectError(f"{name}: chunk lengths do not add up to the size")
    return manifest


def chunk_offsets(chunks: list[tuple[bytes, int]]) -> list[int]:
    """Start offset of every chunk of a list of (id, length)."""
    result, position = [], 0
    for _, length in chunks:
        result.append(position)
        position += length
    return result
