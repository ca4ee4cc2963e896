"""Reading a lake without FUSE: `ckptfs ls`, `ckptfs cp`, and `ckptfs.open(url, path)`.

An evaluation host, a laptop or a recovery script reads a checkpoint straight from the lake: the
namespace (a snapshot and the log) says which manifest a path has (now, or at an instant with `at`),
the manifest where its chunks are, and the chunks are fetched with ranged GETs, a run of a pack at
a time, several at once, each verified against its id. Nothing here needs pyfuse3 or a cache dir.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ckptfs.errors import CkptfsError
from ckptfs.lake import Lake, packs
from ckptfs.lake.manifest import Manifest, chunk_offsets
from ckptfs.lake.namespace import Namespace
from ckptfs.store import RetryingStore, open_store

THREADS = 16


@dataclass(frozen=True)
class Found:
    path: bytes
    manifest: str | None  # None: a directory
    size: int
    mtime_ns: int


def open_lake_at(url: str, endpoint_url: str | None = None) -> tuple[Lake, bytes]:
    """The lake holding `url` (a lake's URL, or a path inside it) and the path in it."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "file", os.path.abspath(url)
    parts = rest.rstrip("/").split("/")
    for cut in range(len(parts), 0, -1):
        base = f"{scheme}://{'/'.join(parts[:cut])}" if scheme != "file" else "file://" + "/".join(parts[:cut])
        store = open_store(base, endpoint_url=endpoint_url)
        if store.size("lake.json") is not None:
            lake = Lake(RetryingStore(store, give_up_after=60))
            lake.open(create=False)
            return lake, "/".join(parts[cut:]).encode()
    raise CkptfsError(f"no lake at or above {url}")


def tree_at(lake: Lake, at_ns: int | None = None, namespace: Namespace | None = None) -> dict[bytes, Found]:
    """Every file of the lake (now, or as it was at `at_ns`) -> what it is; `namespace`: the lake's,
    read once for several looks at it."""
    namespace = namespace or lake.read_namespace()
    found: dict[bytes, Found] = {}
    if at_ns is None:
        for path, entry in namespace.entries.items():
            if path and entry.kind == "file" and entry.manifest:
                found[path] = Found(path, entry.manifest, entry.size, entry.mtime_ns)
        return found
    for path, states in namespace.history.items():
        current = None
        for state in states:
            if state.time_ns <= at_ns:
                current = state
        if current is not None and current.manifest is not None:
            found[path] = Found(path, current.manifest, current.size, current.time_ns)
    return found


def listing(lake: Lake, top: bytes, at_ns: int | None = None, namespace: Namespace | None = None) -> list[Found]:
    """The files at or under `top` (a file, or a directory: everything below it)."""
    files = tree_at(lake, at_ns, namespace)
    if top in files:
        return [files[top]]
    prefix = top + b"/" if top else b""
    return sorted((found for path, found in files.items() if path.startswith(prefix)), key=lambda f: f.path)


def copy_to(lake: Lake, manifest: Manifest, destination: str, *,
            progress: Callable[[int], None] = lambda done: None, threads: int = THREADS) -> None:
    """Write a version to a local file: runs of a pack at a time, `threads` GETs at once, verified."""
    tmp = f"{destination}.ckptfs-{os.getpid()}"
    with open(tmp, "wb") as file:
        if manifest.inline is not None:
            file.write(manifest.inline)
        else:
            file.truncate(manifest.size)
            offsets = chunk_offsets(manifest.chunks)
            located = [(chunk, manifest.location(index)) for index, (chunk, _) in enumerate(manifest.chunks)]
            runs = packs.runs([where for _, where in located], packs.RUN_BYTES, packs.RUN_GAP)

            def fetch(run: list[int]) -> list[tuple[int, bytes]]:
                datas = lake.get_run([located[index] for index in run])
                return [(offsets[index], data) for index, data in zip(run, datas, strict=True)]

            with concurrent.futures.ThreadPoolExecutor(threads) as pool:
                for pieces in pool.map(fetch, runs):
                    for offset, data in pieces:
                        os.pwrite(file.fileno(), data, offset)
                        progress(len(data))
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, destination)


