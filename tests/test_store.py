"""Both stores through one interface, and the classification of S3 failures."""

import itertools

import pytest

from ckptfs.errors import ConfigError
from ckptfs.store import (
    ObjectNotFound,
    PermanentStoreError,
    PreconditionFailed,
    RetryingStore,
    TemporaryStoreError,
    open_store,
)
from ckptfs.store.memory import MemoryStore


@pytest.fixture(params=["local", "s3", "memory"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(f"file://{tmp_path}/lake")
    if request.param == "memory":
        return MemoryStore()
    url, endpoint = request.getfixturevalue("s3_url")
    return open_store(url, endpoint_url=endpoint)


def test_store_contract(store):
    store.check_access()
    store.put("a/b/1", b"one")
    store.put("a/b/2", b"two")
    store.put("a/c", b"three")
    assert store.get("a/b/1") == b"one"
    assert store.get("a/c", 1, 3) == b"hr"
    assert store.size("a/b/2") == 3 and store.size("missing") is None
    assert list(store.list("a/b/")) == ["a/b/1", "a/b/2"]
    assert list(store.list("a/", start_after="a/b/1")) == ["a/b/2", "a/c"]
    with pytest.raises(PreconditionFailed):
        store.put("a/c", b"again", if_absent=True)
    assert store.get("a/c") == b"three"
    store.delete("a/c")
    store.delete("a/c")
    with pytest.raises(ObjectNotFound):
        store.get("a/c")


def test_many_keys_are_deleted_at_once_and_missing_ones_are_no_error(store):
    for index in range(5):
        store.put(f"feed/{index}", b"")
    store.delete_many(["feed/0", "feed/2", "feed/4", "feed/missing"])
    assert list(store.list("feed/")) == ["feed/1", "feed/3"]
    RetryingStore(store).delete_many(["feed/1", "feed/3"])
    RetryingStore(store).delete_many([])
    assert list(store.list("feed/")) == []


def test_a_range_read_in_parts_gives_each_part_its_own_bytes(store):
    # lake.get_run reads a run of chunk objects as (gap, header, payload) parts of one ranged GET.
    data = bytes(range(256)) * 64
    store.put("packs/p", data)
    sizes = [0, 32, 1000, 5, 0, 32, 3000]
    parts = store.get_parts("packs/p", 100, sizes)
    assert [len(part) for part in parts] == sizes and all(type(part) is bytes for part in parts)
    assert b"".join(parts) == data[100:100 + sum(sizes)]
    assert RetryingStore(store).get_parts("packs/p", 0, [10]) == [data[:10]]
    with pytest.raises(ObjectNotFound):
        store.get_parts("packs/missing", 0, [32, 10])


def test_s3_missing_bucket_is_a_clear_permanent_error(moto_server):
    store = open_store("s3://no-such-bucket-here/x", endpoint_url=moto_server.endpoint)
    with pytest.raises(PermanentStoreError, match="does not exist"):
        store.check_access()


def test_s3_unreachable_endpoint_is_temporary_and_retries_give_up():
    from tests.helpers import free_port

    store = open_store("s3://bucket/x", endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TemporaryStoreError):
        store.check_access()
    retries = []
    retrying = RetryingStore(store, give_up_after=5, first_delay=0.01, on_retry=lambda *a: retries.append(a))
    with pytest.raises(TemporaryStoreError):
        retrying.get("k")
    assert retries


def test_every_s3_request_is_one_attempt_and_every_retry_is_counted(s3_url):
    """boto3 does not retry behind our back: each failure reaches RetryingStore, which paces and
    counts it (a hidden retry once made 12 injected faults show as 0 retries)."""
    from tests.faultproxy import FaultProxy

    url, endpoint = s3_url
    upstream_port = int(endpoint.rsplit(":", 1)[1])
    proxy = FaultProxy(upstream_port)
    try:
        proxy.kinds = ("500",)
        proxy.fault_rate = 1.0
        store = open_store(url, endpoint_url=proxy.endpoint)
        with pytest.raises(TemporaryStoreError):
            store.get("anything")
        assert proxy.counts["requests"] == 1
        proxy.fault_rate = 0.0
        store.put("k", b"v")
        proxy.counts.clear()
        proxy.fault_rate = 1.0
        retrying = RetryingStore(store, give_up_after=60, first_delay=0.001, max_delay=0.01)
        proxy_faults_then_ok = iter([True, True, True, False])

        def choose_next(original=proxy._choose):
            proxy.fault_rate = 1.0 if next(proxy_faults_then_ok) else 0.0
            return original()

        proxy._choose = choose_next
        assert retrying.get("k") == b"v"
        assert proxy.counts["requests"] == 4 and retrying.retries == 3
    finally:
        proxy.stop()


def test_a_put_body_changed_on_the_way_is_refused_and_sent_again(s3_url):
    """Every PUT carries its body's CRC32C (and no SHA-256 of it): S3 refuses a body that does not
    match (400 BadDigest; the proxy checks as S3 does, moto does not), RetryingStore sends the bytes
    again, and what lands is what was sent."""
    from tests.faultproxy import FaultProxy

    url, endpoint = s3_url
    proxy = FaultProxy(int(endpoint.rsplit(":", 1)[1]))
    try:
        proxy.kinds = ("flip",)
        store = open_store(url, endpoint_url=proxy.endpoint)
        data = bytes(range(256)) * 4096
        proxy.fault_rate = 1.0
        with pytest.raises(TemporaryStoreError, match="BadDigest"):
            store.put("pack", data)
        flips = itertools.chain([True], itertools.repeat(False))

        def choose_next(original=proxy._choose):
            proxy.fault_rate = 1.0 if next(flips) else 0.0
            return original()

        proxy._choose = choose_next
        retrying = RetryingStore(store, give_up_after=60, first_delay=0.001, max_delay=0.01)
        retrying.put("pack", data)
        assert retrying.retries == 1 and proxy.counts["flip"] == 2
        assert store.get("pack") == data
    finally:
        proxy.stop()


def test_a_put_body_goes_out_whole_unsigned_with_its_crc32c(s3_url):
    """What a PUT sends (issue 20): the body as bytes, sent in one call (botocore's BytesIO went out
    16 KiB at a time through Python, behind a `100-continue`), its CRC32C, no SHA-256 of it."""
    from ckptfs.store.s3 import crc32c_header

    url, endpoint = s3_url
    store = open_store(url, endpoint_url=endpoint)
    sent = []
    store.client.meta.events.register("before-send.s3.PutObject", lambda request, **_: sent.append(request))
    data = b"checkpoint" * 300_000
    store.put("pack", data)
    (request,) = sent
    assert isinstance(request.body, bytes) and "Expect" not in request.headers
    assert request.headers["x-amz-checksum-crc32c"].decode() == crc32c_header(data)
    assert request.headers["x-amz-content-sha256"] == b"UNSIGNED-PAYLOAD"
    assert store.get("pack") == data


def test_unknown_store_urls_are_rejected():
    for url in ("ftp://x/y", "s3:///nobucket", "file://remotehost/x"):
        with pytest.raises(ConfigError):
            open_store(url)
