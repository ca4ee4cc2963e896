"""Packs through real mounts: a save is a few pack PUTs, a restore a few ranged GETs, identical chunks
saved at once are stored once, and a lake of loose chunks (format 3) still reads and dedups."""

import io
import json
import os
import struct
import threading
import time

import pytest
import xxhash

from ckptfs.engine.chunks import SMALL_CHUNK
from ckptfs.lake import Lake, chunker, codec
from ckptfs.lake.manifest import Manifest, manifest_id, manifest_key
from ckptfs.store import LocalDirStore
from tests.faultproxy import FaultProxy
from tests.helpers import read, write

MIB = 1024 * 1024


def lake_objects(lake_dir: str, prefix: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, files in os.walk(os.path.join(lake_dir, prefix)) for f in files)


def test_a_save_is_a_few_pack_puts_and_a_restore_a_few_gets(mounter, s3_url, moto_server):
    url, _ = s3_url
    proxy = FaultProxy(moto_server.port)
    try:
        writer = mounter(url, ["--endpoint-url", proxy.endpoint, "--refresh", "0"], cache="cw", name="w")
        data = os.urandom(96 * MIB)
        before = dict(proxy.by_kind)
        write(writer.path("model.pt"), data)
        writer.sync()
        puts = proxy.by_kind["PUT"] - before.get("PUT", 0)
        packs = writer.status()["packs_written"]
        # 96 MiB of random data (stored raw): three full packs and a remainder, then the manifest,
        # the segment and its feed marker. One object per chunk was ~80 PUTs.
        assert packs in (3, 4)
        assert puts <= packs + 4, f"{puts} PUTs for {packs} packs"
        writer.assert_clean_log()

        reader = mounter(url, ["--endpoint-url", proxy.endpoint, "--refresh", "0"], cache="cr", name="r")
        before = dict(proxy.by_kind)
        assert read(reader.path("model.pt")) == data
        gets = proxy.by_kind["GET"] - before.get("GET", 0)
        # The manifest, then runs of adjacent chunks, each at most a pack; one GET a chunk was ~80.
        assert gets <= 16, f"{gets} GETs to read 96 MiB"
        reader.assert_clean_log()
    finally:
        proxy.stop()


def test_identical_files_saved_at_once_store_their_chunks_once(mounter, tmp_path):
    mount = mounter()
    shared, other = os.urandom(40 * MIB), os.urandom(8 * MIB)
    writers = [threading.Thread(target=write, args=(mount.path(name), content))
               for name, content in (("a.pt", shared), ("b.pt", shared), ("c.pt", other))]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    mount.sync()
    stored = sum(os.path.getsize(path) for path in lake_objects(str(tmp_path / "lake"), "packs"))
    assert 48 * MIB < stored < 49 * MIB, f"{stored / MIB:.1f} MiB in packs for 48 MiB of distinct data"
    mount.assert_clean_log()
    reader = mounter(cache="cache2", name="mnt2")
    for name, content in (("a.pt", shared), ("b.pt", shared), ("c.pt", other)):
        assert read(reader.path(name)) == content
    reader.assert_clean_log()


def put_format_1_manifest(store, value: Manifest) -> str:
    """What ckptfs wrote before packs (docs/FORMAT.md, "Manifests", format 1)."""
    header = json.dumps({"path": value.path.decode(), "size": value.size, "mode": value.mode,
                         "mtime_ns": value.mtime_ns, "mount": value.mount, "time_ns": value.time_ns,
                         "chunks": len(value.chunks), "inline": None}).encode()
    body = (struct.pack("<4sB3xI", b"CKPM", 1, len(header)) + header
            + b"".join(struct.pack("<16sI", chunk, length) for chunk, length in value.chunks))
    blob = body + struct.pack("<Q", xxhash.xxh3_64_intdigest(body))
    identifier = manifest_id(blob)
    store.put(manifest_key(identifier), blob)
    return identifier


