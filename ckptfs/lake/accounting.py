"""What each version is and costs: the reports behind `ckptfs log` and `ckptfs du`.

Both read the lake's history (a snapshot and the log), judge it by the retention policies, tags and
holds as GC would now, and read manifests (in parallel). `log` reads the manifests of the versions
it shows (who wrote each, what was new against the path's version before); `du` reads every
manifest of the lake, since what a version shares with others decides what deleting it frees:

* **logical**: the file sizes;
* **stored**: what the lake holds for them (compressed chunk objects, each counted once, and the
  inline bytes of small files);
* **unique**: the stored bytes no version outside the set names: what collecting it would free;
* **shared**: stored - unique;
* **dollars per month**: stored bytes at S3 Standard's price (the unique part is what a deletion saves).
"""

from __future__ import annotations

import concurrent.futures
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ckptfs.errors import CkptfsError
from ckptfs.lake.codec import HEADER_SIZE
from ckptfs.lake.gc import dollars_per_month, read_collected, retention_now
from ckptfs.lake.lake import Lake
from ckptfs.lake.manifest import Manifest, encode_path
from ckptfs.lake.namespace import Namespace
from ckptfs.lake.retention import Retention, Verdict


def under(path: bytes, top: bytes) -> bool:
    return not top or path == top or path.startswith(top + b"/")


def judge(lake: Lake, tree: Namespace, now_ns: int) -> Retention:
    retention = retention_now(lake, now_ns)
    retention.prepare(tree.history)
    return retention


def read_manifests(lake: Lake, identifiers: Iterable[str], threads: int = 16) -> dict[str, Manifest | None]:
    """id -> manifest, or None where it is gone (collected, or missing: fsck says which)."""
    identifiers = sorted(set(identifiers))

    def read(identifier: str) -> Manifest | None:
        try:
            return lake.get_manifest(identifier)
        except CkptfsError:
            return None

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return dict(zip(identifiers, pool.map(read, identifiers), strict=True))


def dollars(stored_bytes: int) -> float:
    return round(dollars_per_month(stored_bytes), 6)


def history_log(lake: Lake, tree: Namespace, top: bytes, now_ns: int) -> list[dict[str, Any]]:
    """Every state of every path at or under `top`, oldest first per path."""
    retention = judge(lake, tree, now_ns)
    collected = read_collected(lake.store)
    paths = sorted(path for path in tree.history if under(path, top))
    wanted = {state.manifest for path in paths for state in tree.history[path]
              if state.manifest and state.manifest not in collected}
    manifests = read_manifests(lake, wanted)
    writers = lake.writers()
    rows: list[dict[str, Any]] = []
    for path in paths:
        states = tree.history[path]
        verdicts = {id(verdict.state): verdict for verdict in retention.judge(path, states)}
        previous: set[bytes] = set()
        for state in states:
            row: dict[str, Any] = {"path": encode_path(path), "time_ns": state.time_ns}
            if state.deleted:
                row["deleted"] = True
                rows.append(row)
                continue
            if state.manifest is None:
                row.update(symlink=True, target=encode_path(state.target or b""))
                rows.append(row)
                continue
            verdict: Verdict = verdicts[id(state)]
            value = manifests.get(state.manifest)
            chunks = {chunk for chunk, _ in value.chunks} if value is not None else set()
            new = sum(length for chunk, length in dict(value.chunks).items() if chunk not in previous) \
                if value is not None else None
            row.update(size=state.size, manifest=state.manifest, live=verdict.end_ns is None,
                       kept=verdict.kept, rules=list(verdict.reasons), folded=verdict.folded,
                       mount=value.mount if value is not None else None,
                       writer=writers.get(value.mount) if value is not None else None,
                       new_bytes=(state.size if value is not None and value.inline is not None else new),
                       collected=state.manifest in collected)
            rows.append(row)
            previous = chunks
    return rows


@dataclass
class _Usage:
    manifests: set[str] = field(default_factory=set)
    logical: int = 0

    def figures(self, stored_of: dict[str, dict[bytes, int]], refs: Counter[bytes],
                inline: dict[str, int]) -> dict[str, Any]:
        chunks: dict[bytes, int] = {}
        inside: Counter[bytes] = Counter()
        inline_bytes = 0
        for identifier in self.manifests:
            for chunk, stored in stored_of.get(identifier, {}).items():
                chunks[chunk] = stored
                inside[chunk] += 1
            inline_bytes += inline.get(identifier, 0)
        stored = sum(chunks.values()) + inline_bytes
        unique = sum(size for chunk, size in chunks.items() if inside[chunk] == refs[chunk]) + inline_bytes
        return {"versions": len(self.manifests), "logical_bytes": self.logical, "stored_bytes": stored,
                "unique_bytes": unique, "shared_bytes": stored - unique,
                "dollars_per_month": dollars(stored), "dollars_per_month_freed_if_deleted": dollars(unique)}


def disk_usage(lake: Lake, tree: Namespace, top: bytes, now_ns: int) -> dict[str, Any]:
    """Logical, stored, unique and shared bytes of `top` (a file or a directory), of each version
    under it and of each entry directly in it (a run's checkpoints), and their monthly cost."""
    retention = judge(lake, tree, now_ns)
    collected = read_collected(lake.store)
    every = {state.manifest for states in tree.history.values() for state in states
             if state.manifest and state.manifest not in collected}
    manifests = read_manifests(lake, every)
    stored_of: dict[str, dict[bytes, int]] = {}
    inline: dict[str, int] = {}
    refs: Counter[bytes] = Counter()
    for identifier, value in manifests.items():
        if value is None:
            continue
        if value.inline is not None:
            inline[identifier] = len(value.inline)
        own = {}
        for index, (chunk, length) in enumerate(value.chunks):
            where = value.location(index)
            own[chunk] = where.stored if not where.loose else length + HEADER_SIZE
        stored_of[identifier] = own
        refs.update(own.keys())
    total, children = _Usage(), {}
    versions = []
    for path in sorted(path for path in tree.history if under(path, top)):
        rest = path[len(top) + 1:] if top else path
        child = rest.split(b"/", 1)[0] if rest else b""
        for verdict in retention.judge(path, tree.history[path]):
            identifier = verdict.state.manifest or ""
            if identifier not in manifests or manifests[identifier] is None:
                continue
            for usage in (total, children.setdefault(child, _Usage())):
                if identifier not in usage.manifests:
                    usage.manifests.add(identifier)
                    usage.logical += verdict.state.size
            single = _Usage({identifier}, verdict.state.size).figures(stored_of, refs, inline)
            versions.append({"path": encode_path(path), "time_ns": verdict.state.time_ns, "manifest": identifier,
                             "live": verdict.end_ns is None, "kept": verdict.kept, "rules": list(verdict.reasons),
                             **single})
    return {"path": encode_path(top), "total": total.figures(stored_of, refs, inline),
            "entries": {encode_path(name): usage.figures(stored_of, refs, inline)
                        for name, usage in sorted(children.items()) if name},
            "versions": versions}
