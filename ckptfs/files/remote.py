"""What other mounts published, reconciled into this mount's tree (engine/follower.py fetches it).

The rule that makes every mount show the same tree: the live tree is the replay of the lake
(`lake/namespace.py`, every mount's published events in (time, mount, seq, position) order),
except where this mount has changes it has not published yet. So after each refresh that brought
new events, the replay is recomputed from all events read so far and the journal's tree is brought
in line with it, path by path, leaving alone:
* paths named by events still in this mount's outbox (and everything under them), and
* files this mount is writing (an OPEN version or an open handle): their close publishes them
  later, and the lake then agrees.
File versions and symlink targets other mounts published join the paths' history either way: two
mounts that write one path keep both versions; the later one (by event time, then mount id) is
shown everywhere. Event times are hybrid logical clocks (files/outbox.py), so a node whose clock is
behind still stamps its new changes after everything it has read.

What this costs: events of other mounts that sort after everything replayed so far (the usual case)
extend the replay in place (lake/replay.py), and only the paths they touch (with those above and
below them, and the paths left alone last time because they were held) are compared; held paths are
a PathSet (files/paths.py), asked in O(depth). This mount's own published events join the replay and
are never compared: the journal's tree made them. An event that sorts earlier (published late) makes
the next reconciliation a full one: replay everything, compare everything. Nothing is done when idle.
A restart on an existing cache dir compares only what the events published since the journal last
agreed with the lake touch (`reconciled` in its meta, saved by each reconciliation and, in the same
transaction that leaves the outbox, by each own segment published): a mount's own changes are not
compared again, so a start does not grow with the namespace.
Memory: a base tree (a snapshot's, lake/snapshot.py) and the events after it; the events placed
before a horizon that no late event can reach any more are folded into the base.
"""

from __future__ import annotations

import json
import logging
import stat
from dataclasses import dataclass, field

from ckptfs.cache.journal import COMMITTED, OPEN, ROOT_INODE, Inode, Journal
from ckptfs.files.lifecycle import Lifecycle
from ckptfs.files.outbox import Outbox
from ckptfs.files.paths import PathSet, ancestors
from ckptfs.files.tree import SPECIAL_TYPES, Tree
from ckptfs.lake.events import Event
from ckptfs.lake.manifest import decode_path, encode_path
from ckptfs.lake.namespace import Entry, Namespace
from ckptfs.lake.replay import LakeReplay

log = logging.getLogger(__name__)
KIND_TYPES = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK,
              **{kind: type_bits for type_bits, kind in SPECIAL_TYPES.items()}}


@dataclass
class Invalidations:
    """What the kernel must forget once the changes are in the journal."""
    entries: set[tuple[int, bytes]] = field(default_factory=set)  # (parent inode, name)
    inodes: set[int] = field(default_factory=set)


def _kind(inode: Inode) -> str:
    kind = stat.S_IFMT(inode.mode)
    return next(name for name, bits in KIND_TYPES.items() if bits == kind)


