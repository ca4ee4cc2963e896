"""Running a group of tasks where the first failure stops the others and leaves as itself.

A chunk that fails to upload fails its version; its siblings are cancelled rather than left to
fail too, and the caller sees that one error, not an ExceptionGroup of it and the cancellations
it caused. The upload pipeline (engine/chunks.py), the cutting of a sealed file
(engine/uploader.py) and reads of several chunks at once (engine/fetcher.py) share this.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio


class Tasks:
    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.failures: list[Exception] = []

    def start_soon(self, function: Callable[..., Awaitable[Any]], *args: Any) -> None:
        async def guarded() -> None:
            try:
                await function(*args)
            except Exception as error:  # noqa: BLE001 - raised by first_failure_wins, once all stopped
                self.failures.append(error)
                self._nursery.cancel_scope.cancel()

        self._nursery.start_soon(guarded)


@asynccontextmanager
async def first_failure_wins() -> AsyncIterator[Tasks]:
    """`async with first_failure_wins() as tasks: tasks.start_soon(...)`: on leaving, every task has
    ended; if any failed, the first failure is raised."""
    async with trio.open_nursery() as nursery:
        tasks = Tasks(nursery)
        yield tasks
    if tasks.failures:
        raise tasks.failures[0]
