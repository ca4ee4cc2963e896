"""Random operations on the real mount and on a plain dict model, compared after every step.

Shrunk failures found by this test are kept below as named regression tests.
"""

import errno
import os
import random
import threading

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tests.writers import METHODS, write_range

NAMES = st.sampled_from(["a", "b", "c", "d/x", "d/y", "e/f/g"])
DATA = st.binary(max_size=300_000).map(lambda b: b * (1 + len(b) % 3))


class MountModel(RuleBasedStateMachine):
    mount = None  # set by the test

    @initialize()
    def clear(self):
        self.files: dict[str, bytes] = {}
        for directory, dirnames, filenames in os.walk(self.mount.mountpoint, topdown=False):
            for name in filenames:
                os.unlink(os.path.join(directory, name))
            for name in dirnames:
                os.rmdir(os.path.join(directory, name))

    def _path(self, name: str) -> str:
        return self.mount.path(name)

    @rule(name=NAMES, data=DATA)
    def write_file(self, name, data):
        os.makedirs(os.path.dirname(self._path(name)), exist_ok=True)
        with open(self._path(name), "wb") as file:
            file.write(data)
        self.files[name] = data

    @rule(name=NAMES, offset=st.integers(0, 400_000), data=st.binary(min_size=1, max_size=70_000))
    def write_at(self, name, offset, data):
        if name not in self.files:
            return
        with open(self._path(name), "r+b") as file:
            file.seek(offset)
            file.write(data)
        old = self.files[name]
        padded = old + bytes(max(0, offset - len(old)))
        self.files[name] = padded[:offset] + data + padded[offset + len(data):]

    @rule(name=NAMES, size=st.integers(0, 400_000))
    def truncate(self, name, size):
        if name not in self.files:
            return
        os.truncate(self._path(name), size)
        old = self.files[name]
        self.files[name] = old[:size] + bytes(max(0, size - len(old)))

    @rule(name=NAMES)
    def unlink(self, name):
        if name in self.files:
            os.unlink(self._path(name))
            del self.files[name]
        else:
            with pytest.raises(OSError) as error:
                os.unlink(self._path(name))
            assert error.value.errno in (errno.ENOENT, errno.EISDIR)

    @rule(source=NAMES, destination=NAMES)
    def rename(self, source, destination):
        if source not in self.files or source == destination:
            return
        os.makedirs(os.path.dirname(self._path(destination)), exist_ok=True)
        os.rename(self._path(source), self._path(destination))
        self.files[destination] = self.files.pop(source)

    @invariant()
    def same_contents(self):
        if not hasattr(self, "files"):
            return
        seen = {}
        for directory, _, filenames in os.walk(self.mount.mountpoint):
            for name in filenames:
                path = os.path.join(directory, name)
                with open(path, "rb") as file:
                    seen[os.path.relpath(path, self.mount.mountpoint)] = file.read()
        assert seen.keys() == self.files.keys()
        for name, data in self.files.items():
            assert seen[name] == data, name


def run_model(machine: type[MountModel], mount, *, examples: int, steps: int) -> None:
    machine.mount = mount
    runner = machine.TestCase
    runner.settings = settings(max_examples=examples, stateful_step_count=steps, deadline=None,
                               suppress_health_check=list(HealthCheck))
    runner().runTest()
    mount.sync()


def test_random_operations_match_the_model(mount):
    run_model(MountModel, mount, examples=40, steps=25)


WRITERS = st.lists(st.tuples(st.sampled_from(METHODS),
                             st.integers(1, 200_000)), min_size=2, max_size=4)


class ConcurrentModel(MountModel):
    """The same model with several writers at once on one file: threads with their own descriptors,
    writing with pwrite or through shared mappings (one closes its descriptor before it writes into
    the mapping, as numpy.memmap does), each into its own range, so the outcome is defined."""

    @rule(name=NAMES, writers=WRITERS, seed=st.integers(0, 2**32 - 1))
    def concurrent_writes(self, name, writers, seed):
        if name not in self.files:
            return
        total = sum(length for _, length in writers)
        if len(self.files[name]) < total:
            os.truncate(self._path(name), total)
            self.files[name] += bytes(total - len(self.files[name]))
        chunks = [random.Random(seed + index).randbytes(length) for index, (_, length) in enumerate(writers)]
        starts = [sum(length for _, length in writers[:index]) for index in range(len(writers))]
        barrier = threading.Barrier(len(writers))
        errors = []

        def run(method: str, start: int, data: bytes) -> None:
            try:
                write_range(self._path(name), method, start, data, total, barrier)
            except BaseException as error:  # noqa: BLE001 - reported by the rule below
                errors.append(error)

        threads = [threading.Thread(target=run, args=(method, start, data))
                   for (method, _), start, data in zip(writers, starts, chunks, strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        old = self.files[name]
        self.files[name] = b"".join(chunks) + old[total:]

    @invariant()
    def nothing_left_open(self):
        if hasattr(self, "files"):
            assert self.mount.status_when_closed()["dirty_files"] == 0


def test_concurrent_writers_and_mappings_match_the_model(mount, mounter):
    run_model(ConcurrentModel, mount, examples=15, steps=15)
    expected = {}
    for directory, _, filenames in os.walk(mount.mountpoint):
        for name in filenames:
            path = os.path.join(directory, name)
            with open(path, "rb") as file:
                expected[os.path.relpath(path, mount.mountpoint)] = file.read()
    fresh = mounter(mount.store_url, cache="rebuilt-cache", name="rebuilt")
    for name, data in expected.items():
        with open(fresh.path(name), "rb") as file:
            assert file.read() == data, name
    fresh.unmount()
    mount.assert_clean_log()
