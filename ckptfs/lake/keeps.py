"""What keeps versions beyond retention's rules, stored in the lake: tags and holds.

* A **tag** (`tags/<xxh3 of the name>`) names versions by (path, manifest): one file's current
  version, or every file of a directory as it is when tagged. Tagged versions are never collected,
  and a mount shows them read-only under `.tags/NAME/`.
* A **hold** (`holds/<mount id>`) lists the manifests a mount has opened for reading (its own
  writing too: a job may resume on the node that saved), with when it last opened each. A
  checkpoint a job resumed from is held for HOLD_NS after its last open, even after rotation or
  retention dropped it from the history's kept versions (the mount rewrites the object within a
  second of a new open; GC reads them all).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import xxhash

from ckptfs.errors import CkptfsError
from ckptfs.lake.manifest import decode_path, encode_path
from ckptfs.store import ObjectNotFound, ObjectStore

TAGS = "tags/"
HOLDS = "holds/"
HOLD_NS = 7 * 86400 * 10**9
_TAG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
_MANIFEST = re.compile(r"^[0-9a-f]{32}$")


class TagError(CkptfsError):
    """A tag that cannot be made or read."""


@dataclass(frozen=True)
class Tag:
    name: str
    created_ns: int
    root: bytes  # the path tagged (a file or a directory)
    entries: tuple[tuple[bytes, str], ...]  # (path, manifest) of every version it keeps


def check_tag_name(name: str) -> str:
    if not _TAG_NAME.match(name):
        raise TagError(f"{name!r:.60} is not a tag name: 1-128 letters, digits and . _ @ + -, "
                       "starting with a letter or digit")
    return name


def tag_key(name: str) -> str:
    return f"{TAGS}{xxhash.xxh3_128_hexdigest(name.encode())}"


def put_tag(store: ObjectStore, tag: Tag) -> None:
    body = {"format": 1, "name": tag.name, "created_ns": tag.created_ns, "root": encode_path(tag.root),
            "entries": [[encode_path(path), manifest] for path, manifest in tag.entries]}
    store.put(tag_key(tag.name), json.dumps(body).encode(), if_absent=True)


def read_tags(store: ObjectStore) -> list[Tag]:
    found = store.get_each(list(store.list(TAGS)))  # one untagged meanwhile is not there
    return sorted((decode_tag(blob, key) for key, blob in found.items()), key=lambda tag: tag.name)


def decode_tag(blob: bytes, key: str) -> Tag:
    try:
        value = json.loads(blob)
        if value.get("format") != 1:
            raise TagError(f"{key}: unknown tag format")
        name = check_tag_name(value["name"])
        entries = tuple((decode_path(path), manifest) for path, manifest in value["entries"])
        if any(not _MANIFEST.match(manifest) for _, manifest in entries):
            raise TagError(f"{key}: a manifest id is malformed")
        tag = Tag(name, int(value["created_ns"]), decode_path(value["root"]), entries)
    except TagError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise TagError(f"{key}: not a tag ({error})") from None
    if key != tag_key(name):
        raise TagError(f"{key}: holds another tag's name")
    return tag


def put_holds(store: ObjectStore, mount: str, opened: dict[str, int], now_ns: int) -> None:
    body = {"format": 1, "mount": mount, "updated_ns": now_ns,
            "manifests": {manifest: when for manifest, when in opened.items() if when > now_ns - HOLD_NS}}
    store.put(f"{HOLDS}{mount}", json.dumps(body).encode())


def read_holds(store: ObjectStore, now_ns: int) -> set[str]:
    """Every manifest some mount opened within HOLD_NS of `now_ns`."""
    held: set[str] = set()
    for key in store.list(HOLDS):
        try:
            value = json.loads(store.get(key))
            held.update(manifest for manifest, when in value["manifests"].items()
                        if _MANIFEST.match(manifest) and int(when) > now_ns - HOLD_NS)
        except ObjectNotFound:
            continue
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise CkptfsError(f"{key}: not a holds object ({error}); remove it to let GC run") from None
    return held
