"""A damaged or missing object in the lake gives EIO and a log line naming it, never wrong bytes."""

import errno
import os
import shutil

import pytest


def pack_files(lake_dir):
    return sorted(os.path.join(d, f) for d, _, files in os.walk(os.path.join(lake_dir, "packs")) for f in files)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_pack_gives_eio_and_a_named_log_line(mounter, tmp_path, damage):
    first = mounter(cache="cache1")
    with open(first.path("victim"), "wb") as file:
        file.write(os.urandom(3 * 1024 * 1024))
    with open(first.path("healthy"), "wb") as file:
        file.write(b"fine" * 100_000)
    first.sync()
    first.unmount()
    shutil.rmtree(tmp_path / "cache1")

    # Each file's chunks are in its own pack; the healthy file is 400 kB of a repeated pattern that
    # compresses to almost nothing, so the victim's pack is the largest.
    target = max(pack_files(str(tmp_path / "lake")), key=os.path.getsize)
    name = os.path.basename(target)
    if damage == "flip":
        with open(target, "r+b") as file:
            file.seek(os.path.getsize(target) // 2)
            byte = file.read(1)
            file.seek(-1, os.SEEK_CUR)
            file.write(bytes([byte[0] ^ 0x01]))
    elif damage == "truncate":
        os.truncate(target, os.path.getsize(target) // 2)  # into the chunks, not only the index
    else:
        os.unlink(target)

    second = mounter(cache="cache2", name="mnt2")
    with pytest.raises(OSError) as error:
        with open(second.path("victim"), "rb") as file:
            file.read()
    assert error.value.errno == errno.EIO
    assert open(second.path("healthy"), "rb").read() == b"fine" * 100_000
    assert name in second.log()
    second.assert_clean_log(allowed=(name,))
