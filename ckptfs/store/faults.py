"""FaultyStore: wraps a store and makes chosen operations fail, for tests of retries, outages,
corruption and backpressure at the ObjectStore seam (no proxy, no kernel mount needed).

A rule names the operation ("put", "get", "size", "list", "delete"), a key prefix and what happens:
a temporary or permanent failure, or (for get) damaged bytes. Rules fire a given number of times or
until removed; every call is counted per operation, so tests can assert request counts too.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ckptfs.store.base import ObjectInfo, ObjectStore, PermanentStoreError, TemporaryStoreError


@dataclass
class Fault:
    operation: str
    prefix: str = ""
    kind: str = "temporary"  # "temporary", "permanent", or "corrupt" (get answers flipped bytes)
    times: int | None = None  # None: until removed
    fired: int = 0


class FaultyStore(ObjectStore):
    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.url = inner.url
        self.faults: list[Fault] = []
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def fail(self, operation: str, prefix: str = "", *, kind: str = "temporary", times: int | None = None) -> Fault:
        fault = Fault(operation, prefix, kind, times)
        with self._lock:
            self.faults.append(fault)
        return fault

    def heal(self) -> None:
        with self._lock:
            self.faults.clear()

    def _fault(self, operation: str, key: str) -> Fault | None:
        with self._lock:
            self.calls[operation] += 1
            for fault in self.faults:
                if fault.operation == operation and key.startswith(fault.prefix) and (
                        fault.times is None or fault.fired < fault.times):
                    fault.fired += 1
                    return fault
        return None

    def _call(self, operation: str, key: str, call: Callable[[], object]):
        fault = self._fault(operation, key)
        if fault is not None and fault.kind != "corrupt":
            error = TemporaryStoreError if fault.kind == "temporary" else PermanentStoreError
            raise error(f"injected {fault.kind} failure of {operation.upper()} {key}")
        result = call()
        if fault is None:
            return result
        if isinstance(result, bytes) and result:
            return _flip_first_byte(result)
        if operation == "get" and isinstance(result, list):  # get_parts: the first byte of the range
            first = next((index for index, part in enumerate(result) if part), None)
            if first is not None:
                result[first] = _flip_first_byte(result[first])
        return result

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        self._call("put", key, lambda: self.inner.put(key, data, if_absent=if_absent))

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        return self._call("get", key, lambda: self.inner.get(key, start, end))

    def get_parts(self, key: str, start: int, sizes: list[int]) -> list[bytes]:
        return self._call("get", key, lambda: self.inner.get_parts(key, start, sizes))

    def size(self, key: str) -> int | None:
        return self._call("size", key, lambda: self.inner.size(key))

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[str]:
        return iter(self._call("list", prefix, lambda: list(self.inner.list(prefix, start_after))))

    def list_stat(self, prefix: str) -> Iterator[ObjectInfo]:
        return iter(self._call("list", prefix, lambda: list(self.inner.list_stat(prefix))))

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self.inner.delete(key))

    def set_storage_class(self, key: str, storage_class: str) -> None:
        self._call("put", key, lambda: self.inner.set_storage_class(key, storage_class))

    def check_access(self, *, create: bool = True) -> None:
        self.inner.check_access(create=create)


def _flip_first_byte(data: bytes) -> bytes:
    return bytes([data[0] ^ 0xFF]) + data[1:]
