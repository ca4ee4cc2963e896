"""Namespace snapshots (lake/snapshot.py) and event placement (events.placement), without a mount:
a snapshot plus what follows it replays to the same tree and history as the whole log; a damaged
or hostile snapshot is refused whole and the reader falls back; late segments are placed by rule."""

import json
import logging

import lz4.frame
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptfs.errors import CorruptObjectError
from ckptfs.lake import Lake, events, namespace, snapshot
from ckptfs.store.memory import MemoryStore

LATE = 600 * 10**9
PATHS = [b"a", b"b", b"d", b"d/x", b"d/y", b"e/f/g"]
MANIFESTS = ["1" * 32, "2" * 32, "3" * 32]


def shape(tree: namespace.Namespace) -> tuple:
    """Everything a replay decides: entries (hard links as shared names), history, node index."""
    entries = {path: (e.kind, e.mode, e.mtime_ns, e.size, e.manifest, e.target, e.uid, e.gid, e.atime_ns,
                      e.ctime_ns, e.rdev, e.node, frozenset(e.names)) for path, e in tree.entries.items()}
    history = {path: [(s.time_ns, s.manifest, s.size, s.mode, s.target) for s in states]
               for path, states in tree.history.items() if states}
    return entries, history, sorted(tree.nodes)


def raw_event(op: str, path: bytes, other: bytes, time_ns: int, pick: int) -> dict:
    node = f"n{pick % 3}"
    if op == "put":
        return events.record("put", path, time_ns, manifest=MANIFESTS[pick % 3], size=pick, mode=0o644,
                             mtime_ns=time_ns, uid=pick % 2, gid=0, node=node)
    if op in ("rename", "link"):
        return events.record(op, path, time_ns, dst=other, node=node if op == "link" else None)
    if op == "symlink":
        return events.record("symlink", path, time_ns, target=b"../" + other)
    if op == "mknod":
        return events.record("mknod", path, time_ns, kind="fifo", mode=0o600, node=node)
    if op == "attr":
        return events.record("attr", path, time_ns, mode=0o600 + pick % 8)
    if op == "mkdir":
        return events.record("mkdir", path, time_ns, mode=0o755)
    return events.record(op, path, time_ns)


LOGS = st.lists(st.tuples(st.sampled_from(["m1", "m2", "m3"]),
                          st.sampled_from(["put", "put", "unlink", "rename", "link", "mkdir", "rmdir", "symlink",
                                           "mknod", "attr"]),
                          st.sampled_from(PATHS), st.sampled_from(PATHS), st.integers(0, 10**6),
                          st.integers(0, 5), st.booleans()),
                min_size=1, max_size=40)


def segments_of(log: list) -> list[events.Event]:
    """Parse random events as the segments of three mounts would hold them: per mount, times and
    publication times increase; some segments are published long after their events."""
    clocks = {"m1": 0, "m2": 0, "m3": 0}
    published = {"m1": 0, "m2": 0, "m3": 0}
    parsed = []
    for seq, (mount, op, path, other, step, pick, late) in enumerate(log):
        clocks[mount] += 1 + step * 1000
        published[mount] = max(published[mount] + 1, clocks[mount] + (2 * LATE if late else 1000))
        raw = raw_event(op, path, other, clocks[mount], pick)
        parsed.append(events.parse(raw, mount=mount, seq=seq, position=0, published_ns=published[mount], late_ns=LATE))
    return sorted(parsed, key=lambda change: change.order)


def replay(changes, tree=None) -> namespace.Namespace:
    tree = tree or namespace.Namespace()
    for change in changes:
        tree.apply(change)
    return tree


