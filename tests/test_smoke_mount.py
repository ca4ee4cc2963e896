import os


def test_write_read_and_versions(mount):
    with open(mount.path("a.txt"), "w") as f:
        f.write("hello")
    with open(mount.path("a.txt"), "w") as f:
        f.write("hello again")
    assert open(mount.path("a.txt")).read() == "hello again"
    assert ".versions" not in os.listdir(mount.mountpoint)
    versions = sorted(os.listdir(mount.path(".versions", "a.txt")))
    assert len(versions) == 2
    assert open(mount.path(".versions", "a.txt", versions[0])).read() == "hello"


def test_the_kernel_reads_ahead_a_mebibyte_at_a_time(mount):
    """The mount raises its read-ahead from FUSE's 128 KiB to 1 MiB (daemon.set_read_ahead): a warm
    sequential read then asks the daemon once per MiB, not once per 128 KiB."""
    import time

    from ckptfs.daemon import READ_AHEAD_KB, read_ahead_knob

    knob = read_ahead_knob(mount.mountpoint)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(knob) as file:
            value = int(file.read())
        if value == READ_AHEAD_KB:
            break
        time.sleep(0.1)
    assert value == READ_AHEAD_KB == 1024


def test_every_change_adds_a_history_state_named_by_its_time(mount):
    """Writes, symlinks, renames (of directories too) and unlinks each add a state; version files
    are named by the state's UTC time to the millisecond, sorting by name sorts by time."""
    import re

    from tests.helpers import read, write

    write(mount.path("a.txt"), b"one")
    write(mount.path("a.txt"), b"two")
    os.symlink("a.txt", mount.path("link"))
    os.makedirs(mount.path("d"))
    write(mount.path("d", "f"), b"in d")
    os.rename(mount.path("d"), mount.path("e"))
    os.unlink(mount.path("a.txt"))
    names = os.listdir(mount.path(".versions", "a.txt"))
    assert len(names) == 2 and all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{3}Z(~\d+)?", n) for n in names)
    assert [read(mount.path(".versions", "a.txt", name)) for name in sorted(names)] == [b"one", b"two"]
    assert ".versions" not in os.listdir(mount.mountpoint) and not os.path.exists(mount.path("a.txt"))
    (link_state,) = os.listdir(mount.path(".versions", "link"))
    assert os.readlink(mount.path(".versions", "link", link_state)).endswith("a.txt")
    # The renamed directory's file has a state at its old path and at its new one.
    (old,) = os.listdir(mount.path(".versions", "d", "f"))
    (new,) = os.listdir(mount.path(".versions", "e", "f"))
    assert read(mount.path(".versions", "d", "f", old)) == read(mount.path(".versions", "e", "f", new)) == b"in d"


def test_states_in_one_millisecond_get_numbered_names(tmp_path):
    from ckptfs.cache.journal import COMMITTED, Journal
    from ckptfs.files.history import VersionsView, version_name

    base = 1_795_000_000_123_000_000
    assert version_name(base) == version_name(base + 999_999) == "2026-11-18T11-06-40.123Z"
    journal = Journal(str(tmp_path / "journal.sqlite"))
    for offset in (0, 500, 999_999, 1_000_000):
        version = journal.new_version(None, state=COMMITTED, staged=False, manifest="0" * 32, path=b"x")
        journal.add_history(b"x", base + offset, version)
    names = [name for name, _, _ in VersionsView(journal, fold_ns=0).versions_of(b"x")]
    assert names == [b"2026-11-18T11-06-40.123Z", b"2026-11-18T11-06-40.123Z~2", b"2026-11-18T11-06-40.123Z~3",
                     b"2026-11-18T11-06-40.124Z"]
