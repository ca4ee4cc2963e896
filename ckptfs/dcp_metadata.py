"""The files a PyTorch Distributed Checkpoint's `.metadata` names, read without importing torch.

`.metadata` is a pickle of torch's `Metadata`: per tensor, its chunks, and in `storage_data` where each
chunk lies (`_StorageInfo.relative_path`, offset, length). Reading it with torch means importing torch,
which is most of what `ckptfs latest` cost as a command (a restart script's `LATEST=$(ckptfs latest
/ckpt/run)`: seconds of import for a few KiB of metadata). Here every torch object in the pickle is
built as a plain stand-in that keeps the attributes it was given (so is every other class it names:
`pathlib.PosixPath` in `storage_meta`), and nothing is called but the few builtin containers a
pickle names: reading it runs no code the file names (torch's own reading calls whatever the pickle
names). A pickle whose `storage_data` is not what torch writes is an error: `latest` then reads the
metadata with torch, as before.
"""

from __future__ import annotations

import collections
import io
import pickle
from typing import Any

_ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict, ("builtins", "set"): set,
            ("builtins", "frozenset"): frozenset, ("builtins", "slice"): slice, ("builtins", "complex"): complex,
            ("builtins", "bytearray"): bytearray}


class MetadataError(Exception):
    """`.metadata` is not a DCP metadata pickle this module can read."""


class _StandIn:
    """A torch object (a class, an enum member, a dtype, a function's result): keeps its state."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _StandIn:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) of a class with __slots__
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        return type(name, (_StandIn,), {"__module__": module})  # torch's classes, pathlib's, ...


def named_files(blob: bytes) -> list[str]:
    """The relative paths `storage_data` names, sorted, once each."""
    try:
        metadata = _Unpickler(io.BytesIO(blob)).load()
    except Exception as error:  # a truncated or foreign pickle fails in many ways
        raise MetadataError(f"not a pickle ({type(error).__name__}: {error})") from None
    kind = type(metadata)
    if not (isinstance(metadata, _StandIn) and kind.__name__ == "Metadata"
            and kind.__module__.startswith("torch.distributed.checkpoint")):
        raise MetadataError(f"holds a {kind.__module__}.{kind.__name__}, not torch's checkpoint Metadata")
    storage = getattr(metadata, "storage_data", None) or {}
    if not isinstance(storage, dict):
        raise MetadataError("storage_data is not a mapping")
    paths = set()
    for info in storage.values():
        path = getattr(info, "relative_path", None)
        if not isinstance(path, str):
            raise MetadataError("a storage entry without a relative path")
        paths.add(path)
    return sorted(paths)
