"""ckptfs prefetch: a checkpoint another node wrote, brought into this node's chunk cache before it
is read, so that reading it needs nothing from the lake."""

import json
import os
import shutil

from tests.helpers import read, write


def test_prefetch_brings_a_checkpoint_into_the_cache_and_reads_need_no_lake(mounter, tmp_path):
    writer = mounter(cache="cw", name="w")
    os.makedirs(writer.path("run", "step-100"))
    shards = {f"shard-{rank}.distcp": os.urandom(3_000_000 + rank) for rank in range(3)}
    for name, data in shards.items():
        write(writer.path("run", "step-100", name), data)
    write(writer.path("run", "other.pt"), os.urandom(2_000_000))  # not under the path: not fetched
    writer.sync()
    reader = mounter(cache="cr", name="r")
    done = json.loads(reader.cli("prefetch", "--json", reader.path("run", "step-100")).stdout)
    assert done["files"] == 3 and done["total_bytes"] == done["done_bytes"] == sum(map(len, shards.values()))
    assert reader.status()["prefetching"] is None
    # Everything needed is on this node now: the lake's packs can go and the reads still succeed.
    shutil.rmtree(tmp_path / "lake" / "packs")
    for name, data in shards.items():
        assert read(reader.path("run", "step-100", name)) == data
    again = json.loads(reader.cli("prefetch", "--json", reader.path("run", "step-100")).stdout)
    assert again["done_bytes"] == again["total_bytes"]  # already there: nothing fetched
    reader.assert_clean_log()


def test_a_prefetch_larger_than_the_chunk_cache_is_refused_with_the_reason(mounter):
    writer = mounter(cache="cw", name="w")
    write(writer.path("big.pt"), os.urandom(6_000_000))
    writer.sync()
    reader = mounter(extra=["--cache-size", "16M"], cache="cr", name="r")  # a quarter for chunks: 4 MiB
    result = reader.cli("prefetch", reader.path("big.pt"), check=False)
    assert result.returncode == 1 and "do not fit in the chunk cache" in result.stderr
    assert read(reader.path("big.pt")) == read(writer.path("big.pt"))  # reading still works
