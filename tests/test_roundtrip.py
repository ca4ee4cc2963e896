"""Round trip through the lake on both stores: write, sync, unmount, drop the cache, mount fresh."""

import hashlib
import os
import shutil


def tree_digest(root: str) -> dict[str, str]:
    result = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            if os.path.islink(path):
                result[relative] = "link:" + os.readlink(path)
            else:
                with open(path, "rb") as file:
                    result[relative] = hashlib.sha256(file.read()).hexdigest()
        for name in dirnames:
            result[os.path.relpath(os.path.join(directory, name), root) + "/"] = "dir"
    return result


def versions_digest(root: str) -> dict[str, list[str]]:
    result = {}
    top = os.path.join(root, ".versions")
    for directory, _, filenames in os.walk(top):
        files = sorted(f for f in filenames)
        if files:
            result[os.path.relpath(directory, top)] = [
                hashlib.sha256(open(os.path.join(directory, f), "rb").read()).hexdigest() for f in files]
    return result


def write_tree(root: str) -> None:
    os.makedirs(os.path.join(root, "run1", "step-1000"))
    big = os.urandom(12 * 1024 * 1024)
    with open(os.path.join(root, "run1", "step-1000", "model.pt"), "wb") as f:
        f.write(big)
    with open(os.path.join(root, "run1", "last.ckpt"), "wb") as f:
        f.write(b"first")
    with open(os.path.join(root, "run1", "last.ckpt"), "wb") as f:
        f.write(b"second" * 50000)
    os.makedirs(os.path.join(root, "run1", "tmp-step-2000"))
    with open(os.path.join(root, "run1", "tmp-step-2000", "model.pt"), "wb") as f:
        f.write(big[:5_000_000] + b"changed" + big[5_000_000:])
    os.rename(os.path.join(root, "run1", "tmp-step-2000"), os.path.join(root, "run1", "step-2000"))
    os.symlink("step-2000", os.path.join(root, "run1", "latest"))
    with open(os.path.join(root, "gone.txt"), "w") as f:
        f.write("deleted later")
    os.unlink(os.path.join(root, "gone.txt"))
    os.makedirs(os.path.join(root, "empty-dir"))
    with open(os.path.join(root, "zero"), "wb"):
        pass


def test_roundtrip_through_the_lake(mounter, lake_url, tmp_path):
    url, extra = lake_url
    first = mounter(url, extra, cache="cache1")
    write_tree(first.mountpoint)
    expected_tree = tree_digest(first.mountpoint)
    expected_versions = versions_digest(first.mountpoint)
    assert "gone.txt" in expected_versions and "run1/tmp-step-2000/model.pt" in expected_versions
    first.sync()
    first.unmount()
    first.assert_clean_log()
    shutil.rmtree(tmp_path / "cache1")

    second = mounter(url, extra, cache="cache2")
    assert tree_digest(second.mountpoint) == expected_tree
    assert versions_digest(second.mountpoint) == expected_versions
    assert os.readlink(second.path("run1", "latest")) == "step-2000"
    second.assert_clean_log()
