"""What a mount reads from the lake is input: events a buggy or hostile client wrote are validated in
one place (ckptfs/lake/events.py), skipped with an error naming the object and the event, reported by
fsck, and the rest of the lake is served."""

import json
import os
import stat
import subprocess
import sys

import pytest

from ckptfs.lake import events, namespace

BAD_PATHS = {
    "../escape.txt": "path component b'..'",
    "a//b.txt": "empty path component",
    "./dot.txt": "path component b'.'",
    "dir/../up.txt": "path component b'..'",
    ".versions/x.txt": "reserved .versions tree",
    "/abs.txt": "empty path component",
    "": "empty path",
    "x\u0000y": "NUL byte",
    "n" * 300: "longer than 255 bytes",
}


def put(path: str, manifest: str, time_ns: int, **overrides) -> dict:
    return {"op": "put", "path": path, "time_ns": time_ns, "manifest": manifest, "size": 5, "mode": 0o644,
            "mtime_ns": time_ns, **overrides}


@pytest.mark.parametrize("path, reason", BAD_PATHS.items())
def test_a_bad_path_is_refused_with_its_reason(path, reason):
    with pytest.raises(events.InvalidEvent) as error:
        events.parse(put(path, "0" * 32, 1), where="log/m/0 event 3")
    assert "log/m/0 event 3" in str(error.value) and reason in str(error.value)
    with pytest.raises(events.InvalidEvent):
        events.parse({"op": "rename", "path": "ok", "time_ns": 1, "dst": path})


@pytest.mark.parametrize("field, value", [
    ("mode", 0o104755), ("mode", -1), ("mode", "0644"), ("mode", True), ("size", -1), ("size", 1 << 60),
    ("time_ns", -5), ("time_ns", 1.5), ("time_ns", 1 << 63), ("mtime_ns", "yesterday"), ("uid", -1),
    ("uid", 1 << 32), ("gid", "0"), ("manifest", "../../etc/passwd"), ("manifest", "A" * 32),
    ("node", ""), ("node", "x" * 65), ("op", "explode"),
])
def test_a_bad_field_is_refused(field, value):
    with pytest.raises(events.InvalidEvent):
        events.parse({**put("run/ok", "0" * 32, 10), field: value})


def test_other_bad_events_are_refused():
    for raw in ([], "put", {"op": "put"}, {"op": "symlink", "path": "l", "time_ns": 1, "target": ""},
                {"op": "symlink", "path": "l", "time_ns": 1, "target": "a\u0000b"},
                {"op": "mknod", "path": "d", "time_ns": 1, "mode": 0o644, "kind": "door"},
                {"op": "mknod", "path": "d", "time_ns": 1, "mode": 0o644, "kind": "char", "rdev": -1},
                {"op": "attr", "path": "f", "time_ns": 1}):
        with pytest.raises(events.InvalidEvent):
            events.parse(raw)


def test_valid_events_keep_their_values():
    change = events.parse(put("run/\udcffname", "ab" * 16, 7, mode=0o4755, uid=1000, gid=100, node="m.1f"),
                          mount="m")
    assert change.path == b"run/\xffname" and change.mode == 0o4755 and (change.uid, change.gid) == (1000, 100)
    assert change.mount == "m" and change.node == "m.1f" and change.size == 5


def test_a_hostile_segment_is_skipped_event_by_event(mounter, tmp_path):
    lake = tmp_path / "lake"
    writer = mounter(cache="cache0")
    with open(writer.path("good.txt"), "wb") as file:
        file.write(b"hello")
    writer.unmount()
    manifest = next(name for _, _, names in os.walk(lake / "manifests") for name in names)
    raw = [put(path, manifest, 10**18 + index) for index, path in enumerate(BAD_PATHS)]
    raw.append(put("setuid.txt", manifest, 2 * 10**18, mode=0o4755))
    raw.append({"op": "rename", "path": "good.txt", "time_ns": 2 * 10**18 + 1, "dst": "../out.txt"})
    segment = lake / "log" / "f00dfeedf00dfeed" / f"{0:016x}"
    segment.parent.mkdir()
    segment.write_bytes(namespace.encode_segment("f00dfeedf00dfeed", 0, raw))

    fsck = subprocess.run([sys.executable, "-m", "ckptfs", "fsck", f"file://{lake}", "--json"], capture_output=True,
                          text=True, timeout=120)
    assert fsck.returncode == 1
    problems = json.loads(fsck.stdout)["lake"]["problems"]
    reported = [p for p in problems if p["kind"] == "event" and p["key"].startswith("log/f00dfeedf00dfeed/")]
    assert len(reported) == len(BAD_PATHS) + 1 == len(problems), fsck.stdout

    reader = mounter(cache="cache1", name="reader")
    seen = sorted(os.path.relpath(os.path.join(d, n), reader.mountpoint)
                  for d, dirs, files in os.walk(reader.mountpoint) for n in dirs + files)
    assert seen == ["good.txt", "setuid.txt"]
    with open(reader.path("good.txt"), "rb") as file:
        assert file.read() == b"hello"
    # Set-id bits are kept as data, and grant nothing: the mount is nosuid and nodev.
    assert stat.S_IMODE(os.stat(reader.path("setuid.txt")).st_mode) == 0o4755
    with open("/proc/mounts") as mounts:
        options = next(line.split()[3] for line in mounts if line.split()[1] == reader.mountpoint)
    assert {"nosuid", "nodev"} <= set(options.split(","))
    logged = [line for line in reader.log().splitlines() if "skipping an invalid event of log/f00dfeedf00dfeed" in line]
    assert len(logged) == len(BAD_PATHS) + 1
    for index in range(len(BAD_PATHS)):
        assert any(f"event {index} " in line for line in logged), index
    reader.assert_clean_log(allowed=("skipping an invalid event of",))


def test_a_lake_of_format_1_is_read_and_upgraded(mounter, tmp_path):
    """A lake written by ckptfs 0.1 (format 1: no owners, no node ids) mounts and is upgraded, so
    that older mounts refuse it instead of skipping the newer events."""
    writer = mounter(cache="cache0")
    os.makedirs(writer.path("run"))
    with open(writer.path("run", "a"), "wb") as file:
        file.write(b"first")
    writer.unmount()
    lake = tmp_path / "lake"
    descriptor = json.loads((lake / "lake.json").read_bytes())
    (lake / "lake.json").write_text(json.dumps({**descriptor, "version": 1}))
    for directory, _, names in os.walk(lake / "log"):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as file:
                document = json.load(file)
            document["format"] = 1
            for event in document["events"]:
                for field in ("uid", "gid", "node", "atime_ns"):
                    event.pop(field, None)
            with open(path, "w") as file:
                json.dump(document, file)
    reader = mounter(cache="cache1", name="reader")
    with open(reader.path("run", "a"), "rb") as file:
        assert file.read() == b"first"
    assert os.stat(reader.path("run", "a")).st_uid == os.getuid()  # format 1 kept no owner
    assert json.loads((lake / "lake.json").read_bytes())["version"] == 4
    reader.assert_clean_log()


def test_a_rename_over_its_own_ancestor_is_skipped_not_a_crash():
    """rename("d/y", "d") is refused by rename(2); a lake that holds one anyway is still replayed."""
    tree = namespace.Namespace()
    for raw in [events.record("mkdir", b"d", 1), events.record("mknod", b"d/y", 2, kind="fifo", mode=0o600),
                events.record("rename", b"d/y", 3, dst=b"d")]:
        tree.apply(events.parse(raw))
    assert set(tree.entries) == {b"", b"d", b"d/y"}
