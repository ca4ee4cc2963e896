"""Unit tests of the lake format: chunk boundaries, chunk codec, packs, manifests, names, namespace replay."""

import mmap
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptfs.errors import CorruptObjectError
from ckptfs.lake import chunker, codec, events, manifest, namespace, packs
from ckptfs.lake.packs import LOOSE, Location


def deterministic_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def test_chunker_golden_boundaries():
    # A change of cut points stops new versions deduplicating against every version already stored.
    # If this fails, a chunking profile changed: add a new profile instead.
    data = deterministic_bytes(12 * 1024 * 1024, seed=7)
    cuts = [(cut.offset, cut.length) for cut in chunker.Chunker(1).cut(data)]
    assert [length for _, length in cuts] == GOLDEN_LENGTHS
    assert sum(length for _, length in cuts) == len(data)
    assert all(chunker.MIN_SIZE <= length <= chunker.MAX_SIZE for _, length in cuts[:-1])
    assert [cut.length for cut in chunker.Chunker(2).cut(with_records(seed=11))] == GOLDEN_LENGTHS_2
    assert [cut.length for cut in chunker.Chunker(3).cut(with_records(seed=11))] == GOLDEN_LENGTHS_3


RECORDS = [0, 100, 5000, 700_000, 1_000_000, 3_500_000, 3_600_000, 9_000_000]


def with_records(seed: int, size: int = 12 * 1024 * 1024, records=RECORDS) -> bytes:
    data = bytearray(deterministic_bytes(size, seed))
    for offset in records:
        data[offset:offset + 4] = chunker.RECORD_MAGIC
    return bytes(data)


def test_profile_2_cuts_at_record_headers_with_nothing_in_the_lookback_before_them():
    data = with_records(seed=11)
    # 100 and 5000 follow 0 closely, 3_600_000 follows 3_500_000: not boundaries.
    assert chunker.record_boundaries(data, 0, len(data)) == [700_000, 1_000_000, 3_500_000, 9_000_000]
    offsets = {cut.offset for cut in chunker.Chunker(2).cut(data)}
    assert {700_000, 1_000_000, 3_500_000, 9_000_000} <= offsets


@settings(max_examples=40, deadline=None)
@given(records=st.lists(st.integers(0, 6 * 1024 * 1024 - 4), max_size=12), seed=st.integers(0, 1000),
       profile=st.sampled_from(chunker.PROFILES), data=st.data())
def test_cutting_from_any_cut_with_lookback_finds_the_cuts_of_the_whole(records, seed, profile, data):
    # What the upload-while-writing rounds and the seal after them rely on.
    content = with_records(seed, 6 * 1024 * 1024, records)
    whole = list(chunker.Chunker(profile).cut(content))
    start = data.draw(st.sampled_from(whole)).offset
    lookback = min(start, chunker.LOOKBACK)
    window = content[start - lookback:]
    rest = [chunker.Cut(start - lookback + cut.offset, cut.length)
            for cut in chunker.Chunker(profile).cut(window, skip=lookback)]
    assert rest == [cut for cut in whole if cut.offset >= start]
    # A window that ends early: every cut but the tentative tail is a cut of the whole (as in
    # engine/prefix.py, which also keeps a header cut off by the window's end inside the tail).
    end = data.draw(st.integers(start + 1, len(content)))
    partial = [chunker.Cut(start - lookback + cut.offset, cut.length)
               for cut in chunker.Chunker(profile).cut(content[start - lookback:end], skip=lookback)][:-1]
    while partial and partial[-1].offset + partial[-1].length > end - len(chunker.RECORD_MAGIC):
        partial.pop()
    assert set(partial) <= set(whole)


def test_torch_save_records_of_large_tensors_start_chunks():
    torch = pytest.importorskip("torch")
    import io
    import zipfile

    buffer = io.BytesIO()
    generator = torch.Generator().manual_seed(0)
    torch.save({f"w{i}": torch.randn(256 * 1024, generator=generator) for i in range(8)}, buffer)
    data = buffer.getvalue()
    offsets = {cut.offset for cut in chunker.Chunker(2).cut(data)}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        tensors = [info for info in archive.infolist() if "/data/" in info.filename]
    # Every 1 MiB tensor's record after the first starts a chunk.
    assert len(tensors) == 8
    assert set(sorted(info.header_offset for info in tensors)[1:]) <= offsets