@settings(max_examples=300, deadline=None)
@given(log=LOGS, cut=st.integers(0, 40))
def test_a_snapshot_and_its_tail_replay_to_the_whole_log(log, cut):
    ordered = segments_of(log)
    horizon = ordered[min(cut, len(ordered) - 1)].placed_ns
    before = [change for change in ordered if change.placed_ns < horizon]
    after = [change for change in ordered if change.placed_ns >= horizon]
    value = snapshot.Snapshot(horizon, {m: len(log) for m in ("m1", "m2", "m3")}, replay(before), after)
    read = snapshot.decode(snapshot.encode(value), "snapshots/test", LATE)
    assert read.horizon_ns == horizon and [c.order for c in read.tail] == [c.order for c in after]
    assert shape(replay(read.tail, read.tree)) == shape(replay(ordered))
    # A copy is independent: replaying onto it leaves the original as it was.
    base = replay(before)
    copied = base.copy()
    replay(after, copied)
    assert shape(base) == shape(replay(before)) and shape(copied) == shape(replay(ordered))


def test_a_segment_published_late_is_placed_at_publication_less_the_bound_and_keeps_its_mounts_order():
    hour = 3600 * 10**9
    first = events.parse(events.record("unlink", b"x", 10 * hour), mount="m", seq=0, published_ns=10 * hour + 1,
                         late_ns=LATE)
    late = [events.parse(events.record("mkdir", b"y", 10 * hour + 5 + position), mount="m", seq=1,
                         position=position, published_ns=12 * hour, late_ns=LATE) for position in range(2)]
    assert first.placed_ns == 10 * hour
    assert [change.placed_ns for change in late] == [12 * hour - LATE] * 2
    assert sorted([late[1], first, late[0]], key=lambda c: c.order) == [first, *late]
    other = events.parse(events.record("mkdir", b"z", 11 * hour), mount="a", seq=0, published_ns=11 * hour,
                         late_ns=LATE)
    assert first.order < other.order < late[0].order  # another mount's event in between keeps its place
    unsaid = events.parse(events.record("mkdir", b"z", 5), mount="m", seq=0)  # format 2 segments: at its time
    assert unsaid.placed_ns == 5


def good_snapshot() -> snapshot.Snapshot:
    ordered = segments_of([("m1", "put", b"d/x", b"a", 1, 1, False), ("m1", "symlink", b"s", b"d/x", 1, 0, False),
                           ("m2", "link", b"d/x", b"h", 1, 1, False), ("m2", "put", b"b", b"a", 1, 2, False)])
    return snapshot.Snapshot(ordered[2].placed_ns, {"m1": 1, "m2": 3}, replay(ordered[:2]), ordered[2:])


def tampered(change) -> bytes:
    document = json.loads(lz4.frame.decompress(snapshot.encode(good_snapshot())))
    change(document)
    return lz4.frame.compress(json.dumps(document).encode())


def set_first_name(document, name):
    document["entries"][0][12] = [name]


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda d: set_first_name(d, "../escape"), "'..'"),
    (lambda d: set_first_name(d, ".versions/x"), "reserved"),
    (lambda d: set_first_name(d, "nowhere/x"), "no parent directory"),
    (lambda d: d["entries"].append(list(d["entries"][0])), "named twice"),
    (lambda d: d["entries"][0].__setitem__(1, 0o170000), "mode"),
    (lambda d: d["entries"][0].__setitem__(0, "door"), "unknown kind"),
    (lambda d: d["history"].append(["x", [[1, "zz", 0, 0, None]]]), "manifest"),
    (lambda d: d["cursors"].__setitem__("m2", 0), "cursors do not cover"),
    (lambda d: d["tail"][0][3][0][1].__setitem__("path", "a//b"), "empty path component"),
    (lambda d: d.__setitem__("format", 7), "format"),
])
def test_a_snapshot_that_does_not_hold_together_is_refused_whole(damage, reason):
    with pytest.raises(CorruptObjectError, match="not a valid namespace snapshot") as refused:
        snapshot.decode(tampered(damage), "snapshots/x", LATE)
    assert reason in str(refused.value)
    for blob in (b"", b"{}", lz4.frame.compress(b"[1]"), lz4.frame.compress(b"{}")[:-3]):
        with pytest.raises(CorruptObjectError):
            snapshot.decode(blob, "snapshots/x", LATE)


