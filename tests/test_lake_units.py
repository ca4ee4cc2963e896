"""Unit tests of the lake format: chunk boundaries, chunk codec, manifests, names, namespace replay."""

import random

import pytest

from ckptfs.errors import CorruptObjectError
from ckptfs.lake import chunker, codec, manifest, namespace


def deterministic_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def test_chunker_golden_boundaries():
    # A change of cut points stops new versions deduplicating against every version already stored.
    # If this fails, the chunking profile changed: bump chunker.PROFILE and the lake format instead.
    data = deterministic_bytes(12 * 1024 * 1024, seed=7)
    cuts = [(cut.offset, cut.length) for cut in chunker.Chunker().cut(data)]
    assert [length for _, length in cuts] == GOLDEN_LENGTHS
    assert sum(length for _, length in cuts) == len(data)
    assert all(chunker.MIN_SIZE <= length <= chunker.MAX_SIZE for _, length in cuts[:-1])


def test_chunker_resynchronises_after_an_insertion():
    data = deterministic_bytes(8 * 1024 * 1024, seed=1)
    shifted = data[:1000] + b"inserted" + data[1000:]
    first = {data[c.offset:c.offset + c.length] for c in chunker.Chunker().cut(data)}
    second = [shifted[c.offset:c.offset + c.length] for c in chunker.Chunker().cut(shifted)]
    assert sum(len(c) for c in second if c in first) >= len(data) - chunker.MAX_SIZE


def test_chunker_empty_input_has_no_chunks():
    assert list(chunker.Chunker().cut(b"")) == []


@pytest.mark.parametrize("data", [b"", b"x", b"\0" * 1_000_000, deterministic_bytes(300_000, 3)])
def test_codec_round_trip(data):
    identifier, blob = codec.encode(data)
    assert identifier == codec.chunk_id(data)
    assert codec.decode(blob, identifier) == data


def test_codec_compresses_only_where_it_pays():
    zeros, noise = b"\0" * 1_000_000, deterministic_bytes(1_000_000, 4)
    assert len(codec.encode(zeros)[1]) < 10_000
    assert len(codec.encode(noise)[1]) == len(noise) + codec.HEADER_SIZE