def saved_under(name: str, seed: int = 0) -> bytes:
    """torch.save of one state dict (mixed tensor sizes) to a file called `name`."""
    torch = pytest.importorskip("torch")
    import tempfile

    generator = torch.Generator().manual_seed(seed)
    state = {f"layer{i}.weight": torch.randn(size, generator=generator)
             for i, size in enumerate([3_000_000, 400_000, 1_200_000, 70_000, 2_500_000, 900_000, 5_000, 1_600_000])}
    with tempfile.TemporaryDirectory() as directory:
        path = f"{directory}/{name}"
        torch.save(state, path)
        with open(path, "rb") as file:
            return file.read()


def new_fraction(profile: int, old: bytes, new: bytes) -> float:
    """The share of `new`'s bytes in chunks that `old` does not have (what a save would upload)."""
    def chunks(data: bytes) -> list[bytes]:
        return [data[cut.offset:cut.offset + cut.length] for cut in chunker.Chunker(profile).cut(data)]

    known = set(chunks(old))
    return sum(len(piece) for piece in chunks(new) if piece not in known) / len(new)


def test_profile_3_dedups_a_state_dict_saved_under_another_name():
    """torch.save puts the file's name in every record header: Lightning's last.ckpt and
    epoch=3-step=1000.ckpt of one state dict shared almost nothing under profile 2."""
    last, named = saved_under("last.ckpt"), saved_under("epoch=3-step=1000.ckpt")
    assert last != named
    assert new_fraction(2, last, named) > 0.05  # what profile 2 uploads again
    assert new_fraction(3, last, named) <= 0.01  # 0.06% measured: the header chunks
    data = named
    offsets = {cut.offset for cut in chunker.Chunker(3).cut(data)}
    for boundary in chunker.record_boundaries(data, 0, len(data)):
        assert boundary in offsets and chunker.payload_start(data, boundary, len(data)) in offsets


def test_chunker_resynchronises_after_an_insertion():
    data = deterministic_bytes(8 * 1024 * 1024, seed=1)
    shifted = data[:1000] + b"inserted" + data[1000:]
    first = {data[c.offset:c.offset + c.length] for c in chunker.Chunker(2).cut(data)}
    second = [shifted[c.offset:c.offset + c.length] for c in chunker.Chunker(2).cut(shifted)]
    assert sum(len(c) for c in second if c in first) >= len(data) - chunker.MAX_SIZE


def test_chunker_empty_input_has_no_chunks():
    assert list(chunker.Chunker(2).cut(b"")) == []


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


