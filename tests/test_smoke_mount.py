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