class RemoteChanges:
    def __init__(self, journal: Journal, tree: Tree, lifecycle: Lifecycle, outbox: Outbox,
                 replay: LakeReplay) -> None:
        self.journal = journal
        self.tree = tree
        self.lifecycle = lifecycle
        self.outbox = outbox
        self.replay = replay  # what this mount knows of the lake (lake/replay.py)
        self._scope: set[bytes] = set()  # paths changed since the last reconciliation (replay.full_due: all)
        self._deferred: set[bytes] = set()  # paths left alone last time because this mount held them
        self.pending = Invalidations()
        self.changed = 0  # entries created, replaced, updated or removed by reconciling
        self.compared = 0  # journal entries looked at by reconciling (what it costs)

    def start_from(self, base: Namespace, tail: list[Event], covered: dict[str, int], horizon_ns: int | None,
                   *, replayed: Namespace | None = None, base_covers: dict[str, int] | None = None) -> None:
        """Start from what was read of the lake (Lake.read_log): a base tree (a snapshot's, covering
        `base_covers`), the events after it, and the segments they cover. `replayed`: their replay,
        if the journal's tree was just built from it (nothing to reconcile). Otherwise the next
        reconciliation compares what changed since this cache dir last reconciled (`reconciled`
        in its journal), or everything if that cannot be told."""
        self.replay.start(base, tail, covered, horizon_ns, replayed)
        # The clock starts after everything read.
        self.outbox.observe(self.replay.newest_time())
        if replayed is not None:
            self._save_reconciled()
            return
        saved = self.journal.get_meta("reconciled")
        if saved is not None:
            scope = self._changed_since(json.loads(saved), base_covers or {})
            if scope is not None:
                self.replay.full_due = False
                self._scope, self._deferred = scope, set(scope)

    def _changed_since(self, saved: dict, base_covers: dict[str, int]) -> set[bytes] | None:
        """The paths to compare after a restart: those the events read since the journal's last
        reconciliation touch (before and after each: a renamed directory's old paths too), and
        those it left alone then; None (all) if an event it had not seen is folded into the base
        or sorts before one it had."""
        done: dict[str, int] = saved.get("cursors", {})
        if any(seq > done.get(mount, -1) for mount, seq in base_covers.items()):
            return None

        def new(change: Event) -> bool:
            return change.seq > done.get(change.mount, -1)

        newest_old = oldest_new = None
        for change in self.replay.events:  # one pass: a restart reads every event since the snapshot
            if new(change):
                oldest_new = change.order if oldest_new is None else min(oldest_new, change.order)
            else:
                newest_old = change.order if newest_old is None else max(newest_old, change.order)
        if newest_old is not None and oldest_new is not None and oldest_new < newest_old:
            return None
        scope = {decode_path(path) for path in saved.get("deferred", [])}
        return scope | self.replay.replay_touching(new)

    def own_published(self, seq: int, raw_events: list[dict], published_ns: int) -> None:
        """This mount's segment `seq` has left its outbox (engine/publisher.py, in the transaction
        that drops it from the outbox): its events join the replay, and unless that calls for a
        comparison, the journal's tree agrees with the replay up to them (the tree made them), so a
        restart does not compare them again."""
        self.replay.add_own(seq, raw_events, published_ns)
        if not self.replay.full_due and not self._scope:
            self._save_reconciled()

    def _save_reconciled(self) -> None:
        """What the journal's tree now agrees with (committed with the tree's changes)."""
        self.journal.set_meta("reconciled", json.dumps({"cursors": self.replay.covered,
                                                        "deferred": sorted(encode_path(p) for p in self._deferred)}))

    def take_invalidations(self) -> Invalidations:
        taken, self.pending = self.pending, Invalidations()
        return taken

    # -- entry point --------------------------------------------------------------------------
    def apply(self, new: list[Event]) -> int:
        """Add newly read events of other mounts and bring the tree in line with the replay: the
        paths the new events touched (and those left alone last time because they were held), or
        everything after a replay from scratch. Returns the number of entries changed."""
        touched = self.replay.add(new)
        for change in new:
            self.outbox.observe(max(change.time_ns, change.placed_ns))
        if touched is not None:
            self._scope |= touched
        if not self._scope and not self._deferred and not self.replay.full_due:
            return 0
        scope = None if self.replay.full_due else PathSet(self._scope | self._deferred)
        self.replay.full_due = False
        self._scope = set()
        tree = self.replay.tree()
        before = self.changed
        held = self._held_paths()
        actual = self._actual_tree(scope)
        self.compared += len(actual)
        self._deferred = set()
        self._remove_stale(tree, actual, held)
        self._create_and_update(tree, held, scope)
        self._add_history(tree, scope)
        self._save_reconciled()
        return self.changed - before

    # -- what is not to be touched ------------------------------------------------------------
    def _held_paths(self) -> PathSet:
        """Paths with changes this mount has not published, and files it is writing."""
        held = PathSet(decode_path(path) for path in self.journal.outbox_paths())
        for version in self.journal.versions_in_state(OPEN):
            if version.ino is not None:
                held.update(self.journal.paths_of(version.ino))
        for ino, count in self.lifecycle.open_count.items():
            inode = self.journal.inode(ino)
            if count and inode is not None and inode.is_file:
                held.update(self.journal.paths_of(ino))
        return held

    def _actual_tree(self, scope: PathSet | None) -> dict[bytes, tuple[int, int]]:
        """path -> (parent inode, inode) of the journal's entries within the scope (all if None):
        the scope's paths, the directories above them and everything under them."""
        found: dict[bytes, tuple[int, int]] = {}
        stack: list[tuple[bytes, int]] = []
        if scope is None:
            stack.append((b"", ROOT_INODE))
        for member in scope or ():
            directory, path = ROOT_INODE, b""
            for part in member.split(b"/") if member else ():
                path = path + b"/" + part if path else part
                ino = self.journal.lookup(directory, part)
                if ino is None:
                    break
                found[path] = (directory, ino)
                directory = ino
            else:
                inode = self.journal.inode(directory)
                if inode is not None and inode.is_dir:
                    stack.append((member + b"/", directory))
        while stack:
            prefix, directory = stack.pop()
            for name, ino in self.journal.children(directory):
                path = prefix + name
                found[path] = (directory, ino)
                inode = self.journal.inode(ino)
                if inode is not None and inode.is_dir:
                    stack.append((path + b"/", ino))
        return found

    @staticmethod
    def _in_scope(replay: Namespace, scope: PathSet) -> set[bytes]:
        """The scope's paths and every entry of the replay under them."""
        paths = set(scope)
        for member in scope:
            paths.update(replay.subtree(member))
        return paths

    def _candidates(self, replay: Namespace, scope: PathSet | None) -> list[bytes]:
        """The replay's entries within the scope (all if None), parents first."""
        if scope is None:
            paths = set(replay.entries)
        else:
            paths = {path for path in self._in_scope(replay, scope) if path in replay.entries}
            for member in scope:
                paths.update(directory for directory in ancestors(member) if directory in replay.entries)
        return sorted(paths, key=lambda p: (p.count(b"/"), p))

    # -- bringing the tree in line ------------------------------------------------------------
    def _same(self, inode: Inode, entry: Entry) -> bool:
        """Whether the inode shows the entry (same kind and content; metadata is updated in place)."""
        if _kind(inode) != entry.kind:
            return False
        if entry.kind == "file":
            current = self.lifecycle.current(inode)
            return (current.manifest if current is not None else None) == entry.manifest
        if entry.kind == "symlink":
            return inode.target == entry.target
        return entry.kind == "dir" or inode.rdev == entry.rdev

    def _keeps(self, inode: Inode, entry: Entry | None, replay: Namespace) -> bool:
        """Whether the inode can show the replayed entry by an update in place: same kind, and for a
        file, the same inode in the lake, or one that the replay wants nowhere else and that no
        other name here shares (it then takes the lake's identity)."""
        if entry is None or _kind(inode) != entry.kind:
            return False
        if entry.kind != "file" or entry.node is None:
            return True
        identity = self.outbox.node_id(inode)
        if identity == entry.node:
            return True
        return identity not in replay.nodes and self.journal.link_count(inode.ino) <= 1

    def _remove_stale(self, replay: Namespace, actual: dict[bytes, tuple[int, int]], held: PathSet) -> None:
        """Remove what the replay does not have (or has as another kind), deepest first."""
        for path in sorted(actual, key=lambda p: -p.count(b"/")):
            parent, ino = actual[path]
            inode = self.journal.inode(ino)
            if inode is None or self._keeps(inode, replay.entries.get(path), replay):
                continue
            if held.related(path):
                self._deferred.add(path)
                continue
            if inode.is_dir and self.journal.has_children(ino):
                continue  # something held is left in it
            name = path.rpartition(b"/")[2]
            self.journal.remove_dirent(parent, name)  # the directory's times come from the replay
            self.pending.entries.add((parent, name))
            self.pending.inodes.add(parent)
            self.tree.maybe_delete_inode(ino)
            self.changed += 1

    def _create_and_update(self, replay: Namespace, held: PathSet, scope: PathSet | None) -> None:
        placed: dict[int, int] = {}  # id(entry) -> inode: hard links are one entry under several paths
        for path in self._candidates(replay, scope):
            if not path:
                self._update_root(replay.entries[path])  # only forward: safe whatever is held
                continue
            if held.related(path):
                self._deferred.add(path)
                continue
            entry = replay.entries[path]
            parent_path, _, name = path.rpartition(b"/")
            parent = self.journal.lookup_path(parent_path)
            if parent is None or not self.tree.inode(parent).is_dir:
                continue  # its parent is held in another shape
            ino = self.journal.lookup(parent, name)
            if ino is not None:
                inode = self.tree.inode(ino)
                placed.setdefault(id(entry), ino)
                if self._keeps(inode, entry, replay):
                    self._update(inode, entry, path)
                continue
            ino = placed.get(id(entry))
            if ino is None and entry.node is not None:
                ino = self.journal.inode_by_node(entry.node, self.outbox.mount_id)
            if ino is None or self.journal.inode(ino) is None or _kind(self.tree.inode(ino)) != entry.kind:
                ino = self._new_inode(entry, path).ino
            else:
                self._update(self.tree.inode(ino), entry, path)
            placed[id(entry)] = ino
            self.journal.add_dirent(parent, name, ino)
            self.pending.entries.add((parent, name))
            self.pending.inodes.add(parent)
            self.changed += 1

    def _update_root(self, entry: Entry) -> None:
        """The root's times move forward with what the lake records of its entries (its mode and
        owner are the mounting user's)."""
        root = self.tree.inode(ROOT_INODE)
        if entry.mtime_ns > root.mtime_ns:
            root.mtime_ns, root.ctime_ns = entry.mtime_ns, max(root.ctime_ns, entry.ctime_ns)
            self.journal.save_inode(root)
            self.pending.inodes.add(ROOT_INODE)

    def _new_inode(self, entry: Entry, path: bytes) -> Inode:
        root = self.tree.inode(ROOT_INODE)
        mode = KIND_TYPES[entry.kind] | (0o777 if entry.kind == "symlink" else entry.mode)
        inode = self.journal.create_inode(mode, entry.uid if entry.uid is not None else root.uid,
                                          entry.gid if entry.gid is not None else root.gid, target=entry.target,
                                          time_ns=entry.mtime_ns, rdev=entry.rdev, node=entry.node)
        self._update(inode, entry, path, new=True)
        return inode

    def _update(self, inode: Inode, entry: Entry, path: bytes, *, new: bool = False) -> None:
        """Content and metadata of an inode from the replayed entry (never a file being written)."""
        changed = new
        if entry.node is not None and self.outbox.node_id(inode) != entry.node:
            inode.node, changed = entry.node, True  # it is that inode of the lake from now on
        if entry.kind == "file" and not self._same(inode, entry):
            current = self.lifecycle.current(inode)
            if current is not None and current.state == OPEN:
                return
            inode.version = self._version_of(path, entry) if entry.manifest is not None else None
            inode.size = entry.size
            changed = True
        wanted = {"uid": entry.uid, "gid": entry.gid, "mtime_ns": entry.mtime_ns, "atime_ns": entry.atime_ns}
        for name, value in wanted.items():
            if value is not None and getattr(inode, name) != value:
                setattr(inode, name, value)
                changed = True
        mode = stat.S_IFMT(inode.mode) | (0o777 if entry.kind == "symlink" else entry.mode)
        if inode.mode != mode:
            inode.mode, changed = mode, True
        if changed:
            inode.ctime_ns = max(inode.ctime_ns, entry.ctime_ns)
            self.journal.save_inode(inode)
            self.pending.inodes.add(inode.ino)
            if not new:
                self.changed += 1

    def _version_of(self, path: bytes, entry: Entry) -> int:
        """A committed version row for the entry's manifest (one per manifest and path)."""
        for _, known in reversed(self.journal.history(path)):
            version = self.journal.version(known) if known is not None else None
            if version is not None and version.manifest == entry.manifest:
                return version.id
        return self.journal.new_version(None, state=COMMITTED, staged=False, size=entry.size, mode=entry.mode,
                                        mtime_ns=entry.mtime_ns, manifest=entry.manifest, path=path,
                                        sealed_ns=entry.ctime_ns)

    def _add_history(self, replay: Namespace, scope: PathSet | None) -> None:
        """Every state the lake records for a path is in its history here too (once)."""
        paths = set(replay.history) if scope is None else self._in_scope(replay, scope)
        for path in paths:
            states = replay.history.get(path)
            if not states:
                continue
            known = set()
            for time_ns, version_id in self.journal.history(path):
                version = self.journal.version(version_id) if version_id is not None else None
                known.add((time_ns, version.manifest if version else None, version.target if version else None))
            for state in states:
                if (state.time_ns, state.manifest, state.target) in known:
                    continue
                version_id = None
                if not state.deleted:
                    version_id = self.journal.new_version(
                        None, state=COMMITTED, staged=False,
                        size=state.size if state.target is None else len(state.target),
                        mode=state.mode if state.target is None else 0o777, mtime_ns=state.time_ns,
                        manifest=state.manifest, path=path, sealed_ns=state.time_ns, target=state.target)
                self.journal.add_history(path, state.time_ns, version_id)
                known.add((state.time_ns, state.manifest, state.target))


