"""The object-store interface every backend implements, its error classes, and the retry policy.

A store holds immutable byte objects under string keys. It knows nothing of chunks, manifests or
files. Backends classify every failure as temporary (worth retrying) or permanent (report it);
`RetryingStore` is the one place that retries, with exponential backoff, jitter and a give-up time.
"""

from __future__ import annotations

import abc
import concurrent.futures
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from ckptfs.errors import CkptfsError

log = logging.getLogger(__name__)
T = TypeVar("T")
_KINDS = ("PUT", "GET", "HEAD", "LIST", "DELETE")


class StoreError(CkptfsError):
    """A store operation failed."""


class TemporaryStoreError(StoreError):
    """The store may succeed if asked again later: throttling, 5xx, timeouts, resets."""


class PermanentStoreError(StoreError):
    """Asking again will not help: access denied, missing bucket, bad credentials, bad request."""


class ObjectNotFound(StoreError):
    """The key does not exist."""


class ObjectArchived(PermanentStoreError):
    """The object is in an archive storage class (S3 GLACIER, DEEP_ARCHIVE): it must be restored
    before it can be read."""


# Storage classes a policy may move old packs to (docs/SEMANTICS.md, "Retention"): the first three
# read like STANDARD (a retrieval fee per GB), the last two only after a restore.
STORAGE_CLASSES = ("STANDARD_IA", "ONEZONE_IA", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE")
ARCHIVE_CLASSES = ("GLACIER", "DEEP_ARCHIVE")


class PreconditionFailed(StoreError):
    """A conditional write lost: the key already exists (If-None-Match: *)."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified_ns: int
    storage_class: str = "STANDARD"


class ObjectStore(abc.ABC):
    """Synchronous, thread-safe access to one prefix of an object store."""

    url: str

    @abc.abstractmethod
    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        """Store `data` under `key`. With `if_absent`, raise PreconditionFailed if the key exists."""

    @abc.abstractmethod
    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """Return the object's bytes, or bytes [start, end) of it. Raise ObjectNotFound."""

    def get_parts(self, key: str, start: int, sizes: list[int]) -> list[bytes]:
        """Bytes [start, start + sum(sizes)) of the object, as consecutive parts of these sizes,
        each its own `bytes`: a store that streams (S3) reads each part straight into it, so a run
        of chunk objects needs no copy out of one big buffer. Raise ObjectNotFound."""
        blob = self.get(key, start, start + sum(sizes))
        parts, at = [], 0
        with memoryview(blob) as view:
            for size in sizes:
                parts.append(bytes(view[at:at + size]))
                at += size
        return parts

    def get_each(self, keys: list[str], threads: int = 16) -> dict[str, bytes]:
        """Every object of `keys` that exists, read side by side: many small objects (records of
        garbage collection, tags) in one round of GETs rather than one round each."""
        def one(key: str) -> bytes | None:
            try:
                return self.get(key)
            except ObjectNotFound:
                return None

        if len(keys) <= 1:
            found = [one(key) for key in keys]
        else:
            with concurrent.futures.ThreadPoolExecutor(min(threads, len(keys))) as pool:
                found = list(pool.map(one, keys))
        return {key: blob for key, blob in zip(keys, found, strict=True) if blob is not None}

    @abc.abstractmethod
    def size(self, key: str) -> int | None:
        """Return the object's size, or None if it does not exist."""

    @abc.abstractmethod
    def list(self, prefix: str, start_after: str | None = None) -> Iterator[str]:
        """Yield the keys that start with `prefix`, in lexicographic order, after `start_after`."""

    @abc.abstractmethod
    def list_stat(self, prefix: str) -> Iterator[ObjectInfo]:
        """Yield every object under `prefix` with its size and last-modified time, in key order
        (one LIST, as `list`; the time is the store's clock, which garbage collection compares with
        its own within the lake's `max_clock_skew_s`)."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the key; removing a missing key is not an error."""

    def delete_many(self, keys: list[str]) -> None:
        """Remove every key (missing ones are not an error): one request per key by default, one
        per 1,000 on S3 (DeleteObjects)."""
        for key in keys:
            self.delete(key)

    def set_storage_class(self, key: str, storage_class: str) -> None:
        """Move an object to another storage class (S3: a copy onto itself)."""
        raise PermanentStoreError(f"{self.url} has no storage classes: tiers need an S3 lake")

    def check_access(self, *, create: bool = True) -> None:
        """Raise a StoreError with a clear message if the store cannot be used at all (`create`:
        a mount may create what holds the lake; fsck and gc only read an existing one)."""
        next(iter(self.list("lake.json")), None)


class RetryingStore(ObjectStore):
    """Wraps a store and retries temporary failures with exponential backoff and full jitter."""

    GIVE_UP_AFTER = 300.0  # seconds a call keeps retrying, by default

    def __init__(self, inner: ObjectStore, *, give_up_after: float = GIVE_UP_AFTER, first_delay: float = 0.2,
                 max_delay: float = 20.0, on_retry: Callable[[str, Exception], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep, retry_log_level: int = logging.WARNING) -> None:
        self.inner = inner
        self.retry_log_level = retry_log_level
        self.url = inner.url
        self.give_up_after = give_up_after
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.on_retry = on_retry
        self._sleep = sleep
        # Health figures for `ckptfs status`: written by worker threads, read by the trio thread;
        # each is a single assignment, so a reader sees an old or a new value, never a torn one.
        self.retries = 0
        # Requests made, by S3 request type, each attempt counted (what a bill counts; a LIST of
        # n keys is ceil(n / 1000) requests, the S3 page size, whatever the backend).
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()  # "PUT temporary", "GET permanent", ... (not-found is no error)
        self._count_lock = threading.Lock()
        self.last_error: str | None = None
        self.last_error_time: float | None = None
        self.last_success_time: float | None = None

    def _count(self, kind: str, number: int = 1) -> None:
        with self._count_lock:
            self.requests[kind] += number

    def _retry(self, what: str, call: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.give_up_after
        attempt = 0
        kind = what.split(" ", 1)[0] if what.split(" ", 1)[0] in _KINDS else "HEAD"
        while True:
            try:
                result = call()
                self.last_success_time = time.time()
                if kind == "LIST":
                    self._count(kind, max(1, -(-len(result) // 1000)))  # type: ignore[arg-type]
                else:
                    self._count(kind)
                return result
            except TemporaryStoreError as error:
                self._count(kind)
                with self._count_lock:
                    self.errors[f"{kind} temporary"] += 1
                attempt += 1
                self.retries += 1
                self.last_error, self.last_error_time = str(error), time.time()
                delay = random.uniform(0, min(self.max_delay, self.first_delay * 2 ** attempt))
                if time.monotonic() + delay > deadline:
                    raise
                log.log(self.retry_log_level, "%s failed (%s); retry %d in %.1fs", what, error, attempt, delay)
                if self.on_retry is not None:
                    self.on_retry(what, error)
                self._sleep(delay)
            except StoreError as error:  # permanent, not found, precondition failed: a request all the same
                self._count(kind)
                if isinstance(error, PermanentStoreError):
                    with self._count_lock:
                        self.errors[f"{kind} permanent"] += 1
                raise

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        self._retry(f"PUT {key}", lambda: self.inner.put(key, data, if_absent=if_absent))

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        return self._retry(f"GET {key}", lambda: self.inner.get(key, start, end))

    def get_parts(self, key: str, start: int, sizes: list[int]) -> list[bytes]:
        return self._retry(f"GET {key}", lambda: self.inner.get_parts(key, start, sizes))

    def size(self, key: str) -> int | None:
        return self._retry(f"HEAD {key}", lambda: self.inner.size(key))

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[str]:
        # Listing pages lazily would retry mid-iteration; listings here are small enough to collect.
        return iter(self._retry(f"LIST {prefix}", lambda: list(self.inner.list(prefix, start_after))))

    def list_stat(self, prefix: str) -> Iterator[ObjectInfo]:
        return iter(self._retry(f"LIST {prefix}", lambda: list(self.inner.list_stat(prefix))))

    def delete(self, key: str) -> None:
        self._retry(f"DELETE {key}", lambda: self.inner.delete(key))

    def delete_many(self, keys: list[str]) -> None:
        if keys:  # deleting again what a failed attempt deleted is no error
            self._retry(f"DELETE {len(keys)} keys from {keys[0]}", lambda: self.inner.delete_many(keys))

    def set_storage_class(self, key: str, storage_class: str) -> None:
        self._retry(f"COPY {key}", lambda: self.inner.set_storage_class(key, storage_class))

    def check_access(self, *, create: bool = True) -> None:
        self._retry("check access", lambda: self.inner.check_access(create=create))
