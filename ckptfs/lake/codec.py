"""Chunk ids and the self-describing chunk object: header + raw or lz4 payload, verified on decode.

Layout (little endian, 32-byte header):
    magic b"CKPC" | format u8 | codec u8 | reserved u16 | raw length u64 | chunk id (16 bytes)
followed by the payload. The id is xxh3-128 of the raw bytes, so `decode` can prove that what came back
from the store is what was put there. It must never return bytes it has not verified.
"""

from __future__ import annotations

import struct

import lz4.block
import xxhash

from ckptfs.errors import CorruptObjectError

MAGIC = b"CKPC"
FORMAT = 1
CODEC_RAW = 0
CODEC_LZ4 = 1
_HEADER = struct.Struct("<4sBBHQ16s")
HEADER_SIZE = _HEADER.size
_PROBE = 64 * 1024
# Compress only where it pays: below this ratio the CPU spent on decompression is worth the bytes.
_WORTH_IT = 0.90
MAX_CHUNK = 64 * 1024 * 1024


def chunk_id(data: bytes | memoryview) -> bytes:
    """The 16-byte content id of raw chunk bytes."""
    return xxhash.xxh3_128_digest(data)


def chunk_key(identifier: bytes) -> str:
    """Object key of a chunk; the leading hex digits spread keys over S3 partitions."""
    text = identifier.hex()
    return f"chunks/{text[:3]}/{text}"


def should_compress(data: bytes | memoryview) -> bool:
    """Probe a sample: dense fp32/bf16 weights barely compress, zeros and sparse state do."""
    sample = bytes(data[:_PROBE]) if len(data) > _PROBE else bytes(data)
    if not sample:
        return False
    return len(lz4.block.compress(sample, store_size=False)) < _WORTH_IT * len(sample)


def encode(data: bytes | memoryview, identifier: bytes | None = None) -> tuple[bytes, bytes]:
    """Return (id, object bytes) for raw chunk data, lz4-compressing only where it pays."""
    identifier = identifier or chunk_id(data)
    return identifier, b"".join(encode_parts(data, identifier))


def raw_parts(data: bytes | memoryview, identifier: bytes) -> tuple[bytes, bytes | memoryview] | None:
    """The chunk object as `encode_parts` makes it when the probe says lz4 would not pay (dense
    weights, most of a checkpoint), without compressing anything; None when it might pay."""
    if should_compress(data):
        return None
    return _HEADER.pack(MAGIC, FORMAT, CODEC_RAW, 0, len(data), identifier), data


def encode_parts(data: bytes | memoryview, identifier: bytes) -> tuple[bytes, bytes | memoryview]:
    """The chunk object of raw chunk data as its two pieces, header and payload (the data itself
    unless lz4 pays), for a pack to copy once (packs.encode)."""
    codec, payload = CODEC_RAW, data
    if should_compress(data):
        compressed = lz4.block.compress(data, store_size=False)
        if len(compressed) < _WORTH_IT * len(data):
            codec, payload = CODEC_LZ4, compressed
    return _HEADER.pack(MAGIC, FORMAT, codec, 0, len(data), identifier), payload


def decode(blob: bytes | memoryview, expected_id: bytes) -> bytes:
    """Return the verified raw bytes of a chunk object, or raise CorruptObjectError."""
    with memoryview(blob) as view:
        return decode_parts(view[:HEADER_SIZE], view[HEADER_SIZE:], expected_id)


def decode_parts(header: bytes | memoryview, payload: bytes | memoryview, expected_id: bytes) -> bytes:
    """`decode` of a chunk object read as its header and its payload: a raw payload read into a
    `bytes` of its own is returned as it is, verified, without a copy (lake.get_run)."""
    name = expected_id.hex()
    if len(header) < HEADER_SIZE:
        raise CorruptObjectError(f"chunk {name}: object truncated ({len(header) + len(payload)} bytes)")
    magic, version, codec, _, raw_length, stored_id = _HEADER.unpack_from(header)
    if magic != MAGIC:
        raise CorruptObjectError(f"chunk {name}: bad magic")
    if version != FORMAT:
        raise CorruptObjectError(f"chunk {name}: unknown chunk format {version}")
    if stored_id != expected_id:
        raise CorruptObjectError(f"chunk {name}: header names another chunk {stored_id.hex()}")
    if raw_length > MAX_CHUNK:
        raise CorruptObjectError(f"chunk {name}: absurd length {raw_length}")
    if codec == CODEC_RAW:
        data = payload if isinstance(payload, bytes) else bytes(payload)
    elif codec == CODEC_LZ4:
        try:
            data = lz4.block.decompress(payload, uncompressed_size=raw_length)
        except Exception:  # noqa: BLE001 - lz4 raises a bare LZ4BlockError on corrupt input
            raise CorruptObjectError(f"chunk {name}: lz4 payload does not decompress") from None
    else:
        raise CorruptObjectError(f"chunk {name}: unknown codec {codec}")
    if len(data) != raw_length or chunk_id(data) != expected_id:
        raise CorruptObjectError(f"chunk {name}: content does not match its id")
    return data
