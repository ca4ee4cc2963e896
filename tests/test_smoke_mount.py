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