def test_a_lake_of_loose_chunks_reads_and_a_resave_dedups_against_them(mounter, tmp_path):
    """A lake written before packs (format 3): loose chunk objects, a manifest of format 1 (every
    chunk loose) and the event naming it. A mount of today reads it, learns where its chunks are,
    and re-saving the same bytes stores nothing new but the chunks under SMALL_CHUNK, which are
    always packed again next to their neighbours."""
    store = LocalDirStore(str(tmp_path / "lake"))
    store.put("lake.json", json.dumps({"format": "ckptfs-lake", "version": 3,
                                       "chunking": {"profile": 3}, "created_ns": 1}).encode())
    lake = Lake(store)
    lake.open(create=False)
    torch = pytest.importorskip("torch")
    generator = torch.Generator().manual_seed(11)
    buffer = io.BytesIO()  # torch.save output: a ~100-byte header chunk per record, the rest large
    torch.save({f"t{i}": torch.randn(256 * 1024, generator=generator) for i in range(6)}, buffer)
    data = buffer.getvalue()
    chunks = []
    for cut in chunker.Chunker(3).cut(data):  # the lake's own cuts, as a mount of format 3 made them
        identifier, blob = codec.encode(data[cut.offset:cut.offset + cut.length])
        store.put(codec.chunk_key(identifier), blob)
        chunks.append((identifier, cut.length))
    now = time.time_ns()
    manifest = put_format_1_manifest(store, Manifest(b"old.pt", len(data), 0o644, now, "0" * 16, now, chunks))
    assert lake.get_manifest(manifest).chunks == chunks
    lake.register_mount("0" * 16)
    lake.append_log("0" * 16, 0, [{"op": "put", "path": "old.pt", "time_ns": now, "manifest": manifest,
                                   "size": len(data), "mode": 0o644, "mtime_ns": now}], now)

    mount = mounter()
    assert read(mount.path("old.pt")) == data
    write(mount.path("new.pt"), data)
    mount.sync()
    small = sum(length for _, length in chunks if length < SMALL_CHUNK)
    assert 0 < small < 0.01 * len(data)
    assert mount.status()["new_chunk_bytes"] == small
    assert mount.status()["packs_written"] == 1
    assert json.loads(store.get("lake.json"))["version"] == 4  # upgraded: older mounts refuse it now
    mount.assert_clean_log()


def test_a_restore_reads_runs_whatever_the_saves_before_it_left_in_the_lake(mounter, tmp_path):
    """torch.save output has a ~100-byte header chunk per record, the same in every save. A fresh
    state dict saved after another, and one with every tenth tensor changed, still restore with a
    GET per pack or so: small chunks are packed again next to their neighbours, and the unchanged
    chunks of an older pack are read as one run across the headers between them."""
    torch = pytest.importorskip("torch")
    mount = mounter()

    def state(seed):
        generator = torch.Generator().manual_seed(seed)
        return {f"layer{i}.weight": torch.randn(256 * 1024, generator=generator) for i in range(64)}  # 64 MiB

    first, second = state(1), state(2)
    changed = {name: (tensor + 1 if index % 10 == 0 else tensor) for index, (name, tensor) in enumerate(first.items())}
    for name, value in (("step-1/model.pt", first), ("step-2/model.pt", second), ("step-3/model.pt", changed)):
        os.makedirs(os.path.dirname(mount.path(name)), exist_ok=True)
        torch.save(value, mount.path(name))
    mount.sync()
    mount.unmount()
    # 64 MiB in 2-3 packs, plus the manifest. The changed file's chunks are in three packs (the
    # unchanged ones in step 1's two, the rest in its own), so each request of the growing read-ahead
    # window is a GET per pack; one run per record would be 64 GETs or more.
    for number, (name, value, most) in enumerate((("step-2/model.pt", second, 10), ("step-3/model.pt", changed, 32))):
        reader = mounter(cache=f"reader{number}", name=f"r{number}")
        before = reader.status()["store_requests"].get("GET", 0)
        loaded = torch.load(reader.path(name), weights_only=True)
        gets = reader.status()["store_requests"].get("GET", 0) - before
        assert all(torch.equal(loaded[key], value[key]) for key in value)
        assert gets <= most, f"{gets} GETs to restore {name}"
        reader.assert_clean_log()
