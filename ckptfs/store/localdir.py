"""LocalDirStore: the embedded default lake, objects as files in a local directory.

Writes go to a temporary file that is fsynced and then renamed (or linked, for `if_absent`) into
place, so a reader never sees a partial object and a crash never leaves one.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Iterator

from ckptfs.store.base import ObjectInfo, ObjectNotFound, ObjectStore, PermanentStoreError, PreconditionFailed


class LocalDirStore(ObjectStore):
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.url = "file://" + self.root

    def _path(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise PermanentStoreError(f"invalid object key {key!r}")
        return os.path.join(self.root, key)

    def check_access(self, *, create: bool = True) -> None:
        if not create and not os.path.isdir(self.root):
            raise PermanentStoreError(f"no lake at {self.url}: {self.root} does not exist")
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as error:
            raise PermanentStoreError(f"cannot create lake directory {self.root}: {error.strerror}") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise PermanentStoreError(f"lake directory {self.root} is not writable")

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            with open(temporary, "wb") as file:
                file.write(data)
                file.flush()
                os.fdatasync(file.fileno())
            if if_absent:
                try:
                    os.link(temporary, path)
                except FileExistsError:
                    raise PreconditionFailed(f"{key} already exists") from None
            else:
                os.replace(temporary, path)
                temporary = None
        except OSError as error:
            raise PermanentStoreError(f"cannot write {path}: {error.strerror}") from None
        finally:
            if temporary is not None:
                try:
                    os.unlink(temporary)
                except FileNotFoundError:
                    pass

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        try:
            with open(self._path(key), "rb") as file:
                if start:
                    file.seek(start)
                return file.read() if end is None else file.read(end - (start or 0))
        except FileNotFoundError:
            raise ObjectNotFound(f"{key} not found in {self.url}") from None

    def get_parts(self, key: str, start: int, sizes: list[int]) -> list[bytes]:
        try:
            with open(self._path(key), "rb", buffering=0) as file:
                file.seek(start)
                return [file.read(size) for size in sizes]  # each read straight into its own bytes
        except FileNotFoundError:
            raise ObjectNotFound(f"{key} not found in {self.url}") from None

    def size(self, key: str) -> int | None:
        try:
            return os.stat(self._path(key)).st_size
        except FileNotFoundError:
            return None

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[str]:
        directory, _, _ = prefix.rpartition("/")
        keys: list[str] = []
        base = os.path.join(self.root, directory) if directory else self.root
        for dirpath, _, filenames in os.walk(base):
            relative = os.path.relpath(dirpath, self.root)
            relative = "" if relative == "." else relative + "/"
            for name in filenames:
                key = relative + name
                if ".tmp-" not in name and key.startswith(prefix):
                    keys.append(key)
        keys.sort()
        for key in keys:
            if start_after is None or key > start_after:
                yield key

    def list_stat(self, prefix: str) -> Iterator[ObjectInfo]:
        for key in self.list(prefix):
            try:
                status = os.stat(self._path(key))
            except FileNotFoundError:
                continue
            yield ObjectInfo(key, status.st_size, status.st_mtime_ns)

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except OSError as error:
            if error.errno != errno.ENOENT:
                raise PermanentStoreError(f"cannot delete {key}: {error.strerror}") from None
