"""A daemon killed with SIGKILL while uploads are pending resumes them on the same cache dir."""

import hashlib
import os
import shutil


def test_sigkill_with_pending_uploads_then_remount_commits_everything(mounter, lake_url, tmp_path):
    url, extra = lake_url
    first = mounter(url, extra, cache="cache")
    expected = {}
    for index in range(6):
        data = os.urandom(48 * 1024 * 1024)
        name = f"shard-{index}.bin"
        with open(first.path(name), "wb") as file:
            file.write(data)
        expected[name] = hashlib.sha256(data).hexdigest()
    os.makedirs(first.path("dir"))
    with open(first.path("dir", "small"), "wb") as file:
        file.write(b"small")
        file.flush()
        os.fsync(file.fileno())
    expected["dir/small"] = hashlib.sha256(b"small").hexdigest()
    status = first.status()
    assert status["uploading_files"] + status["events_pending"] > 0, "nothing was pending when killed"
    first.kill()

    second = mounter(url, extra, cache="cache")
    second.sync()
    for name, digest in expected.items():
        assert hashlib.sha256(open(second.path(name), "rb").read()).hexdigest() == digest
        assert os.getxattr(second.path(name), "user.ckptfs.state").startswith(b"committed")
    second.unmount()
    second.assert_clean_log()

    shutil.rmtree(tmp_path / "cache")
    third = mounter(url, extra, cache="fresh")
    for name, digest in expected.items():
        assert hashlib.sha256(open(third.path(name), "rb").read()).hexdigest() == digest
    third.assert_clean_log()


def test_after_a_reboot_unsynced_staging_copies_are_read_from_the_lake(mounter, tmp_path):
    """The daemon stopped without closing its cache dir, and the machine restarted since (the boot
    id it recorded is another): staging copies no fsync made durable may hold anything, so the
    versions already in the lake are read from there; an fsync'ed one keeps its copy."""
    import sqlite3

    first = mounter(cache="cache")
    synced, unsynced = os.urandom(3 << 20), os.urandom(3 << 20)
    with open(first.path("synced.pt"), "wb") as file:
        file.write(synced)
        file.flush()
        os.fsync(file.fileno())
    with open(first.path("unsynced.pt"), "wb") as file:
        file.write(unsynced)
    first.sync()
    first.kill()
    journal = sqlite3.connect(tmp_path / "cache" / "journal.sqlite")
    assert journal.execute("SELECT value FROM meta WHERE key='running'").fetchone() is not None
    journal.execute("UPDATE meta SET value='a boot before the power cut' WHERE key='running'")
    journal.commit()
    journal.close()
    staged = sorted(os.listdir(tmp_path / "cache" / "staging"))
    assert len(staged) == 2
    for name in staged:  # what a disk may hold of an unsynced file after a power cut
        path = tmp_path / "cache" / "staging" / name
        if open(path, "rb").read() == unsynced:
            with open(path, "r+b") as file:
                file.write(b"\0" * 4096)

    second = mounter(cache="cache")
    assert open(second.path("unsynced.pt"), "rb").read() == unsynced
    assert open(second.path("synced.pt"), "rb").read() == synced
    assert "unsynced before a reboot" in second.log()
    assert len(os.listdir(tmp_path / "cache" / "staging")) == 1  # the fsync'ed copy stays
    second.unmount()
    journal = sqlite3.connect(tmp_path / "cache" / "journal.sqlite")
    assert journal.execute("SELECT value FROM meta WHERE key='running'").fetchone() is None  # a clean close
    journal.close()
    second.assert_clean_log()
