"""The manifest: one immutable object per file version, naming its chunks in order.

Layout: magic b"CKPM" | format u8 | 3 reserved bytes | header length u32 | header (JSON, UTF-8) |
chunk table (count x [16-byte id, u32 length]) | inline data | xxh3-64 of everything before it (8 bytes).
A 100 GiB file at ~2.5 MiB per chunk needs ~40k entries: under 1 MB of table, parsed with one
struct call. Files up to INLINE_LIMIT bytes carry their data inline and name no chunk.
The manifest id is xxh3-128 of the encoded bytes: writing the same version twice is idempotent.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

import xxhash

from ckptfs.errors import CorruptObjectError
from ckptfs.lake.codec import MAX_CHUNK

MAGIC = b"CKPM"
FORMAT = 1
INLINE_LIMIT = 64 * 1024
_PREFIX = struct.Struct("<4sB3xI")
_ENTRY = struct.Struct("<16sI")
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

    def offsets(self) -> list[int]:
        """Start offset of every chunk, for bisecting a read offset."""
        return chunk_offsets(self.chunks)


def manifest_id(blob: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(blob)


def manifest_key(identifier: str) -> str:
    return f"manifests/{identifier[:3]}/{identifier}"


def encode(manifest: Manifest) -> bytes:
    header = json.dumps({
        "path": encode_path(manifest.path), "size": manifest.size, "mode": manifest.mode,
        "mtime_ns": manifest.mtime_ns, "mount": manifest.mount, "time_ns": manifest.time_ns,
        "chunks": len(manifest.chunks), "inline": len(manifest.inline) if manifest.inline is not None else None,
    }, separators=(",", ":")).encode()
    parts = [_PREFIX.pack(MAGIC, FORMAT, len(header)), header]
    parts.extend(_ENTRY.pack(identifier, length) for identifier, length in manifest.chunks)
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
    if version != FORMAT:
        raise CorruptObjectError(f"{name}: unknown manifest format {version}")
    if header_length > MAX_HEADER or _PREFIX.size + header_length > len(body):
        raise CorruptObjectError(f"{name}: bad header length")
    try:
        header = json.loads(body[_PREFIX.size:_PREFIX.size + header_length])
        count, size, inline = int(header["chunks"]), int(header["size"]), header["inline"]
        manifest = Manifest(path=decode_path(header["path"]), size=size, mode=int(header["mode"]),
                            mtime_ns=int(header["mtime_ns"]), mount=str(header["mount"]),
                            time_ns=int(header["time_ns"]))
    except (ValueError, KeyError, TypeError) as error:
        raise CorruptObjectError(f"{name}: malformed header ({error})") from None
    if not 0 <= size <= MAX_FILE_SIZE or count < 0:
        raise CorruptObjectError(f"{name}: absurd size {size} or chunk count {count}")
    table_start = _PREFIX.size + header_length
    table_end = table_start + count * _ENTRY.size
    if table_end > len(body):
        raise CorruptObjectError(f"{name}: chunk table truncated")
    manifest.chunks = [entry for entry in _ENTRY.iter_unpack(body[table_start:table_end])]
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
