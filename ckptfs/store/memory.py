"""MemoryStore: objects in a dict, for tests that run the lake and the file system layer without a
kernel mount or a server. Thread-safe like every store (the uploader calls it from worker threads).
`memory://NAME` URLs name it for messages only: nothing outside the process can reach it."""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterator

from ckptfs.store.base import (
    ARCHIVE_CLASSES,
    ObjectArchived,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    PreconditionFailed,
)


class MemoryStore(ObjectStore):
    def __init__(self, name: str = "memory", *, clock: Callable[[], int] = time.time_ns) -> None:
        self.url = f"memory://{name}/"
        self.clock = clock  # last-modified times (tests of garbage collection set it)
        self._modified: dict[str, int] = {}
        self._classes: dict[str, str] = {}  # keys not in STANDARD
        self._objects: dict[str, bytes] = {}
        self._keys: list[str] = []  # sorted, for list()
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        with self._lock:
            if key in self._objects:
                if if_absent:
                    raise PreconditionFailed(f"{key} exists")
            else:
                bisect.insort(self._keys, key)
            self._objects[key] = bytes(data)
            self._modified[key] = self.clock()
            self._classes.pop(key, None)

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        with self._lock:
            data = self._objects.get(key)
        if data is None:
            raise ObjectNotFound(f"{self.url}{key} does not exist")
        if self._classes.get(key) in ARCHIVE_CLASSES:
            raise ObjectArchived(f"GET {key}: in storage class {self._classes[key]}: restore it first "
                                 "(aws s3api restore-object)")
        return data[start or 0:end if end is not None else len(data)]

    def size(self, key: str) -> int | None:
        with self._lock:
            data = self._objects.get(key)
        return None if data is None else len(data)

    def list_stat(self, prefix: str) -> Iterator[ObjectInfo]:
        keys = list(self.list(prefix))
        with self._lock:
            return iter([ObjectInfo(key, len(self._objects[key]), self._modified[key],
                                    self._classes.get(key, "STANDARD"))
                         for key in keys if key in self._objects])

    def set_storage_class(self, key: str, storage_class: str) -> None:
        with self._lock:
            if key not in self._objects:
                raise ObjectNotFound(f"{self.url}{key} does not exist")
            self._classes[key] = storage_class
            self._modified[key] = self.clock()  # a copy onto itself, as S3 does it

    def storage_class(self, key: str) -> str:
        return self._classes.get(key, "STANDARD")

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[str]:
        with self._lock:
            first = bisect.bisect_left(self._keys, prefix)
            if start_after is not None:
                first = max(first, bisect.bisect_right(self._keys, start_after))
            keys = []
            for key in self._keys[first:]:
                if key.startswith(prefix):
                    keys.append(key)
                elif key > prefix:
                    break
        return iter(keys)

    def delete(self, key: str) -> None:
        with self._lock:
            if self._objects.pop(key, None) is not None:
                self._keys.remove(key)
                del self._modified[key]
                self._classes.pop(key, None)

    def check_access(self, *, create: bool = True) -> None:
        pass
