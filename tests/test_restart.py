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