def test_a_reader_skips_a_bad_newest_snapshot_for_the_one_before(caplog):
    lake = Lake(MemoryStore())
    lake.open()
    good = good_snapshot()
    older = lake.put_snapshot(good, "m1")
    bad_key = snapshot.key(good.horizon_ns + 1, "m2", good.segments)
    lake.store.put(bad_key, tampered(lambda d: set_first_name(d, "../escape")))
    with caplog.at_level(logging.ERROR):
        key, found = lake.newest_snapshot()
    assert key == older and shape(found.tree) == shape(good.tree)
    assert bad_key in caplog.text
    lake.store.delete(older)
    assert lake.newest_snapshot() is None  # then the whole log is read


GOLDEN = {"format": 1, "horizon_ns": 2002, "cursors": {"m1": 1, "m2": 3}, "root_times": [1001, 1001],
          "entries": [["dir", 493, 1001, 0, None, None, None, None, None, 1001, 0, None, ["d"]],
                      ["file", 420, 1001, 1, "2" * 32, None, 1, 0, None, 1001, 0, "n1", ["d/x", "h"]]],
          "nodes": [["n1", 1]],
          "history": [["d/x", [[1001, "2" * 32, 1, 420, None]]], ["h", [[1001, "2" * 32, 1, 420, None]]]],
          "tail": [["m1", 1, 3002, [[0, {"op": "symlink", "path": "s", "time_ns": 2002, "target": "../d/x"}]]],
                   ["m2", 3, 3002, [[0, {"op": "put", "path": "b", "time_ns": 2002, "manifest": "3" * 32, "size": 2,
                                         "mode": 420, "mtime_ns": 2002, "uid": 0, "gid": 0, "node": "n2"}]]]]}


def test_the_snapshot_format_is_what_docs_format_md_says():
    """Golden: the document a known tree encodes to (docs/FORMAT.md, "Snapshots"), and what it reads as."""
    assert json.loads(lz4.frame.decompress(snapshot.encode(good_snapshot()))) == GOLDEN
    read = snapshot.decode(lz4.frame.compress(json.dumps(GOLDEN).encode()), "snapshots/golden", LATE)
    tree = read.tree
    assert set(tree.entries) == {b"", b"d", b"d/x", b"h"} and tree.entries[b"d/x"] is tree.entries[b"h"]
    assert (tree.entries[b""].mtime_ns, tree.entries[b""].ctime_ns) == (1001, 1001)
    assert tree.nodes == {"n1": tree.entries[b"h"]} and tree.entries[b"h"].manifest == "2" * 32
    assert [(c.mount, c.seq, c.op, c.path) for c in read.tail] == [("m1", 1, "symlink", b"s"), ("m2", 3, "put", b"b")]
    assert read.segments == 2 + 4 and snapshot.parse_key(snapshot.key(2002, "m1", 6)) == (2002, "m1", 6)


def test_an_event_in_a_snapshot_s_tail_reads_back_with_every_field():
    """A tail event is written back as a raw event (`snapshot.unparse`): every field an event can
    carry must survive, or a mount starting from the snapshot replays a different tree (a missing
    directory time did that)."""
    raws = [
        events.record("put", b"d/f", 10, manifest="1" * 32, size=3, mode=0o600, mtime_ns=9, atime_ns=8, uid=1, gid=2,
                      node="n1", dir_mtime_ns=7),
        events.record("rename", b"d/f", 11, dst=b"e/g", dir_mtime_ns=11, dst_dir_mtime_ns=12),
        events.record("link", b"e/g", 12, dst=b"h", node="n1", uid=1, gid=2, dst_dir_mtime_ns=13),
        events.record("symlink", b"s", 13, target=b"../x", uid=1, gid=2, mtime_ns=13, dir_mtime_ns=13),
        events.record("mknod", b"p", 14, kind="char", mode=0o644, rdev=5, uid=1, gid=2, mtime_ns=14,
                      node="n2", dir_mtime_ns=14),
        events.record("attr", b"h", 15, mode=0o640, mtime_ns=1, atime_ns=2, uid=3, gid=4),
        events.record("unlink", b"h", 16, dir_mtime_ns=16),
    ]
    for raw in raws:
        change = events.parse(raw)
        assert events.parse(snapshot.unparse(change)) == change