def test_codec_returns_a_raw_payload_read_apart_as_it_is_and_still_verifies_it():
    # lake.get_run reads each chunk's header and payload into bytes of their own: a raw payload
    # needs no copy (issue 20), and is checked against its id all the same.
    data = deterministic_bytes(100_000, 7)
    identifier, blob = codec.encode(data)
    header, payload = blob[:codec.HEADER_SIZE], blob[codec.HEADER_SIZE:]
    assert codec.decode_parts(header, payload, identifier) is payload
    with pytest.raises(CorruptObjectError):
        codec.decode_parts(header, payload[:-1] + b"x", identifier)
    with pytest.raises(CorruptObjectError):
        codec.decode_parts(header[:10], b"", identifier)
    zeros = b"\0" * 100_000
    identifier, blob = codec.encode(zeros)
    assert codec.decode_parts(blob[:codec.HEADER_SIZE], blob[codec.HEADER_SIZE:], identifier) == zeros


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
    # 85k chunks (a 100 GiB file at ~1.2 MiB per chunk) in 3,200 packs: 36 bytes a chunk and 16 a pack.
    chunks = [(codec.chunk_id(str(i).encode()), 1000) for i in range(85_000)]
    pack_ids = [bytes([i % 256, i // 256]) * 8 for i in range(3_200)]
    locations = [Location(pack_ids[i * 3_200 // 85_000], 100 + i, 1000 + codec.HEADER_SIZE) for i in range(85_000)]
    value = sample_manifest(size=85_000_000, chunks=chunks, locations=locations)
    blob = manifest.encode(value)
    assert len(blob) < 85_000 * 36 + 3_200 * 16 + 1_000
    assert manifest.decode(blob) == value


def test_manifest_golden_bytes_of_format_2():
    """docs/FORMAT.md, "Manifests": the bytes a manifest naming a loose chunk and two packed ones has."""
    value = manifest.Manifest(path=b"a/model.pt", size=3000, mode=0o100644, mtime_ns=1, mount="m1", time_ns=2,
                              chunks=[(b"\x01" * 16, 1000), (b"\x02" * 16, 1000), (b"\x03" * 16, 1000)],
                              locations=[LOOSE, Location(b"\xaa" * 16, 0, 1032), Location(b"\xaa" * 16, 1032, 500)])
    blob = manifest.encode(value)
    assert blob.hex() == GOLDEN_MANIFEST_2
    assert manifest.decode(blob) == value


def test_manifest_of_format_1_reads_as_loose_chunks():
    import struct

    import xxhash
    header = b'{"path":"x","size":5,"mode":420,"mtime_ns":1,"mount":"m","time_ns":2,"chunks":1,"inline":null}'
    body = struct.pack("<4sB3xI", b"CKPM", 1, len(header)) + header + struct.pack("<16sI", b"\x07" * 16, 5)
    read = manifest.decode(body + struct.pack("<Q", xxhash.xxh3_64_intdigest(body)))
    assert read.chunks == [(b"\x07" * 16, 5)] and read.location(0) == LOOSE


def test_a_manifest_naming_a_pack_beyond_its_table_is_refused():
    value = sample_manifest(locations=[Location(b"\xaa" * 16, 0, 2000), Location(b"\xaa" * 16, 2000, 2000)])
    blob = bytearray(manifest.encode(value))
    table = blob.index(b"\xaa" * 16) + 16
    blob[table + 20:table + 24] = (7).to_bytes(4, "little")  # the first entry's pack number
    import xxhash
    blob[-8:] = xxhash.xxh3_64_intdigest(bytes(blob[:-8])).to_bytes(8, "little")
    with pytest.raises(CorruptObjectError, match="beyond the pack table"):
        manifest.decode(bytes(blob))


def test_pack_round_trip_runs_and_index():
    datas = [bytes([i]) * (1000 + i) for i in range(5)] + [os.urandom(3000)]
    objects = [codec.encode(data) for data in datas]
    pack_id = b"\x42" * 16
    blob, locations = packs.encode(pack_id, objects)
    for (identifier, _), data, where in zip(objects, datas, locations, strict=True):
        assert codec.decode(blob[where.offset:where.end], identifier) == data
    assert packs.read_index(pack_id, blob, len(blob))[1] == list(zip([i for i, _ in objects], locations, strict=True))
    assert packs.read_index(pack_id, blob[-packs.index_bytes(6):], len(blob))[0] == locations[-1].end
    # Runs: end to end in one pack, bounded in bytes; a loose chunk or another pack starts a new one.
    other = Location(b"\x43" * 16, 0, 100)
    assert packs.runs(locations, 1 << 20) == [[0, 1, 2, 3, 4, 5]]
    assert packs.runs([locations[0], locations[2], locations[3]], 1 << 20) == [[0], [1, 2]]
    assert packs.runs([locations[0], LOOSE, LOOSE, other], 1 << 20) == [[0], [3], [1], [2]]  # loose ones last
    assert packs.runs(locations, locations[2].end) == [[0, 1, 2], [3, 4], [5]]  # 3+4+5 exceed it
    # Gaps up to max_gap are read and dropped; the list's order does not matter, pack order does.
    assert packs.runs([locations[0], locations[2], locations[3]], 1 << 20, max_gap=2000) == [[0, 1, 2]]
    assert packs.runs([locations[2], locations[0], locations[1]], 1 << 20) == [[1, 2, 0]]
    assert packs.runs([locations[1], locations[1]], 1 << 20) == [[0, 1]]  # the same chunk twice
    with pytest.raises(CorruptObjectError):
        packs.read_index(pack_id, blob[:-1], len(blob) - 1)
    damaged = bytearray(blob)
    damaged[-packs.TRAILER_SIZE - 5] ^= 1  # an index entry's stored length
    with pytest.raises(CorruptObjectError):
        packs.read_index(pack_id, bytes(damaged), len(blob))
    assert packs.parse_pack_key(packs.pack_key(pack_id)) == pack_id
    assert packs.parse_pack_key("packs/999/" + "42" * 16) is None


def test_a_pack_written_into_a_reused_buffer_is_the_joined_pack():
    """packs.encode into a buffer the uploader reuses (libc.copy_into, without the GIL): the same
    bytes as joining, whatever the buffer held before and whether the pack is larger or smaller;
    pieces may be bytes, bytearrays or memoryviews, empty ones too."""
    rng = random.Random(5)
    buffer = bytearray()
    for count in (40, 3, 25, 1, 40):
        datas = [rng.randbytes(rng.randrange(1, 300_000)) for _ in range(count)]
        objects = [(codec.chunk_id(data), codec.encode_parts(data, codec.chunk_id(data))) for data in datas]
        objects[0] = (objects[0][0], (objects[0][1][0], memoryview(datas[0])))
        objects[-1] = (objects[-1][0], (bytearray(objects[-1][1][0]), objects[-1][1][1], b""))
        joined, locations = packs.encode(b"\x07" * 16, objects)
        filled, same_locations = packs.encode(b"\x07" * 16, objects, buffer)
        assert filled is buffer and bytes(buffer) == joined and same_locations == locations


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
    record = namespace.event("put", path, 1, manifest="0" * 32, size=0, mode=0o644)
    assert manifest.decode_path(record["path"]) == path
    if b".." in name.split(b"/"):
        with pytest.raises(events.InvalidEvent):  # a reader never takes it as a path
            events.parse(record)
    else:
        assert events.parse(record).path == path
    encoded = manifest.encode(sample_manifest(path=path))
    assert manifest.decode(encoded).path == path
    keys = [codec.chunk_key(codec.chunk_id(name)), manifest.manifest_key(manifest.manifest_id(encoded)),
            namespace.segment_key("0123abcd", 5)]
    for key in keys:
        assert all(part.isalnum() for part in key.split("/")), key


def test_namespace_replay_keeps_history_through_renames_and_deletes():
    tree = namespace.Namespace()
    m1, m2, m3 = ("1" * 32, "2" * 32, "3" * 32)
    records = [
        namespace.event("mkdir", b"run", 1, mode=0o755),
        namespace.event("put", b"run/tmp/a", 2, manifest=m1, size=1, mode=0o644, mtime_ns=2),
        namespace.event("rename", b"run/tmp", 3, dst=b"run/step-1"),
        namespace.event("put", b"run/last", 4, manifest=m2, size=1, mode=0o644, mtime_ns=4),
        namespace.event("put", b"run/last", 5, manifest=m3, size=1, mode=0o644, mtime_ns=5),
        namespace.event("unlink", b"run/last", 6),
    ]
    for record in records:
        tree.apply(events.parse(record))
    assert set(tree.entries) == {b"", b"run", b"run/step-1", b"run/step-1/a"}
    assert tree.entries[b"run/step-1/a"].manifest == m1
    assert [s.manifest for s in tree.history[b"run/last"]] == [m2, m3, None]
    assert [s.manifest for s in tree.history[b"run/tmp/a"]] == [m1, None]


def test_namespace_rejects_malformed_segments():
    for blob in (b"{", b'{"format": 99, "events": []}', b'{"format": 1, "events": {}}', b"[]"):
        with pytest.raises(CorruptObjectError):
            namespace.decode_segment(blob, "log/x/0")
    with pytest.raises(events.InvalidEvent):
        events.parse({"op": "explode", "path": "x", "time_ns": 1})


# Chunk lengths of 12 MiB of random.Random(7) bytes under chunking profile 1 (256K/1M/4M).
GOLDEN_MANIFEST_2 = (
    "434b504d02000000770000007b2270617468223a22612f6d6f64656c2e7074222c2273697a65223a333030302c226d6f6465"
    "223a33333138382c226d74696d655f6e73223a312c226d6f756e74223a226d31222c2274696d655f6e73223a322c22636875"
    "6e6b73223a332c22696e6c696e65223a6e756c6c2c227061636b73223a317daaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa010101"
    "01010101010101010101010101e8030000ffffffff00000000000000000000000002020202020202020202020202020202e8"
    "0300000000000000000000000000000804000003030303030303030303030303030303e80300000000000008040000000000"
    "00f401000074c20740d6d15831")
GOLDEN_LENGTHS = [848218, 2257769, 1182347, 1903461, 1082757, 1576399, 1432183, 1781675, 518103]
# Chunk lengths of with_records(seed=11) under profile 3 (its headers' name and extra lengths are random bytes).
GOLDEN_LENGTHS_3 = [40996, 8100, 7686, 643218, 60194, 239806, 129130, 910858, 455785, 1004227, 112781, 46393, 645057,
                    3034006, 482223, 1138971, 40569, 56311, 1086759, 1196622, 1243220]
# Chunk lengths of with_records(seed=11) under profile 2.
GOLDEN_LENGTHS_2 = [700000, 300000, 1039988, 455785, 1004227, 804231, 3034006, 482223, 1138971, 40569,
                    1143070, 1196622, 1243220]


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "read-only mmap"])
def test_record_header_search_finds_what_bytes_find_finds(tmp_path, kind):
    size = 2 * 1024 * 1024
    # Headers at the very start, back to back, and one that ends exactly at the end of the data.
    records = [0, 4, 8, 300_001, size - 4]
    data = with_records(seed=5, size=size, records=records)
    if kind == "bytearray":
        data = bytearray(data)
    elif kind == "read-only mmap":
        path = tmp_path / "data"
        path.write_bytes(data)
        with open(path, "rb") as file:
            data = mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ)
    for start, end in [(0, size), (1, size), (8, size - 1), (5, 300_004), (5, 300_005), (size, size)]:
        expected, position = [], start
        while (found := data.find(chunker.RECORD_MAGIC, position, end)) != -1:
            expected.append(found)
            position = found + 1
        assert list(chunker._occurrences(data, chunker.RECORD_MAGIC, start, end)) == expected, (start, end)
    if kind == "read-only mmap":
        data.close()  # no buffer export is left behind


@pytest.mark.parametrize("recorded, expected", [(None, chunker.PROFILE), (1, 1), (2, 2), (3, 3), (99, None)])
def test_a_lake_is_cut_with_the_profile_its_descriptor_names(tmp_path, recorded, expected):
    import json

    from ckptfs.lake import Lake
    from ckptfs.store import LocalDirStore

    store = LocalDirStore(str(tmp_path / "lake"))
    if recorded is not None:
        store.put("lake.json", json.dumps({"format": "ckptfs-lake", "version": 1,
                                           "chunking": {"profile": recorded}}).encode())
    lake = Lake(store)
    if expected is None:
        with pytest.raises(CorruptObjectError, match="profile 99"):
            lake.open()
    else:
        lake.open()
        assert lake.chunking_profile == expected


def test_a_lake_opened_through_another_store_keeps_every_setting_its_descriptor_gave():
    """A mount reads the descriptor once, through the store that retries briefly at start, and goes
    on through the one that retries for as long as it runs (daemon.open_lake): nothing read from the
    descriptor may be left at its default on the way."""
    from ckptfs.lake import Lake
    from ckptfs.store.memory import MemoryStore

    store = MemoryStore()
    opened = Lake(store)
    opened.open(create=True, settings={"late_publish_s": 77, "max_clock_skew_s": 5, "gc_grace_s": 999,
                                       "fold_s": 13})
    other = MemoryStore()
    through = opened.through(other)
    fresh = Lake(MemoryStore())
    differ = {name for name, value in vars(opened).items() if value != vars(fresh)[name]} - {"store"}
    assert {"late_ns", "skew_ns", "grace_ns", "fold_ns", "created_ns"} <= differ  # the test sets them
    assert through.store is other
    assert {name: value for name, value in vars(through).items() if name != "store"} == \
        {name: value for name, value in vars(opened).items() if name != "store"}