class LakeFile(io.RawIOBase):
    """A version in the lake as a seekable, readable file (`ckptfs.open`): `torch.load`, safetensors
    and numpy read it as they read a local file. Chunks are fetched as they are read, a pack run at
    a time, and the last 64 MiB of them kept."""

    def __init__(self, lake: Lake, manifest: Manifest, name: str, cache_bytes: int = 64 << 20) -> None:
        self.lake = lake
        self.manifest = manifest
        self.name = name
        self._position = 0
        self._offsets = chunk_offsets(manifest.chunks)
        self._located = [(chunk, manifest.location(index)) for index, (chunk, _) in enumerate(manifest.chunks)]
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_bytes = cache_bytes

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.manifest.size}[whence]
        if base + offset < 0:
            raise OSError(22, "negative seek position")
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer) -> int:  # noqa: ANN001 - a writable buffer
        view = memoryview(buffer).cast("B")
        size = min(len(view), max(0, self.manifest.size - self._position))
        if size == 0:
            return 0
        if self.manifest.inline is not None:
            view[:size] = self.manifest.inline[self._position:self._position + size]
            self._position += size
            return size
        done = 0
        for _, start, data in self._chunks(self._position, size):
            piece = data[max(0, self._position + done - start):]
            piece = piece[:size - done]
            view[done:done + len(piece)] = piece
            done += len(piece)
        self._position += done
        return done

    def _chunks(self, offset: int, size: int) -> Iterator[tuple[int, int, bytes]]:
        import bisect
        first = bisect.bisect_right(self._offsets, offset) - 1
        index = first
        while index < len(self._located) and self._offsets[index] < offset + size:
            if index not in self._cache:
                self._fetch_from(index)
            data = self._cache[index]
            self._cache.move_to_end(index)
            yield index, self._offsets[index], data
            index += 1

    def _fetch_from(self, index: int) -> None:
        """The chunk at `index` and those after it in its pack's run (read-ahead), up to packs.RUN_BYTES."""
        run = [index]
        while (run[-1] + 1 < len(self._located) and not self._located[index][1].loose
               and self._located[run[-1] + 1][1].pack == self._located[index][1].pack
               and self._located[run[-1]][1].end == self._located[run[-1] + 1][1].offset
               and self._located[run[-1] + 1][1].end - self._located[index][1].offset <= packs.RUN_BYTES):
            run.append(run[-1] + 1)
        for position, data in zip(run, self.lake.get_run([self._located[i] for i in run]), strict=True):
            self._cache[position] = data
        while sum(len(data) for data in self._cache.values()) > self._cache_bytes and len(self._cache) > len(run):
            self._cache.popitem(last=False)


def open_version(url: str, path: str | None = None, *, at_ns: int | None = None,
                 endpoint_url: str | None = None) -> io.BufferedReader:
    """A file of the lake, read-only and seekable: `ckptfs.open("s3://bucket/prefix", "run1/model.pt")`
    or `ckptfs.open("s3://bucket/prefix/run1/model.pt")`; `at_ns` for the version current then."""
    lake, inside = open_lake_at(url, endpoint_url)
    if path:
        inside = (inside + b"/" if inside else b"") + os.fsencode(path.strip("/"))
    found = listing(lake, inside, at_ns)
    if len(found) != 1 or found[0].path != inside:
        raise CkptfsError(f"{inside.decode(errors='replace')}: no such file in {lake.store.url}")
    return io.BufferedReader(LakeFile(lake, lake.get_manifest(found[0].manifest or ""),
                                      inside.decode(errors="replace")), buffer_size=1 << 20)