@pytest.mark.parametrize("data", [b"\0" * 100_000, deterministic_bytes(100_000, 5)])
def test_codec_detects_a_flipped_bit_anywhere(data):
    identifier, blob = codec.encode(data)
    for position in [0, 5, codec.HEADER_SIZE - 1, codec.HEADER_SIZE, len(blob) // 2, len(blob) - 1]:
        damaged = bytearray(blob)
        damaged[position] ^= 0x10
        with pytest.raises(CorruptObjectError):
            codec.decode(bytes(damaged), identifier)


def test_codec_detects_truncation_and_wrong_id():
    identifier, blob = codec.encode(deterministic_bytes(10_000, 6))
    with pytest.raises(CorruptObjectError):
        codec.decode(blob[:-1], identifier)
    with pytest.raises(CorruptObjectError):
        codec.decode(blob[:10], identifier)
    with pytest.raises(CorruptObjectError):
        codec.decode(blob, codec.chunk_id(b"other"))


def sample_manifest(**overrides) -> manifest.Manifest:
    fields = dict(path=b"run1/\xff\xfe-not-utf8/model.pt", size=3_000_000, mode=0o640, mtime_ns=123,
                  mount="abc", time_ns=456,
                  chunks=[(codec.chunk_id(b"a"), 1_000_000), (codec.chunk_id(b"b"), 2_000_000)])
    fields.update(overrides)
    return manifest.Manifest(**fields)


def test_manifest_round_trip_with_chunks_and_inline():
    for value in (sample_manifest(), sample_manifest(size=5, chunks=[], inline=b"hello")):
        assert manifest.decode(manifest.encode(value)) == value


def test_manifest_is_compact():
    # 40k chunks (a 100 GiB file at ~2.5 MiB per chunk) must stay well under a megabyte.
    chunks = [(codec.chunk_id(str(i).encode()), 1000) for i in range(40_000)]
    blob = manifest.encode(sample_manifest(size=40_000_000, chunks=chunks))
    assert len(blob) < 1_000_000


@pytest.mark.parametrize("damage", ["flip", "truncate", "absurd-size", "wrong-sum", "bad-json"])
def test_manifest_rejects_damage(damage):
    import json
    import struct

    import xxhash

    blob = manifest.encode(sample_manifest())
    if damage == "flip":
        blob = blob[:20] + bytes([blob[20] ^ 1]) + blob[21:]
    elif damage == "truncate":
        blob = blob[:-9]
    else:
        header = {"absurd-size": {"size": 1 << 60}, "wrong-sum": {"size": 7}, "bad-json": None}[damage]
        value = sample_manifest()
        text = json.dumps({"path": "p", "size": value.size, "mode": 1, "mtime_ns": 1, "mount": "m",
                           "time_ns": 1, "chunks": 2, "inline": None, **(header or {})}).encode()
        if header is None:
            text = b"{not json"
        body = struct.pack("<4sB3xI", b"CKPM", 1, len(text)) + text + b"".join(
            struct.pack("<16sI", i, n) for i, n in value.chunks)
        blob = body + struct.pack("<Q", xxhash.xxh3_64_intdigest(body))
    with pytest.raises(CorruptObjectError):
        manifest.decode(blob)


HOSTILE_NAMES = [b"..", b"a/../../etc", b"\xff\xfe\xfd", b"x" * 255, b"new\nline", b"sp ace",
                 b"\xe2\x80\xae-rtl", b"%2F..%2F", b"con", b"*?<>|"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_round_trip_and_never_reach_object_keys(name):
    path = b"run/" + name
    record = namespace.event("put", path, 1, manifest="0" * 32)
    assert manifest.decode_path(record["path"]) == path
    encoded = manifest.encode(sample_manifest(path=path))
    assert manifest.decode(encoded).path == path
    keys = [codec.chunk_key(codec.chunk_id(name)), manifest.manifest_key(manifest.manifest_id(encoded)),
            namespace.segment_key("0123abcd", 5)]
    for key in keys:
        assert all(part.isalnum() for part in key.split("/")), key


def test_namespace_replay_keeps_history_through_renames_and_deletes():
    tree = namespace.Namespace()
    events = [
        namespace.event("mkdir", b"run", 1, mode=0o755),
        namespace.event("put", b"run/tmp/a", 2, manifest="m1", size=1, mode=0o644, mtime_ns=2),
        namespace.event("rename", b"run/tmp", 3, dst=b"run/step-1"),
        namespace.event("put", b"run/last", 4, manifest="m2", size=1, mode=0o644, mtime_ns=4),
        namespace.event("put", b"run/last", 5, manifest="m3", size=1, mode=0o644, mtime_ns=5),
        namespace.event("unlink", b"run/last", 6),
    ]
    for record in events:
        tree.apply(record)
    assert set(tree.entries) == {b"", b"run", b"run/step-1", b"run/step-1/a"}
    assert tree.entries[b"run/step-1/a"].manifest == "m1"
    assert [s.manifest for s in tree.history[b"run/last"]] == ["m2", "m3", None]
    assert [s.manifest for s in tree.history[b"run/tmp/a"]] == ["m1", None]


def test_namespace_rejects_malformed_segments():
    for blob in (b"{", b'{"format": 99, "events": []}', b'{"format": 1, "events": [{"op": "explode"}]}'):
        with pytest.raises(CorruptObjectError):
            namespace.decode_segment(blob, "log/x/0")


# Chunk lengths of 12 MiB of random.Random(7) bytes under chunking profile 1 (256K/1M/4M).
GOLDEN_LENGTHS = [848218, 2257769, 1182347, 1903461, 1082757, 1576399, 1432183, 1781675, 518103]
